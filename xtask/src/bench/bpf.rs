//! The kernel's per-program run statistics, for the benches that measure
//! an XDP program under load: `kernel.bpf_stats_enabled` switched on for a
//! bench and back, and a pinned program's run count and run time.
use std::{path::Path, process::Command};

use anyhow::{Context, Result};

/// `kernel.bpf_stats_enabled` on (run count and time per program), back
/// to what it was on drop.
pub(crate) struct BpfStats(String);

impl BpfStats {
    const PATH: &'static str = "/proc/sys/kernel/bpf_stats_enabled";

    pub(crate) fn enable() -> Result<Self> {
        let previous = std::fs::read_to_string(Self::PATH).unwrap_or_else(|_| "0".into());
        std::fs::write(Self::PATH, "1")
            .context("enabling kernel.bpf_stats_enabled (run_cnt per program)")?;
        Ok(Self(previous))
    }
}

impl Drop for BpfStats {
    fn drop(&mut self) {
        let _ = std::fs::write(Self::PATH, self.0.trim());
    }
}

/// `bpftool prog show` of a pinned program, as JSON.
pub(crate) fn show(prog: &Path) -> Result<serde_json::Value> {
    let output = Command::new("bpftool")
        .args(["-j", "prog", "show", "pinned"])
        .arg(prog)
        .output()
        .context("running bpftool prog show")?;
    Ok(serde_json::from_slice(&output.stdout)?)
}

/// `(run_cnt, run_time_ns)` of a pinned program (needs [`BpfStats`]).
pub(crate) fn run_stats(prog: &Path) -> Result<(u64, u64)> {
    let value = show(prog)?;
    Ok((
        value["run_cnt"].as_u64().unwrap_or(0),
        value["run_time_ns"].as_u64().unwrap_or(0),
    ))
}
