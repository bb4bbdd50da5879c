//! `cargo xtask bench auth`: the gateway's own bench of API-key and JWT
//! verification, uncached vs cached (`gateway/benches/auth.rs`): CPU time
//! per operation beside aws-lc's own verify (the crypto floor), whose
//! markdown table goes into bench/RESULTS.md.
use anyhow::{Context, Result};

use super::results;
use crate::{run_cmd, target_dir};

pub(super) fn run() -> Result<()> {
    // `cargo bench` builds its own binary (the `bench` profile: release
    // without LTO); the gateway's build script needs the XDP object.
    crate::setup::run()?;
    crate::build_ebpf()?;
    let markdown = target_dir().join("bench-auth.md");
    run_cmd(
        crate::cargo(None)
            .args(["bench", "--package", "gateway", "--bench", "auth"])
            .env("GATEWAY_BENCH_MARKDOWN", &markdown),
    )?;
    let table = std::fs::read_to_string(&markdown)
        .with_context(|| format!("the auth bench wrote no {}", markdown.display()))?;
    results::record("auth", &table)
}
