//! Cookie SYN-ACKs sent by XDP (`XDP_TX`), so a SYN in cookie mode costs
//! the kernel's TCP stack nothing.
//!
//! The cookie comes from `bpf_tcp_raw_gen_syncookie_ipv4/6` (the kernel's
//! own secret and encoding), so the kernel's listener can accept the final
//! ACK, but only if it has itself sent a cookie in the last two minutes
//! (`tcp_synq_no_recent_overflow`, per listener or `SO_REUSEPORT` group).
//! The gateway keeps that true from userspace: every 30 s it connects to
//! each protected port over loopback, and the kernel (`tcp_syncookies =
//! 2`) answers with a cookie of its own (`gateway::xdp::syncookies`); no
//! packet an attacker sends decides it. The SYN-ACK carries only the
//! MSS option: no timestamps, so no window scaling or SACK on connections
//! opened in cookie mode. Frames with VLAN tags, IPv4 options or IPv6
//! extension headers are left to the kernel's cookies.
use aya_ebpf::{
    bindings::{iphdr, ipv6hdr, tcphdr},
    helpers::generated::{
        bpf_tcp_raw_gen_syncookie_ipv4, bpf_tcp_raw_gen_syncookie_ipv6, bpf_xdp_adjust_tail,
    },
    programs::XdpContext,
};
use gateway_common::packet::{Packet, Parsed, ETH_HDR_LEN, TCP_RST};

use crate::XdpPacket;

const V4_L4: usize = ETH_HDR_LEN + 20;
const V6_L4: usize = ETH_HDR_LEN + 40;
/// The SYN-ACK's TCP header: 20 bytes and the MSS option.
const TCP_LEN: usize = 24;
const TCP_SYN_ACK: u8 = 0x12;
const TCP_FIN: u8 = 0x01;
const MSS_DEFAULT: u16 = 536;

/// The SYN's headers as the cookie helper reads them.
#[repr(C, align(8))]
struct Syn<const N: usize> {
    ip: [u8; N],
    tcp: [u8; TCP_LEN],
}

/// A frame shape [`answer`] rewrites: no VLAN tag, IPv4 without options,
/// IPv6 without extension headers; not a fragment, and a SYN the kernel's
/// listener would answer too (no RST or FIN, a valid data offset).
#[inline(always)]
pub fn rewritable(flow: &Parsed) -> bool {
    let untagged_l4 = if flow.ipv6 { V6_L4 } else { V4_L4 };
    flow.l3 == ETH_HDR_LEN
        && flow.l4 == untagged_l4
        && !flow.fragment
        && flow.tcp_flags & (TCP_RST | TCP_FIN) == 0
        && flow.tcp_len >= 20
}

/// Rewrites the SYN into its cookie SYN-ACK: `Some(())` means send it
/// back (`XDP_TX`); `None` leaves the SYN unchanged for the kernel.
#[inline(always)]
pub fn answer(ctx: &XdpContext, flow: &Parsed) -> Option<()> {
    if !rewritable(flow) {
        return None;
    }
    if flow.ipv6 {
        answer_v6(ctx, flow.tcp_len)
    } else {
        answer_v4(ctx, flow.tcp_len)
    }
}

// Not inlined (unlike the rest of the packet path): with the rest of the
// program around them, the header copies here would exceed BPF's 512-byte
// stack; as a BPF-to-BPF call they get a frame of their own, and only
// cookie-mode SYNs pay for the call. The reply is written in place.
#[inline(never)]
fn answer_v4(ctx: &XdpContext, tcp_len: usize) -> Option<()> {
    let packet = XdpPacket(ctx);
    let mut syn = Syn {
        ip: packet.read_fixed::<20>(ETH_HDR_LEN)?,
        tcp: syn_header(&packet, V4_L4)?,
    };
    // Multicast, broadcast, "this network" and loopback: never unicast.
    let unicast = |first: u8| first != 0 && first != 127 && first < 224;
    if !unicast_macs(&packet)? || !unicast(syn.ip[12]) || !unicast(syn.ip[16]) {
        return None;
    }
    // The IP length covers the TCP header and fits the frame (else the
    // kernel drops the SYN).
    let total = usize::from(u16::from_be_bytes([syn.ip[2], syn.ip[3]]));
    if total < 20 + tcp_len || ETH_HDR_LEN + total > ctx.data_end() - ctx.data() {
        return None;
    }
    // SAFETY: fixed-size stack copies of the headers the helper reads.
    let cookie = unsafe {
        bpf_tcp_raw_gen_syncookie_ipv4(
            syn.ip.as_mut_ptr().cast::<iphdr>(),
            syn.tcp.as_mut_ptr().cast::<tcphdr>(),
            TCP_LEN as u32,
        )
    };
    if cookie < 0 {
        return None;
    }
    let frame = frame::<{ V4_L4 + TCP_LEN }>(ctx)?;
    swap_macs(frame);
    // IPv4 header without options: length, no id, DF, TTL 64, TCP.
    frame[14] = 0x45;
    frame[15] = 0;
    frame[16..18].copy_from_slice(&((20 + TCP_LEN) as u16).to_be_bytes());
    frame[18..22].copy_from_slice(&[0, 0, 0x40, 0]);
    frame[22] = 64;
    frame[23] = 6;
    frame[24..26].copy_from_slice(&[0, 0]);
    for i in 26..30 {
        frame.swap(i, i + 4);
    }
    let ip_sum = fold(sum_words(0, &frame[14..34]));
    frame[24..26].copy_from_slice(&ip_sum.to_be_bytes());
    // Pseudo header: addresses, protocol, TCP length.
    let pseudo = sum_words(6 + TCP_LEN as u32, &frame[26..34]);
    let tcp: &mut [u8; TCP_LEN] = (&mut frame[V4_L4..]).try_into().ok()?;
    syn_ack(tcp, cookie, pseudo);
    Some(())
}

// Not inlined: see `answer_v4`.
#[inline(never)]
fn answer_v6(ctx: &XdpContext, tcp_len: usize) -> Option<()> {
    let packet = XdpPacket(ctx);
    let mut syn = Syn {
        ip: packet.read_fixed::<40>(ETH_HDR_LEN)?,
        tcp: syn_header(&packet, V6_L4)?,
    };
    // ff00::/8: multicast.
    if !unicast_macs(&packet)? || syn.ip[8] == 0xff || syn.ip[24] == 0xff {
        return None;
    }
    // As for IPv4: the payload length covers the TCP header and fits.
    let payload = usize::from(u16::from_be_bytes([syn.ip[4], syn.ip[5]]));
    if payload < tcp_len || V6_L4 + payload > ctx.data_end() - ctx.data() {
        return None;
    }
    // SAFETY: fixed-size stack copies of the headers the helper reads.
    let cookie = unsafe {
        bpf_tcp_raw_gen_syncookie_ipv6(
            syn.ip.as_mut_ptr().cast::<ipv6hdr>(),
            syn.tcp.as_mut_ptr().cast::<tcphdr>(),
            TCP_LEN as u32,
        )
    };
    if cookie < 0 {
        return None;
    }
    let frame = frame::<{ V6_L4 + TCP_LEN }>(ctx)?;
    swap_macs(frame);
    // IPv6 header: no traffic class or flow label, our TCP header, hop limit 64.
    frame[14..18].copy_from_slice(&[0x60, 0, 0, 0]);
    frame[18..20].copy_from_slice(&(TCP_LEN as u16).to_be_bytes());
    frame[20] = 6;
    frame[21] = 64;
    for i in 22..38 {
        frame.swap(i, i + 16);
    }
    // Pseudo header: addresses, upper-layer length, next header.
    let pseudo = sum_words(6 + TCP_LEN as u32, &frame[22..54]);
    let tcp: &mut [u8; TCP_LEN] = (&mut frame[V6_L4..]).try_into().ok()?;
    syn_ack(tcp, cookie, pseudo);
    Some(())
}

/// Whether both MAC addresses are unicast (group bit clear). The kernel
/// never answers a SYN sent to a broadcast or multicast address (one SYN
/// would draw a SYN-ACK from every host that takes it), and the SYN-ACK
/// goes back to the SYN's source MAC.
#[inline(always)]
fn unicast_macs(packet: &XdpPacket) -> Option<bool> {
    let macs: [u8; 12] = packet.read_fixed(0)?;
    Some(macs[0] & 1 == 0 && macs[6] & 1 == 0)
}

/// The SYN's TCP header with only its MSS option (if its first option is
/// one; else the default), as the cookie encodes it.
#[inline(always)]
fn syn_header(packet: &XdpPacket, l4: usize) -> Option<[u8; TCP_LEN]> {
    let tcp: [u8; 20] = packet.read_fixed(l4)?;
    let mss = if tcp[12] >> 4 >= 6 {
        match packet.read_fixed::<4>(l4 + 20) {
            Some([2, 4, high, low]) => u16::from_be_bytes([high, low]),
            _ => MSS_DEFAULT,
        }
    } else {
        MSS_DEFAULT
    };
    let mut header = [0u8; TCP_LEN];
    header[..20].copy_from_slice(&tcp);
    header[12] = ((TCP_LEN / 4) as u8) << 4;
    header[20] = 2;
    header[21] = 4;
    header[22..24].copy_from_slice(&mss.to_be_bytes());
    Some(header)
}

/// Turns the SYN's TCP header `tcp` (in the packet) into the SYN-ACK:
/// `cookie` is the helper's result (cookie, MSS << 32); `pseudo` the
/// pseudo header's sum.
#[inline(always)]
fn syn_ack(tcp: &mut [u8; TCP_LEN], cookie: i64, pseudo: u32) {
    let mss = (cookie >> 32) as u16;
    let ack = u32::from_be_bytes([tcp[4], tcp[5], tcp[6], tcp[7]]).wrapping_add(1);
    tcp.swap(0, 2);
    tcp.swap(1, 3);
    tcp[4..8].copy_from_slice(&(cookie as u32).to_be_bytes());
    tcp[8..12].copy_from_slice(&ack.to_be_bytes());
    tcp[12] = ((TCP_LEN / 4) as u8) << 4;
    tcp[13] = TCP_SYN_ACK;
    tcp[14..16].copy_from_slice(&u16::MAX.to_be_bytes());
    tcp[16..20].copy_from_slice(&[0, 0, 0, 0]);
    tcp[20] = 2;
    tcp[21] = 4;
    tcp[22..24].copy_from_slice(&mss.to_be_bytes());
    let sum = fold(sum_words(pseudo, &tcp[..]));
    tcp[16..18].copy_from_slice(&sum.to_be_bytes());
}

/// Resizes the packet to `N` bytes (dropping a SYN's payload and options,
/// or growing an option-less SYN by the MSS option) and returns it.
#[inline(always)]
#[allow(
    clippy::mut_from_ref,
    reason = "the packet is not borrowed from the context; nothing else references it"
)]
fn frame<const N: usize>(ctx: &XdpContext) -> Option<&mut [u8; N]> {
    let delta = N as i32 - (ctx.data_end() - ctx.data()) as i32;
    // SAFETY: the helper checks the new length against the buffer.
    if delta != 0 && unsafe { bpf_xdp_adjust_tail(ctx.ctx, delta) } != 0 {
        return None;
    }
    let start = ctx.data();
    if start + N > ctx.data_end() {
        return None;
    }
    // SAFETY: N bytes inside the packet (checked above), which nothing
    // else references during this program run.
    Some(unsafe { &mut *(start as *mut [u8; N]) })
}

#[inline(always)]
fn swap_macs<const N: usize>(frame: &mut [u8; N]) {
    for i in 0..6 {
        frame.swap(i, i + 6);
    }
}

/// One's-complement sum of big-endian 16-bit words (an even, constant
/// number of bytes).
#[inline(always)]
fn sum_words(mut sum: u32, bytes: &[u8]) -> u32 {
    let mut i = 0;
    while i + 1 < bytes.len() {
        sum += u32::from(u16::from_be_bytes([bytes[i], bytes[i + 1]]));
        i += 2;
    }
    sum
}

#[inline(always)]
fn fold(mut sum: u32) -> u16 {
    sum = (sum & 0xffff) + (sum >> 16);
    sum = (sum & 0xffff) + (sum >> 16);
    !(sum as u16)
}
