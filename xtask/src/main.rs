//! Developer entry point: `cargo xtask setup | build | run | fleet | test | fuzz | bench`.
//!
//! `setup` installs what a fresh machine lacks (idempotent, and `build`,
//! `run`, `test` and `bench` call it); `build` compiles the XDP object with
//! nightly and embeds it in the stable `gateway` binary.
mod bench;
mod demo;
mod fleet;
mod fuzz;
mod pgo;
mod setup;

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask")]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install the toolchain pieces and packages the build and tests need.
    Setup,
    /// Build the XDP object (nightly) and the gateway binary with it embedded.
    Build {
        /// Optimised (the `production` profile: target/production/gateway),
        /// from a profile of a training run (PGO: see xtask/src/pgo.rs).
        #[arg(long)]
        release: bool,
        /// With `--release`: the `production` profile without PGO (no
        /// training run, no wrk or h2load, one compile instead of two).
        #[arg(long, requires = "release")]
        no_pgo: bool,
    },
    /// Build, then run the gateway on its defaults (XDP on `lo`); extra
    /// arguments go to `gateway run`. Without `--config` it also starts a
    /// demo upstream on the defaults' upstream address and, on a fresh key
    /// store, makes a demo key and prints a "try it" block once.
    Run {
        #[arg(long)]
        release: bool,
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// A fleet to play with (root): PostgreSQL, Redis and three gateways
    /// on loopback sharing them, the demo upstream behind them; prints the
    /// ports, an admin key and a client's key. Ctrl-C stops everything and
    /// removes the temp dirs.
    Fleet {
        #[arg(long)]
        release: bool,
    },
    /// Every check CI runs: fmt, clippy, unit and end-to-end tests
    /// (including the privileged network-namespace tests and schemathesis
    /// against the admin API's OpenAPI document), then each fuzz target for
    /// a short bounded time.
    Test,
    /// Runs the `fuzz/` targets (cargo-fuzz, nightly) for a bounded time
    /// each on a scratch copy of their seed corpus; fails on any crash.
    Fuzz(fuzz::FuzzArgs),
    /// Benchmarks that print ratios against a peer measured in the same run.
    Bench {
        #[command(subcommand)]
        which: bench::Which,
    },
}

fn main() -> Result<()> {
    match Cli::parse().command {
        Task::Setup => setup::run(),
        Task::Build { release, no_pgo } => {
            if no_pgo {
                build_plain(true).map(drop)
            } else {
                build(release).map(drop)
            }
        }
        Task::Run { release, args } => run(release, &args),
        Task::Fleet { release } => fleet::run(release),
        Task::Test => test(),
        Task::Fuzz(args) => fuzz::run(args),
        Task::Bench { which } => bench::run(which),
    }
}

/// The workspace root (xtask lives one level below it).
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

pub fn target_dir() -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
}

/// Runs a command, failing with its command line if it fails.
pub fn run_cmd(command: &mut Command) -> Result<()> {
    let shown = format!("{command:?}");
    let status = command
        .status()
        .with_context(|| format!("cannot start {shown}"))?;
    if !status.success() {
        bail!("{shown} failed with {status}");
    }
    Ok(())
}

/// `cargo` for the workspace, without the variables the outer `cargo run`
/// set (they would pin the inner build to this process's toolchain).
pub fn cargo(toolchain: Option<&str>) -> Command {
    let mut command = Command::new("cargo");
    if let Some(toolchain) = toolchain {
        command.arg(format!("+{toolchain}"));
    }
    for var in [
        "RUSTUP_TOOLCHAIN",
        "RUSTC",
        "RUSTC_WRAPPER",
        "RUSTFLAGS",
        "CARGO",
    ] {
        command.env_remove(var);
    }
    command.current_dir(workspace_root());
    command
}

/// The embedded-object build: nightly eBPF object, then the stable binary.
/// Returns the gateway binary's path.
pub fn build(release: bool) -> Result<PathBuf> {
    if release {
        setup::run()?;
        build_ebpf()?;
        return pgo::build();
    }
    build_plain(false)
}

/// [`build`] without PGO: the `dev` or the `production` profile as it is.
fn build_plain(release: bool) -> Result<PathBuf> {
    setup::run()?;
    build_ebpf()?;
    let mut command = cargo(None);
    command.args(["build", "--package", "gateway"]);
    // `production`: release with fat LTO and one codegen unit (Cargo.toml).
    let profile = if release { "production" } else { "dev" };
    command.args(["--profile", profile]);
    run_cmd(&mut command)?;
    Ok(target_dir()
        .join(if release { "production" } else { "debug" })
        .join("gateway"))
}

/// Builds both eBPF binaries (the program and the bench baseline) with BTF.
pub fn build_ebpf() -> Result<()> {
    run_cmd(
        cargo(Some("nightly"))
            .args([
                "build",
                "--package",
                "gateway-ebpf",
                "--target",
                "bpfel-unknown-none",
                "-Z",
                "build-std=core",
                "--release",
            ])
            // BTF for the maps so bpftool prints field names; debug info feeds it.
            .env(
                "CARGO_ENCODED_RUSTFLAGS",
                "-Cdebuginfo=2\x1f-Clink-arg=--btf",
            ),
    )
}

fn run(release: bool, args: &[String]) -> Result<()> {
    let gateway = build(release)?;
    if !setup::is_root() {
        eprintln!(
            "note: not running as root, so the XDP program cannot load; the gateway will \
             fall back to userspace-only enforcement (run as root for the kernel path)"
        );
    }
    demo::run(&gateway, args)
}

fn test() -> Result<()> {
    let gateway = build(false)?;
    run_cmd(cargo(None).args(["fmt", "--all", "--", "--check"]))?;
    // The fuzz targets are their own workspace (nightly): `--all` skips them.
    run_cmd(cargo(None).args(["fmt", "--manifest-path", "fuzz/Cargo.toml", "--", "--check"]))?;
    run_cmd(cargo(None).args(["clippy", "--all-targets", "--", "-D", "warnings"]))?;
    run_cmd(
        cargo(None)
            .arg("test")
            .env("GATEWAY_BIN", &gateway)
            // tests/openapi.rs drives it against a running gateway.
            .env("GATEWAY_SCHEMATHESIS", setup::schemathesis()?),
    )?;
    fuzz::run(fuzz::FuzzArgs {
        seconds: fuzz::TEST_SECONDS,
        target: None,
    })
}
