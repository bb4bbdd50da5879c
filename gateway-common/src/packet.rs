//! The XDP program's packet parser, generic over how bytes are read so the
//! same source runs in the kernel (over the XDP context, see `gateway-ebpf`)
//! and on the host (unit tests below and the `xdp_parser` fuzz target, over
//! a byte slice).
//!
//! It understands Ethernet, up to two VLAN tags, IPv4 with options and IPv6
//! with up to four extension headers, then reads the TCP/UDP ports (and the
//! TCP flags). Once the fixed IP header is read the source is known, and the
//! parser always answers with it: what follows (a fragment, a cut L4 header,
//! another protocol, a longer extension-header chain) only decides what the
//! program knows about the ports, never whether the source is judged.
//! Everything stays `#[inline(always)]` and loop-bounded: the eBPF verifier
//! must follow every path.

/// Bounds-checked reads of `N` bytes at `offset` from the packet start;
/// `None` when they are not all inside the packet.
pub trait Packet {
    /// A read at an offset the verifier can follow (Ethernet and VLAN
    /// headers, the L4 header after fixed-size IP headers): the kernel side
    /// uses direct packet access.
    fn read_fixed<const N: usize>(&self, offset: usize) -> Option<[u8; N]>;
    /// A read at a data-dependent offset (after IPv4 options or IPv6
    /// extension headers): the kernel side uses `bpf_xdp_load_bytes`, which
    /// bounds-checks at run time, since variable packet offsets are where
    /// the verifier and LLVM disagree.
    fn load<const N: usize>(&self, offset: usize) -> Option<[u8; N]>;
}

/// An IP packet: its source, where its headers are, and what the parser
/// could learn about its transport. Plain fields, every one always set
/// (no enum payloads): the verifier rejects copies of undefined bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Parsed {
    pub src: crate::SourceAddr,
    /// IPv6 (else IPv4).
    pub ipv6: bool,
    /// Offset of the IP header from the frame start.
    pub l3: usize,
    /// Offset of the L4 header (after IPv4 options or IPv6 extension
    /// headers); meaningful for [`L4::Tcp`] and [`L4::Udp`].
    pub l4: usize,
    /// Part of a fragmented datagram (IPv4 MF flag or offset, or an IPv6
    /// Fragment header), first fragment included.
    pub fragment: bool,
    /// The IP protocol (IPv6: the last next-header value followed).
    pub proto: u8,
    pub kind: L4,
    /// TCP/UDP destination port (0 for other kinds).
    pub dst_port: u16,
    /// TCP flags, byte 13 of the header (0 for other kinds).
    pub tcp_flags: u8,
    /// TCP header length from its data offset (0 for other kinds); the
    /// bytes past the first 14 are not checked to be present.
    pub tcp_len: usize,
}

/// What the parser learned past the IP header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum L4 {
    /// `dst_port`, `tcp_flags` and `tcp_len` are read.
    Tcp,
    /// `dst_port` is read.
    Udp,
    /// Neither TCP nor UDP (ICMP, ESP, ...): `proto` says which.
    Other,
    /// A non-first fragment: no L4 header, the port cannot be known.
    LaterFragment,
    /// Gave up: the L4 header (or an extension header) is cut short, or
    /// the IP header is malformed (wrong version, IHL below 5).
    Truncated,
    /// Gave up: more IPv6 extension headers than the parser follows
    /// ([`IPV6_MAX_EXT_HEADERS`]).
    LongChain,
}

impl Parsed {
    /// TCP SYN without ACK: a new connection.
    #[inline(always)]
    pub fn is_syn(&self) -> bool {
        self.kind == L4::Tcp && self.tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN
    }

    /// The parser could not find the ports (see [`L4::Truncated`] and
    /// [`L4::LongChain`]).
    #[inline(always)]
    pub fn gave_up(&self) -> bool {
        matches!(self.kind, L4::Truncated | L4::LongChain)
    }
}

pub const ETH_HDR_LEN: usize = 14;
pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86DD;
pub const ETH_P_8021Q: u16 = 0x8100;
pub const ETH_P_8021AD: u16 = 0x88A8;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

const IPV6_HOPOPTS: u8 = 0;
const IPV6_ROUTING: u8 = 43;
const IPV6_FRAGMENT: u8 = 44;
const IPV6_DSTOPTS: u8 = 60;
pub const IPV6_MAX_EXT_HEADERS: usize = 4;

/// Finds the source of an IP packet and what follows its IP header.
/// `None`: no IP header (another ethertype, more than two VLAN tags, or
/// the frame ends before the fixed IPv4/IPv6 header does).
#[inline(always)]
pub fn parse<P: Packet>(packet: &P) -> Option<Parsed> {
    // Up to two VLAN tags (802.1Q, or 802.1ad outer + 802.1Q inner), each
    // at a fixed offset so direct access stays verifiable.
    let mut l3 = ETH_HDR_LEN;
    let mut ethertype = u16::from_be_bytes(packet.read_fixed(12)?);
    if is_vlan(ethertype) {
        ethertype = u16::from_be_bytes(packet.read_fixed(16)?);
        l3 = ETH_HDR_LEN + 4;
        if is_vlan(ethertype) {
            ethertype = u16::from_be_bytes(packet.read_fixed(20)?);
            l3 = ETH_HDR_LEN + 8;
        }
    }
    let mut parsed = match ethertype {
        ETH_P_IP => parse_ipv4(packet, l3)?,
        ETH_P_IPV6 => parse_ipv6(packet, l3)?,
        _ => return None,
    };
    if parsed.kind == L4::Other {
        read_ports(packet, &mut parsed);
    }
    Some(parsed)
}

/// The common shape in straight-line code: Ethernet without VLAN tags,
/// then IPv4 without options and not a fragment, or IPv6 without extension
/// headers, then at least 14 bytes of TCP. For those frames it answers
/// exactly what [`parse`] does (the host tests and the `xdp_parser` fuzz
/// target check it) at a fraction of the cost: one bounds check and a few
/// word loads, no branches on offsets. `None`: any other shape, for
/// [`parse`] to read.
#[inline(always)]
pub fn parse_plain_tcp<P: Packet>(packet: &P) -> Option<Parsed> {
    // From the ethertype to the TCP flags: 2 + 20 + 14 bytes for IPv4.
    const V4_LEN: usize = 36;
    // 2 + 40 + 14 for IPv6.
    const V6_LEN: usize = 56;
    let head: [u8; V4_LEN] = packet.read_fixed(12)?;
    let (ipv6, src, tcp) = match u16::from_be_bytes([head[0], head[1]]) {
        ETH_P_IP => {
            // Version 4, IHL 5; neither More Fragments nor an offset; TCP.
            if head[2] != 0x45 || head[8] & 0x3f != 0 || head[9] != 0 || head[11] != IPPROTO_TCP {
                return None;
            }
            let src = crate::SourceAddr::from_v4_word(u32::from_ne_bytes([
                head[14], head[15], head[16], head[17],
            ]));
            (false, src, [head[24], head[25], head[34], head[35]])
        }
        ETH_P_IPV6 => {
            let head: [u8; V6_LEN] = packet.read_fixed(12)?;
            if head[2] >> 4 != 6 || head[8] != IPPROTO_TCP {
                return None;
            }
            let word = |at: usize| {
                u64::from_ne_bytes([
                    head[at],
                    head[at + 1],
                    head[at + 2],
                    head[at + 3],
                    head[at + 4],
                    head[at + 5],
                    head[at + 6],
                    head[at + 7],
                ])
            };
            let src = crate::SourceAddr::from_words([word(10), word(18)]);
            (true, src, [head[44], head[45], head[54], head[55]])
        }
        _ => return None,
    };
    let [port_high, port_low, offset, flags] = tcp;
    let l3 = ETH_HDR_LEN;
    Some(Parsed {
        src,
        ipv6,
        l3,
        l4: l3 + if ipv6 { 40 } else { 20 },
        fragment: false,
        proto: IPPROTO_TCP,
        kind: L4::Tcp,
        dst_port: u16::from_be_bytes([port_high, port_low]),
        tcp_flags: flags,
        tcp_len: usize::from(offset >> 4) * 4,
    })
}

/// Ports (and for TCP, the flags byte at 13 and the data offset at 12)
/// from the L4 header, if it is TCP or UDP.
#[inline(always)]
fn read_ports<P: Packet>(packet: &P, parsed: &mut Parsed) {
    match parsed.proto {
        IPPROTO_TCP => match read_l4::<P, 14>(packet, parsed.l4) {
            Some(head) => {
                parsed.kind = L4::Tcp;
                parsed.dst_port = u16::from_be_bytes([head[2], head[3]]);
                parsed.tcp_flags = head[13];
                parsed.tcp_len = usize::from(head[12] >> 4) * 4;
            }
            None => parsed.kind = L4::Truncated,
        },
        IPPROTO_UDP => match read_l4::<P, 4>(packet, parsed.l4) {
            Some(head) => {
                parsed.kind = L4::Udp;
                parsed.dst_port = u16::from_be_bytes([head[2], head[3]]);
            }
            None => parsed.kind = L4::Truncated,
        },
        _ => {}
    }
}

/// The L4 header sits at one of a few fixed offsets in the common case (no
/// IP options or IPv6 extension headers): read those directly, which is far
/// cheaper than the helper call.
#[inline(always)]
fn read_l4<P: Packet, const N: usize>(packet: &P, l4: usize) -> Option<[u8; N]> {
    // Ethernet + 0, 1 or 2 VLAN tags + a 20-byte IPv4 or 40-byte IPv6 header.
    const V4: usize = ETH_HDR_LEN + 20;
    const V4_VLAN: usize = V4 + 4;
    const V4_QINQ: usize = V4 + 8;
    const V6: usize = ETH_HDR_LEN + 40;
    const V6_VLAN: usize = V6 + 4;
    const V6_QINQ: usize = V6 + 8;
    match l4 {
        V4 => packet.read_fixed(V4),
        V4_VLAN => packet.read_fixed(V4_VLAN),
        V4_QINQ => packet.read_fixed(V4_QINQ),
        V6 => packet.read_fixed(V6),
        V6_VLAN => packet.read_fixed(V6_VLAN),
        V6_QINQ => packet.read_fixed(V6_QINQ),
        _ => packet.load(l4),
    }
}

/// A frame [`parse`] finds no IP header in because a third VLAN tag
/// follows the two it reads. Not "not IP": the kernel strips any number of
/// priority tags (VLAN id 0) and delivers what is behind them.
#[inline(always)]
pub fn too_many_vlan_tags<P: Packet>(packet: &P) -> bool {
    // One tag at a time, returning early: the verifier rejects the selects
    // LLVM makes of a combined test.
    for offset in [12, 16, 20] {
        match packet.read_fixed(offset) {
            Some(tag) if is_vlan(u16::from_be_bytes(tag)) => {}
            _ => return false,
        }
    }
    true
}

#[inline(always)]
fn is_vlan(ethertype: u16) -> bool {
    ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD
}

/// The IPv4 header at `l3`; the kind is left `Other` for the caller to
/// read the ports unless they cannot be known.
#[inline(always)]
fn parse_ipv4<P: Packet>(packet: &P, l3: usize) -> Option<Parsed> {
    let header: [u8; 12] = packet.read_fixed(l3)?;
    let src: [u8; 4] = packet.read_fixed(l3 + 12)?;
    // The whole fixed header is there (its destination is not read).
    packet.read_fixed::<4>(l3 + 16)?;
    let header_len = usize::from(header[0] & 0x0f) * 4;
    let flags_offset = u16::from_be_bytes([header[6], header[7]]);
    let kind = if header[0] >> 4 != 4 || header_len < 20 {
        L4::Truncated
    } else if flags_offset & 0x1fff != 0 {
        L4::LaterFragment
    } else {
        L4::Other
    };
    Some(Parsed {
        src: crate::SourceAddr::from_v4_word(u32::from_ne_bytes(src)),
        ipv6: false,
        l3,
        l4: l3 + header_len,
        // More Fragments, or a fragment offset.
        fragment: flags_offset & 0x3fff != 0,
        proto: header[9],
        kind,
        dst_port: 0,
        tcp_flags: 0,
        tcp_len: 0,
    })
}

/// The IPv6 header at `l3`, behind which at most [`IPV6_MAX_EXT_HEADERS`]
/// extension headers are followed to the L4 header.
#[inline(always)]
fn parse_ipv6<P: Packet>(packet: &P, l3: usize) -> Option<Parsed> {
    let header: [u8; 8] = packet.read_fixed(l3)?;
    let high: [u8; 8] = packet.read_fixed(l3 + 8)?;
    let low: [u8; 8] = packet.read_fixed(l3 + 16)?;
    // The whole fixed header is there (its destination is not read).
    packet.read_fixed::<16>(l3 + 24)?;
    let mut parsed = Parsed {
        src: crate::SourceAddr::from_words([u64::from_ne_bytes(high), u64::from_ne_bytes(low)]),
        ipv6: true,
        l3,
        l4: l3 + 40,
        fragment: false,
        proto: header[6],
        kind: L4::Other,
        dst_port: 0,
        tcp_flags: 0,
        tcp_len: 0,
    };
    if header[0] >> 4 != 6 {
        parsed.kind = L4::Truncated;
        return Some(parsed);
    }
    // Extension headers a source could add to slip past the parser.
    for _ in 0..IPV6_MAX_EXT_HEADERS {
        match parsed.proto {
            IPV6_HOPOPTS | IPV6_ROUTING | IPV6_DSTOPTS => {
                let Some(ext) = packet.load::<2>(parsed.l4) else {
                    parsed.kind = L4::Truncated;
                    return Some(parsed);
                };
                parsed.proto = ext[0];
                parsed.l4 += (usize::from(ext[1]) + 1) * 8;
            }
            IPV6_FRAGMENT => {
                let Some(ext) = packet.load::<4>(parsed.l4) else {
                    parsed.kind = L4::Truncated;
                    return Some(parsed);
                };
                parsed.fragment = true;
                if u16::from_be_bytes([ext[2], ext[3]]) & 0xfff8 != 0 {
                    parsed.kind = L4::LaterFragment;
                    return Some(parsed);
                }
                parsed.proto = ext[0];
                parsed.l4 += 8;
            }
            _ => return Some(parsed),
        }
    }
    if matches!(
        parsed.proto,
        IPV6_HOPOPTS | IPV6_ROUTING | IPV6_DSTOPTS | IPV6_FRAGMENT
    ) {
        parsed.kind = L4::LongChain;
    }
    Some(parsed)
}

/// A packet held in a byte slice: the host side of [`Packet`].
pub struct Bytes<'a>(pub &'a [u8]);

impl Packet for Bytes<'_> {
    fn read_fixed<const N: usize>(&self, offset: usize) -> Option<[u8; N]> {
        self.load(offset)
    }

    fn load<const N: usize>(&self, offset: usize) -> Option<[u8; N]> {
        let end = offset.checked_add(N)?;
        self.0.get(offset..end)?.try_into().ok()
    }
}

#[cfg(test)]
#[path = "packet_tests.rs"]
mod tests;
