//! The production build, optimised from a profile of the gateway at work
//! (LLVM's profile-guided optimisation): an instrumented build serves a
//! short training load ([`train`]), and the real build inlines, lays out
//! and splits hot from cold code by what that load ran.
//!
//! The profile is named after the SHA-256 of the instrumented binary and of
//! the training's own source, so an unchanged source trains once and
//! rebuilds nothing; a changed one cannot be built with an older profile.
//! `build --release --no-pgo` builds without it.
mod train;

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{ensure, Context, Result};
use sha2::{Digest, Sha256};

use crate::{cargo, run_cmd, setup, target_dir};

/// Builds the instrumented gateway, trains it (once per instrumented
/// binary and training), builds the optimised one; returns its path.
pub(crate) fn build() -> Result<PathBuf> {
    // Before minutes of compiling, what the training will need.
    ensure_load_tools()?;
    let host = host_triple()?;
    let profdata = llvm_profdata(&host)?;
    let target = std::path::absolute(target_dir()).context("the target directory")?;
    let dir = target.join("pgo");
    let raw = dir.join("raw");
    let instrumented = build_with(
        &target,
        &dir.join("train"),
        &host,
        &format!("-Cprofile-generate={}", raw.display()),
    )?;
    let profile = dir.join(format!("gateway-{}.profdata", profile_name(&instrumented)?));
    if !profile.exists() {
        remove_dir_if_present(&raw)?;
        train::run(&instrumented, &raw).context("the PGO training run")?;
        merge(&profdata, &raw, &profile)?;
        remove_other_profiles(&dir, &profile)?;
    }
    let built = build_with(
        &target,
        &target,
        &host,
        &format!("-Cprofile-use={}", profile.display()),
    )?;
    // Where `--release` has always put it (target/production/gateway). A
    // running copy keeps the old inode; the new file takes the name.
    let production = target.join("production");
    std::fs::create_dir_all(&production)
        .with_context(|| format!("creating {}", production.display()))?;
    let (staged, to) = (production.join(".gateway.pgo"), production.join("gateway"));
    std::fs::copy(&built, &staged)
        .with_context(|| format!("copying {} to {}", built.display(), staged.display()))?;
    std::fs::rename(&staged, &to)
        .with_context(|| format!("renaming {} to {}", staged.display(), to.display()))?;
    println!("pgo: {} (profile {})", to.display(), profile.display());
    Ok(to)
}

/// wrk, h2load and curl, installed as root when missing (as the benches
/// install them).
fn ensure_load_tools() -> Result<()> {
    setup::require_packages(
        &[
            ("wrk", "wrk"),
            ("h2load", "nghttp2-client"),
            ("curl", "curl"),
        ],
        "the PGO training",
        ", or build without PGO (`cargo xtask build --release --no-pgo`)",
    )
}

/// `cargo build --profile production --target <host>` with `rustflags`,
/// into `into`. `--target` keeps the flags off build scripts and proc
/// macros, which run on the build machine only; the flags replace any the
/// user's cargo config sets, in both builds alike. The XDP object is the
/// one `build_ebpf` left in `target` unless `GATEWAY_XDP_OBJECT` names one.
fn build_with(target: &Path, into: &Path, host: &str, rustflags: &str) -> Result<PathBuf> {
    let xdp = std::env::var_os("GATEWAY_XDP_OBJECT")
        .map(PathBuf::from)
        .unwrap_or_else(|| target.join("bpfel-unknown-none/release/gateway-xdp"));
    run_cmd(
        cargo(None)
            .args(["build", "--package", "gateway", "--profile", "production"])
            .args(["--target", host])
            .env("CARGO_TARGET_DIR", into)
            .env("CARGO_ENCODED_RUSTFLAGS", rustflags)
            .env("GATEWAY_XDP_OBJECT", xdp),
    )?;
    Ok(into.join(host).join("production").join("gateway"))
}

/// `rustc` of the toolchain `cargo(None)` builds with (not one an outer
/// `cargo +toolchain` chose): its profile format is the build's.
fn rustc(args: &[&str]) -> Result<String> {
    let out = Command::new("rustc")
        .args(args)
        .env_remove("RUSTUP_TOOLCHAIN")
        .env_remove("RUSTC")
        .current_dir(crate::workspace_root())
        .output()
        .with_context(|| format!("running rustc {}", args.join(" ")))?;
    ensure!(
        out.status.success(),
        "rustc {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn host_triple() -> Result<String> {
    rustc(&["-vV"])?
        .lines()
        .find_map(|line| line.strip_prefix("host: "))
        .map(str::to_owned)
        .context("rustc -vV printed no host")
}

/// The toolchain's own `llvm-profdata` (rustup's `llvm-tools`, whose LLVM
/// is rustc's), added when missing.
fn llvm_profdata(host: &str) -> Result<PathBuf> {
    let sysroot = rustc(&["--print", "sysroot"])?;
    let tool = Path::new(sysroot.trim())
        .join("lib/rustlib")
        .join(host)
        .join("bin/llvm-profdata");
    if !tool.exists() {
        println!("pgo: adding rustup's llvm-tools (llvm-profdata)");
        run_cmd(
            Command::new("rustup")
                .args(["component", "add", "llvm-tools"])
                .env_remove("RUSTUP_TOOLCHAIN")
                .current_dir(crate::workspace_root()),
        )
        .context("PGO needs llvm-profdata; `build --release --no-pgo` goes without")?;
    }
    ensure!(tool.exists(), "no llvm-profdata at {}", tool.display());
    Ok(tool)
}

/// The first 16 hex digits of the SHA-256 of the instrumented binary and
/// of the training's source (its load, config and upstream).
fn profile_name(instrumented: &Path) -> Result<String> {
    let bytes = std::fs::read(instrumented)
        .with_context(|| format!("reading {}", instrumented.display()))?;
    let digest = Sha256::new()
        .chain_update(&bytes)
        .chain_update(include_str!("train.rs"))
        .chain_update(include_str!("../bench/upstream.rs"))
        .finalize();
    Ok(digest.iter().take(8).map(|b| format!("{b:02x}")).collect())
}

/// A directory and what is in it, if it is there.
fn remove_dir_if_present(dir: &Path) -> Result<()> {
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            Err(e).with_context(|| format!("removing {}", dir.display()))
        }
        _ => Ok(()),
    }
}

/// Profiles of older sources: each is as large as the binary's counters.
fn remove_other_profiles(dir: &Path, keep: &Path) -> Result<()> {
    let entries = std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))?;
    for path in entries.flatten().map(|entry| entry.path()) {
        if path.extension().is_some_and(|e| e == "profdata") && path != keep {
            std::fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
        }
    }
    Ok(())
}

/// `llvm-profdata merge` of every raw profile the training wrote, into a
/// temporary file renamed into place: a merge cut short leaves no profile
/// that a later build would trust.
fn merge(tool: &Path, raw: &Path, profile: &Path) -> Result<()> {
    let partial = profile.with_extension("profdata.partial");
    run_cmd(
        Command::new(tool)
            .arg("merge")
            .arg("-o")
            .arg(&partial)
            .arg(raw),
    )?;
    std::fs::rename(&partial, profile)
        .with_context(|| format!("renaming {} to {}", partial.display(), profile.display()))
}
