//! The kernel path, end to end: the real gateway attaches its XDP program to
//! a veth in a namespace it shares with a TCP server; a second namespace
//! plays the clients. Checks use real connects and the pinned counters.
#![allow(clippy::unwrap_used, reason = "tests: a panic is the failure report")]

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
    time::Duration,
};

use gateway_tests::{
    fs::TempDir,
    gateway::{gateway_bin, minimal_config, Gateway, GatewayBuilder},
    netns::{
        attached_xdp_programs, Listener, Topology, CLIENT2_V4, CLIENT2_V6, CLIENT_V4, CLIENT_V6,
        SERVER_IF, SERVER_V4, SERVER_V6,
    },
    packet::{Ipv6Ext, TcpFrame, ETH_P_8021AD, ETH_P_8021Q},
    require_root,
};

const PROTECTED: u16 = 8080;
const UNPROTECTED: u16 = 9090;
/// Connects that should succeed get time; dropped SYNs would retry for
/// seconds, so connects that should fail get a short leash.
const OK: Duration = Duration::from_secs(3);
const DROPPED: Duration = Duration::from_millis(400);

fn sleep(duration: Duration) {
    #[allow(
        clippy::disallowed_methods,
        reason = "sync test, waiting on a kernel clock"
    )]
    std::thread::sleep(duration);
}

/// A gateway in the server namespace with XDP protecting 8080, no routes.
fn protecting(topology: &Topology, extra: &[&str]) -> GatewayBuilder {
    Gateway::builder("")
        .in_namespace(&topology.server)
        .xdp(&PROTECTED.to_string())
        .args(extra)
}

/// Namespaces, a listener on both ports, and a gateway protecting 8080.
fn setup(extra: &[&str]) -> (Topology, Listener, Listener, Gateway) {
    let topology = Topology::new();
    let protected = Listener::start(&topology.server, PROTECTED);
    let unprotected = Listener::start(&topology.server, UNPROTECTED);
    let gateway = protecting(&topology, extra).start();
    (topology, protected, unprotected, gateway)
}

fn ban_blocks_only_the_banned_source(client: &str, other: &str, server: &str) {
    let (topology, _p, _u, gateway) = setup(&[]);
    assert!(
        gateway.ready_line.contains("native"),
        "{}",
        gateway.ready_line
    );
    assert!(topology.connects(client, server, PROTECTED, OK));
    assert!(topology.connects(other, server, PROTECTED, OK));

    gateway.xdp(&["ban", client, "--for", "60s"]);
    assert!(!topology.connects(client, server, PROTECTED, DROPPED));
    assert!(topology.connects(other, server, PROTECTED, OK));
    assert!(gateway.counter("dropped_banned") >= 1);

    let bans: serde_json::Value = serde_json::from_str(&gateway.xdp(&["bans", "--json"])).unwrap();
    assert_eq!(bans[0]["source"], client);
    assert!(bans[0]["expires_in_ms"].as_u64().unwrap() > 50_000);

    // Operators inspect the same maps with bpftool, field names included.
    let dump = Command::new("bpftool")
        .args(["map", "dump", "pinned"])
        .arg(gateway.pin_root.join("GW_BANS"))
        .output()
        .unwrap();
    let dump = String::from_utf8_lossy(&dump.stdout);
    assert!(dump.contains("banned_until_ns"), "bpftool dump: {dump}");

    let out = gateway.xdp(&["unban", client]);
    assert!(out.contains("unbanned"), "{out}");
    assert!(topology.connects(client, server, PROTECTED, OK));
}

#[test]
fn banned_ipv4_source_is_dropped_and_unban_restores_it() {
    if !require_root("banned_ipv4_source_is_dropped_and_unban_restores_it") {
        return;
    }
    ban_blocks_only_the_banned_source(CLIENT_V4, CLIENT2_V4, SERVER_V4);
}

#[test]
fn banned_ipv6_source_is_dropped_and_unban_restores_it() {
    if !require_root("banned_ipv6_source_is_dropped_and_unban_restores_it") {
        return;
    }
    ban_blocks_only_the_banned_source(CLIENT_V6, CLIENT2_V6, SERVER_V6);
}

#[test]
fn ban_expires_by_itself() {
    if !require_root("ban_expires_by_itself") {
        return;
    }
    let (topology, _p, _u, gateway) = setup(&[]);
    gateway.xdp(&["ban", CLIENT_V4, "--for", "2s"]);
    assert!(!topology.connects(CLIENT_V4, SERVER_V4, PROTECTED, DROPPED));
    sleep(Duration::from_millis(2200));
    assert!(topology.connects(CLIENT_V4, SERVER_V4, PROTECTED, OK));
}

#[test]
fn syn_budget_drops_excess_connects_only_from_that_source() {
    if !require_root("syn_budget_drops_excess_connects_only_from_that_source") {
        return;
    }
    let (topology, _p, _u, gateway) = setup(&[]);
    // 1 new connection per second, 3 back to back; packets unlimited.
    gateway.xdp(&[
        "budget",
        CLIENT_V4,
        "--syn-rate",
        "1",
        "--syn-burst",
        "3",
        "--pkt-rate",
        "0",
    ]);
    let admitted = topology.parallel_connects(CLIENT_V4, SERVER_V4, PROTECTED, 10, DROPPED);
    assert!(
        (3..=4).contains(&admitted),
        "burst 3 should admit 3 of 10 simultaneous connects (one more if two CPUs race), got {admitted}"
    );
    assert!(gateway.counter("dropped_conn_budget") >= 6);
    // The other source keeps the default budget.
    let other = topology.parallel_connects(CLIENT2_V4, SERVER_V4, PROTECTED, 5, OK);
    assert_eq!(other, 5);
}

#[test]
fn monitor_mode_counts_but_passes() {
    if !require_root("monitor_mode_counts_but_passes") {
        return;
    }
    let (topology, _p, _u, gateway) = setup(&["--mode", "monitor"]);
    assert_eq!(gateway.status()["mode"], "monitor");
    gateway.xdp(&["ban", CLIENT_V4, "--for", "60s"]);
    assert!(topology.connects(CLIENT_V4, SERVER_V4, PROTECTED, OK));
    assert!(gateway.counter("monitor_would_drop_banned") >= 1);
    assert_eq!(gateway.counter("dropped_banned"), 0);
}

#[test]
fn allowlisted_cidr_is_never_dropped() {
    if !require_root("allowlisted_cidr_is_never_dropped") {
        return;
    }
    let (topology, _p, _u, gateway) = setup(&["--allow", "10.77.0.0/31", "--allow", "fd77::2/128"]);
    for source in [CLIENT_V4, CLIENT2_V4, CLIENT_V6] {
        gateway.xdp(&["ban", source, "--for", "60s"]);
    }
    // 10.77.0.2 is outside 10.77.0.0/31 (.0 and .1): it is dropped.
    assert!(!topology.connects(CLIENT_V4, SERVER_V4, PROTECTED, DROPPED));
    assert!(topology.connects(CLIENT_V6, SERVER_V6, PROTECTED, OK));
    assert!(gateway.counter("allowlisted") >= 1);
    drop(gateway);

    let gateway = protecting(&topology, &["--allow", "10.77.0.2/32"]).start();
    gateway.xdp(&["ban", CLIENT_V4, "--for", "60s"]);
    gateway.xdp(&["ban", CLIENT2_V4, "--for", "60s"]);
    assert!(topology.connects(CLIENT_V4, SERVER_V4, PROTECTED, OK));
    assert!(!topology.connects(CLIENT2_V4, SERVER_V4, PROTECTED, DROPPED));
}

#[test]
fn unprotected_port_passes_even_for_a_banned_source() {
    if !require_root("unprotected_port_passes_even_for_a_banned_source") {
        return;
    }
    let (topology, _p, _u, gateway) = setup(&[]);
    gateway.xdp(&["ban", CLIENT_V4, "--for", "60s"]);
    assert!(!topology.connects(CLIENT_V4, SERVER_V4, PROTECTED, DROPPED));
    assert!(topology.connects(CLIENT_V4, SERVER_V4, UNPROTECTED, OK));
    assert!(gateway.counter("not_protected") >= 1);
}

/// Sends `count` copies of each frame and returns how the named counters moved.
fn counter_deltas(
    topology: &Topology,
    gateway: &Gateway,
    frames: &[TcpFrame],
    count: usize,
    names: &[&str],
) -> Vec<u64> {
    let before: Vec<u64> = names.iter().map(|n| gateway.counter(n)).collect();
    let built: Vec<Vec<u8>> = frames
        .iter()
        .flat_map(|frame| std::iter::repeat_n(frame.build(), count))
        .collect();
    topology.send_frames(built);
    sleep(Duration::from_millis(100));
    names
        .iter()
        .zip(before)
        .map(|(n, b)| gateway.counter(n) - b)
        .collect()
}

fn syn(src: &str, dst: &str) -> TcpFrame {
    TcpFrame::syn(src.parse().unwrap(), dst.parse().unwrap(), PROTECTED)
}

#[test]
fn vlan_tagged_frames_are_parsed() {
    if !require_root("vlan_tagged_frames_are_parsed") {
        return;
    }
    // This kernel has no 802.1Q devices, so the client injects tagged frames.
    let (topology, _p, _u, gateway) = setup(&[]);
    gateway.xdp(&["ban", CLIENT_V4, "--for", "60s"]);
    let mut single = syn(CLIENT_V4, SERVER_V4);
    single.vlans = vec![(ETH_P_8021Q, 100)];
    let mut qinq = syn(CLIENT_V4, SERVER_V4);
    qinq.vlans = vec![(ETH_P_8021AD, 200), (ETH_P_8021Q, 300)];
    let mut allowed = syn(CLIENT2_V4, SERVER_V4);
    allowed.vlans = vec![(ETH_P_8021Q, 100)];

    let deltas = counter_deltas(&topology, &gateway, &[single, qinq], 5, &["dropped_banned"]);
    assert_eq!(
        deltas,
        [10],
        "tagged SYNs from the banned source are dropped"
    );
    let deltas = counter_deltas(
        &topology,
        &gateway,
        &[allowed],
        5,
        &["passed", "dropped_banned"],
    );
    assert_eq!(deltas, [5, 0], "tagged SYNs from another source pass");
}

#[test]
fn ipv4_options_and_ipv6_extension_headers_do_not_hide_the_source() {
    if !require_root("ipv4_options_and_ipv6_extension_headers_do_not_hide_the_source") {
        return;
    }
    let (topology, _p, _u, gateway) = setup(&[]);
    gateway.xdp(&["ban", CLIENT_V4, "--for", "60s"]);
    gateway.xdp(&["ban", CLIENT_V6, "--for", "60s"]);
    let mut options = syn(CLIENT_V4, SERVER_V4);
    options.ipv4_options = true;
    let mut dest_opts = syn(CLIENT_V6, SERVER_V6);
    dest_opts.ipv6_ext = vec![Ipv6Ext::DestinationOptions];
    let mut fragment = syn(CLIENT_V6, SERVER_V6);
    fragment.ipv6_ext = vec![Ipv6Ext::DestinationOptions, Ipv6Ext::FirstFragment];
    let deltas = counter_deltas(
        &topology,
        &gateway,
        &[options, dest_opts, fragment],
        3,
        &["dropped_banned"],
    );
    assert_eq!(deltas, [9]);
}

#[test]
fn restart_after_crash_replaces_stale_pins_and_keeps_bans() {
    if !require_root("restart_after_crash_replaces_stale_pins_and_keeps_bans") {
        return;
    }
    let (topology, _p, _u, mut gateway) = setup(&[]);
    gateway.xdp(&["ban", CLIENT_V4, "--for", "60s"]);
    gateway.crash();
    assert!(
        gateway.pin_root.join("GW_BANS").exists(),
        "a crash leaves pins"
    );
    assert_eq!(
        attached_xdp_programs(&topology.server, SERVER_IF),
        1,
        "a crash leaves the program attached: its link is pinned"
    );

    let mut restarted = protecting(&topology, &[])
        .pin_root(gateway.pin_root.clone())
        .start();
    assert_eq!(attached_xdp_programs(&topology.server, SERVER_IF), 1);
    assert!(!topology.connects(CLIENT_V4, SERVER_V4, PROTECTED, DROPPED));
    assert!(topology.connects(CLIENT2_V4, SERVER_V4, PROTECTED, OK));
    assert_eq!(restarted.status()["owner_running"], true);
    // Stopped by hand: dropping the harness would sweep the pins itself.
    // A clean stop keeps the program and its pins (tests/xdp_restart.rs
    // covers what survives); the harness detaches and unpins on drop.
    assert!(restarted.stop(), "SIGTERM: a clean exit");
    assert!(gateway.pin_root.join("GW_BANS").exists());
    assert_eq!(attached_xdp_programs(&topology.server, SERVER_IF), 1);
    assert!(!topology.connects(CLIENT_V4, SERVER_V4, PROTECTED, DROPPED));
}

#[test]
fn without_xdp_the_gateway_falls_back_unless_required() {
    if !require_root("without_xdp_the_gateway_falls_back_unless_required") {
        return;
    }
    let pin_root = format!("/sys/fs/bpf/gwtest-fallback-{}", std::process::id());
    let dir = TempDir::new("fallback");
    let config = minimal_config(&dir);
    let required = Command::new(gateway_bin())
        .args([
            "run",
            "--interface",
            "no-such-if0",
            "--require-xdp",
            "--pin-root",
            &pin_root,
        ])
        .arg("--config")
        .arg(&config)
        .output()
        .unwrap();
    assert!(!required.status.success());
    let stderr = String::from_utf8_lossy(&required.stderr);
    assert!(
        stderr.contains("cannot attach XDP to no-such-if0"),
        "{stderr}"
    );
    assert!(
        !std::path::Path::new(&pin_root).exists(),
        "a failed start leaves no pins"
    );

    let mut fallback = Command::new(gateway_bin())
        .args(["run", "--interface", "no-such-if0", "--pin-root", &pin_root])
        .arg("--config")
        .arg(&config)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let line = BufReader::new(fallback.stdout.take().unwrap())
        .lines()
        .map_while(Result::ok)
        .find(|line| line.starts_with("ready:"))
        .unwrap_or_default();
    let _ = fallback.kill();
    let output = fallback.wait_with_output().unwrap();
    assert!(
        line.starts_with("ready: userspace-only enforcement"),
        "{line}"
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(
        stderr.matches("XDP unavailable").count(),
        1,
        "one clear warning: {stderr}"
    );
    assert!(!std::path::Path::new(&pin_root).exists());
}
