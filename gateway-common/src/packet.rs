//! The XDP program's packet parser, generic over how bytes are read so the
//! same source runs in the kernel (over the XDP context, see `gateway-ebpf`)
//! and on the host (unit tests below and the `xdp_parser` fuzz target, over
//! a byte slice).
//!
//! It understands Ethernet, up to two VLAN tags, IPv4 with options and IPv6
//! with up to four extension headers, then reads the TCP/UDP ports (and the
//! TCP flags). Everything stays `#[inline(always)]` and loop-bounded: the
//! eBPF verifier must follow every path.

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

/// The packet ended before a header the parser needed: the packet is not
/// ours to judge (the XDP program passes it uncounted).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Truncated;

/// What the parser found in a packet addressed to some L4 port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Flow {
    pub src: crate::SourceAddr,
    pub dst_port: u16,
    /// TCP SYN without ACK: a new connection.
    pub is_syn: bool,
    /// Offset of the IP header from the packet start.
    pub l3: usize,
    /// Offset of the TCP/UDP header from the packet start.
    pub l4: usize,
    /// IPv6 (else IPv4).
    pub ipv6: bool,
    /// The TCP flags byte (0 for UDP).
    pub tcp_flags: u8,
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

/// Finds source, destination port and SYN-ness of a TCP/UDP packet.
/// `Ok(None)`: not TCP/UDP over IP (or a non-first fragment, which carries no
/// ports and cannot be reassembled without the first one we do judge).
#[inline(always)]
pub fn parse<P: Packet>(packet: &P) -> Result<Option<Flow>, Truncated> {
    // Up to two VLAN tags (802.1Q, or 802.1ad outer + 802.1Q inner), each
    // at a fixed offset so direct access stays verifiable.
    let mut offset = ETH_HDR_LEN;
    let mut ethertype = u16::from_be_bytes(read_fixed(packet, 12)?);
    if is_vlan(ethertype) {
        ethertype = u16::from_be_bytes(read_fixed(packet, 16)?);
        offset = ETH_HDR_LEN + 4;
        if is_vlan(ethertype) {
            ethertype = u16::from_be_bytes(read_fixed(packet, 20)?);
            offset = ETH_HDR_LEN + 8;
        }
    }
    let l3 = offset;
    let (src, proto, l4) = match ethertype {
        ETH_P_IP => match parse_ipv4(packet, offset)? {
            Some(found) => found,
            None => return Ok(None),
        },
        ETH_P_IPV6 => match parse_ipv6(packet, offset)? {
            Some(found) => found,
            None => return Ok(None),
        },
        _ => return Ok(None),
    };
    // Ports (and for TCP, the flags byte at 13) from the L4 header.
    let l4_head: [u8; 14] = if proto == IPPROTO_TCP {
        read_l4(packet, l4)?
    } else {
        let ports: [u8; 4] = read_l4(packet, l4)?;
        [
            ports[0], ports[1], ports[2], ports[3], 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        ]
    };
    let dst_port = u16::from_be_bytes([l4_head[2], l4_head[3]]);
    let tcp_flags = if proto == IPPROTO_TCP { l4_head[13] } else { 0 };
    let is_syn = tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN;
    Ok(Some(Flow {
        src,
        dst_port,
        is_syn,
        l3,
        l4,
        ipv6: ethertype == ETH_P_IPV6,
        tcp_flags,
    }))
}

#[inline(always)]
fn read_fixed<P: Packet, const N: usize>(packet: &P, offset: usize) -> Result<[u8; N], Truncated> {
    packet.read_fixed(offset).ok_or(Truncated)
}

#[inline(always)]
fn load<P: Packet, const N: usize>(packet: &P, offset: usize) -> Result<[u8; N], Truncated> {
    packet.load(offset).ok_or(Truncated)
}

/// The L4 header sits at one of a few fixed offsets in the common case (no
/// IP options or IPv6 extension headers): read those directly, which is far
/// cheaper than the helper call.
#[inline(always)]
fn read_l4<P: Packet, const N: usize>(packet: &P, l4: usize) -> Result<[u8; N], Truncated> {
    // Ethernet + 0, 1 or 2 VLAN tags + a 20-byte IPv4 or 40-byte IPv6 header.
    const V4: usize = ETH_HDR_LEN + 20;
    const V4_VLAN: usize = V4 + 4;
    const V4_QINQ: usize = V4 + 8;
    const V6: usize = ETH_HDR_LEN + 40;
    const V6_VLAN: usize = V6 + 4;
    const V6_QINQ: usize = V6 + 8;
    match l4 {
        V4 => read_fixed(packet, V4),
        V4_VLAN => read_fixed(packet, V4_VLAN),
        V4_QINQ => read_fixed(packet, V4_QINQ),
        V6 => read_fixed(packet, V6),
        V6_VLAN => read_fixed(packet, V6_VLAN),
        V6_QINQ => read_fixed(packet, V6_QINQ),
        _ => load(packet, l4),
    }
}

#[inline(always)]
fn is_vlan(ethertype: u16) -> bool {
    ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD
}

/// Source, protocol and L4 offset of a TCP/UDP IPv4 packet at `offset`.
#[inline(always)]
fn parse_ipv4<P: Packet>(
    packet: &P,
    offset: usize,
) -> Result<Option<(crate::SourceAddr, u8, usize)>, Truncated> {
    let header: [u8; 20] = read_fixed(packet, offset)?;
    let header_len = usize::from(header[0] & 0x0f) * 4;
    if header[0] >> 4 != 4 || header_len < 20 {
        return Ok(None);
    }
    let fragment_offset = u16::from_be_bytes([header[6], header[7]]) & 0x1fff;
    let proto = header[9];
    if fragment_offset != 0 || (proto != IPPROTO_TCP && proto != IPPROTO_UDP) {
        return Ok(None);
    }
    let src = crate::SourceAddr::from_v4([header[12], header[13], header[14], header[15]]);
    Ok(Some((src, proto, offset + header_len)))
}

/// Source, protocol and L4 offset of a TCP/UDP IPv6 packet at `offset`,
/// behind at most [`IPV6_MAX_EXT_HEADERS`] extension headers.
#[inline(always)]
fn parse_ipv6<P: Packet>(
    packet: &P,
    offset: usize,
) -> Result<Option<(crate::SourceAddr, u8, usize)>, Truncated> {
    let header: [u8; 40] = read_fixed(packet, offset)?;
    let mut src = crate::SourceAddr::default();
    src.addr.copy_from_slice(&header[8..24]);
    let mut next = header[6];
    let mut l4 = offset + 40;
    // Extension headers a banned source could add to slip past the parser.
    for _ in 0..IPV6_MAX_EXT_HEADERS {
        match next {
            IPV6_HOPOPTS | IPV6_ROUTING | IPV6_DSTOPTS => {
                let ext: [u8; 2] = load(packet, l4)?;
                next = ext[0];
                l4 += (usize::from(ext[1]) + 1) * 8;
            }
            IPV6_FRAGMENT => {
                let ext: [u8; 4] = load(packet, l4)?;
                if u16::from_be_bytes([ext[2], ext[3]]) & 0xfff8 != 0 {
                    return Ok(None);
                }
                next = ext[0];
                l4 += 8;
            }
            _ => break,
        }
    }
    if next != IPPROTO_TCP && next != IPPROTO_UDP {
        return Ok(None);
    }
    Ok(Some((src, next, l4)))
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
