//! Prefix bans end to end, in network namespaces: an IPv6 attacker rotating
//! through its /64 (several `nodad` addresses on the client veth) gets
//! each address banned for key guessing until the guard bans the /64; a
//! fresh address of that /64 is then dropped by the kernel while an
//! address outside it still connects. An attacker that stays below the
//! per-address threshold while rotating gets the /64 banned all the same
//! (the guard counts guessing per prefix too). And CIDR bans and budgets by hand
//! (`gateway xdp ban 10.77.0.0/24`, `... fd77::/64`), as `xdp bans --json`
//! and bpftool show them.
#![allow(clippy::unwrap_used, reason = "tests: a panic is the failure report")]

use std::{net::SocketAddr, process::Command, time::Duration};

use gateway_tests::{
    gateway::{gateway_bin, Gateway},
    http::{get_from, pause, request, FakeUpstream, Reply},
    netns::{Listener, Topology, CLIENT2_V4, CLIENT_IF, CLIENT_V4, CLIENT_V6, SERVER_IF},
    require_root,
};

const PORT: u16 = 18080;
/// A banned source's SYNs would be retried for seconds.
const CONNECT: Duration = Duration::from_millis(700);
const OK: Duration = Duration::from_secs(3);

/// The attacker's /64 (the topology's own), its rotating addresses, a
/// fresh one it has not used, and networks outside it on both sides.
/// The default `prefix_threshold` (8) of them get the /64 banned (the
/// escalation test turns per-prefix guessing counts off, which would ban
/// the /64 first).
const ROTATION: [&str; 9] = [
    "fd77::a1", "fd77::a2", "fd77::a3", "fd77::a4", "fd77::a5", "fd77::a6", "fd77::a7", "fd77::a8",
    "fd77::a9",
];
const FRESH: &str = "fd77::b1";
const SERVER_V6: &str = "fd77::1";
const OUTSIDE_V6: &str = "fd78::2";
const OUTSIDE_V4: &str = "10.78.0.2";
const SERVER_OUTSIDE_V6: &str = "fd78::1";
const SERVER_OUTSIDE_V4: &str = "10.78.0.1";

/// The topology plus the rotation's addresses and a network outside the
/// attacker's /64 and /24 on both ends of the veth.
fn topology() -> Topology {
    let topology = Topology::new();
    for addr in ROTATION.iter().chain([&FRESH, &OUTSIDE_V6]) {
        let cidr = format!("{addr}/64");
        topology
            .client
            .ip(&["addr", "add", &cidr, "dev", CLIENT_IF, "nodad"]);
    }
    let cidr = format!("{OUTSIDE_V4}/24");
    topology
        .client
        .ip(&["addr", "add", &cidr, "dev", CLIENT_IF]);
    let cidr = format!("{SERVER_OUTSIDE_V6}/64");
    topology
        .server
        .ip(&["addr", "add", &cidr, "dev", SERVER_IF, "nodad"]);
    let cidr = format!("{SERVER_OUTSIDE_V4}/24");
    topology
        .server
        .ip(&["addr", "add", &cidr, "dev", SERVER_IF]);
    topology
}

/// A gateway proxying on `[::]:PORT` with XDP on the server veth and
/// `guard` as its `[guard]` table.
fn start(topology: &Topology, guard: &str) -> (Gateway, FakeUpstream) {
    let upstream = topology.server.run(|| FakeUpstream::start(None));
    let body = format!(
        "[[listeners]]\naddress = \"[::]:{PORT}\"\n\n[guard]\n{guard}\n\n\
         [[upstreams]]\nname = \"app\"\nservers = [\"{}\"]\n\n\
         [[routes]]\npath_prefix = \"/\"\nupstream = \"app\"\n",
        upstream.addr
    );
    let gateway = Gateway::builder(&body)
        .in_namespace(&topology.server)
        .xdp(&PORT.to_string())
        .start();
    (gateway, upstream)
}

/// `GET /` with a wrong key from `source` to `server`.
fn guess(topology: &Topology, source: &str, server: &str, i: usize) -> std::io::Result<Reply> {
    let source = source.parse().unwrap();
    let server = SocketAddr::new(server.parse().unwrap(), PORT);
    let key = format!("gk_guess{i:04}_x");
    topology
        .client
        .run(move || get_from(source, server, "/", &[("x-api-key", &key)], CONNECT))
}

/// Guesses from `source` until its connects fail (bounded: 100 guesses,
/// 5 s); the statuses seen. The ban reaches the kernel through the policy
/// writer's next batch, which on a loaded machine can come after a burst
/// of guesses, hence the pause between them.
fn guess_until_dropped(topology: &Topology, source: &str) -> (Vec<u16>, bool) {
    let mut statuses = Vec::new();
    for i in 0..100 {
        match guess(topology, source, SERVER_V6, i) {
            Ok(reply) => statuses.push(reply.status),
            Err(_) => return (statuses, true),
        }
        writer_pause();
    }
    (statuses, false)
}

/// A pause between guesses: the guard's ban reaches the kernel in the
/// policy writer's next batch.
fn writer_pause() {
    #[allow(
        clippy::disallowed_methods,
        reason = "sync test, waiting on the policy writer"
    )]
    std::thread::sleep(Duration::from_millis(50));
}

fn bans(gateway: &Gateway) -> Vec<serde_json::Value> {
    let text = gateway.xdp(&["bans", "--json"]);
    let value: serde_json::Value = serde_json::from_str(&text).unwrap();
    value.as_array().unwrap().clone()
}

fn metrics(topology: &Topology, gateway: &Gateway) -> String {
    let admin = gateway.admin.unwrap();
    topology
        .server
        .run(move || request(admin, "GET", "/metrics", &[]).body)
}

#[test]
fn a_64_rotating_through_its_addresses_is_banned_as_a_prefix() {
    if !require_root("a_64_rotating_through_its_addresses_is_banned_as_a_prefix") {
        return;
    }
    let topology = topology();
    let (gateway, _upstream) = start(
        &topology,
        "auth_failures = 2\nauth_failure_window = \"60s\"\nauth_failure_ban = \"60s\"\n\
         prefix_auth_failures = 0",
    );
    // Eight addresses of the /64 guess keys until each is dropped.
    for source in &ROTATION[..8] {
        let (statuses, dropped) = guess_until_dropped(&topology, source);
        assert!(dropped, "{source} never banned: {statuses:?}");
        assert!(statuses.iter().all(|s| *s == 401), "{statuses:?}");
    }
    // The writer applies the escalation in its next batch.
    let mut listed = Vec::new();
    for _ in 0..20 {
        listed = bans(&gateway);
        if listed.iter().any(|b| b["source"] == "fd77::/64") {
            break;
        }
        pause(Duration::from_millis(100));
    }

    // A fresh address of the /64 is dropped by the kernel at its first SYN.
    let before = gateway.counter("dropped_banned");
    assert!(
        !topology.connects(FRESH, SERVER_V6, PORT, CONNECT),
        "a fresh address of the banned /64 connected; bans: {listed:?}"
    );
    assert!(gateway.counter("dropped_banned") > before);
    assert!(!topology.connects(ROTATION[8], SERVER_V6, PORT, CONNECT));
    // Listed as the prefix, with its reason.
    assert_eq!(
        listed.len(),
        1,
        "the prefix alone, its addresses' bans lifted: {listed:?}"
    );
    assert_eq!(listed[0]["source"], "fd77::/64");
    assert_eq!(listed[0]["prefix_len"], 64);
    assert_eq!(listed[0]["reason"], "prefix_escalation");
    // Until the latest of its addresses' bans (60 s), within max_ban.
    let left = listed[0]["expires_in_ms"].as_u64().unwrap();
    assert!((1..=60_000).contains(&left), "{listed:?}");

    // Outside the /64, the same client side is served.
    let reply = guess(&topology, OUTSIDE_V6, SERVER_OUTSIDE_V6, 0).unwrap();
    assert_eq!(reply.status, 401);
    assert!(topology.connects(CLIENT_V4, "10.77.0.1", PORT, OK));

    let text = metrics(&topology, &gateway);
    assert!(
        text.contains("gateway_bans_issued_total{reason=\"prefix_escalation\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("gateway_xdp_bans_evicted_total{map=\"GW_BANS\"} 0"),
        "{text}"
    );
}

/// The bans listed once `source` is among them (bounded wait: the writer
/// applies the guard's decisions in its next batch).
fn bans_once_listed(gateway: &Gateway, source: &str) -> Vec<serde_json::Value> {
    let mut listed = Vec::new();
    for _ in 0..20 {
        listed = bans(gateway);
        if listed.iter().any(|b| b["source"] == source) {
            break;
        }
        pause(Duration::from_millis(100));
    }
    listed
}

#[test]
fn a_64_guessing_below_the_address_threshold_is_banned_as_a_prefix() {
    if !require_root("a_64_guessing_below_the_address_threshold_is_banned_as_a_prefix") {
        return;
    }
    let topology = topology();
    // Only keys a gateway without per-prefix counting knows: the /64's
    // allowance is its default, 5 × auth_failures = 10 per window.
    let (gateway, _upstream) = start(
        &topology,
        "auth_failures = 2\nauth_failure_window = \"60s\"\nauth_failure_ban = \"60s\"",
    );
    // Each address guesses twice (a third would ban it), nine addresses.
    let mut statuses = Vec::new();
    'rotation: for source in &ROTATION {
        for i in 0..2 {
            match guess(&topology, source, SERVER_V6, i) {
                Ok(reply) => statuses.push(reply.status),
                Err(_) => break 'rotation,
            }
        }
    }
    assert!(statuses.iter().all(|s| *s == 401), "{statuses:?}");
    assert!(
        statuses.len() > 10,
        "the /64's allowance is served: {statuses:?}"
    );
    let listed = bans_once_listed(&gateway, "fd77::/64");
    assert_eq!(
        listed.len(),
        1,
        "the /64 alone (no address reached its threshold); guesses: {statuses:?}, bans: {listed:?}"
    );
    assert_eq!(listed[0]["source"], "fd77::/64", "{listed:?}");
    assert_eq!(listed[0]["prefix_len"], 64);
    assert_eq!(listed[0]["reason"], "auth_failures");
    let left = listed[0]["expires_in_ms"].as_u64().unwrap();
    assert!((1..=60_000).contains(&left), "{listed:?}");

    // A fresh address of the /64 is dropped by the kernel at its first SYN.
    let before = gateway.counter("dropped_banned");
    assert!(
        !topology.connects(FRESH, SERVER_V6, PORT, CONNECT),
        "a fresh address of the banned /64 connected"
    );
    assert!(gateway.counter("dropped_banned") > before);
    // Outside the /64, the same client side still gets its 401.
    let reply = guess(&topology, OUTSIDE_V6, SERVER_OUTSIDE_V6, 0).unwrap();
    assert_eq!(reply.status, 401);

    let text = metrics(&topology, &gateway);
    assert!(
        text.contains("gateway_bans_issued_total{reason=\"auth_failures\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("gateway_bans_issued_total{reason=\"prefix_escalation\"} 0"),
        "{text}"
    );
}

/// bpftool's dump of a pinned map (field names from BTF).
fn dump(gateway: &Gateway, map: &str) -> String {
    let output = Command::new("bpftool")
        .args(["map", "dump", "pinned"])
        .arg(gateway.pin_root.join(map))
        .output()
        .unwrap();
    String::from_utf8_lossy(&output.stdout).into_owned()
}

#[test]
fn cidr_bans_and_budgets_by_hand_cover_their_prefix_only() {
    if !require_root("cidr_bans_and_budgets_by_hand_cover_their_prefix_only") {
        return;
    }
    let topology = topology();
    let _listener = Listener::start(&topology.server, PORT);
    let gateway = Gateway::builder("")
        .in_namespace(&topology.server)
        .xdp(&PORT.to_string())
        .start();
    let connects =
        |source: &str, server: &str, timeout| topology.connects(source, server, PORT, timeout);

    // Host bits are cleared: the /24 and the /64 as their networks.
    assert!(gateway
        .xdp(&["ban", "10.77.0.9/24", "--for", "60s"])
        .contains("banned 10.77.0.0/24"));
    gateway.xdp(&["ban", "fd77::/64", "--for", "90s"]);
    let before = gateway.counter("dropped_banned");
    assert!(!connects(CLIENT_V4, "10.77.0.1", CONNECT));
    assert!(!connects(CLIENT2_V4, "10.77.0.1", CONNECT));
    assert!(!connects(CLIENT_V6, SERVER_V6, CONNECT));
    assert!(gateway.counter("dropped_banned") >= before + 3);
    assert!(connects(OUTSIDE_V4, SERVER_OUTSIDE_V4, OK));
    assert!(connects(OUTSIDE_V6, SERVER_OUTSIDE_V6, OK));

    let listed = bans(&gateway);
    let sources: Vec<_> = listed
        .iter()
        .map(|b| (b["source"].clone(), b["prefix_len"].clone()))
        .collect();
    assert_eq!(
        sources,
        [
            (serde_json::json!("10.77.0.0/24"), serde_json::json!(24)),
            (serde_json::json!("fd77::/64"), serde_json::json!(64)),
        ],
        "soonest to expire first: {listed:?}"
    );
    assert!(listed.iter().all(|b| b["reason"] == "manual"));
    let status = gateway.status();
    assert_eq!(status["active_bans"], 2, "{status}");
    // The new map, as operators see it: IPv4 mapped under ::ffff:0:0/96.
    let text = dump(&gateway, "GW_PREFIX_BANS");
    assert!(
        text.contains("banned_until_ns") && text.contains("prefix_len"),
        "{text}"
    );
    assert!(
        text.contains("\"prefix_len\": 120") && text.contains("\"prefix_len\": 64"),
        "{text}"
    );

    // Unban exactly the prefix: the /24 is served again, the /64 stays out.
    assert!(gateway
        .xdp(&["unban", "10.77.0.0/24"])
        .contains("unbanned 10.77.0.0/24"));
    assert!(connects(CLIENT_V4, "10.77.0.1", OK));
    assert!(!connects(CLIENT_V6, SERVER_V6, CONNECT));
    gateway.xdp(&["unban", "fd77::/64"]);
    assert!(connects(CLIENT_V6, SERVER_V6, OK));
    assert_eq!(bans(&gateway).len(), 0);

    // A prefix budget: each source inside gets it, one outside the default.
    gateway.xdp(&[
        "budget",
        "10.77.0.0/24",
        "--syn-rate",
        "1",
        "--syn-burst",
        "2",
        "--pkt-rate",
        "0",
    ]);
    let budgets: serde_json::Value =
        serde_json::from_str(&gateway.xdp(&["budgets", "--json"])).unwrap();
    assert_eq!(budgets[0]["source"], "10.77.0.0/24", "{budgets}");
    let admitted = topology.parallel_connects(CLIENT2_V4, "10.77.0.1", PORT, 8, CONNECT);
    assert!(
        (2..=3).contains(&admitted),
        "burst 2 of 8 (one more if CPUs race): {admitted}"
    );
    assert_eq!(
        topology.parallel_connects(OUTSIDE_V4, SERVER_OUTSIDE_V4, PORT, 5, OK),
        5
    );
    assert!(dump(&gateway, "GW_PREFIX_BUDGETS").contains("syn_per_sec"));
}

#[test]
fn a_full_ban_map_evicts_the_ban_closest_to_expiry_or_refuses() {
    if !require_root("a_full_ban_map_evicts_the_ban_closest_to_expiry_or_refuses") {
        return;
    }
    let topology = topology();
    let _listener = Listener::start(&topology.server, PORT);
    let gateway = Gateway::builder("[xdp]\nmax_bans = 2\nmax_prefix_bans = 1\n")
        .in_namespace(&topology.server)
        .xdp(&PORT.to_string())
        .start();
    gateway.xdp(&["ban", CLIENT_V4, "--for", "10m"]);
    gateway.xdp(&["ban", CLIENT2_V4, "--for", "1m"]);
    // Full: the third evicts CLIENT2_V4 (closest to expiry), and says so.
    let output = gateway.cli(
        &[
            "xdp",
            "ban",
            OUTSIDE_V4,
            "--for",
            "5m",
            "--pin-root",
            gateway.pin_root.to_str().unwrap(),
        ],
        &[],
    );
    assert!(output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains(&format!("evicted the ban of {CLIENT2_V4}")),
        "{stderr}"
    );
    let sources: Vec<_> = bans(&gateway).iter().map(|b| b["source"].clone()).collect();
    assert_eq!(
        sources,
        [serde_json::json!(OUTSIDE_V4), serde_json::json!(CLIENT_V4)]
    );
    assert!(topology.connects(CLIENT2_V4, "10.77.0.1", PORT, OK));
    // --refuse-if-full: an error, and the map unchanged.
    let output = gateway.cli(
        &[
            "xdp",
            "ban",
            "10.77.0.5",
            "--for",
            "5m",
            "--refuse-if-full",
            "--pin-root",
            gateway.pin_root.to_str().unwrap(),
        ],
        &[],
    );
    assert!(!output.status.success());
    assert!(String::from_utf8_lossy(&output.stderr).contains("GW_BANS is full"));
    assert_eq!(bans(&gateway).len(), 2);
    // The prefix map likewise.
    gateway.xdp(&["ban", "fd77::/64", "--for", "1m"]);
    gateway.xdp(&["ban", "fd78::/64", "--for", "2m"]);
    let sources: Vec<_> = bans(&gateway).iter().map(|b| b["source"].clone()).collect();
    assert!(
        sources.contains(&serde_json::json!("fd78::/64")),
        "{sources:?}"
    );
    assert!(
        !sources.contains(&serde_json::json!("fd77::/64")),
        "{sources:?}"
    );
}

/// Guesses from `source` (IPv4) until its connects fail (bounded as
/// [`guess_until_dropped`], with its pause for the policy writer).
fn guess_v4_until_dropped(topology: &Topology, source: &str) -> bool {
    (0..100).any(|i| {
        let dropped = guess(topology, source, "10.77.0.1", i).is_err();
        if !dropped {
            writer_pause();
        }
        dropped
    })
}

#[test]
fn the_guard_s_bans_evict_from_a_full_map_and_are_counted() {
    if !require_root("the_guard_s_bans_evict_from_a_full_map_and_are_counted") {
        return;
    }
    let topology = topology();
    // Room for one ban: the second source's evicts the first's.
    let (gateway, _upstream) = start(
        &topology,
        "auth_failures = 2\nauth_failure_ban = \"60s\"\n\n[xdp]\nmax_bans = 1",
    );
    assert!(guess_v4_until_dropped(&topology, CLIENT_V4));
    assert!(guess_v4_until_dropped(&topology, CLIENT2_V4));
    let mut sources = Vec::new();
    for _ in 0..20 {
        sources = bans(&gateway).iter().map(|b| b["source"].clone()).collect();
        if sources == [serde_json::json!(CLIENT2_V4)] {
            break;
        }
        pause(Duration::from_millis(100));
    }
    assert_eq!(sources, [serde_json::json!(CLIENT2_V4)]);
    assert!(topology.connects(CLIENT_V4, "10.77.0.1", PORT, OK));
    let text = metrics(&topology, &gateway);
    assert!(
        text.contains("gateway_xdp_bans_evicted_total{map=\"GW_BANS\"} 1"),
        "{text}"
    );
    assert!(text.contains("gateway_xdp_bans_refused_total{map=\"GW_BANS\"} 0"));
}

#[test]
fn a_ban_of_every_ipv4_source_is_refused_before_any_map_is_touched() {
    // `::/64` holds `::ffff:0:0/96`, where the kernel keys IPv4 sources.
    for cidr in ["0.0.0.0/0", "::/0", "::/64"] {
        let out = Command::new(gateway_bin())
            .args(["xdp", "ban", cidr, "--for", "1m", "--pin-root"])
            .arg("/nonexistent/gwtest-pins")
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{cidr}");
        assert!(stderr.contains("every IPv4 source"), "{cidr}: {stderr}");
    }
}
