//! Which SYNs XDP answers itself with a cookie SYN-ACK (`xdp.syn_cookies =
//! "xdp"`, `XDP_TX`): only those the kernel would answer. Run through the
//! loaded program (`BPF_PROG_TEST_RUN`) in the server's namespace, whose
//! sockets the program looks up, with every source in cookie mode
//! (`--syn-flood-rate 1`). One SYN must never draw more than one SYN-ACK
//! (broadcast), nor one the kernel would not send.
#![allow(clippy::unwrap_used, reason = "tests: a panic is the failure report")]

use gateway_tests::{
    bpf::TestRunner,
    gateway::Gateway,
    netns::{Listener, Topology, CLIENT2_V4, CLIENT_V4, CLIENT_V6, SERVER_V4, SERVER_V6},
    packet::TcpFrame,
    require_root,
};

/// Listened on.
const PROTECTED: u16 = 8080;
/// Protected, but nothing listens there.
const NO_LISTENER: u16 = 8081;
const XDP_TX: u32 = 3;
/// IPv4 SYN offsets in an untagged frame.
const IP_LEN: usize = 14 + 2;
const IP_FLAGS: usize = 14 + 6;
const IP6_PAYLOAD_LEN: usize = 14 + 4;
const TCP_OFFSET: usize = 14 + 20 + 12;
const TCP_FLAGS: usize = 14 + 20 + 13;

/// A SYN from `src` to `dst`, to the server's MAC `mac`.
fn syn_to(src: &str, dst: &str, port: u16, src_port: u16, mac: [u8; 6]) -> Vec<u8> {
    let mut frame = TcpFrame::syn(src.parse().unwrap(), dst.parse().unwrap(), port);
    frame.src_port = src_port;
    frame.dst_mac = mac;
    frame.build()
}

#[test]
fn xdp_answers_only_syns_the_kernel_would_answer() {
    if !require_root("xdp_answers_only_syns_the_kernel_would_answer") {
        return;
    }
    let topology = Topology::new();
    let _listener = Listener::start(&topology.server, PROTECTED);
    let allowed = format!("{CLIENT2_V4}/32");
    let ports = format!("{PROTECTED},{NO_LISTENER}");
    let gateway = Gateway::builder("")
        .in_namespace(&topology.server)
        .xdp(&ports)
        .args(&["--syn-cookies", "xdp", "--syn-flood-rate", "1"])
        .args(&["--allow", &allowed])
        .start();
    let program = gateway.pin_root.join("gateway_xdp_prog");
    let before = gateway.counter("syn_cookies_xdp");
    let mac = topology.server_mac();
    let (answered, refused) = topology.server.run(move || {
        let runner = TestRunner::open(&program).unwrap();
        let run = |frame: Vec<u8>| runner.run(&frame).unwrap();
        let syn = |src: &str, port: u16, src_port: u16| syn_to(src, SERVER_V4, port, src_port, mac);
        // Past the listener-wide rate (burst 1), every source is in cookie
        // mode and a plain SYN to the listener is answered from XDP.
        let answered: Vec<u32> = (0..3)
            .map(|i| run(syn(CLIENT_V4, PROTECTED, 1000 + i)))
            .collect();
        let mut refused = Vec::new();
        // No listener there: the kernel would answer with a reset.
        refused.push(("no listener", run(syn(CLIENT_V4, NO_LISTENER, 2000))));
        // SYN+RST and SYN+FIN: the kernel's listener discards them.
        for (name, extra) in [("syn+rst", 0x04), ("syn+fin", 0x01)] {
            let mut frame = syn(CLIENT_V4, PROTECTED, 2001);
            frame[TCP_FLAGS] |= extra;
            refused.push((name, run(frame)));
        }
        // A TCP data offset below 5 words: the kernel drops it.
        let mut frame = syn(CLIENT_V4, PROTECTED, 2002);
        frame[TCP_OFFSET] = 4 << 4;
        refused.push(("data offset 4", run(frame)));
        // The first fragment of a SYN: the kernel waits for the datagram.
        let mut frame = syn(CLIENT_V4, PROTECTED, 2003);
        frame[IP_FLAGS] = 0x20;
        refused.push(("first fragment", run(frame)));
        // Broadcast and multicast: one SYN would draw a SYN-ACK from every
        // host that takes it (the kernel answers none of them).
        let broadcast = syn_to(CLIENT_V4, SERVER_V4, PROTECTED, 2010, [0xff; 6]);
        refused.push(("broadcast MAC", run(broadcast)));
        let mut frame = syn(CLIENT_V4, PROTECTED, 2011);
        frame[6] |= 1;
        refused.push(("multicast source MAC", run(frame)));
        for (name, src, dst) in [
            ("limited broadcast", CLIENT_V4, "255.255.255.255"),
            ("multicast destination", CLIENT_V4, "224.0.0.1"),
            ("multicast source", "224.0.0.5", SERVER_V4),
            ("loopback source", "127.0.0.1", SERVER_V4),
            ("IPv6 multicast destination", CLIENT_V6, "ff02::1"),
            ("IPv6 multicast source", "ff02::5", SERVER_V6),
        ] {
            refused.push((name, run(syn_to(src, dst, PROTECTED, 2012, mac))));
        }
        // An IP length short of the TCP header, or past the frame's end.
        for (name, at, length) in [
            ("IPv4 length short", IP_LEN, 20u16),
            ("IPv4 length past the frame", IP_LEN, 1000),
        ] {
            let mut frame = syn(CLIENT_V4, PROTECTED, 2013);
            frame[at..at + 2].copy_from_slice(&length.to_be_bytes());
            refused.push((name, run(frame)));
        }
        let mut frame = syn_to(CLIENT_V6, SERVER_V6, PROTECTED, 2014, mac);
        frame[IP6_PAYLOAD_LEN..IP6_PAYLOAD_LEN + 2].copy_from_slice(&1000u16.to_be_bytes());
        refused.push(("IPv6 length past the frame", run(frame)));
        // The allow-list wins: never cookie mode, the SYN goes to the stack.
        refused.push(("allow-listed", run(syn(CLIENT2_V4, PROTECTED, 2004))));
        (answered, refused)
    });
    assert_eq!(answered[1..], [XDP_TX, XDP_TX], "setup: {answered:?}");
    let wrongly: Vec<_> = refused.iter().filter(|(_, v)| *v == XDP_TX).collect();
    assert!(wrongly.is_empty(), "answered from XDP: {wrongly:?}");
    // The program's own count agrees: only the plain SYNs were sent back.
    let sent = answered.iter().filter(|v| **v == XDP_TX).count() as u64;
    assert_eq!(gateway.counter("syn_cookies_xdp") - before, sent);
}
