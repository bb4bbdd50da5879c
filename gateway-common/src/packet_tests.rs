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

/// What the parser finds in an unfragmented TCP segment (`syn`: SYN
/// alone, else ACK) at `l4`, behind an IP header at `l3`.
fn tcp(src: &str, dst_port: u16, syn: bool, l3: usize, l4: usize) -> Option<Parsed> {
    Some(Parsed {
        src: source(src),
        ipv6: src.contains(':'),
        l3,
        l4,
        fragment: false,
        proto: IPPROTO_TCP,
        kind: L4::Tcp,
        dst_port,
        tcp_flags: if syn { TCP_SYN } else { TCP_ACK },
        tcp_len: 20,
    })
}

fn fragment(expected: Option<Parsed>) -> Option<Parsed> {
    expected.map(|parsed| Parsed {
        fragment: true,
        ..parsed
    })
}

/// The same packet, but the parser could not read its ports.
fn no_ports(expected: Option<Parsed>, kind: L4) -> Option<Parsed> {
    expected.map(|parsed| Parsed {
        kind,
        dst_port: 0,
        tcp_flags: 0,
        tcp_len: 0,
        ..parsed
    })
}

fn parsed(frame: &[u8]) -> Option<Parsed> {
    parse(&Bytes(frame))
}

/// Every shape the XDP tests send, with the flow the parser must find:
/// also the seeds of the `xdp_parser` fuzz target (see `fuzz_seeds_are_the_samples`).
fn samples() -> Vec<(&'static str, Vec<u8>, Option<Parsed>)> {
    let mut out = Vec::new();
    out.push((
        "v4_syn",
        syn(V4_SRC, V4_DST, 8080).build(),
        tcp(V4_SRC, 8080, true, 14, 34),
    ));
    let mut ack = syn(V4_SRC, V4_DST, 8080);
    ack.syn = false;
    out.push(("v4_ack", ack.build(), tcp(V4_SRC, 8080, false, 14, 34)));
    let mut vlan = syn(V4_SRC, V4_DST, 443);
    vlan.vlans = vec![(DOT1Q, 100)];
    out.push(("v4_vlan", vlan.build(), tcp(V4_SRC, 443, true, 18, 38)));
    let mut qinq = syn(V4_SRC, V4_DST, 80);
    qinq.vlans = vec![(QINQ, 200), (DOT1Q, 300)];
    qinq.ipv4_options = true;
    out.push((
        "v4_qinq_options",
        qinq.build(),
        tcp(V4_SRC, 80, true, 22, 46),
    ));
    out.push((
        "v6_syn",
        syn(V6_SRC, V6_DST, 8443).build(),
        tcp(V6_SRC, 8443, true, 14, 54),
    ));
    let mut ext = syn(V6_SRC, V6_DST, 8443);
    ext.ipv6_ext = vec![Ipv6Ext::DestinationOptions, Ipv6Ext::FirstFragment];
    out.push((
        "v6_ext",
        ext.build(),
        fragment(tcp(V6_SRC, 8443, true, 14, 70)),
    ));
    let mut v6_vlan = syn(V6_SRC, V6_DST, 80);
    v6_vlan.vlans = vec![(DOT1Q, 7)];
    v6_vlan.ipv6_ext = vec![Ipv6Ext::FirstFragment];
    out.push((
        "v6_vlan_fragment",
        v6_vlan.build(),
        fragment(tcp(V6_SRC, 80, true, 18, 66)),
    ));
    let mut chain = syn(V6_SRC, V6_DST, 8080);
    chain.ipv6_ext = vec![Ipv6Ext::HopByHop];
    chain
        .ipv6_ext
        .extend([Ipv6Ext::DestinationOptions; IPV6_MAX_EXT_HEADERS]);
    let long = no_ports(
        tcp(V6_SRC, 0, true, 14, 54 + 8 * IPV6_MAX_EXT_HEADERS),
        L4::LongChain,
    );
    out.push((
        "v6_long_chain",
        chain.build(),
        long.map(|parsed| Parsed {
            proto: 60,
            ..parsed
        }),
    ));
    let v4_fragments = syn(V4_SRC, V4_DST, 8080).ipv4_fragments(8, 1);
    let first = no_ports(tcp(V4_SRC, 0, true, 14, 34), L4::Truncated);
    out.push((
        "v4_tiny_first_fragment",
        v4_fragments[0].clone(),
        fragment(first),
    ));
    let later = no_ports(tcp(V4_SRC, 0, true, 14, 34), L4::LaterFragment);
    out.push((
        "v4_later_fragment",
        v4_fragments[1].clone(),
        fragment(later),
    ));
    let v6_fragments = syn(V6_SRC, V6_DST, 8080).ipv6_fragments(8, 1);
    let later = no_ports(tcp(V6_SRC, 0, true, 14, 62), L4::LaterFragment);
    out.push((
        "v6_later_fragment",
        v6_fragments[1].clone(),
        fragment(later.map(|p| Parsed {
            l4: 54,
            proto: 44,
            ..p
        })),
    ));
    let mut udp = syn(V4_SRC, V4_DST, 53);
    udp.udp = true;
    let udp_parsed = tcp(V4_SRC, 53, false, 14, 34).map(|parsed| Parsed {
        proto: IPPROTO_UDP,
        kind: L4::Udp,
        tcp_flags: 0,
        tcp_len: 0,
        ..parsed
    });
    out.push(("v4_udp", udp.build(), udp_parsed));
    out
}

#[test]
fn finds_source_and_ports_in_every_test_frame() {
    for (name, frame, expected) in samples() {
        assert_eq!(parsed(&frame), expected, "{name}");
    }
}

#[test]
fn udp_has_ports_and_is_never_a_syn() {
    let mut frame = syn(V4_SRC, V4_DST, 53).build();
    frame[14 + 9] = IPPROTO_UDP;
    let found = parsed(&frame).expect("IPv4");
    assert_eq!(
        (found.kind, found.dst_port, found.is_syn()),
        (L4::Udp, 53, false)
    );
    let mut frame = syn(V6_SRC, V6_DST, 53).build();
    frame[14 + 6] = IPPROTO_UDP;
    let found = parsed(&frame).expect("IPv6");
    assert_eq!(
        (found.kind, found.dst_port, found.is_syn()),
        (L4::Udp, 53, false)
    );
}

/// Once the fixed IP header is there, every outcome names the source.
#[test]
fn the_source_is_known_whatever_follows_the_ip_header() {
    let kind = |frame: &[u8]| {
        let found = parsed(frame).expect("an IP header");
        assert_eq!(found.src, source(if found.ipv6 { V6_SRC } else { V4_SRC }));
        (found.kind, found.fragment)
    };
    let mut later = syn(V4_SRC, V4_DST, 80).build();
    later[14 + 7] = 1; // fragment offset 8 bytes
    assert_eq!(kind(&later), (L4::LaterFragment, true));
    let mut first = syn(V4_SRC, V4_DST, 80).build();
    first[14 + 6] = 0x20; // More Fragments, offset 0: ports still read
    assert_eq!(kind(&first), (L4::Tcp, true));

    let mut icmp = syn(V4_SRC, V4_DST, 80).build();
    icmp[14 + 9] = 1;
    assert_eq!(kind(&icmp), (L4::Other, false));

    let mut bad_version = syn(V4_SRC, V4_DST, 80).build();
    bad_version[14] = 0x65;
    assert_eq!(kind(&bad_version), (L4::Truncated, false));

    let mut short_ihl = syn(V4_SRC, V4_DST, 80).build();
    short_ihl[14] = 0x44;
    assert_eq!(kind(&short_ihl), (L4::Truncated, false));

    let mut v6 = syn(V6_SRC, V6_DST, 80);
    v6.ipv6_ext = vec![Ipv6Ext::FirstFragment];
    let mut v6 = v6.build();
    v6[54 + 3] = 0x08; // fragment offset 1 (8 bytes)
    assert_eq!(kind(&v6), (L4::LaterFragment, true));

    let mut bad_v6 = syn(V6_SRC, V6_DST, 80).build();
    bad_v6[14] = 0x40;
    assert_eq!(kind(&bad_v6), (L4::Truncated, false));
}

#[test]
fn frames_without_an_ip_header_are_not_parsed() {
    let mut arp = syn(V4_SRC, V4_DST, 80).build();
    arp[12..14].copy_from_slice(&0x0806u16.to_be_bytes());
    assert_eq!(parsed(&arp), None);
    let mut three_tags = syn(V4_SRC, V4_DST, 80);
    three_tags.vlans = vec![(DOT1Q, 1), (DOT1Q, 2), (DOT1Q, 3)];
    assert_eq!(parsed(&three_tags.build()), None);
    // ... and said so: the program drops them rather than pass them as
    // not IP (the kernel strips priority tags and delivers the packet).
    assert!(too_many_vlan_tags(&Bytes(&three_tags.build())));
    assert!(!too_many_vlan_tags(&Bytes(&arp)));
    let mut qinq = syn(V4_SRC, V4_DST, 80);
    qinq.vlans = vec![(QINQ, 1), (DOT1Q, 2)];
    assert!(!too_many_vlan_tags(&Bytes(&qinq.build())));
}

#[test]
fn more_extension_headers_than_the_bound_are_a_long_chain() {
    let mut frame = syn(V6_SRC, V6_DST, 80);
    frame.ipv6_ext = vec![Ipv6Ext::DestinationOptions; IPV6_MAX_EXT_HEADERS];
    assert_eq!(
        parsed(&frame.build()),
        tcp(V6_SRC, 80, true, 14, 54 + 8 * IPV6_MAX_EXT_HEADERS)
    );
    frame.ipv6_ext.push(Ipv6Ext::DestinationOptions);
    let found = parsed(&frame.build()).expect("IPv6");
    assert_eq!((found.kind, found.gave_up()), (L4::LongChain, true));
}

/// Cut anywhere, a frame parses as nothing (no whole IP header yet), as
/// the same source with its ports unknown, or exactly as the whole frame.
#[test]
fn every_truncation_keeps_the_source_or_has_no_ip_header() {
    for (name, frame, expected) in samples() {
        let expected = expected.expect("samples are IP");
        let ip_header_end = expected.l3 + if expected.ipv6 { 40 } else { 20 };
        for cut in 0..frame.len() {
            let outcome = parsed(&frame[..cut]);
            if cut < ip_header_end {
                assert_eq!(outcome, None, "{name} cut at {cut}");
                continue;
            }
            let outcome = outcome.unwrap_or_else(|| panic!("{name} cut at {cut}"));
            assert_eq!(outcome.src, expected.src, "{name} cut at {cut}");
            assert!(
                outcome == expected || outcome.kind == L4::Truncated,
                "{name} cut at {cut}: {outcome:?}"
            );
        }
    }
}

/// The straight-line parse of the common shape answers exactly what the
/// full parse does, for every sample, every cut of it and many one-byte
/// mutations; and it does take plain IPv4 and IPv6 TCP.
#[test]
fn plain_tcp_parse_agrees_with_the_full_parse() {
    let values = [
        0u8, 1, 6, 8, 17, 0x20, 0x3f, 0x40, 0x45, 0x46, 0x60, 0x81, 0x86, 0xdd, 0xff,
    ];
    let mut taken = 0;
    for (name, frame, _) in samples() {
        let mut frames: Vec<Vec<u8>> = (0..=frame.len()).map(|cut| frame[..cut].to_vec()).collect();
        for at in 0..frame.len().min(80) {
            for value in values {
                let mut mutated = frame.clone();
                mutated[at] = value;
                frames.push(mutated);
            }
        }
        for candidate in &frames {
            if let Some(plain) = parse_plain_tcp(&Bytes(candidate)) {
                assert_eq!(parsed(candidate), Some(plain), "{name}: {candidate:?}");
                taken += 1;
            }
        }
    }
    assert!(taken > 0);
    for frame in [syn(V4_SRC, V4_DST, 80), syn(V6_SRC, V6_DST, 80)] {
        let frame = frame.build();
        assert_eq!(parse_plain_tcp(&Bytes(&frame)), parsed(&frame));
        assert!(parse_plain_tcp(&Bytes(&frame)).is_some());
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
