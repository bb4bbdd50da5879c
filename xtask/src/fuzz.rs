//! `cargo xtask fuzz [--seconds N] [TARGET]`: builds the `fuzz/` targets
//! with `cargo +nightly fuzz` (libFuzzer) and runs each for a bounded time.
//!
//! Each target runs on a copy of its committed seed corpus in a temporary
//! directory, so the repository only ever holds the seeds; a crash's input
//! is kept in `fuzz/artifacts/<target>/` (ignored by git) to be turned into
//! a regression test. Fails if any target crashes.
use std::{
    fs,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use clap::Args;

use crate::{cargo, run_cmd, setup, target_dir, workspace_root};

/// What `cargo xtask test` gives each target (CI runs that).
pub const TEST_SECONDS: u64 = 30;

#[derive(Args)]
pub struct FuzzArgs {
    /// Seconds per target.
    #[arg(long, default_value_t = TEST_SECONDS)]
    pub seconds: u64,
    /// One target (default: all of them).
    pub target: Option<String>,
}

/// A fuzz target (a `fuzz/fuzz_targets/<name>.rs`).
struct Target {
    name: &'static str,
    /// Longest input libFuzzer makes: a little past what the code under
    /// test refuses outright, so the refusal is fuzzed too.
    max_len: usize,
    /// Live files added to the committed seeds (relative to the workspace
    /// root), so seeds that track the code are never stale copies.
    live_seeds: &'static [&'static str],
}

const TARGETS: [Target; 8] = [
    Target {
        name: "api_key",
        max_len: 256,
        live_seeds: &[],
    },
    Target {
        name: "jwt_preparse",
        // jwt::MAX_TOKEN_BYTES is 8 KiB.
        max_len: 9 * 1024,
        live_seeds: &[],
    },
    Target {
        name: "config",
        max_len: 16 * 1024,
        live_seeds: &["examples/gateway.toml", "gateway/src/default.toml"],
    },
    Target {
        name: "path",
        max_len: 4096,
        live_seeds: &[],
    },
    Target {
        name: "xdp_parser",
        // Past the farthest L4 offset four maximal IPv6 extension headers reach.
        max_len: 9 * 1024,
        live_seeds: &[],
    },
    Target {
        name: "fleet_entry",
        // Past the parser's own 2 KiB bound.
        max_len: 4096,
        live_seeds: &[],
    },
    Target {
        name: "traceparent",
        // Past version 00's 55 bytes, for later versions' extra fields.
        max_len: 256,
        live_seeds: &[],
    },
    Target {
        name: "h1_response",
        // Past the decoder's 4 KiB chunk-size line, short of a big head.
        max_len: 8 * 1024,
        live_seeds: &[],
    },
];

/// Memory cap per target process (libFuzzer reports going past it as a crash).
const RSS_LIMIT_MB: u32 = 2048;
/// One input taking longer than this is a crash (a hang).
const INPUT_TIMEOUT_SECONDS: u32 = 10;
/// Grace past `-max_total_time` before the run is killed as hung.
const EXIT_GRACE: Duration = Duration::from_secs(120);

/// One target's run.
struct Outcome {
    name: &'static str,
    executions: Option<u64>,
    /// libFuzzer's reproducer, when it crashed.
    crash: Option<String>,
    failed: bool,
}

pub fn run(args: FuzzArgs) -> Result<()> {
    let targets: Vec<&Target> = match &args.target {
        None => TARGETS.iter().collect(),
        Some(name) => match TARGETS.iter().find(|target| target.name == name) {
            Some(target) => vec![target],
            None => bail!(
                "no fuzz target {name:?}; there are {:?}",
                TARGETS.map(|target| target.name)
            ),
        },
    };
    if args.seconds == 0 {
        bail!("--seconds must be at least 1");
    }
    setup::cargo_fuzz()?;
    // The targets link the gateway library, whose build embeds the XDP object.
    crate::build_ebpf()?;
    let binaries = build()?;
    let scratch = tempfile::Builder::new()
        .prefix("gateway-fuzz-")
        .tempdir()
        .context("creating the fuzz scratch directory")?;
    let mut outcomes = Vec::new();
    for target in targets {
        outcomes.push(fuzz_one(target, &binaries, scratch.path(), args.seconds)?);
    }
    println!("\nfuzz: {} s per target", args.seconds);
    for outcome in &outcomes {
        let executions = outcome
            .executions
            .map_or_else(|| "?".to_owned(), |count| count.to_string());
        let verdict = match (&outcome.crash, outcome.failed) {
            (Some(input), _) => format!("CRASH, input kept in {input}"),
            (None, true) => "FAILED (see its log above)".to_owned(),
            (None, false) => "0 crashes".to_owned(),
        };
        println!(
            "  {:<14} {executions:>12} executions  {verdict}",
            outcome.name
        );
    }
    let failed: Vec<&str> = outcomes
        .iter()
        .filter(|outcome| outcome.failed)
        .map(|outcome| outcome.name)
        .collect();
    if !failed.is_empty() {
        bail!("fuzz targets failed: {failed:?} (turn each kept input into a regression test)");
    }
    Ok(())
}

/// Builds every target (release, debug assertions, AddressSanitizer: the
/// cargo-fuzz defaults) into `target/fuzz`; returns the binaries' directory.
fn build() -> Result<PathBuf> {
    let host = host_triple()?;
    let xdp_object = target_dir().join("bpfel-unknown-none/release/gateway-xdp");
    let target_dir = target_dir().join("fuzz");
    run_cmd(
        cargo(Some("nightly"))
            .args(["fuzz", "build", "--fuzz-dir", "fuzz", "--target", &host])
            .arg("--target-dir")
            .arg(&target_dir)
            .env("GATEWAY_XDP_OBJECT", xdp_object),
    )?;
    Ok(target_dir.join(host).join("release"))
}

/// The triple cargo-fuzz builds for, named explicitly so the binaries'
/// directory is known.
fn host_triple() -> Result<String> {
    let out = Command::new("rustc")
        .args(["+nightly", "-vV"])
        .env_remove("RUSTUP_TOOLCHAIN")
        .output()
        .context("cannot run `rustc +nightly -vV`")?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|line| line.strip_prefix("host: "))
        .map(str::to_owned)
        .context("`rustc +nightly -vV` printed no host triple")
}

fn fuzz_one(target: &Target, binaries: &Path, scratch: &Path, seconds: u64) -> Result<Outcome> {
    let corpus = scratch.join("corpus").join(target.name);
    fs::create_dir_all(&corpus).with_context(|| format!("creating {}", corpus.display()))?;
    let root = workspace_root();
    let seeds = root.join("fuzz/corpus").join(target.name);
    for entry in fs::read_dir(&seeds).with_context(|| format!("reading {}", seeds.display()))? {
        let path = entry?.path();
        if let Some(name) = path.file_name() {
            copy(&path, &corpus.join(name))?;
        }
    }
    for live in target.live_seeds {
        let name = live.replace('/', "_");
        copy(&root.join(live), &corpus.join(name))?;
    }
    let artifacts = root.join("fuzz/artifacts").join(target.name);
    fs::create_dir_all(&artifacts).with_context(|| format!("creating {}", artifacts.display()))?;
    let log_path = scratch.join(format!("{}.log", target.name));
    let log =
        fs::File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?;
    println!("fuzz: {} for {seconds} s", target.name);
    let mut child = Command::new(binaries.join(target.name))
        .arg(&corpus)
        .arg(format!("-max_total_time={seconds}"))
        .arg(format!("-max_len={}", target.max_len))
        .arg(format!("-rss_limit_mb={RSS_LIMIT_MB}"))
        .arg(format!("-timeout={INPUT_TIMEOUT_SECONDS}"))
        .arg(format!("-artifact_prefix={}/", artifacts.display()))
        .arg("-print_final_stats=1")
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .with_context(|| format!("cannot start fuzz target {}", target.name))?;
    let exited_ok = wait_bounded(&mut child, Duration::from_secs(seconds) + EXIT_GRACE)?;
    let log = fs::read_to_string(&log_path).unwrap_or_default();
    let executions = log
        .lines()
        .find_map(|line| line.strip_prefix("stat::number_of_executed_units:"))
        .and_then(|count| count.trim().parse().ok());
    let crash = log
        .lines()
        .find_map(|line| line.split_once("Test unit written to "))
        .map(|(_, path)| path.trim().to_owned());
    let failed = !exited_ok || crash.is_some();
    if failed {
        // What went wrong: from the panic or libFuzzer's error on, bounded;
        // the whole log is kept beside the input.
        let lines: Vec<&str> = log.lines().collect();
        let first = lines
            .iter()
            .position(|line| line.contains("panicked at") || line.contains("ERROR:"))
            .unwrap_or(lines.len().saturating_sub(40));
        eprintln!(
            "{}",
            lines[first..]
                .iter()
                .take(40)
                .copied()
                .collect::<Vec<_>>()
                .join("\n")
        );
        let kept = artifacts.join("fuzz.log");
        copy(&log_path, &kept)?;
        eprintln!("fuzz: {} log kept in {}", target.name, kept.display());
    }
    Ok(Outcome {
        name: target.name,
        executions,
        crash,
        failed,
    })
}

fn copy(from: &Path, to: &Path) -> Result<()> {
    fs::copy(from, to)
        .map(drop)
        .with_context(|| format!("copying {} to {}", from.display(), to.display()))
}

/// Waits for `child` at most `limit`, killing it past that; true if it
/// exited successfully in time.
fn wait_bounded(child: &mut Child, limit: Duration) -> Result<bool> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if let Some(status) = child.try_wait().context("waiting for a fuzz target")? {
            return Ok(status.success());
        }
        #[allow(clippy::disallowed_methods, reason = "xtask is synchronous")]
        std::thread::sleep(Duration::from_millis(200));
    }
    eprintln!(
        "fuzz: still running after {} s, killing it",
        limit.as_secs()
    );
    let _ = child.kill();
    let _ = child.wait();
    Ok(false)
}
