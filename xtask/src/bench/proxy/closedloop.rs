//! Closed-loop maximum throughput: wrk on the load CPUs with a Lua script
//! that rotates through the 10,000 keys, and the CPU time the proxy's
//! process tree spent per request meanwhile.
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::bench::{
    procs::{tree_cpu_seconds, CpuPlan},
    wrk,
};

/// Connections wrk keeps open.
pub(super) const CONNECTIONS: u32 = 32;

pub(super) struct Sample {
    pub(super) rps: f64,
    pub(super) cpu_us_per_request: f64,
}

/// Writes the key-rotating request script; returns its path.
pub(super) fn script(dir: &Path, keys_file: &Path) -> Result<PathBuf> {
    let path = dir.join("rotate.lua");
    std::fs::write(
        &path,
        format!(
            "local keys = {{}}\nfor line in io.lines(\"{}\") do keys[#keys + 1] = line end\n\
             local i = math.random(#keys)\n\
             request = function()\n  i = i % #keys + 1\n  \
             return wrk.format(\"GET\", \"/bench\", {{[\"x-api-key\"] = keys[i]}})\nend\n",
            keys_file.display()
        ),
    )?;
    Ok(path)
}

/// One wrk run of `seconds` against `url`, charging the CPU time of `pid`
/// and its descendants to the requests wrk counted.
pub(super) fn run(
    cpus: &CpuPlan,
    url: &str,
    script: &Path,
    seconds: u32,
    pid: u32,
) -> Result<Sample> {
    let before = tree_cpu_seconds(pid)?;
    let output = cpus
        .load_command("wrk")
        .arg(format!("-t{}", cpus.load_threads()))
        .arg(format!("-c{CONNECTIONS}"))
        .args([&format!("-d{seconds}s"), "--timeout", "2s", "-s"])
        .arg(script)
        .arg(url)
        .output()
        .context("running wrk")?;
    let cpu = tree_cpu_seconds(pid)? - before;
    let text = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        bail!(
            "wrk failed ({}): {text}{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    if text.contains("Non-2xx") {
        bail!(
            "some requests to {url} were refused: the bench would measure the wrong path\n{text}"
        );
    }
    if let Some(errors) = text.lines().find(|l| l.contains("Socket errors")) {
        println!("  warning: {url}: {}", errors.trim());
    }
    let requests =
        wrk::requests(&text).with_context(|| format!("wrk printed no request count:\n{text}"))?;
    if requests < 1.0 {
        bail!("no request to {url} was answered: the bench would measure nothing\n{text}");
    }
    let rps =
        wrk::requests_per_sec(&text).with_context(|| format!("wrk printed no rate:\n{text}"))?;
    Ok(Sample {
        rps,
        cpu_us_per_request: cpu * 1e6 / requests,
    })
}
