//! The parser on the host, over the frames the end-to-end XDP tests send
//! (`tests/support/packet.rs`, the same source file, not a copy).
use std::net::IpAddr;

use super::*;
use crate::SourceAddr;

#[allow(dead_code)] // the raw-socket half is for the end-to-end tests
#[path = "../../tests/support/packet.rs"]
mod frames;

use frames::{Ipv6Ext, TcpFrame, ETH_P_8021AD as QINQ, ETH_P_8021Q as DOT1Q};

const V4_SRC: &str = "10.0.0.2";
const V4_DST: &str = "10.0.0.1";
const V6_SRC: &str = "fd00::2";
const V6_DST: &str = "fd00::1";

fn ip(text: &str) -> IpAddr {
    text.parse().expect("test address")
}

fn source(text: &str) -> SourceAddr {
    match ip(text) {
        IpAddr::V4(v4) => SourceAddr::from_v4(v4.octets()),
        IpAddr::V6(v6) => SourceAddr { addr: v6.octets() },
    }
}

fn syn(src: &str, dst: &str, port: u16) -> TcpFrame {
    TcpFrame::syn(ip(src), ip(dst), port)
}

fn flow(src: &str, dst_port: u16, is_syn: bool) -> Option<Flow> {
    Some(Flow {
        src: source(src),
        dst_port,
        is_syn,
        l3: 0,
        l4: 0,
        ipv6: false,
        tcp_flags: 0,
    })
}

/// The flow without its offsets and flags (checked on their own below).
fn parsed(frame: &[u8]) -> Result<Option<Flow>, Truncated> {
    parse(&Bytes(frame)).map(|flow| {
        flow.map(|flow| Flow {
            l3: 0,
            l4: 0,
            ipv6: false,
            tcp_flags: 0,
            ..flow
        })
    })
}

/// Every shape the XDP tests send, with the flow the parser must find:
/// also the seeds of the `xdp_parser` fuzz target (see `fuzz_seeds_are_the_samples`).
fn samples() -> Vec<(&'static str, Vec<u8>, Option<Flow>)> {
    let mut out = Vec::new();
    out.push((
        "v4_syn",
        syn(V4_SRC, V4_DST, 8080).build(),
        flow(V4_SRC, 8080, true),
    ));
    let mut ack = syn(V4_SRC, V4_DST, 8080);
    ack.syn = false;
    out.push(("v4_ack", ack.build(), flow(V4_SRC, 8080, false)));
    let mut vlan = syn(V4_SRC, V4_DST, 443);
    vlan.vlans = vec![(DOT1Q, 100)];
    out.push(("v4_vlan", vlan.build(), flow(V4_SRC, 443, true)));
    let mut qinq = syn(V4_SRC, V4_DST, 80);
    qinq.vlans = vec![(QINQ, 200), (DOT1Q, 300)];
    qinq.ipv4_options = true;
    out.push(("v4_qinq_options", qinq.build(), flow(V4_SRC, 80, true)));
    out.push((
        "v6_syn",
        syn(V6_SRC, V6_DST, 8443).build(),
        flow(V6_SRC, 8443, true),
    ));
    let mut ext = syn(V6_SRC, V6_DST, 8443);
    ext.ipv6_ext = vec![Ipv6Ext::DestinationOptions, Ipv6Ext::FirstFragment];
    out.push(("v6_ext", ext.build(), flow(V6_SRC, 8443, true)));
    let mut v6_vlan = syn(V6_SRC, V6_DST, 80);
    v6_vlan.vlans = vec![(DOT1Q, 7)];
    v6_vlan.ipv6_ext = vec![Ipv6Ext::FirstFragment];
    out.push(("v6_vlan_fragment", v6_vlan.build(), flow(V6_SRC, 80, true)));
    out
}

#[test]
fn finds_source_port_and_syn_in_every_test_frame() {
    for (name, frame, expected) in samples() {
        assert_eq!(parsed(&frame), Ok(expected), "{name}");
    }
}

#[test]
fn udp_has_ports_and_is_never_a_syn() {
    let mut frame = syn(V4_SRC, V4_DST, 53).build();
    frame[14 + 9] = IPPROTO_UDP;
    assert_eq!(parsed(&frame), Ok(flow(V4_SRC, 53, false)));
    let mut frame = syn(V6_SRC, V6_DST, 53).build();
    frame[14 + 6] = IPPROTO_UDP;
    assert_eq!(parsed(&frame), Ok(flow(V6_SRC, 53, false)));
}

#[test]
fn non_first_fragments_and_non_tcp_udp_are_not_flows() {
    let mut v4 = syn(V4_SRC, V4_DST, 80).build();
    v4[14 + 7] = 1; // fragment offset 8 bytes
    assert_eq!(parsed(&v4), Ok(None));

    let mut icmp = syn(V4_SRC, V4_DST, 80).build();
    icmp[14 + 9] = 1;
    assert_eq!(parsed(&icmp), Ok(None));

    let mut bad_version = syn(V4_SRC, V4_DST, 80).build();
    bad_version[14] = 0x65;
    assert_eq!(parsed(&bad_version), Ok(None));

    let mut short_ihl = syn(V4_SRC, V4_DST, 80).build();
    short_ihl[14] = 0x44;
    assert_eq!(parsed(&short_ihl), Ok(None));

    let mut arp = syn(V4_SRC, V4_DST, 80).build();
    arp[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
    assert_eq!(parsed(&arp), Ok(None));

    let mut v6 = syn(V6_SRC, V6_DST, 80);
    v6.ipv6_ext = vec![Ipv6Ext::FirstFragment];
    let mut v6 = v6.build();
    v6[54 + 3] = 0x08; // fragment offset 1 (8 bytes)
    assert_eq!(parsed(&v6), Ok(None));
}

#[test]
fn more_extension_headers_than_the_bound_are_not_followed() {
    let mut frame = syn(V6_SRC, V6_DST, 80);
    frame.ipv6_ext = vec![Ipv6Ext::DestinationOptions; IPV6_MAX_EXT_HEADERS];
    assert_eq!(parsed(&frame.build()), Ok(flow(V6_SRC, 80, true)));
    frame.ipv6_ext.push(Ipv6Ext::DestinationOptions);
    assert_eq!(parsed(&frame.build()), Ok(None));
}

#[test]
fn every_truncation_is_truncated_and_never_a_different_flow() {
    for (name, frame, expected) in samples() {
        // The parser reads 14 bytes of TCP header, the test frames carry 20.
        let needed = frame.len() - 6;
        for cut in 0..frame.len() {
            let outcome = parsed(&frame[..cut]);
            if cut < needed {
                assert_eq!(outcome, Err(Truncated), "{name} cut at {cut}");
            } else {
                assert_eq!(outcome, Ok(expected), "{name} cut at {cut}");
            }
        }
    }
}

#[test]
fn byte_reads_are_bounds_checked() {
    let bytes = Bytes(&[1, 2, 3]);
    assert_eq!(bytes.load::<2>(1), Some([2, 3]));
    assert_eq!(bytes.load::<2>(2), None);
    assert_eq!(bytes.read_fixed::<1>(usize::MAX), None);
    assert_eq!(bytes.load::<0>(3), Some([]));
}

/// The committed `xdp_parser` fuzz seeds are exactly `samples()`, so the
/// fuzzer starts from every shape the parser knows. After changing the
/// samples, `GATEWAY_WRITE_FUZZ_SEEDS=1 cargo test -p gateway-common`
/// writes them.
#[test]
fn fuzz_seeds_are_the_samples() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/xdp_parser");
    let write = std::env::var_os("GATEWAY_WRITE_FUZZ_SEEDS").is_some();
    for (name, frame, _) in samples() {
        let path = dir.join(name);
        if write {
            std::fs::create_dir_all(&dir).expect("corpus directory");
            std::fs::write(&path, &frame).expect("seed file");
        }
        let seed = std::fs::read(&path).ok();
        assert_eq!(
            seed.as_deref(),
            Some(&frame[..]),
            "{} is missing or stale: rerun with GATEWAY_WRITE_FUZZ_SEEDS=1",
            path.display()
        );
    }
}

/// The SYN-cookie code reads the IP and TCP headers again at these offsets.
#[test]
fn offsets_family_and_flags() {
    let v4 = parse(&Bytes(&syn(V4_SRC, V4_DST, 8080).build()))
        .unwrap()
        .unwrap();
    assert_eq!((v4.l3, v4.l4, v4.ipv6, v4.tcp_flags), (14, 34, false, 0x02));
    let mut v6 = syn(V6_SRC, V6_DST, 80);
    v6.vlans = vec![(DOT1Q, 7)];
    v6.syn = false;
    let v6 = parse(&Bytes(&v6.build())).unwrap().unwrap();
    assert_eq!((v6.l3, v6.l4, v6.ipv6), (18, 58, true));
    assert_eq!(v6.tcp_flags & 0x12, 0x10, "an ACK");
}
