//! The kernel path judges the source before the ports: crafted frames from
//! a banned source (fragments, long IPv6 extension-header chains, cut L4
//! headers, other protocols) never reach the stack behind XDP; UDP to a
//! protected port is never charged to its source; and thousands of random
//! and mutated frames run through the loaded program (`BPF_PROG_TEST_RUN`)
//! never pass from a banned source.
#![allow(clippy::unwrap_used, reason = "tests: a panic is the failure report")]

use std::{process::Command, time::Duration};

use gateway_tests::{
    bpf::TestRunner,
    gateway::{Gateway, GatewayBuilder},
    netns::{
        Listener, Topology, CLIENT2_V4, CLIENT2_V6, CLIENT_V4, CLIENT_V6, SERVER_V4, SERVER_V6,
    },
    packet::{Ipv6Ext, TcpFrame},
    require_root,
};

const PROTECTED: u16 = 8080;
const UNPROTECTED: u16 = 9090;
const OK: Duration = Duration::from_secs(3);

fn sleep(duration: Duration) {
    #[allow(
        clippy::disallowed_methods,
        reason = "sync test, waiting on a kernel clock"
    )]
    std::thread::sleep(duration);
}

fn protecting(topology: &Topology, body: &str, extra: &[&str]) -> GatewayBuilder {
    Gateway::builder(body)
        .in_namespace(&topology.server)
        .xdp(&PROTECTED.to_string())
        .args(extra)
}

/// Namespaces, a listener on both ports, and a gateway protecting 8080.
fn setup(body: &str, extra: &[&str]) -> (Topology, [Listener; 2], Gateway) {
    let topology = Topology::new();
    let listeners = [
        Listener::start(&topology.server, PROTECTED),
        Listener::start(&topology.server, UNPROTECTED),
    ];
    let gateway = protecting(&topology, body, extra).start();
    (topology, listeners, gateway)
}

/// A SYN to the protected port, addressed to the server's MAC so that
/// what XDP passes is taken by the server's stack.
/// An IPv4 frame to the server whose protocol is ICMP (a SYN's bytes behind
/// protocol 1): neither TCP nor UDP, so never metered.
fn icmp_to_server(topology: &Topology, src: &str) -> Vec<u8> {
    let mut frame = syn_to_server(topology, src, 44000).build();
    frame[14 + 9] = 1;
    frame
}

fn syn_to_server(topology: &Topology, src: &str, src_port: u16) -> TcpFrame {
    let dst = if src.contains(':') {
        SERVER_V6
    } else {
        SERVER_V4
    };
    let mut frame = TcpFrame::syn(src.parse().unwrap(), dst.parse().unwrap(), PROTECTED);
    frame.dst_mac = topology.server_mac();
    frame.src_port = src_port;
    frame
}

/// Sends `frames` and returns how the named counters moved: kernel path
/// counters by their metric name, stack counters (see
/// [`Topology::server_stat`]) by theirs.
fn deltas(
    topology: &Topology,
    gateway: &Gateway,
    frames: Vec<Vec<u8>>,
    names: &[&str],
) -> Vec<u64> {
    let read = |name: &str| {
        if name.contains(':') || name.starts_with("Ip6") {
            topology.server_stat(name)
        } else {
            gateway.counter(name)
        }
    };
    let before: Vec<u64> = names.iter().map(|n| read(n)).collect();
    topology.send_frames(frames);
    // The frames are judged asynchronously (softirq on a loaded machine):
    // wait until something moved and the readings hold still, bounded.
    let moved = || -> Vec<u64> {
        names
            .iter()
            .zip(&before)
            .map(|(n, b)| read(n) - b)
            .collect()
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    let mut last = moved();
    loop {
        sleep(Duration::from_millis(100));
        let now = moved();
        let settled = now == last && now.iter().any(|&d| d > 0);
        if settled || std::time::Instant::now() > deadline {
            return now;
        }
        last = now;
    }
}

/// Whether the kernel holds a `GW_STATE` entry (metering state) for `ip`.
fn has_state(gateway: &Gateway, ip: &str) -> bool {
    let key: [u8; 16] = match ip.parse::<std::net::IpAddr>().unwrap() {
        std::net::IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        std::net::IpAddr::V6(v6) => v6.octets(),
    };
    Command::new("bpftool")
        .args(["map", "lookup", "pinned"])
        .arg(gateway.pin_root.join("GW_STATE"))
        .arg("key")
        .args(key.iter().map(u8::to_string))
        .output()
        .unwrap()
        .status
        .success()
}

/// Defect 1: a SYN split so the first fragment carries 8 TCP bytes (fewer
/// than the parser reads) used to pass whole, and the server reassembled it.
#[test]
fn fragments_from_a_banned_source_never_reach_the_stack() {
    if !require_root("fragments_from_a_banned_source_never_reach_the_stack") {
        return;
    }
    let (topology, _listeners, gateway) = setup("", &[]);
    gateway.xdp(&["ban", CLIENT_V4, "--for", "60s"]);
    gateway.xdp(&["ban", CLIENT_V6, "--for", "60s"]);
    let v4: Vec<Vec<u8>> = (0..3)
        .flat_map(|i| syn_to_server(&topology, CLIENT_V4, 41000 + i).ipv4_fragments(8, 100 + i))
        .collect();
    let v6: Vec<Vec<u8>> = (0..3u16)
        .flat_map(|i| {
            syn_to_server(&topology, CLIENT_V6, 41000 + i).ipv6_fragments(8, 100 + u32::from(i))
        })
        .collect();
    let frames = [v4, v6].concat();
    let moved = deltas(
        &topology,
        &gateway,
        frames,
        &["dropped_banned", "Ip:ReasmReqds", "Ip6ReasmReqds"],
    );
    assert_eq!(
        moved,
        [12, 0, 0],
        "every fragment of the banned sources dropped, none reached the stack's reassembly"
    );

    // The same fragments from a source that is not banned reach the stack,
    // which reassembles them (so the frames above were real fragments).
    let v4: Vec<Vec<u8>> = (0..3)
        .flat_map(|i| syn_to_server(&topology, CLIENT2_V4, 42000 + i).ipv4_fragments(8, 200 + i))
        .collect();
    let moved = deltas(
        &topology,
        &gateway,
        v4,
        &["passed", "dropped_banned", "Ip:ReasmOKs"],
    );
    // Passed: the 6 fragments, plus the client's RSTs to the SYN-ACKs.
    assert!(moved[0] >= 6, "fragments of another source pass: {moved:?}");
    assert_eq!(moved[1..], [0, 3], "and are reassembled");
    assert!(has_state(&gateway, CLIENT2_V4), "fragments are metered");
}

/// Defect 2: a SYN behind five extension headers (hop-by-hop and four
/// destination options) used to pass: the parser follows four.
#[test]
fn long_extension_header_chains_from_a_banned_source_are_dropped() {
    if !require_root("long_extension_header_chains_from_a_banned_source_are_dropped") {
        return;
    }
    let (topology, _listeners, gateway) = setup("", &[]);
    gateway.xdp(&["ban", CLIENT_V6, "--for", "60s"]);
    let chain = |src: &str| {
        let mut frame = syn_to_server(&topology, src, 43000);
        frame.ipv6_ext = vec![Ipv6Ext::HopByHop];
        frame.ipv6_ext.extend([Ipv6Ext::DestinationOptions; 4]);
        vec![frame.build(); 3]
    };
    // The frames carry no TCP checksum: what reaches TCP shows up as
    // checksum errors, which nothing else in the namespace causes.
    let moved = deltas(
        &topology,
        &gateway,
        chain(CLIENT_V6),
        &["dropped_banned", "Tcp:InCsumErrors"],
    );
    assert_eq!(moved, [3, 0], "the banned source's SYNs are dropped in XDP");
    let moved = deltas(&topology, &gateway, chain(CLIENT_V6), &["parse_gave_up"]);
    assert_eq!(moved, [3], "the program says it gave up on their ports");

    // From a source that is not banned, the unparseable chain still passes.
    let moved = deltas(
        &topology,
        &gateway,
        chain(CLIENT2_V6),
        &["passed", "dropped_banned", "Tcp:InCsumErrors"],
    );
    assert_eq!(moved, [3, 0, 3]);
}

/// Cut L4 headers and other protocols carry no port to judge: from a
/// banned source they are dropped; from others they pass, and packets of
/// other protocols create no metering state.
#[test]
fn cut_headers_and_other_protocols_are_judged_on_their_source() {
    if !require_root("cut_headers_and_other_protocols_are_judged_on_their_source") {
        return;
    }
    let (topology, _listeners, gateway) = setup("", &[]);
    gateway.xdp(&["ban", CLIENT_V4, "--for", "60s"]);
    let cut = |src: &str| {
        let mut frame = syn_to_server(&topology, src, 44000).build();
        frame.truncate(14 + 20 + 8);
        frame
    };
    let icmp = |src: &str| icmp_to_server(&topology, src);
    let moved = deltas(
        &topology,
        &gateway,
        vec![cut(CLIENT_V4), icmp(CLIENT_V4), icmp(CLIENT_V4)],
        &["dropped_banned", "parse_gave_up"],
    );
    assert_eq!(moved, [3, 1]);
    let moved = deltas(
        &topology,
        &gateway,
        vec![icmp(CLIENT2_V4), icmp(CLIENT2_V4)],
        &["dropped_banned", "not_protected"],
    );
    assert_eq!(moved[0], 0);
    assert!(
        moved[1] >= 2,
        "other protocols pass, not metered: {moved:?}"
    );
    assert!(
        !has_state(&gateway, CLIENT2_V4),
        "unmetered traffic creates no GW_STATE entry"
    );
}

/// A source inside a banned prefix that never sent a metered packet has no
/// `GW_STATE` entry: its other protocols are still judged on the prefix ban.
#[test]
fn other_protocols_from_a_banned_prefix_without_state_are_dropped() {
    if !require_root("other_protocols_from_a_banned_prefix_without_state_are_dropped") {
        return;
    }
    let (topology, _listeners, gateway) = setup("", &[]);
    gateway.xdp(&["ban", "10.77.0.0/30", "--for", "60s"]);
    let icmp = |src: &str| icmp_to_server(&topology, src);
    let moved = deltas(
        &topology,
        &gateway,
        vec![icmp(CLIENT2_V4), icmp(CLIENT2_V4)],
        &["dropped_banned"],
    );
    // (`not_protected` also counts the veth's own ARP and ND frames.)
    assert_eq!(moved, [2], "ICMP from inside a banned /30 passed");
    assert!(
        !has_state(&gateway, CLIENT2_V4),
        "unmetered traffic creates no GW_STATE entry"
    );
}

fn udp(src: &str, port: u16) -> Vec<u8> {
    let dst = if src.contains(':') {
        SERVER_V6
    } else {
        SERVER_V4
    };
    let mut frame = TcpFrame::syn(src.parse().unwrap(), dst.parse().unwrap(), port);
    frame.udp = true;
    frame.build()
}

/// Defect 3, the UDP half: UDP to a protected port, which anyone can send
/// under a client's address, used to spend that client's packet budget.
#[test]
fn udp_to_a_protected_port_does_not_spend_the_source_budget() {
    if !require_root("udp_to_a_protected_port_does_not_spend_the_source_budget") {
        return;
    }
    let (topology, _listeners, gateway) = setup("", &[]);
    // 20 packets back to back, then one a second.
    gateway.xdp(&[
        "budget",
        CLIENT_V4,
        "--syn-rate",
        "0",
        "--pkt-rate",
        "1",
        "--pkt-burst",
        "20",
    ]);
    let moved = deltas(
        &topology,
        &gateway,
        vec![udp(CLIENT_V4, PROTECTED); 200],
        &["dropped_pkt_budget", "passed"],
    );
    assert_eq!(
        moved,
        [0, 0],
        "ten times the packet budget in UDP, none charged"
    );
    assert_eq!(gateway.counter("udp_passed"), 200);
    assert!(!has_state(&gateway, CLIENT_V4), "nothing metered, no state");
    // Its TCP budget is untouched: it still connects.
    assert!(topology.connects(CLIENT_V4, SERVER_V4, PROTECTED, OK));
    assert!(has_state(&gateway, CLIENT_V4));
}

/// `xdp.udp = "drop"`: UDP to a protected port is dropped (counted), to
/// other ports passed, and the allow-list still overrides.
#[test]
fn udp_drop_policy_drops_only_protected_ports() {
    if !require_root("udp_drop_policy_drops_only_protected_ports") {
        return;
    }
    let (topology, _listeners, gateway) = setup(
        "[xdp]\nudp = \"drop\"\n",
        &["--allow", &format!("{CLIENT2_V6}/128")],
    );
    assert_eq!(gateway.status()["udp"], "drop");
    let moved = deltas(
        &topology,
        &gateway,
        vec![
            udp(CLIENT_V4, PROTECTED),
            udp(CLIENT_V6, PROTECTED),
            udp(CLIENT_V4, UNPROTECTED),
            udp(CLIENT2_V6, PROTECTED),
        ],
        &["dropped_udp", "allowlisted", "udp_passed", "not_protected"],
    );
    // Not protected: the UDP to 9090, and any neighbour discovery meanwhile.
    assert_eq!(moved[..3], [2, 1, 0]);
    assert!(moved[3] >= 1);
}

#[path = "xdp_parse/property.rs"]
mod property;

/// More VLAN tags than the parser follows: the kernel strips any number of
/// priority tags (VLAN id 0) and delivers the IP packet, so a banned
/// source's SYN behind three of them used to pass as "no IP header" and
/// reach TCP.
#[test]
fn a_banned_source_behind_more_vlan_tags_than_parsed_never_reaches_tcp() {
    if !require_root("a_banned_source_behind_more_vlan_tags_than_parsed_never_reaches_tcp") {
        return;
    }
    let (topology, _listeners, gateway) = setup("", &[]);
    gateway.xdp(&["ban", CLIENT_V6, "--for", "60s"]);
    let tagged = |src: &str| {
        let mut frame = syn_to_server(&topology, src, 44000);
        frame.vlans = vec![(0x8100, 0); 3];
        vec![frame.build(); 3]
    };
    // No TCP checksum: what reaches TCP shows up as a checksum error.
    let names = ["dropped_vlan_tags", "Tcp:InCsumErrors"];
    let moved = deltas(&topology, &gateway, tagged(CLIENT_V6), &names);
    assert_eq!(moved, [3, 0], "dropped, none reached TCP ({names:?})");
}
