//! A banned source stays out, without XDP too (found by an attack): a
//! WebSocket tunnel it opened before the ban was spliced on, bytes reaching
//! the upstream.
#![allow(clippy::unwrap_used, reason = "tests: a panic is the failure report")]

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    sync::atomic::Ordering,
    time::{Duration, Instant},
};

use gateway_tests::{
    gateway::Gateway,
    http::{get_from, pause, tiers_and_app, EchoUpgrade},
};

/// Three refused keys ban a source for a minute; `/ws/` is open and goes
/// to `upstream`, `/api/` needs a key. Tunnels idle out only after 60 s.
fn guarded(upstream: SocketAddr) -> Gateway {
    Gateway::builder(&format!(
        "[limits]\ntunnel_idle_timeout = \"60s\"\n\n{}\n\
         [[routes]]\npath_prefix = \"/ws/\"\nupstream = \"app\"\nauth = \"none\"\n\n\
         [[routes]]\npath_prefix = \"/api/\"\nupstream = \"app\"\n\n\
         [guard]\nauth_failures = 3\nauth_failure_window = \"60s\"\nauth_failure_ban = \"60s\"\n",
        tiers_and_app(upstream)
    ))
    .start()
}

/// Guesses keys from 127.0.0.1 until the proxy refuses it (bounded).
fn ban_loopback(gateway: &Gateway) {
    let source = "127.0.0.1".parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    for i in 0.. {
        let key = format!("gk_guess{i:04}_x");
        let reply = get_from(
            source,
            gateway.addr,
            "/api/x",
            &[("x-api-key", &key)],
            Duration::from_secs(2),
        );
        if reply.map_or(true, |r| r.status == 403) {
            return;
        }
        assert!(Instant::now() < deadline, "never banned");
        pause(Duration::from_millis(20));
    }
}

#[test]
fn a_tunnel_opened_before_its_source_is_banned_is_closed() {
    let echo = EchoUpgrade::start();
    let gateway = guarded(echo.addr);
    let mut tunnel = TcpStream::connect(gateway.addr).unwrap();
    tunnel
        .set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    tunnel
        .write_all(
            b"GET /ws/chat HTTP/1.1\r\nhost: gw\r\nupgrade: websocket\r\nconnection: Upgrade\r\n\
              sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\nsec-websocket-version: 13\r\n\r\n",
        )
        .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(tunnel.read(&mut byte).unwrap(), 1, "closed mid-head");
        head.push(byte[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    tunnel.write_all(b"ping").unwrap();
    let mut echoed = [0u8; 4];
    tunnel.read_exact(&mut echoed).unwrap();
    assert_eq!(&echoed, b"ping");

    ban_loopback(&gateway);
    let banned = Instant::now();
    // Closed within about a second (the tunnel's check), not at its idle
    // timeout of 60 s; whatever the client sends meanwhile may be echoed.
    let _ = tunnel.write_all(b"after");
    let mut rest = Vec::new();
    let _ = tunnel.read_to_end(&mut rest);
    let closed_after = banned.elapsed();
    assert!(
        closed_after < Duration::from_secs(10),
        "closed after {closed_after:?}"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while !echo.closed.load(Ordering::SeqCst) {
        assert!(Instant::now() < deadline, "the upstream side stayed open");
        pause(Duration::from_millis(20));
    }
}
