//! The property: whatever a banned source sends, once its frame carries an
//! IP header the program never returns `XDP_PASS` unless the source is
//! allow-listed. Every port is protected here, so "the port is known and not
//! protected" cannot excuse a pass. Frames are real shapes (SYN, ACK, UDP,
//! VLAN, IPv4 options and fragments, IPv6 extension chains and fragments)
//! mutated at random, plus random bytes, from a fixed seed; each runs once
//! through `BPF_PROG_TEST_RUN` on the loaded program.
use super::*;

const SEED: u64 = 0x5eed_0013_9a75;
const FRAMES: usize = 50_000;
const XDP_PASS: u32 = 2;
/// Banned and not allow-listed: must never pass.
const BANNED: [&str; 2] = [CLIENT_V4, CLIENT_V6];
/// Banned but allow-listed: may pass.
const ALLOWED: [&str; 2] = [CLIENT2_V4, CLIENT2_V6];

/// xorshift64*: deterministic, no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    fn byte(&mut self) -> u8 {
        self.next() as u8
    }
}

/// The real shapes the mutations start from.
fn shapes() -> Vec<Vec<u8>> {
    let v4 = || {
        TcpFrame::syn(
            CLIENT_V4.parse().unwrap(),
            SERVER_V4.parse().unwrap(),
            PROTECTED,
        )
    };
    let v6 = || {
        TcpFrame::syn(
            CLIENT_V6.parse().unwrap(),
            SERVER_V6.parse().unwrap(),
            PROTECTED,
        )
    };
    let mut out = vec![v4().build(), v6().build()];
    let mut ack = v4();
    ack.syn = false;
    out.push(ack.build());
    let mut udp = v6();
    udp.udp = true;
    out.push(udp.build());
    let mut vlan = v4();
    vlan.vlans = vec![(0x8100, 10)];
    out.push(vlan.build());
    let mut qinq = v4();
    qinq.vlans = vec![(0x88a8, 20), (0x8100, 30)];
    qinq.ipv4_options = true;
    out.push(qinq.build());
    out.extend(v4().ipv4_fragments(8, 7));
    let mut opts = v4();
    opts.ipv4_options = true;
    out.extend(opts.ipv4_fragments(16, 8));
    out.extend(v6().ipv6_fragments(8, 9));
    for chain in 1..=6 {
        let mut ext = v6();
        ext.ipv6_ext = vec![Ipv6Ext::HopByHop];
        ext.ipv6_ext
            .extend(vec![Ipv6Ext::DestinationOptions; chain - 1]);
        out.push(ext.build());
    }
    let mut first = v6();
    first.ipv6_ext = vec![Ipv6Ext::DestinationOptions, Ipv6Ext::FirstFragment];
    first.vlans = vec![(0x8100, 5)];
    out.push(first.build());
    out
}

/// Where the frame's IP source address is, if it has an IP header at all
/// (Ethernet, at most two VLAN tags, and the whole fixed IPv4/IPv6 header):
/// an oracle written apart from the parser.
fn source_at(frame: &[u8]) -> Option<(usize, usize)> {
    let ethertype = |at: usize| {
        frame
            .get(at..at + 2)
            .map(|b| u16::from_be_bytes([b[0], b[1]]))
    };
    let vlan = |t: u16| t == 0x8100 || t == 0x88a8;
    let mut l3 = 14;
    let mut kind = ethertype(12)?;
    for at in [16, 20] {
        if vlan(kind) {
            kind = ethertype(at)?;
            l3 = at + 2;
        }
    }
    match kind {
        0x0800 if frame.len() >= l3 + 20 => Some((l3 + 12, 4)),
        0x86dd if frame.len() >= l3 + 40 => Some((l3 + 8, 16)),
        _ => None,
    }
}

fn address_bytes(ip: &str, len: usize) -> Vec<u8> {
    match (ip.parse::<std::net::IpAddr>().unwrap(), len) {
        (std::net::IpAddr::V4(v4), 4) => v4.octets().to_vec(),
        (std::net::IpAddr::V6(v6), 16) => v6.octets().to_vec(),
        _ => unreachable!("families are matched by length"),
    }
}

/// One mutation of `frame`: byte flips, interesting values at header
/// offsets, cuts, insertions, deletions, or appended bytes.
fn mutate(rng: &mut Rng, frame: &mut Vec<u8>) {
    const INTERESTING: [u8; 16] = [
        0, 1, 4, 6, 17, 41, 43, 44, 51, 58, 59, 60, 0x20, 0x3f, 0x45, 0xff,
    ];
    for _ in 0..1 + rng.below(4) {
        let len = frame.len();
        match rng.below(7) {
            0 if len > 0 => {
                let at = rng.below(len);
                frame[at] ^= 1 << rng.below(8);
            }
            1 if len > 0 => {
                // The headers live in the first 120 bytes.
                let at = rng.below(len.min(120));
                frame[at] = INTERESTING[rng.below(INTERESTING.len())];
            }
            2 if len > 14 => frame.truncate(14 + rng.below(len - 14)),
            3 => {
                let at = rng.below(len + 1);
                let bytes: Vec<u8> = (0..1 + rng.below(16)).map(|_| rng.byte()).collect();
                frame.splice(at..at, bytes);
            }
            4 if len > 1 => {
                let at = rng.below(len);
                let end = (at + 1 + rng.below(8)).min(len);
                frame.drain(at..end);
            }
            5 => frame.extend((0..rng.below(64)).map(|_| rng.byte())),
            _ if len > 14 => {
                // Retag the ethertype: VLAN, IPv4, IPv6 or other.
                let kinds: [u16; 5] = [0x8100, 0x88a8, 0x0800, 0x86dd, 0x0806];
                frame[12..14].copy_from_slice(&kinds[rng.below(5)].to_be_bytes());
            }
            _ => {}
        }
    }
}

#[test]
fn mutated_frames_from_a_banned_source_never_pass() {
    if !require_root("mutated_frames_from_a_banned_source_never_pass") {
        return;
    }
    // Every port protected (clap appends repeated --ports), so no pass can
    // be excused by an unprotected port.
    let ports: Vec<String> = (0..=u16::MAX).map(|p| p.to_string()).collect();
    let mut extra: Vec<String> = Vec::new();
    for chunk in ports.chunks(8192) {
        extra.push("--ports".into());
        extra.push(chunk.join(","));
    }
    for allowed in ALLOWED {
        let prefix = if allowed.contains(':') { 128 } else { 32 };
        extra.push("--allow".into());
        extra.push(format!("{allowed}/{prefix}"));
    }
    let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
    let topology = Topology::new();
    let gateway = protecting(&topology, "", &extra).start();
    for source in BANNED.iter().chain(ALLOWED.iter()) {
        gateway.xdp(&["ban", source, "--for", "1h"]);
    }
    let runner = TestRunner::open(&gateway.pin_root.join("gateway_xdp_prog")).unwrap();

    let shapes = shapes();
    let mut rng = Rng(SEED);
    let (mut judged, mut passed_allowed, mut passed_no_ip) = (0usize, 0usize, 0usize);
    let mut failures = Vec::new();
    for index in 0..FRAMES {
        let mut frame = if index % 8 == 7 {
            // Random bytes, half of them behind an IP ethertype.
            let mut bytes: Vec<u8> = (0..14 + rng.below(120)).map(|_| rng.byte()).collect();
            if rng.below(2) == 0 {
                let kind: u16 = if rng.below(2) == 0 { 0x0800 } else { 0x86dd };
                bytes[12..14].copy_from_slice(&kind.to_be_bytes());
            }
            bytes
        } else {
            let mut frame = shapes[rng.below(shapes.len())].clone();
            mutate(&mut rng, &mut frame);
            frame
        };
        if frame.len() < 14 {
            continue; // the kernel refuses test runs shorter than Ethernet
        }
        // Whatever the mutation did, an IP header names a banned source
        // (one in ten an allow-listed one).
        let allowed = rng.below(10) == 0;
        let source = source_at(&frame);
        if let Some((at, len)) = source {
            let pool = if allowed { ALLOWED } else { BANNED };
            let ip = pool[usize::from(len == 16)];
            frame[at..at + len].copy_from_slice(&address_bytes(ip, len));
        }
        let verdict = runner.run(&frame).unwrap();
        match (source, allowed) {
            (None, _) => passed_no_ip += usize::from(verdict == XDP_PASS),
            (Some(_), true) => passed_allowed += usize::from(verdict == XDP_PASS),
            (Some(_), false) => {
                judged += 1;
                if verdict == XDP_PASS && failures.len() < 5 {
                    failures.push(format!("{frame:02x?}"));
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "frames from a banned source passed:\n{}",
        failures.join("\n")
    );
    // The run exercised every branch of the property.
    assert!(judged > FRAMES / 3, "{judged} judged frames");
    assert!(passed_allowed > 0 && passed_no_ip > 0);
    assert!(gateway.counter("dropped_banned") >= judged as u64);
}
