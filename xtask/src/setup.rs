//! `cargo xtask setup`: makes a fresh machine able to build and test.
//!
//! Idempotent: each step checks first and says whether it did anything.
//! The bpf-linker recipe (see `../shared/design.md`): link it against the
//! nightly rustc's own libLLVM, found through a prefix directory of symlinks,
//! because no matching LLVM dev package exists on our Debian.
use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{bail, Context, Result};

use crate::run_cmd;

/// bpf-linker release known to build against LLVM 22 here.
const BPF_LINKER_VERSION: &str = "0.13.0";
/// cargo-fuzz release `cargo xtask fuzz` is written against.
const CARGO_FUZZ_VERSION: &str = "0.13.2";
/// schemathesis release tests/openapi.rs drives against the admin API.
const SCHEMATHESIS_VERSION: &str = "4.32.5";
/// Debian packages the tests and benches use, keyed by a binary they provide.
const DEBIAN_PACKAGES: [(&str, &str); 7] = [
    ("bpftool", "bpftool"),
    ("ip", "iproute2"),
    ("ethtool", "ethtool"),
    // tests/systemd.rs traces the gateway in the unit's sandbox.
    ("strace", "strace"),
    // The first-run demo's try-it lines and tests/tls.rs.
    ("curl", "curl"),
    // Fleet tests start their own servers on unix sockets.
    ("redis-server", "redis-server"),
    ("pg_ctlcluster", "postgresql"),
];

pub fn run() -> Result<()> {
    nightly_rust_src()?;
    bpf_linker()?;
    debian_packages()?;
    test_idp()?;
    cargo_fuzz()?;
    schemathesis()?;
    Ok(())
}

/// schemathesis (PyPI, pinned) in a venv under `target/`, for the OpenAPI
/// contract test; returns its executable. A venv keeps it off the system's
/// Python (Debian's is externally managed).
pub fn schemathesis() -> Result<PathBuf> {
    let venv = crate::target_dir().join("schemathesis-venv");
    let bin = venv.join("bin/schemathesis");
    let version = Command::new(&bin).arg("--version").output();
    if version.is_ok_and(|out| String::from_utf8_lossy(&out.stdout).contains(SCHEMATHESIS_VERSION))
    {
        println!("setup: schemathesis {SCHEMATHESIS_VERSION} present");
        return Ok(bin);
    }
    println!(
        "setup: installing schemathesis {SCHEMATHESIS_VERSION} into {}",
        venv.display()
    );
    let make_venv = || run_cmd(Command::new("python3").args(["-m", "venv"]).arg(&venv));
    if make_venv().is_err() {
        // Debian ships venv's pip bootstrap separately.
        if !is_root() {
            bail!("python3 -m venv failed: install python3-venv (as root) and run setup again");
        }
        apt_install(&["python3-venv"])?;
        make_venv()?;
    }
    run_cmd(
        Command::new(venv.join("bin/pip"))
            .args(["install", "--quiet", "--disable-pip-version-check"])
            .arg(format!("schemathesis=={SCHEMATHESIS_VERSION}")),
    )?;
    Ok(bin)
}

/// `cargo fuzz` (libFuzzer driver) for `cargo xtask fuzz`, from crates.io.
pub fn cargo_fuzz() -> Result<()> {
    let works = Command::new("cargo")
        .env_remove("RUSTUP_TOOLCHAIN")
        .args(["fuzz", "--version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success());
    if works {
        println!("setup: cargo-fuzz present");
        return Ok(());
    }
    println!("setup: installing cargo-fuzz {CARGO_FUZZ_VERSION} (about 2 min)");
    run_cmd(Command::new("cargo").env_remove("RUSTUP_TOOLCHAIN").args([
        "install",
        "cargo-fuzz",
        "--locked",
        "--version",
        CARGO_FUZZ_VERSION,
    ]))
}

/// The independent OpenID provider the OIDC test runs (npm, pinned by the
/// committed package-lock.json).
fn test_idp() -> Result<()> {
    let dir = crate::workspace_root().join("tests/oidc");
    if dir.join("node_modules/oidc-provider").is_dir() {
        println!("setup: test IdP (oidc-provider) present");
        return Ok(());
    }
    if !have("npm") {
        println!("setup: npm not found; the OIDC interoperability test will fail until node and npm are installed");
        return Ok(());
    }
    println!("setup: installing the test IdP (oidc-provider, npm ci)");
    run_cmd(
        Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund"])
            .current_dir(&dir),
    )
}

pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn output(command: &mut Command) -> Result<String> {
    let shown = format!("{command:?}");
    let out = command
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("cannot start {shown}"))?;
    if !out.status.success() {
        bail!("{shown} failed with {}", out.status);
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn rustup() -> Command {
    let mut command = Command::new("rustup");
    command.env_remove("RUSTUP_TOOLCHAIN");
    command
}

fn nightly_rust_src() -> Result<()> {
    let toolchains = output(rustup().args(["toolchain", "list"]))?;
    if !toolchains.lines().any(|line| line.starts_with("nightly")) {
        println!("setup: installing the nightly toolchain (the XDP program needs it)");
        run_cmd(rustup().args(["toolchain", "install", "nightly", "--profile", "minimal"]))?;
    }
    let components =
        output(rustup().args(["component", "list", "--toolchain", "nightly", "--installed"]))?;
    if components.lines().any(|line| line.starts_with("rust-src")) {
        println!("setup: nightly rust-src present");
    } else {
        println!("setup: adding rust-src to nightly (for -Z build-std=core)");
        run_cmd(rustup().args(["component", "add", "rust-src", "--toolchain", "nightly"]))?;
    }
    Ok(())
}

/// Facts about the nightly rustc that bpf-linker must match.
struct NightlyLlvm {
    major: String,
    /// The real shared library in the sysroot (named by its SONAME).
    library: PathBuf,
    /// Identifies the nightly build, so a new nightly gets a new prefix.
    commit: String,
}

fn nightly_llvm() -> Result<NightlyLlvm> {
    let version = output(rustup().args(["run", "nightly", "rustc", "-vV"]))?;
    let field = |name: &str| {
        version
            .lines()
            .find_map(|line| line.strip_prefix(name))
            .map(str::trim)
            .map(str::to_owned)
    };
    let llvm = field("LLVM version:").context("`rustc +nightly -vV` printed no LLVM version")?;
    let major = llvm.split('.').next().unwrap_or_default().to_owned();
    let commit = field("commit-hash:").unwrap_or_else(|| "unknown".into());
    let sysroot = output(rustup().args(["run", "nightly", "rustc", "--print", "sysroot"]))?;
    let lib_dir = Path::new(sysroot.trim()).join("lib");
    // Two candidates exist: `libLLVM-N-rust-*.so` (a linker script) and
    // `libLLVM.so.N.M-rust-*` (the ELF library, named by its SONAME).
    let library = std::fs::read_dir(&lib_dir)
        .with_context(|| format!("reading {}", lib_dir.display()))?
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .find(|path| {
            path.file_name()
                .and_then(|name| name.to_str())
                .is_some_and(|name| name.starts_with("libLLVM.so."))
        })
        .with_context(|| format!("no libLLVM.so.* in {}", lib_dir.display()))?;
    Ok(NightlyLlvm {
        major,
        library,
        commit,
    })
}

fn home() -> PathBuf {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/root"))
}

fn bpf_linker_works() -> bool {
    Command::new("bpf-linker")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|status| status.success())
}

fn bpf_linker() -> Result<()> {
    let llvm = nightly_llvm()?;
    // The installed binary's RUNPATH points into this prefix: it must last.
    let short_commit: String = llvm.commit.chars().take(12).collect();
    let prefix = home()
        .join(".cache/gateway-xtask")
        .join(format!("llvm-{}-{short_commit}", llvm.major));
    let stamp = prefix.join("bpf-linker.installed");
    if bpf_linker_works() && stamp.exists() {
        println!("setup: bpf-linker present (LLVM {})", llvm.major);
        return Ok(());
    }
    let lib = prefix.join("lib");
    std::fs::create_dir_all(&lib).with_context(|| format!("creating {}", lib.display()))?;
    let soname = llvm
        .library
        .file_name()
        .context("libLLVM path has no file name")?;
    for link in [lib.join("libLLVM.so"), lib.join(soname)] {
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(&llvm.library, &link)
            .with_context(|| format!("linking {}", link.display()))?;
    }
    println!(
        "setup: building bpf-linker {BPF_LINKER_VERSION} against nightly's LLVM {} (about 90 s)",
        llvm.major
    );
    run_cmd(
        Command::new("cargo")
            .env_remove("RUSTUP_TOOLCHAIN")
            .env("LLVM_PREFIX", &prefix)
            .args([
                "install",
                "bpf-linker",
                "--locked",
                "--force",
                "--version",
                BPF_LINKER_VERSION,
                "--no-default-features",
                "--features",
            ])
            .arg(format!("llvm-{}", llvm.major)),
    )?;
    std::fs::write(&stamp, b"").with_context(|| format!("writing {}", stamp.display()))?;
    Ok(())
}

pub fn have(binary: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|path| {
        std::env::split_paths(&path)
            .chain(["/usr/sbin".into(), "/sbin".into()])
            .any(|dir| dir.join(binary).is_file())
    })
}

/// The Debian packages of the `(binary, package)` pairs whose binary is
/// not installed.
pub fn missing_packages<'a>(wanted: &[(&str, &'a str)]) -> Vec<&'a str> {
    wanted
        .iter()
        .filter(|(binary, _)| !have(binary))
        .map(|(_, package)| *package)
        .collect()
}

/// Installs the packages of the pairs whose binary is missing; without
/// root, fails naming them and `needed_by` (and `or`, another way out).
pub fn require_packages(wanted: &[(&str, &str)], needed_by: &str, or: &str) -> Result<()> {
    let missing = missing_packages(wanted);
    if missing.is_empty() {
        return Ok(());
    }
    if !is_root() {
        anyhow::bail!(
            "{needed_by} needs the Debian packages {}: install them as root \
             (`apt-get install -y {}`){or}",
            missing.join(" "),
            missing.join(" ")
        );
    }
    println!("{needed_by}: installing {missing:?}");
    apt_install(&missing)
}

fn debian_packages() -> Result<()> {
    let missing = missing_packages(&DEBIAN_PACKAGES);
    if missing.is_empty() {
        println!("setup: the Debian packages the tests use are present");
        return Ok(());
    }
    if !is_root() {
        println!(
            "setup: missing Debian packages {missing:?}; install them as root \
             (`apt-get install -y {}`) to run the kernel tests",
            missing.join(" ")
        );
        return Ok(());
    }
    println!("setup: installing Debian packages {missing:?}");
    apt_install(&missing)
}

/// `apt-get update` then install `packages`, non-interactively (needs root).
pub fn apt_install(packages: &[&str]) -> Result<()> {
    run_cmd(Command::new("apt-get").args(["update", "-qq"]))?;
    run_cmd(
        Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(packages)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}
