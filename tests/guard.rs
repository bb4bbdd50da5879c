//! Kernel feedback end to end, in network namespaces: the real gateway
//! proxies on the server side with XDP attached; clients on the client side
//! speak HTTP from two source addresses. A source that ignores its 429s or
//! guesses keys is banned in the kernel (its connects fail, the pinned
//! counters rise) while the other source keeps being served; bans expire;
//! monitor mode bans nothing; tier budgets follow clients.
#![allow(clippy::unwrap_used, reason = "tests: a panic is the failure report")]

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use gateway_tests::{
    gateway::Gateway,
    http::{get_from, pause, request, FakeUpstream, Reply},
    netns::{Topology, CLIENT2_V4, CLIENT_V4},
    require_root,
};

const PORT: u16 = 18080;
/// Connects to a banned source's SYNs would retry for seconds.
const CONNECT: Duration = Duration::from_millis(700);

/// A gateway on the server veth with a bronze tier of 2 requests per 3 s,
/// an upstream in the server namespace, and `guard` as the `[guard]` table.
fn start(topology: &Topology, guard: &str) -> (Gateway, FakeUpstream) {
    let upstream = topology.server.run(|| FakeUpstream::start(None));
    let body = format!(
        r#"
[[listeners]]
address = "10.77.0.1:{PORT}"

[[tiers]]
name = "bronze"
requests = 2
window = "3s"

[[tiers]]
name = "gold"
requests = 1000

[guard]
{guard}

[[upstreams]]
name = "app"
servers = ["{upstream}"]

[[routes]]
path_prefix = "/"
upstream = "app"
"#,
        upstream = upstream.addr
    );
    let gateway = Gateway::builder(&body)
        .in_namespace(&topology.server)
        .xdp(&PORT.to_string())
        .start();
    (gateway, upstream)
}

/// `GET /` with `key` from `source` on the client side.
fn get(topology: &Topology, source: &str, key: &str) -> std::io::Result<Reply> {
    let source = source.parse().unwrap();
    let key = key.to_owned();
    let server = SocketAddr::from(([10, 77, 0, 1], PORT));
    topology
        .client
        .run(move || get_from(source, server, "/", &[("x-api-key", &key)], CONNECT))
}

fn metrics(topology: &Topology, gateway: &Gateway) -> String {
    let admin = gateway.admin.unwrap();
    topology
        .server
        .run(move || request(admin, "GET", "/metrics", &[]).body)
}

/// Sends until the source's connects fail (bounded); the statuses seen.
fn send_until_banned(
    topology: &Topology,
    source: &str,
    key: impl Fn(usize) -> String,
) -> (Vec<u16>, bool) {
    let mut statuses = Vec::new();
    for i in 0..40 {
        match get(topology, source, &key(i)) {
            Ok(reply) => statuses.push(reply.status),
            Err(_) => return (statuses, true),
        }
    }
    (statuses, false)
}

#[test]
fn a_source_ignoring_429s_is_banned_in_the_kernel_until_its_window_frees_up() {
    if !require_root("a_source_ignoring_429s_is_banned_in_the_kernel_until_its_window_frees_up") {
        return;
    }
    let topology = Topology::new();
    let (gateway, _upstream) = start(&topology, "excess = 3\nmin_ban = \"1s\"\nmax_ban = \"10s\"");
    let bronze = gateway.create_key("bronze");
    let gold = gateway.create_key("gold");
    pause(Duration::from_millis(400));

    let (statuses, banned) = send_until_banned(&topology, CLIENT_V4, |_| bronze.clone());
    assert!(banned, "never banned: {statuses:?}");
    assert_eq!(statuses[..2], [200, 200], "{statuses:?}");
    let refused = statuses.iter().filter(|s| **s == 429).count();
    assert!(
        (4..10).contains(&refused),
        "banned after {refused} 429s (excess 3): {statuses:?}"
    );
    let dropped = gateway.counter("dropped_banned");
    assert!(dropped > 0, "the kernel dropped nothing");

    // The other source is served throughout, and got its tier's budget.
    assert_eq!(get(&topology, CLIENT2_V4, &gold).unwrap().status, 200);
    let bans: serde_json::Value = serde_json::from_str(&gateway.xdp(&["bans", "--json"])).unwrap();
    assert_eq!(bans.as_array().unwrap().len(), 1, "{bans}");
    assert_eq!(bans[0]["source"], CLIENT_V4);
    assert_eq!(bans[0]["reason"], "rate_limit");
    // Until the window frees up (at most 3 s), doubled per repeat offence.
    let offences = bans[0]["offences"].as_u64().unwrap();
    let left = bans[0]["expires_in_ms"].as_u64().unwrap();
    assert!(offences >= 1 && left <= 3_000 << (offences - 1), "{bans}");
    let budgets: serde_json::Value =
        serde_json::from_str(&gateway.xdp(&["budgets", "--json"])).unwrap();
    let tier_of = |source: &str| {
        budgets
            .as_array()
            .unwrap()
            .iter()
            .find(|b| b["source"] == source)
            .map(|b| b["tier"].as_u64().unwrap())
    };
    assert_eq!(
        (tier_of(CLIENT_V4), tier_of(CLIENT2_V4)),
        (Some(1), Some(2)),
        "{budgets}"
    );
    let text = metrics(&topology, &gateway);
    assert!(
        text.contains("gateway_bans_issued_total{reason=\"rate_limit\"} 1"),
        "{text}"
    );
    assert!(text.contains("gateway_rate_limited_total{tier=\"bronze\"}"));

    // The ban ends with the window: the source is served again.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        match get(&topology, CLIENT_V4, &bronze) {
            Ok(reply) if reply.status == 200 => break,
            _ => assert!(Instant::now() < deadline, "the ban never expired"),
        }
        pause(Duration::from_millis(300));
    }
    assert!(gateway.counter("dropped_banned") >= dropped);
}

#[test]
fn key_guessing_from_one_source_is_banned_in_the_kernel() {
    if !require_root("key_guessing_from_one_source_is_banned_in_the_kernel") {
        return;
    }
    let topology = Topology::new();
    let (gateway, _upstream) = start(
        &topology,
        "auth_failures = 5\nauth_failure_window = \"30s\"\nauth_failure_ban = \"30s\"",
    );
    let gold = gateway.create_key("gold");
    pause(Duration::from_millis(400));

    let (statuses, banned) =
        send_until_banned(&topology, CLIENT_V4, |i| format!("gk_guess{i:04}_x"));
    assert!(banned, "never banned: {statuses:?}");
    assert!(statuses.iter().all(|s| *s == 401), "{statuses:?}");
    assert!((6..12).contains(&statuses.len()), "{statuses:?}");
    let bans: serde_json::Value = serde_json::from_str(&gateway.xdp(&["bans", "--json"])).unwrap();
    assert_eq!(bans[0]["source"], CLIENT_V4);
    assert_eq!(bans[0]["reason"], "auth_failures");
    assert!(gateway.counter("dropped_banned") > 0);
    assert_eq!(get(&topology, CLIENT2_V4, &gold).unwrap().status, 200);
    let text = metrics(&topology, &gateway);
    assert!(
        text.contains("gateway_bans_issued_total{reason=\"auth_failures\"} 1"),
        "{text}"
    );
    assert!(text.contains("gateway_bans_active 1"), "{text}");
}

#[test]
fn monitor_mode_counts_would_be_bans_and_bans_nothing() {
    if !require_root("monitor_mode_counts_would_be_bans_and_bans_nothing") {
        return;
    }
    let topology = Topology::new();
    let (gateway, _upstream) = start(&topology, "mode = \"monitor\"\nauth_failures = 5");
    for i in 0..15 {
        let reply = get(&topology, CLIENT_V4, &format!("gk_guess{i:04}_x")).unwrap();
        assert_eq!(reply.status, 401);
    }
    assert_eq!(gateway.xdp(&["bans", "--json"]).trim(), "[]");
    assert_eq!(gateway.counter("dropped_banned"), 0);
    let text = metrics(&topology, &gateway);
    assert!(text.contains("gateway_bans_monitored_total 2"), "{text}");
    assert!(text.contains("gateway_bans_issued_total{reason=\"auth_failures\"} 0"));
}
