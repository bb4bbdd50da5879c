//! Bad configuration and store files: nothing a config or a concurrent CLI run does may panic the gateway or leak a key hash.
#![allow(clippy::unwrap_used, reason = "tests: a panic is the failure report")]

use std::{
    io::Read,
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

use gateway_tests::{
    fs::TempDir,
    gateway::{gateway_bin, minimal_config, Gateway},
    http::pause,
};

/// A config file in `dir`: the harness's base config (key store refresh
/// replaced by `refresh`) with `extra` appended.
fn config_with(dir: &TempDir, name: &str, refresh: &str, extra: &str) -> PathBuf {
    let base = std::fs::read_to_string(minimal_config(dir)).unwrap();
    let text = base.replace("refresh = \"100ms\"", &format!("refresh = {refresh}"));
    assert_ne!(text, base, "the base config sets keys.refresh");
    dir.write(name, &(text + extra))
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Bad values for several sections: `check-config` refuses each with a
/// message naming the key, and exits non-zero without a panic.
#[test]
fn check_config_names_the_bad_key_and_never_panics() {
    let dir = TempDir::new("attack-config");
    let pool = "[[upstreams]]\nname = \"app\"\nservers = [\"127.0.0.1:9\"]\n";
    let cases = [
        ("\"0s\"", String::new(), "keys.refresh"),
        (
            "\"1s\"",
            "[limits]\nmax_connections = 0\n".into(),
            "limits.max_connections",
        ),
        (
            "\"1s\"",
            "[limits]\nrequest_timeout = \"0ms\"\n".into(),
            "limits.request_timeout",
        ),
        (
            "\"1s\"",
            "[[tiers]]\nname = \"gold\"\nrequests = 10\nwindow = \"0s\"\n".into(),
            "tiers[0].window",
        ),
        (
            "\"1s\"",
            format!("{pool}[upstreams.health_check]\npath = \"/\"\ninterval = \"0s\"\n"),
            "upstreams[0].health_check.interval",
        ),
        (
            "\"1s\"",
            format!("{pool}[upstreams.overload]\nerror_rate = 1.5\ninterval = \"0s\"\n"),
            "upstreams[0].overload.error_rate",
        ),
        ("\"1s\"", "[xdp]\nmax_bans = 0\n".into(), "xdp.max_bans"),
    ];
    for (index, (refresh, extra, key)) in cases.iter().enumerate() {
        let file = config_with(&dir, &format!("bad-{index}.toml"), refresh, extra);
        let output = Command::new(gateway_bin())
            .arg("check-config")
            .arg(&file)
            .output()
            .unwrap();
        let stderr = stderr(&output);
        assert!(!output.status.success(), "{key}: accepted: {stderr}");
        assert!(stderr.contains(&format!("{key}: ")), "{key}: {stderr}");
        assert!(!stderr.contains("panicked"), "{key}: {stderr}");
    }
}

/// `gateway run` on `config` with `args`: its exit status and stderr,
/// killed (and reported as still running) after 15 s.
fn run_briefly(config: &Path, args: &[&str]) -> (Option<std::process::ExitStatus>, String) {
    let mut child = Command::new(gateway_bin())
        .args(["run", "--no-xdp", "--config"])
        .arg(config)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break Some(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        pause(Duration::from_millis(50));
    };
    let mut text = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut text)
        .unwrap();
    (status, text)
}

/// `keys.refresh = "0s"` used to pass and then panic the key-refresh task
/// (`tokio::time::interval` of zero) in a gateway that kept running: now
/// `run` exits with the key's name.
#[test]
fn run_with_a_zero_interval_exits_with_a_clear_error() {
    let dir = TempDir::new("attack-config");
    let file = config_with(&dir, "zero.toml", "\"0s\"", "");
    let (status, stderr) = run_briefly(&file, &[]);
    assert!(!stderr.contains("panicked"), "{stderr}");
    let status = status.unwrap_or_else(|| panic!("still running after 15 s: {stderr}"));
    assert!(!status.success(), "{stderr}");
    assert!(
        stderr.contains("keys.refresh: must be at least 1ms"),
        "{stderr}"
    );
}

/// The command line's overrides are checked like the file.
#[test]
fn run_checks_command_line_overrides_like_the_file() {
    let dir = TempDir::new("attack-config");
    let file = config_with(&dir, "ok.toml", "\"1s\"", "");
    let (status, stderr) = run_briefly(&file, &["--syn-burst", "0"]);
    assert!(!stderr.contains("panicked"), "{stderr}");
    let status = status.unwrap_or_else(|| panic!("still running after 15 s: {stderr}"));
    assert!(!status.success(), "{stderr}");
    assert!(stderr.contains("xdp.default_syn_burst"), "{stderr}");
}

/// Waits for `child` at most until `deadline`, killing it after.
fn wait_until(mut child: std::process::Child, deadline: Instant) -> Output {
    while Instant::now() < deadline {
        if child.try_wait().unwrap().is_some() {
            return child.wait_with_output().unwrap();
        }
        pause(Duration::from_millis(20));
    }
    let _ = child.kill();
    child.wait_with_output().unwrap()
}

/// Eight `keys bootstrap` processes at once on one new store (they used
/// to check for an admin and create one in two transactions): exactly one
/// makes an admin, the others are told one exists, and the store holds
/// one admin client.
#[test]
fn concurrent_bootstraps_make_exactly_one_admin() {
    let dir = TempDir::new("attack-bootstrap");
    let config = minimal_config(&dir);
    let runs: Vec<_> = (0..8)
        .map(|_| {
            Command::new(gateway_bin())
                .args(["keys", "bootstrap", "--json", "--config"])
                .arg(&config)
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    let outputs: Vec<Output> = runs
        .into_iter()
        .map(|run| wait_until(run, deadline))
        .collect();
    let created = outputs.iter().filter(|o| o.status.success()).count();
    for output in outputs.iter().filter(|o| !o.status.success()) {
        let stderr = stderr(output);
        assert!(stderr.contains("admin client exists"), "{stderr}");
    }
    let statuses: Vec<_> = outputs.iter().map(|o| o.status).collect();
    assert_eq!(created, 1, "{statuses:?}");
    let list = Command::new(gateway_bin())
        .args(["keys", "list", "--json", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    assert!(list.status.success(), "{}", stderr(&list));
    let list: serde_json::Value = serde_json::from_slice(&list.stdout).unwrap();
    let admins = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|client| client["is_admin"] == true)
        .count();
    assert_eq!(admins, 1, "{list}");
}

fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    let metadata = std::fs::metadata(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    metadata.permissions().mode() & 0o777
}

/// Under the usual umask (022), every file holding key hashes, signing
/// keys or audit records is owner-only: the key store and its WAL and
/// shared-memory files, the audit log, the token signing keys and the
/// self-signed TLS key. A store left readable by an older version is
/// narrowed at start.
#[test]
fn store_audit_and_key_files_are_owner_only() {
    // The usual default, made explicit: the gateway must not rely on a
    // stricter one. The test's children inherit it.
    // SAFETY: umask has no preconditions.
    unsafe { libc::umask(0o022) };
    let builder = Gateway::builder("[[listeners]]\naddress = \"127.0.0.1:0\"\n[listeners.tls]\n");
    builder.create_key("gold");
    let store = builder.config.with_file_name("keys.db");
    assert_eq!(mode(&store), 0o600, "keys create made the store");
    std::fs::set_permissions(&store, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
    let gateway = builder.start();
    let state = &gateway.state_dir;
    let files = [
        store.clone(),
        store.with_file_name("keys.db-wal"),
        store.with_file_name("keys.db-shm"),
        state.join("audit.log"),
        state.join("token-keys.json"),
        state.join("self-signed.key"),
    ];
    for file in &files {
        assert_eq!(
            mode(file) & 0o077,
            0,
            "{} is {:o}",
            file.display(),
            mode(file)
        );
    }
}
