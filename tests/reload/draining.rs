//! A reload during a restart's overlap: the old gateway, once it has
//! handed its kernel path to the new one, refuses reloads (SIGHUP, and
//! `POST /v1/reload` on a connection it still holds: 503) and never
//! writes the kernel's maps; new admin connections all reach the new
//! gateway, which reloads.
use std::{
    io::{BufRead, BufReader, Read, Write},
    net::TcpStream,
    time::{Duration, Instant},
};

use gateway_tests::{
    gateway::{gateway_bin, signal_and_wait, Gateway, StderrLog},
    http::{pause, request_with_body, tiers_and_app, FakeUpstream},
    require_root, Topology,
};

use super::support::{hangup_process, policy_maps, ConfigFile};

const WITHIN: Duration = Duration::from_secs(20);

/// One request on a kept-alive connection: status, head (lower case), body.
fn exchange(
    reader: &mut BufReader<TcpStream>,
    method: &str,
    path: &str,
    key: &str,
) -> (u16, String, String) {
    let request = format!(
        "{method} {path} HTTP/1.1\r\nhost: admin\r\nauthorization: Bearer {key}\r\n\
         content-length: 0\r\n\r\n"
    );
    reader.get_mut().write_all(request.as_bytes()).unwrap();
    let (mut head, mut length) = (String::new(), 0);
    loop {
        let mut line = String::new();
        assert!(reader.read_line(&mut line).unwrap() > 0, "closed: {head}");
        if line.trim_end().is_empty() {
            break;
        }
        let line = line.to_ascii_lowercase();
        if let Some(value) = line.strip_prefix("content-length:") {
            length = value.trim().parse().unwrap();
        }
        head.push_str(&line);
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).unwrap();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (status, head, String::from_utf8(body).unwrap())
}

/// Waits (bounded) until `log` shows `line`.
fn wait_for(log: &StderrLog, line: &str) {
    let deadline = Instant::now() + WITHIN;
    while !log.text().contains(line) {
        assert!(Instant::now() < deadline, "no {line:?}:\n{}", log.text());
        pause(Duration::from_millis(20));
    }
}

#[test]
fn a_draining_gateway_refuses_reloads_and_leaves_the_new_gateways_kernel_policy() {
    if !require_root("a_draining_gateway_refuses_reloads_and_leaves_the_new_gateways_kernel_policy")
    {
        return;
    }
    let topology = Topology::new();
    let upstream = FakeUpstream::start(None);
    let body = tiers_and_app(upstream.addr) + "\n[xdp]\nallow = [\"10.1.0.0/16\"]\n";
    let builder = Gateway::builder(&body)
        .in_namespace(&topology.server)
        .xdp("8080")
        .capture_stderr();
    let admin_key = builder.create_key_with("gold", &["--admin"]);
    let mut gateway = builder.start();
    let admin = gateway.admin.unwrap();
    // A kept-alive admin connection to the old gateway, opened before the restart.
    let mut kept = topology
        .server
        .run(move || BufReader::new(TcpStream::connect_timeout(&admin, WITHIN).unwrap()));
    kept.get_mut().set_read_timeout(Some(WITHIN)).unwrap();
    assert_eq!(exchange(&mut kept, "GET", "/healthz", &admin_key).0, 200);
    let old_log = gateway.stderr_log();

    let mut old = gateway.start_successor();
    wait_for(&old_log, "handed the XDP pin root to the new gateway");
    let file = ConfigFile::of(&gateway, &body);
    // The new gateway's policy, as it wrote it.
    let new_policy = policy_maps(&gateway.pin_root);
    assert_eq!(gateway.status()["owner_pid"], gateway.pid().unwrap());

    // Another policy in the file, and SIGHUP to the old gateway: refused.
    let other = tiers_and_app(upstream.addr)
        + "\n[xdp]\nallow = [\"10.2.0.0/16\"]\nmode = \"monitor\"\ndefault_syn_rate = 9\n";
    file.write(&other);
    let outcome = hangup_process(old.id(), || old_log.text());
    // The kernel still holds the new gateway's policy, byte for byte.
    assert_eq!(policy_maps(&gateway.pin_root), new_policy, "{outcome}");
    assert!(
        outcome.contains("reload refused")
            && outcome.contains("draining")
            && outcome.contains("handed its kernel path"),
        "{outcome}"
    );
    // On its kept connection: 503, retry on a new connection.
    let (status, head, reply) = exchange(&mut kept, "POST", "/v1/reload", &admin_key);
    assert_eq!(status, 503, "{head}{reply}");
    assert!(reply.contains("\"error\":\"draining\""), "{reply}");
    assert!(
        head.contains("connection: close") && head.contains("retry-after: 1"),
        "{head}"
    );
    assert_eq!(policy_maps(&gateway.pin_root), new_policy);
    assert_eq!(gateway.status()["mode"], "enforce");
    wait_for(&old_log, "no longer accepting admin connections");

    // New admin connections reach the new gateway only: `gateway reload`
    // and a few more reloads all apply there.
    let url = format!("http://{admin}");
    let key = admin_key.clone();
    let (cli, replies) = topology.server.run(move || {
        let cli = std::process::Command::new(gateway_bin())
            .args(["reload", "--admin-url", &url])
            .env("GATEWAY_ADMIN_KEY", &key)
            .output()
            .unwrap();
        let auth = format!("Bearer {key}");
        let replies: Vec<u16> = (0..6)
            .map(|_| {
                let headers = [("authorization", auth.as_str())];
                request_with_body(admin, "POST", "/v1/reload", &headers, "").status
            })
            .collect();
        (cli, replies)
    });
    assert!(cli.status.success(), "{cli:?}");
    assert!(
        String::from_utf8_lossy(&cli.stdout).contains("changed xdp"),
        "{cli:?}"
    );
    assert_eq!(replies, [200; 6]);
    assert_eq!(gateway.status()["mode"], "monitor");
    assert_eq!(gateway.status()["default_budget"]["syn_per_sec"], 9);
    let admin_requests = |text: &str| {
        (text.lines())
            .filter(|l| l.contains("admin request") && l.contains("/v1/reload"))
            .count()
    };
    // The old one saw only the request on its kept connection.
    assert_eq!(admin_requests(&old_log.text()), 1, "{}", old_log.text());
    assert_eq!(admin_requests(&gateway.stderr_text()), 7);

    let status = signal_and_wait(&mut old, libc::SIGTERM, WITHIN).expect("the old gateway exits");
    assert!(status.success(), "the old gateway exited with {status}");
    assert_eq!(gateway.status()["mode"], "monitor");
    assert_eq!(gateway.status()["owner_pid"], gateway.pid().unwrap());
}
