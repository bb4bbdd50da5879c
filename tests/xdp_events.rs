//! Kernel events end to end: the XDP program logs a ban's first drop once,
//! its parse give-ups at most once a second, the gateway forwards them to
//! its log, and `gateway xdp events` follows them through the admin API.
#![allow(clippy::unwrap_used, reason = "tests: a panic is the failure report")]

use std::{
    process::Command,
    thread,
    time::{Duration, Instant},
};

use gateway_tests::{
    gateway::{gateway_bin, Gateway},
    netns::{Listener, Topology, CLIENT2_V4, CLIENT_V4, CLIENT_V6, SERVER_V4, SERVER_V6},
    packet::Ipv6Ext,
    require_root,
};

#[path = "xdp_events/follow.rs"]
mod follow;

use follow::*;

#[test]
fn a_bans_first_drop_is_logged_once_and_followed_live() {
    if !require_root("a_bans_first_drop_is_logged_once_and_followed_live") {
        return;
    }
    let topology = Topology::new();
    let _listener = Listener::start(&topology.server, PROTECTED);
    let (gateway, key) = gateway(&topology);
    let follower = Follower::start(&topology, &gateway, &key);

    gateway.xdp(&["ban", CLIENT_V4, "--for", "60s"]);
    let before = gateway.counter("dropped_banned");
    topology.send_frames(vec![syn(CLIENT_V4, SERVER_V4).build(); 5]);
    assert!(!topology.connects(CLIENT_V4, SERVER_V4, PROTECTED, DROPPED));
    wait_until("the drops to be counted", || {
        gateway.counter("dropped_banned") >= before + 6
    });
    sentinel(&topology, &gateway, &follower, CLIENT2_V4);

    assert_eq!(
        logged_ban_drops(&gateway, CLIENT_V4),
        1,
        "one log line for the ban, not one per packet:\n{}",
        gateway.stderr_text()
    );
    let line = gateway.stderr_text();
    let line = line
        .lines()
        .find(|l| l.contains(&format!("source={CLIENT_V4} ")))
        .unwrap();
    assert!(line.contains(" INFO "), "{line}");
    assert!(line.contains("reason=\"manual\""), "{line}");

    assert_eq!(follower.count("ban_first_drop", "source", CLIENT_V4), 1);
    let event = follower
        .events()
        .into_iter()
        .find(|e| e["source"] == CLIENT_V4)
        .unwrap();
    assert_eq!(event["reason"], "manual");
    assert_eq!(event["monitor"], false);
    assert!(event["expires_in_ms"].as_u64().unwrap() > 30_000, "{event}");

    // A follower that starts now gets the recent events first.
    let late = Follower::start(&topology, &gateway, &key);
    wait_until("the replay", || {
        late.count("ban_first_drop", "source", CLIENT_V4) == 1
    });

    let (status, stderr) = follower.interrupt();
    assert!(
        status.success(),
        "Ctrl-C is a clean exit: {status:?} {stderr}"
    );
}

#[test]
fn in_monitor_mode_the_first_packet_under_a_ban_is_reported_as_passed() {
    if !require_root("in_monitor_mode_the_first_packet_under_a_ban_is_reported_as_passed") {
        return;
    }
    let topology = Topology::new();
    let (gateway, key) = gateway_with(&topology, &["--mode", "monitor"]);
    let follower = Follower::start(&topology, &gateway, &key);
    sentinel(&topology, &gateway, &follower, CLIENT_V4);
    let event = follower
        .events()
        .into_iter()
        .find(|e| e["source"] == CLIENT_V4)
        .unwrap();
    assert_eq!(event["monitor"], true, "{event}");
    assert!(gateway.counter("monitor_would_drop_banned") >= 1);
    assert!(
        gateway.stderr_text().contains("(monitor mode: passed)"),
        "{}",
        gateway.stderr_text()
    );
}

#[test]
fn parse_give_ups_are_rate_limited_in_the_kernel() {
    if !require_root("parse_give_ups_are_rate_limited_in_the_kernel") {
        return;
    }
    let topology = Topology::new();
    let (gateway, key) = gateway(&topology);
    let follower = Follower::start(&topology, &gateway, &key);

    // Frames cut inside the TCP header (the parser reads 14 of its bytes),
    // in bursts over about two seconds.
    let mut truncated = syn(CLIENT2_V4, SERVER_V4).build();
    truncated.truncate(14 + 20 + 6);
    let mut long_chain = syn(CLIENT_V6, SERVER_V6);
    long_chain.ipv6_ext = vec![Ipv6Ext::DestinationOptions; 5];
    let started = Instant::now();
    for _ in 0..4 {
        topology.send_frames(vec![truncated.clone(); 500]);
        pause(Duration::from_millis(500));
    }
    topology.send_frames(vec![long_chain.build(); 20]);
    sentinel(&topology, &gateway, &follower, CLIENT_V4);
    let elapsed = started.elapsed();

    let truncations = follower.count("parse_gave_up", "why", "truncated");
    // Documented: one a second per kind, one more per CPU racing.
    let cpus = thread::available_parallelism().map_or(64, usize::from);
    let bound = cpus * (usize::try_from(elapsed.as_secs()).unwrap() + 2);
    assert!(
        (1..=bound).contains(&truncations),
        "{truncations} truncation events for 2000 frames in {elapsed:?} (bound {bound})"
    );
    assert!(follower.count("parse_gave_up", "why", "ipv6_ext_chain") >= 1);
    assert!(
        follower.count("parse_gave_up", "why", "ipv6_ext_chain") <= bound,
        "20 long chains, rate-limited"
    );
    // Debug level: streamed, but not in the default log.
    assert!(
        !gateway.stderr_text().contains("parse_gave_up"),
        "{}",
        gateway.stderr_text()
    );
}

#[test]
fn the_follower_exits_when_the_gateway_stops() {
    if !require_root("the_follower_exits_when_the_gateway_stops") {
        return;
    }
    let topology = Topology::new();
    let (mut gateway, key) = gateway(&topology);
    let follower = Follower::start(&topology, &gateway, &key);
    // Connected once it has printed an event.
    sentinel(&topology, &gateway, &follower, CLIENT_V4);
    assert!(gateway.stop(), "SIGTERM: a clean exit");
    let (status, stderr) = follower.wait();
    assert!(status.success(), "{status:?} {stderr}");
    assert!(stderr.contains("closed the event stream"), "{stderr}");
}

#[test]
fn following_needs_a_reachable_gateway_an_admin_key_and_a_loaded_program() {
    // No root needed: a gateway without XDP on loopback.
    let builder = Gateway::builder(TIERS);
    let admin = builder.create_key_with("gold", &["--admin"]);
    let user = builder.create_key("gold");
    let gateway = builder.start();
    let url = format!("http://{}", gateway.admin.unwrap());
    let follow = |url: &str, key: Option<&str>| {
        let mut command = Command::new(gateway_bin());
        command.args(["xdp", "events", "--admin-url", url]);
        command.env_remove("GATEWAY_ADMIN_KEY");
        if let Some(key) = key {
            command.env("GATEWAY_ADMIN_KEY", key);
        }
        let output = command.output().unwrap();
        (
            output.status,
            String::from_utf8_lossy(&output.stderr).into_owned(),
        )
    };

    let (status, stderr) = follow(&url, Some(&admin));
    assert!(!status.success());
    assert!(stderr.contains("no XDP program is loaded"), "{stderr}");
    let (status, stderr) = follow(&url, Some(&user));
    assert!(!status.success());
    assert!(stderr.contains("may not use the admin API"), "{stderr}");
    let (status, stderr) = follow(&url, None);
    assert!(!status.success());
    assert!(stderr.contains("GATEWAY_ADMIN_KEY"), "{stderr}");

    // A port nothing listens on (the admin listener's, once it is gone).
    drop(gateway);
    let (status, stderr) = follow(&url, Some(&admin));
    assert!(!status.success());
    assert!(stderr.contains("cannot reach the admin API"), "{stderr}");
    assert!(stderr.contains("is the gateway running?"), "{stderr}");
}

/// A source dropped under a prefix ban reports that ban's reason.
#[test]
fn a_prefix_bans_first_drop_names_its_reason() {
    if !require_root("a_prefix_bans_first_drop_names_its_reason") {
        return;
    }
    let topology = Topology::new();
    let _listener = Listener::start(&topology.server, PROTECTED);
    let (gateway, key) = gateway(&topology);
    let follower = Follower::start(&topology, &gateway, &key);

    gateway.xdp(&["ban", "10.77.0.0/30", "--for", "60s"]);
    topology.send_frames(vec![syn(CLIENT_V4, SERVER_V4).build()]);
    wait_until("the first drop's event", || {
        follower.count("ban_first_drop", "source", CLIENT_V4) == 1
    });
    let event = follower
        .events()
        .into_iter()
        .find(|e| e["source"] == CLIENT_V4)
        .unwrap();
    assert_eq!(event["reason"], "manual", "{event}");
}

/// Sources under a prefix ban are as many as an attacker rotates through
/// (a /64 is 2^64 of them): their first drops are rate-limited in the
/// program, or each new address would be a log line.
#[test]
fn first_drops_under_a_prefix_ban_are_rate_limited() {
    if !require_root("first_drops_under_a_prefix_ban_are_rate_limited") {
        return;
    }
    let topology = Topology::new();
    let (gateway, key) = gateway(&topology);
    let follower = Follower::start(&topology, &gateway, &key);
    gateway.xdp(&["ban", "fd77:0:0:0:1::/80", "--for", "60s"]);
    let started = Instant::now();
    let rotating: Vec<Vec<u8>> = (1..=300u16)
        .map(|i| syn(&format!("fd77::1:0:0:{i:x}"), SERVER_V6).build())
        .collect();
    topology.send_frames(rotating);
    sentinel(&topology, &gateway, &follower, CLIENT_V4);
    let elapsed = started.elapsed();

    let in_prefix = follower
        .events()
        .iter()
        .filter(|e| e["event"] == "ban_first_drop")
        .filter(|e| {
            e["source"]
                .as_str()
                .is_some_and(|s| s.starts_with("fd77::1:0:0:"))
        })
        .count();
    // As documented for every rate-limited kind: one a second, one more per CPU racing.
    let cpus = thread::available_parallelism().map_or(64, usize::from);
    let bound = cpus * (usize::try_from(elapsed.as_secs()).unwrap() + 2);
    assert!(
        (1..=bound).contains(&in_prefix),
        "{in_prefix} first-drop events for 300 addresses of a banned prefix in {elapsed:?} \
         (bound {bound})"
    );
    assert!(gateway.counter("dropped_banned") >= 300);
}
