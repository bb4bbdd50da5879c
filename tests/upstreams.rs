//! Upstream behaviour end to end: active health checks take a failing
//! server out of its pool and bring it back; WebSocket upgrades are proxied
//! after authentication.
#![allow(clippy::unwrap_used, reason = "tests: a panic is the failure report")]

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    thread,
    time::{Duration, Instant},
};

use gateway_tests::{
    gateway::Gateway,
    http::{EchoUpgrade, FakeUpstream},
};

fn pause(duration: Duration) {
    #[allow(clippy::disallowed_methods, reason = "sync test")]
    thread::sleep(duration);
}

fn probes(upstream: &FakeUpstream) -> usize {
    upstream
        .requests()
        .iter()
        .filter(|r| r.target == "/healthz")
        .count()
}

fn served(upstream: &FakeUpstream) -> usize {
    upstream.requests().len() - probes(upstream)
}

/// Waits until `upstream` has been probed `more` more times.
fn wait_for_probes(upstream: &FakeUpstream, more: usize) {
    let target = probes(upstream) + more;
    let deadline = Instant::now() + Duration::from_secs(10);
    while probes(upstream) < target {
        assert!(Instant::now() < deadline, "health checks stalled");
        pause(Duration::from_millis(20));
    }
}

#[test]
fn health_checks_take_a_failing_server_out_and_bring_it_back() {
    let a = FakeUpstream::start(None);
    let b = FakeUpstream::start(None);
    let gateway = Gateway::builder(&format!(
        r#"
[[upstreams]]
name = "app"
servers = ["{a}", "{b}"]
[upstreams.health_check]
path = "/healthz"
interval = "100ms"
timeout = "500ms"
unhealthy_threshold = 2
healthy_threshold = 2

[[routes]]
path_prefix = "/"
upstream = "app"
auth = "none"
"#,
        a = a.addr,
        b = b.addr
    ))
    .start();
    for _ in 0..4 {
        assert_eq!(gateway.get("/x", &[]).status, 200);
    }
    assert!(served(&a) >= 1 && served(&b) >= 1, "round robin uses both");

    b.set_status(503);
    wait_for_probes(&b, 3);
    let before = served(&b);
    for _ in 0..6 {
        assert_eq!(gateway.get("/x", &[]).status, 200, "only healthy a serves");
    }
    assert_eq!(served(&b), before, "b is out of the pool");

    b.set_status(200);
    wait_for_probes(&b, 3);
    for _ in 0..6 {
        assert_eq!(gateway.get("/x", &[]).status, 200);
    }
    assert!(served(&b) > before, "b is back in the pool");
}

fn upgrade(gateway: SocketAddr, extra: &str) -> (String, TcpStream) {
    let mut stream = TcpStream::connect(gateway).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        stream,
        "GET /ws/chat HTTP/1.1\r\nhost: gw\r\nupgrade: websocket\r\nconnection: Upgrade\r\n\
         sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\nsec-websocket-version: 13\r\n{extra}\r\n"
    )
    .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(
            stream.read(&mut byte).unwrap(),
            1,
            "connection closed mid-head"
        );
        head.push(byte[0]);
    }
    (String::from_utf8(head).unwrap(), stream)
}

#[test]
fn websocket_upgrades_are_proxied_after_authentication() {
    let EchoUpgrade {
        addr: echo, head, ..
    } = EchoUpgrade::start();
    let gateway = Gateway::builder(&format!(
        r#"
[[upstreams]]
name = "ws"
servers = ["{echo}"]

[[routes]]
path_prefix = "/ws/"
upstream = "ws"
auth = "api_key"
"#
    ));
    let key = gateway.create_key("gold");
    let gateway = gateway.start();

    let (refused, _) = upgrade(gateway.addr, "");
    assert!(refused.starts_with("HTTP/1.1 401"), "{refused}");

    let (accepted, mut stream) = upgrade(gateway.addr, &format!("x-api-key: {key}\r\n"));
    assert!(accepted.starts_with("HTTP/1.1 101"), "{accepted}");
    assert!(accepted.to_ascii_lowercase().contains("upgrade: websocket"));
    stream.write_all(b"ping through the gateway").unwrap();
    let mut echoed = [0u8; 24];
    stream.read_exact(&mut echoed).unwrap();
    assert_eq!(&echoed, b"ping through the gateway");

    let seen = head.lock().unwrap().clone();
    assert!(seen.contains("upgrade: websocket"), "{seen}");
    assert!(seen.contains("x-client-tier: gold"), "{seen}");
    assert!(
        !seen.contains(&key.to_ascii_lowercase()),
        "the key reached the upstream"
    );
}
