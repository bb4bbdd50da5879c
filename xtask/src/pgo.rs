//! The production build, optimised from a profile of the gateway at work
//! (LLVM's profile-guided optimisation): an instrumented build serves a
//! short training load, and the real build lays out, inlines and splits
//! hot from cold code by what that load ran. The load is the traffic the
//! gateway is for: HTTP/1.1 with rotating API keys, TLS, HTTP/2, small
//! POST bodies, unknown keys (401) and a client over its limit (429),
//! from wrk and h2load against a local upstream.
//!
//! The profile is named after the SHA-256 of the instrumented binary and of
//! this training, so an unchanged source trains once and rebuilds nothing. `--no-pgo` builds
//! without it.
use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::{bail, ensure, Context, Result};
use sha2::{Digest, Sha256};

use crate::bench::{
    keys,
    procs::{free_port, output_within, Running},
    scratch,
    upstream::Upstream,
};
use crate::{cargo, run_cmd, setup, target_dir};

/// API keys the HTTP/1.1 and TLS loads rotate through.
const KEYS: usize = 1_000;

/// Builds the instrumented gateway, trains it (once per instrumented
/// binary), builds the optimised one; returns its path.
pub(crate) fn build() -> Result<PathBuf> {
    let host = host_triple()?;
    let profdata = llvm_profdata(&host)?;
    let dir = target_dir().join("pgo");
    let raw = dir.join("raw");
    let instrumented = build_with(
        &dir.join("train"),
        &host,
        &format!("-Cprofile-generate={}", raw.display()),
    )?;
    let profile = dir.join(format!("gateway-{}.profdata", profile_name(&instrumented)?));
    if !profile.exists() {
        remove_dir_if_present(&raw)?;
        train(&instrumented).context("the PGO training run")?;
        merge(&profdata, &raw, &profile)?;
        remove_other_profiles(&dir, &profile)?;
    }
    let built = build_with(
        &target_dir(),
        &host,
        &format!("-Cprofile-use={}", profile.display()),
    )?;
    // Where `--release` has always put it (target/production/gateway).
    let production = target_dir().join("production");
    std::fs::create_dir_all(&production)?;
    let to = production.join("gateway");
    // A running copy keeps the old inode; the new one takes the name.
    let staged = production.join(".gateway.pgo");
    std::fs::copy(&built, &staged).with_context(|| format!("copying {}", built.display()))?;
    std::fs::rename(&staged, &to)?;
    println!("pgo: {} (profile {})", to.display(), profile.display());
    Ok(to)
}

/// `cargo build --profile production --target <host>` with `rustflags`
/// into `target_dir`. `--target` keeps the flags off build scripts and
/// proc macros, which run on the build machine only. The XDP object is
/// named, as `build_ebpf` left it in the workspace's target directory.
fn build_with(into: &Path, host: &str, rustflags: &str) -> Result<PathBuf> {
    let xdp = target_dir().join("bpfel-unknown-none/release/gateway-xdp");
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

/// The toolchain's host triple (`rustc -vV`).
fn host_triple() -> Result<String> {
    let out = Command::new("rustc")
        .arg("-vV")
        .current_dir(crate::workspace_root())
        .output()
        .context("running rustc -vV")?;
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .find_map(|line| line.strip_prefix("host: "))
        .map(str::to_owned)
        .context("rustc -vV printed no host")
}

/// The toolchain's own `llvm-profdata` (rustup's `llvm-tools`, whose LLVM
/// is rustc's), added when missing.
fn llvm_profdata(host: &str) -> Result<PathBuf> {
    let out = Command::new("rustc")
        .args(["--print", "sysroot"])
        .current_dir(crate::workspace_root())
        .output()
        .context("running rustc --print sysroot")?;
    let sysroot = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    let tool = Path::new(&sysroot)
        .join("lib/rustlib")
        .join(host)
        .join("bin/llvm-profdata");
    if !tool.exists() {
        println!("pgo: adding rustup's llvm-tools (llvm-profdata)");
        run_cmd(
            Command::new("rustup")
                .args(["component", "add", "llvm-tools"])
                .current_dir(crate::workspace_root()),
        )
        .context("PGO needs llvm-profdata; build with --no-pgo to go without")?;
    }
    ensure!(tool.exists(), "no llvm-profdata at {}", tool.display());
    Ok(tool)
}

/// The first 16 hex digits of the SHA-256 of the instrumented binary and
/// of this file: a change to the source or to the training retrains.
fn profile_name(instrumented: &Path) -> Result<String> {
    let bytes = std::fs::read(instrumented)
        .with_context(|| format!("reading {}", instrumented.display()))?;
    let digest = Sha256::new()
        .chain_update(&bytes)
        .chain_update(include_str!("pgo.rs"))
        .finalize();
    Ok(digest.iter().take(8).map(|b| format!("{b:02x}")).collect())
}

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
    for entry in std::fs::read_dir(dir)?.flatten() {
        let path = entry.path();
        let profile = path.extension().is_some_and(|e| e == "profdata");
        if profile && path != keep {
            std::fs::remove_file(&path)?;
        }
    }
    Ok(())
}

/// `llvm-profdata merge` of every raw profile the training wrote.
fn merge(tool: &Path, raw: &Path, profile: &Path) -> Result<()> {
    let written = std::fs::read_dir(raw)
        .map(|dir| dir.flatten().count())
        .unwrap_or(0);
    ensure!(
        written > 0,
        "the instrumented gateway wrote no profile into {}",
        raw.display()
    );
    run_cmd(
        Command::new(tool)
            .arg("merge")
            .arg("-o")
            .arg(profile)
            .arg(raw),
    )
}

/// The instrumented gateway under each training load in turn; stopped by
/// SIGTERM, so it exits normally and writes its profile.
fn train(gateway: &Path) -> Result<()> {
    let missing: Vec<&str> = [
        ("wrk", "wrk"),
        ("h2load", "nghttp2-client"),
        ("curl", "curl"),
    ]
    .into_iter()
    .filter(|(binary, _)| !setup::have(binary))
    .map(|(_, package)| package)
    .collect();
    if !missing.is_empty() {
        if !setup::is_root() {
            bail!(
                "PGO training needs {missing:?} (apt-get install -y ...), or build with --no-pgo"
            );
        }
        setup::apt_install(&missing)?;
    }
    let dir = scratch::dir("gateway-pgo-")?;
    let upstream = Upstream::start()?;
    let (port, tls_port) = (free_port()?, free_port()?);
    let config = dir.path().join("gateway.toml");
    std::fs::write(
        &config,
        config_text(dir.path(), port, tls_port, upstream.port),
    )?;
    let gold = keys::create(gateway, &config, "pgo", "gold", KEYS)?;
    let bronze = keys::create(gateway, &config, "pgo-limited", "bronze", 1)?;
    let keys_file = dir.path().join("keys.txt");
    let lines: Vec<&str> = gold.iter().map(|k| k.api_key.as_str()).collect();
    std::fs::write(&keys_file, lines.join("\n") + "\n")?;
    let get = lua(dir.path(), "get.lua", &keys_file, "GET", "")?;
    let post = lua(dir.path(), "post.lua", &keys_file, "POST", &"x".repeat(600))?;

    let mut command = Command::new(gateway);
    // Its start-up and shutdown lines would bury the build's output.
    command
        .args(["run", "--config"])
        .arg(&config)
        .env("RUST_LOG", "warn,rustls=error");
    let process = Running::listening(command, tls_port)?;
    let http = format!("http://127.0.0.1:{port}/train");
    let https = format!("https://127.0.0.1:{tls_port}/train");
    wrk(&["-c32", "-d5s", "-s"], &get, &http, Expect::Ok)?;
    wrk(&["-c8", "-d1s", "-s"], &post, &http, Expect::Ok)?;
    wrk(&["-c32", "-d3s", "-s"], &get, &https, Expect::Ok)?;
    h2load(&gold[0].api_key, &https)?;
    let bearer = format!("authorization: Bearer {}", token(port, &gold[1].api_key)?);
    let jwt = format!("http://127.0.0.1:{port}/jwt/train");
    wrk(
        &["-c16", "-d2s", "-H", &bearer],
        Path::new(""),
        &jwt,
        Expect::Ok,
    )?;
    let unknown = "x-api-key: gw_0000000000000000_unknown";
    wrk(
        &["-c4", "-d1s", "-H", unknown],
        Path::new(""),
        &http,
        Expect::Refused,
    )?;
    let limited = format!("x-api-key: {}", bronze[0].api_key);
    wrk(
        &["-c4", "-d1s", "-H", &limited],
        Path::new(""),
        &http,
        Expect::Refused,
    )?;
    process.stop_within(Duration::from_secs(40))
}

/// The training gateway: HTTP and TLS listeners, its token endpoint, a JWT
/// route and an API-key one, an unlimited tier and one of ten requests a
/// minute; no XDP, admin API or guard (it would ban the 401 load's source
/// before it is done).
fn config_text(dir: &Path, port: u16, tls_port: u16, upstream: u16) -> String {
    format!(
        "state_dir = \"{dir}/state\"\n\
         [xdp]\nenabled = false\n[admin]\nenabled = false\n[guard]\nmode = \"off\"\n\
         [keys]\nstore = \"{dir}/keys.db\"\n\
         [tokens]\nenabled = true\naudience = \"gateway\"\nrate_limit = false\n\
         [[tiers]]\nname = \"gold\"\nrequests = 1000000000\nwindow = \"60s\"\nburst = 100000000\n\
         [[tiers]]\nname = \"bronze\"\nrequests = 10\nwindow = \"60s\"\nburst = 10\n\
         [[listeners]]\naddress = \"127.0.0.1:{port}\"\n\
         [[listeners]]\naddress = \"127.0.0.1:{tls_port}\"\n\
         [listeners.tls]\nnames = [\"localhost\", \"127.0.0.1\"]\n\
         [[upstreams]]\nname = \"app\"\nservers = [\"127.0.0.1:{upstream}\"]\n\
         [[routes]]\npath_prefix = \"/jwt/\"\nupstream = \"app\"\nauth = \"jwt\"\nrate_limit = true\n\
         [[routes]]\npath_prefix = \"/\"\nupstream = \"app\"\nauth = \"api_key\"\nrate_limit = true\n",
        dir = dir.display(),
    )
}

/// A JWT from the gateway's own token endpoint for the client of `key`
/// (client credentials, by curl).
fn token(port: u16, key: &str) -> Result<String> {
    let mut command = Command::new("curl");
    command
        .args(["-sS", "--max-time", "10", "--data"])
        .arg(format!("grant_type=client_credentials&client_secret={key}"))
        .arg(format!("http://127.0.0.1:{port}/oauth2/token"));
    let out = output_within(command, Duration::from_secs(15))?;
    let reply: serde_json::Value = serde_json::from_str(&out)
        .with_context(|| format!("the token endpoint answered {out:?}"))?;
    reply["access_token"]
        .as_str()
        .map(str::to_owned)
        .with_context(|| format!("no access_token in the token endpoint's answer {reply}"))
}

/// A wrk script sending `method` with `body`, rotating through the keys.
fn lua(dir: &Path, name: &str, keys: &Path, method: &str, body: &str) -> Result<PathBuf> {
    let path = dir.join(name);
    std::fs::write(
        &path,
        format!(
            "local keys = {{}}\nfor line in io.lines(\"{}\") do keys[#keys + 1] = line end\n\
             local i = 0\nrequest = function()\n  i = i % #keys + 1\n  \
             return wrk.format(\"{method}\", \"/train\", {{[\"x-api-key\"] = keys[i]}}, \"{body}\")\nend\n",
            keys.display()
        ),
    )?;
    Ok(path)
}

/// What a training load's answers must be.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Expect {
    /// Every answer a 2xx.
    Ok,
    /// Some answers not 2xx (401 for an unknown key, 429 over a limit).
    Refused,
}

/// One wrk run (`script` after `args` when it is not empty); fails unless
/// it made requests and they were answered as `expect` says, so a broken
/// route cannot train the build on error paths alone.
fn wrk(args: &[&str], script: &Path, url: &str, expect: Expect) -> Result<()> {
    let mut command = Command::new("wrk");
    command.args(["-t1", "--timeout", "2s"]).args(args);
    if !script.as_os_str().is_empty() {
        command.arg(script);
    }
    command.arg(url);
    let out = output_within(command, Duration::from_secs(30))?;
    ensure!(
        answered_as(&out, expect),
        "wrk {args:?} {url}: not what training needs:\n{out}"
    );
    Ok(())
}

/// Whether wrk's report shows requests answered as `expect` says.
fn answered_as(wrk_out: &str, expect: Expect) -> bool {
    let requests = crate::bench::wrk::requests(wrk_out).unwrap_or(0.0);
    let refused = wrk_out.contains("Non-2xx or 3xx responses");
    requests > 0.0 && refused == (expect == Expect::Refused)
}

/// HTTP/2 over TLS, many streams per connection; every answer a 2xx.
fn h2load(key: &str, url: &str) -> Result<()> {
    let requests = 100_000;
    let mut command = Command::new("h2load");
    command
        .args(["-c16", "-m16", "-n", &requests.to_string(), "-H"])
        .arg(format!("x-api-key: {key}"))
        .arg(url);
    let out = output_within(command, Duration::from_secs(60))?;
    let ok = format!("status codes: {requests} 2xx");
    ensure!(
        out.contains(&ok),
        "h2load {url}: not every answer a 2xx:\n{out}"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL_OK: &str = "Running 1s test @ http://127.0.0.1:1/train\n  \
        52104 requests in 1.00s, 20.1MB read\nRequests/sec:  52000.10\n";
    const SOME_REFUSED: &str = "  4431 requests in 1.00s, 1.1MB read\n  \
        Non-2xx or 3xx responses: 4421\nRequests/sec:   4431.00\n";

    #[test]
    fn a_load_counts_only_when_answered_as_expected() {
        assert!(answered_as(ALL_OK, Expect::Ok));
        assert!(!answered_as(ALL_OK, Expect::Refused));
        assert!(answered_as(SOME_REFUSED, Expect::Refused));
        assert!(!answered_as(SOME_REFUSED, Expect::Ok));
        // Nothing answered (the gateway down, every socket refused).
        let none = "  0 requests in 1.00s, 0B read\n  Socket errors: connect 4\n";
        assert!(!answered_as(none, Expect::Ok));
        assert!(!answered_as(none, Expect::Refused));
        assert!(!answered_as("", Expect::Ok));
    }

    #[test]
    fn the_training_config_routes_jwts_before_keys() {
        let text = config_text(Path::new("/tmp/x"), 1001, 1002, 1003);
        for wanted in [
            "127.0.0.1:1001",
            "127.0.0.1:1002",
            "127.0.0.1:1003",
            "[tokens]",
        ] {
            assert!(text.contains(wanted), "{wanted} missing:\n{text}");
        }
        let jwt = text.find("path_prefix = \"/jwt/\"").unwrap();
        let keys = text.find("path_prefix = \"/\"").unwrap();
        assert!(jwt < keys, "{text}");
    }

    #[test]
    fn scripts_rotate_keys_and_carry_the_body() {
        let dir = scratch::dir("gateway-pgo-test-").unwrap();
        let keys = dir.path().join("keys.txt");
        let path = lua(dir.path(), "post.lua", &keys, "POST", "xyz").unwrap();
        let script = std::fs::read_to_string(path).unwrap();
        assert!(script.contains(&keys.display().to_string()), "{script}");
        assert!(
            script.contains("wrk.format(\"POST\", \"/train\""),
            "{script}"
        );
        assert!(script.contains("keys[i]}, \"xyz\")"), "{script}");
    }
}
