//! The kernel-event stream as an admin-API resource: bounded in followers
//! so it never takes every admin connection, and closed once its key no
//! longer admits it.
#![allow(clippy::unwrap_used, reason = "tests: a panic is the failure report")]

use std::io::Read;

use gateway_tests::{
    gateway::{Gateway, GatewayBuilder},
    netns::{Listener, Topology, CLIENT2_V4, CLIENT_V4},
    require_root,
};

#[path = "xdp_events/follow.rs"]
mod follow;

use follow::*;

/// Sends `GET path` on a new admin connection; the status code (0: the
/// connection was closed first) and the open connection.
fn admin_get(admin: std::net::SocketAddr, path: &str, key: &str) -> (u16, std::net::TcpStream) {
    use std::io::Write;
    let mut stream = std::net::TcpStream::connect_timeout(&admin, WITHIN).unwrap();
    stream.set_read_timeout(Some(WITHIN)).unwrap();
    let request =
        format!("GET {path} HTTP/1.1\r\nHost: admin\r\nAuthorization: Bearer {key}\r\n\r\n");
    let _ = stream.write_all(request.as_bytes());
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    // The status line, one byte at a time, bounded.
    while head.len() < 256 && !head.ends_with(b"\r\n") {
        match stream.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            _ => break,
        }
    }
    let status = String::from_utf8_lossy(&head)
        .split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or(0);
    (status, stream)
}

#[test]
fn followers_are_capped_so_they_never_take_every_admin_connection() {
    if !require_root("followers_are_capped_so_they_never_take_every_admin_connection") {
        return;
    }
    let topology = Topology::new();
    let (gateway, key) = gateway(&topology);
    let admin = gateway.admin.unwrap();
    let (following, refused, health) = topology.server.run(move || {
        // The admin listener's connection limit (admin::MAX_CONNECTIONS).
        let mut streams = Vec::new();
        let mut refused = 0;
        while streams.len() < 64 {
            match admin_get(admin, "/v1/xdp/events", &key) {
                (200, stream) => streams.push(stream),
                (status, _) => {
                    refused = status;
                    break;
                }
            }
        }
        let (health, _) = admin_get(admin, "/healthz", "");
        (streams.len(), refused, health)
    });
    assert!(
        following < 64,
        "{following} followers took every admin connection"
    );
    assert_eq!(refused, 503, "the follower past the limit is told why");
    assert_eq!(health, 200, "the admin API still answers");
}

#[test]
fn a_follower_whose_key_expires_gets_no_more_events() {
    if !require_root("a_follower_whose_key_expires_gets_no_more_events") {
        return;
    }
    let topology = Topology::new();
    let _listener = Listener::start(&topology.server, PROTECTED);
    let builder: GatewayBuilder = Gateway::builder(TIERS)
        .in_namespace(&topology.server)
        .xdp(&PROTECTED.to_string());
    let lasting = builder.create_key_with("gold", &["--admin", "--scopes", "admin:read"]);
    // Standing in for a key revoked or disabled while its holder follows.
    let expiring = builder.create_key_with(
        "gold",
        &["--admin", "--scopes", "admin:read", "--expires-in", "10s"],
    );
    let gateway = builder.start();
    let witness = Follower::start(&topology, &gateway, &lasting);
    let follower = Follower::start(&topology, &gateway, &expiring);
    sentinel(&topology, &gateway, &witness, CLIENT2_V4);
    wait_until("the expiring key's follower to follow", || {
        follower.count("ban_first_drop", "source", CLIENT2_V4) == 1
    });
    let admin = gateway.admin.unwrap();
    let key = expiring.clone();
    wait_until("the key to expire", || {
        let key = key.clone();
        topology
            .server
            .run(move || admin_get(admin, "/v1/xdp/events", &key).0)
            == 401
    });
    sentinel(&topology, &gateway, &witness, CLIENT_V4);
    assert_eq!(
        follower.count("ban_first_drop", "source", CLIENT_V4),
        0,
        "an expired key still follows: {:?}",
        follower.events()
    );
    wait_until("the stream to say why it closed", || {
        follower.events().iter().any(|e| e["event"] == "closed")
    });
    follower.wait();
}
