//! The first run end to end: the embedded defaults exactly as `cargo xtask
//! run` uses them (ports 8080, 9000 and 9901 on `lo`, XDP on `lo`), inside a
//! network namespace of the test's own so nothing on the host is touched,
//! and every line of the "try it" block executed as a newcomer would.
use std::{
    path::PathBuf,
    process::{Command, Output},
    time::{Duration, Instant},
};

use gateway_tests::{fs::TempDir, gateway_bin, http::pause, require_root, NetNs};

use super::*;

#[test]
fn the_default_upstream_is_read_from_the_embedded_defaults() {
    assert_eq!(
        default_upstream().unwrap(),
        "127.0.0.1:9000".parse().unwrap()
    );
}

#[test]
fn ready_lines_give_the_urls_and_the_pin_root() {
    let mut ready = Ready::default();
    assert!(!ready.see("listening: http://127.0.0.1:8080"));
    assert!(!ready.see("listening: https://127.0.0.1:8443"));
    assert!(!ready.see("admin: http://127.0.0.1:9901"));
    assert!(ready.see(
        "ready: XDP attached to lo in skb mode, Enforce, ports [8080], maps pinned at /sys/fs/bpf/x"
    ));
    assert_eq!(ready.listen.as_deref(), Some("http://127.0.0.1:8080"));
    assert_eq!(ready.admin.as_deref(), Some("http://127.0.0.1:9901"));
    assert_eq!(ready.pin_root, Some(PathBuf::from("/sys/fs/bpf/x")));
}

#[test]
fn a_run_that_never_got_ready_leaves_the_store_fresh() {
    let dir = TempDir::new("demo-forget");
    let gateway = gateway_bin();
    let (client, _key) = demo_key(&gateway, &dir.path).unwrap().unwrap();
    assert!(
        demo_key(&gateway, &dir.path).unwrap().is_none(),
        "not fresh any more"
    );
    let demo = Demo {
        upstream: None,
        key: None,
        client: Some(client),
        dir: dir.path.clone(),
    };
    demo.forget(&gateway).unwrap();
    assert!(
        demo_key(&gateway, &dir.path).unwrap().is_some(),
        "fresh again"
    );
}

/// The gateway started by the test: stopped, and its pins removed (which
/// detaches its program), even when the test fails.
struct Stop {
    running: Option<Running>,
    pin_root: PathBuf,
}

impl Drop for Stop {
    fn drop(&mut self) {
        if let Some(mut running) = self.running.take() {
            let pid = libc::pid_t::try_from(running.child.id()).unwrap_or(0);
            // SAFETY: signalling our own child.
            unsafe { libc::kill(pid, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(10);
            while running.child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                pause(Duration::from_millis(20));
            }
            let _ = running.child.kill();
            let _ = running.wait();
        }
        if let Ok(entries) = std::fs::read_dir(&self.pin_root) {
            for entry in entries.flatten() {
                let _ = std::fs::remove_file(entry.path());
            }
        }
        let _ = std::fs::remove_dir(&self.pin_root);
    }
}

/// `script` run by `sh` inside `ns`, after the block's `KEY=` line, as
/// pasted into one shell.
fn paste(ns: &NetNs, key_line: &str, script: &str) -> Output {
    let script = format!("{key_line}\n{script}");
    let output = ns.run(move || Command::new("sh").arg("-c").arg(&script).output().unwrap());
    assert!(
        output.status.success(),
        "failed ({}): {}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

#[test]
fn first_run_prints_lines_that_work_and_only_on_a_fresh_store() {
    if !require_root("first_run_prints_lines_that_work_and_only_on_a_fresh_store") {
        return;
    }
    let ns = NetNs::new("gwdemo");
    let dir = TempDir::new("demo");
    let gateway = gateway_bin();
    let pin_root = PathBuf::from("/sys/fs/bpf").join(format!("gwdemo{}", std::process::id()));

    let (bin, cwd) = (gateway.clone(), dir.path.clone());
    let demo = ns.run(move || prepare(&bin, &cwd)).unwrap();
    assert!(
        demo.upstream.is_some(),
        "127.0.0.1:9000 is free in a new namespace"
    );
    let key = demo.key.clone().expect("a fresh store gets a demo key");

    // `cargo xtask run`'s command, with a pin root of the test's own.
    let mut command = Command::new(&gateway);
    command
        .args(["run", "--interface", "lo", "--pin-root"])
        .arg(&pin_root)
        .current_dir(&dir.path);
    let running = ns.run(move || spawn(command)).unwrap();
    let block = announcement(&demo, &running.ready, &gateway);
    let _stop = Stop {
        running: Some(running),
        pin_root: pin_root.clone(),
    };
    println!("{block}");

    let lines: Vec<&str> = block.lines().filter_map(|l| l.strip_prefix("  ")).collect();
    let [key_line, first, again, status, ban, dump, metrics] = lines[..] else {
        panic!("expected seven command lines in\n{block}");
    };
    assert_eq!(key_line, format!("KEY={key}"));
    assert_eq!(block.matches(&key).count(), 1, "the key is printed once");

    // A 200 from the demo upstream, which shows the identity the gateway set.
    let reply = String::from_utf8(paste(&ns, key_line, first).stdout).unwrap();
    assert!(reply.starts_with("HTTP/1.1 200"), "{reply}");
    let body: serde_json::Value =
        serde_json::from_str(reply.lines().last().unwrap_or_default()).unwrap();
    assert_eq!(body["client_tier"], "bronze", "{body}");
    assert!(
        body["client_id"].as_str().unwrap().starts_with("cl_"),
        "{body}"
    );
    assert_eq!(body["path"], "/api/hello");
    assert!(!reply.contains(&key), "the upstream never sees the key");

    // The loop: 200s, then 429s, every answer with the rate-limit headers.
    let looped = String::from_utf8(paste(&ns, key_line, again).stdout).unwrap();
    let statuses: Vec<&str> = (looped.lines())
        .filter(|l| l.starts_with("HTTP/"))
        .collect();
    assert_eq!(statuses.len(), LOOP, "{looped}");
    assert!(statuses[0].starts_with("HTTP/1.1 200"), "{looped}");
    assert!(statuses[LOOP - 1].starts_with("HTTP/1.1 429"), "{looped}");
    // Header names as hyper writes them (lower case); the grep is -i.
    let after_429 = looped[looped.find("HTTP/1.1 429").unwrap_or(0)..].to_ascii_lowercase();
    for header in [
        "ratelimit-policy: \"bronze\";q=10;w=60",
        "ratelimit: ",
        "retry-after: ",
    ] {
        assert!(
            after_429.contains(header),
            "no {header} with the 429 in\n{looped}"
        );
    }

    // The kernel lines: XDP attached to lo, the pinned ban map readable.
    let status = String::from_utf8(paste(&ns, key_line, status).stdout).unwrap();
    assert!(status.contains("lo"), "{status}");
    paste(&ns, key_line, ban);
    let dump = String::from_utf8(paste(&ns, key_line, dump).stdout).unwrap();
    assert!(
        dump.contains("banned_until_ns"),
        "the ban, fields by name:\n{dump}"
    );
    // The metrics line shows the 429s by tier.
    let metrics = String::from_utf8(paste(&ns, key_line, metrics).stdout).unwrap();
    assert!(
        metrics.contains("gateway_rate_limited_total{tier=\"bronze\"} 2")
            || metrics.contains("gateway_rate_limited_total{tier=\"bronze\"} 3"),
        "{metrics}"
    );

    // A second run on the same store: no key, no block. The first run's
    // upstream still holds 127.0.0.1:9000, so this one says so and goes on.
    let (bin, cwd) = (gateway.clone(), dir.path.clone());
    let second = ns.run(move || prepare(&bin, &cwd)).unwrap();
    assert!(second.upstream.is_none());
    assert!(second.key.is_none());
    let ready = Ready::default();
    let note = announcement(&second, &ready, &gateway);
    assert!(!note.contains("curl") && !note.contains("KEY="), "{note}");
}
