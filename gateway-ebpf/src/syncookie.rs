//! Spoof-resistant SYN budgets (`Config::syn_cookies`).
//!
//! A SYN proves nothing about its source address, so a spoofer could spend
//! a real client's SYN budget and get the client's connects dropped. Once a
//! source is over its SYN budget (or every source is, past the listener-wide
//! `syn_flood_rate`) it is in cookie mode for [`COOKIE_HOLD_NS`] after its
//! last excess SYN: its SYNs are answered with SYN cookies, uncharged and
//! statelessly, by XDP itself (`synack`) or, for shapes it does not
//! rewrite, by the kernel (the gateway sets `net.ipv4.tcp_syncookies = 2`). Only an ACK carrying a valid cookie (checked here with
//! `bpf_tcp_raw_check_syncookie_*`, the kernel's own secret) completes a
//! connection, and only those are charged to the source's SYN budget; over
//! it, the ACK is dropped and the kernel never creates the socket. Only a
//! host that receives the SYN-ACKs at that address can complete a handshake.
//!
//! Cost: nothing for sources not in cookie mode; in cookie mode, one cookie
//! check per ACK from the source and, for a valid cookie, one socket lookup
//! so packets of a connection already created are not charged twice.
use aya_ebpf::{
    bindings::{bpf_sock_tuple, iphdr, ipv6hdr, tcphdr, BPF_F_CURRENT_NETNS},
    btf_maps::Array,
    helpers::generated::{
        bpf_sk_release, bpf_skc_lookup_tcp, bpf_tcp_raw_check_syncookie_ipv4,
        bpf_tcp_raw_check_syncookie_ipv6,
    },
    macros::btf_map,
    programs::XdpContext,
};
use gateway_common::{
    mode,
    packet::{Packet, Parsed, L4, TCP_ACK, TCP_RST, TCP_SYN},
    syn_cookies, Config, Counter, SourceState, SynFlood,
};

use crate::{count, gcra, gcra_params, synack, XdpPacket, NS_PER_SEC};

/// Listener-wide SYN meter for `syn_flood_rate` (kernel-written).
#[btf_map]
static GW_SYN_FLOOD: Array<SynFlood, 1> = Array::new();

/// Cookie mode lasts this long after the last SYN over budget.
const COOKIE_HOLD_NS: u64 = 10 * NS_PER_SEC;
/// `TCP_LISTEN` in `bpf_sock::state`.
const TCP_LISTEN: u32 = 10;

/// What cookie mode decided; `None` from [`judge`]: the usual budgets.
pub enum Judged {
    Pass(Counter),
    Deny(Counter),
    /// Send the rewritten packet back (a cookie SYN-ACK).
    Tx(Counter),
}

/// Cookie mode for TCP to a protected port: SYNs of a source over budget
/// pass uncharged, completed handshakes are charged. `None`: cookies are
/// off or the packet is not the mode's, so the usual budgets apply.
#[inline(always)]
pub fn judge(
    ctx: &XdpContext,
    flow: &Parsed,
    state: &mut SourceState,
    config: &Config,
    now: u64,
) -> Option<Judged> {
    // Only TCP to a protected port (later fragments and cut headers never
    // are); never an allow-listed source, whose SYNs the stack answers.
    if config.syn_cookies == syn_cookies::OFF || flow.kind != L4::Tcp || state.allowlisted != 0 {
        return None;
    }
    let cookie_mode = flood_mode(config, flow.is_syn(), now) || state.cookie_until_ns > now;
    if flow.is_syn() {
        if cookie_mode {
            // Spoofable: this meter only decides how long the mode lasts.
            if !gcra(
                &mut state.offered_tat_ns,
                state.syn_interval_ns,
                state.syn_tolerance_ns,
                now,
            ) {
                state.cookie_until_ns = now + COOKIE_HOLD_NS;
            }
            return Some(cookie_syn(ctx, flow, config));
        }
        if !over_budget(
            state.syn_tat_ns,
            state.syn_tolerance_ns,
            state.syn_interval_ns,
            now,
        ) {
            return None;
        }
        // Entering the mode forgives the SYNs charged before it: they may
        // have been spoofed. At most once per mode, which lasts at least
        // COOKIE_HOLD_NS, so a real flood gains one burst per hold.
        state.cookie_until_ns = now + COOKIE_HOLD_NS;
        state.offered_tat_ns = state.syn_tat_ns;
        state.syn_tat_ns = now;
        return Some(cookie_syn(ctx, flow, config));
    }
    if !cookie_mode || flow.tcp_flags & (TCP_SYN | TCP_RST | TCP_ACK) != TCP_ACK {
        return None;
    }
    if !valid_cookie(ctx, flow) {
        count(Counter::SynCookieInvalid);
        return None;
    }
    if !new_connection(ctx, flow) {
        return None;
    }
    if gcra(
        &mut state.syn_tat_ns,
        state.syn_interval_ns,
        state.syn_tolerance_ns,
        now,
    ) {
        Some(Judged::Pass(Counter::SynCookieValid))
    } else {
        Some(Judged::Deny(Counter::DroppedConnBudget))
    }
}

/// Whether this CPU may lease tokens for the source now (see `hot`): (SYN
/// tokens, packet tokens). Never in cookie mode, whose SYNs and ACKs must
/// all be seen here; SYN tokens never while the listener-wide meter counts
/// every SYN. Allow-listed sources are never in cookie mode nor metered.
#[inline(always)]
pub fn leasable(config: &Config, state: &SourceState, now: u64) -> (bool, bool) {
    if config.syn_cookies == syn_cookies::OFF || state.allowlisted != 0 {
        return (true, true);
    }
    if state.cookie_until_ns > now {
        return (false, false);
    }
    if config.syn_flood_rate == 0 {
        return (true, true);
    }
    let flood_off = match GW_SYN_FLOOD.get(0) {
        Some(flood) => flood.cookie_until_ns <= now,
        None => false,
    };
    (false, flood_off)
}

/// A SYN in cookie mode: answered from XDP when it can be (see
/// [`synack`]), else passed for the kernel's own cookie. In monitor mode
/// the program only counts, so the kernel answers. XDP answers only a SYN
/// that finds a listener: with no socket the kernel resets it, and a SYN
/// for a 4-tuple that still has one (a server-side TIME_WAIT a busy client
/// reuses) goes to the kernel too: the final ACK would hit that socket.
#[inline(always)]
fn cookie_syn(ctx: &XdpContext, flow: &Parsed, config: &Config) -> Judged {
    if config.syn_cookies == syn_cookies::XDP
        && config.mode != mode::MONITOR
        && synack::rewritable(flow)
        && socket_state(ctx, flow) == Some(TCP_LISTEN)
        && synack::answer(ctx, flow).is_some()
    {
        count(Counter::SynCookieXdp);
        return Judged::Tx(Counter::SynCookieSent);
    }
    Judged::Pass(Counter::SynCookieSent)
}

/// Would the SYN GCRA refuse a SYN now? (Without charging it.)
#[inline(always)]
fn over_budget(tat: u64, tolerance: u64, interval: u64, now: u64) -> bool {
    interval != 0 && tat > now && tat - now > tolerance
}

/// Meters protected SYNs from all sources; past `syn_flood_rate` (burst:
/// one second's worth) every source is in cookie mode.
#[inline(always)]
fn flood_mode(config: &Config, is_syn: bool, now: u64) -> bool {
    if config.syn_flood_rate == 0 {
        return false;
    }
    let Some(flood) = GW_SYN_FLOOD.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: index 0 of a one-entry array. CPUs race on it; a lost update
    // only shifts the meter by a packet.
    let flood = unsafe { &mut *flood };
    if is_syn {
        let (interval, tolerance) = gcra_params(config.syn_flood_rate, config.syn_flood_rate);
        if !gcra(&mut flood.tat_ns, interval, tolerance, now) {
            flood.cookie_until_ns = now + COOKIE_HOLD_NS;
        }
    }
    flood.cookie_until_ns > now
}

/// The IP and TCP headers copied to the stack (the helpers read fixed-size
/// headers; a stack copy needs no packet-pointer proofs).
#[repr(C, align(8))]
struct Headers<const N: usize> {
    ip: [u8; N],
    tcp: [u8; 20],
}

/// Does the ACK carry a SYN cookie the kernel issued for this 4-tuple?
#[inline(always)]
fn valid_cookie(ctx: &XdpContext, flow: &Parsed) -> bool {
    let packet = XdpPacket(ctx);
    let Some(tcp) = packet.load::<20>(flow.l4) else {
        return false;
    };
    let rc = if flow.ipv6 {
        let Some(ip) = packet.load::<40>(flow.l3) else {
            return false;
        };
        let mut headers = Headers { ip, tcp };
        // SAFETY: both buffers are the full fixed-size headers the helper reads.
        unsafe {
            bpf_tcp_raw_check_syncookie_ipv6(
                headers.ip.as_mut_ptr().cast::<ipv6hdr>(),
                headers.tcp.as_mut_ptr().cast::<tcphdr>(),
            )
        }
    } else {
        let Some(ip) = packet.load::<20>(flow.l3) else {
            return false;
        };
        let mut headers = Headers { ip, tcp };
        // SAFETY: as above.
        unsafe {
            bpf_tcp_raw_check_syncookie_ipv4(
                headers.ip.as_mut_ptr().cast::<iphdr>(),
                headers.tcp.as_mut_ptr().cast::<tcphdr>(),
            )
        }
    };
    rc == 0
}

/// False when a socket already exists for the 4-tuple (later packets of a
/// connection carry the same cookie until the server sends data).
#[inline(always)]
fn new_connection(ctx: &XdpContext, flow: &Parsed) -> bool {
    match socket_state(ctx, flow) {
        Some(state) => state == TCP_LISTEN,
        None => true,
    }
}

/// The state of the socket the packet's 4-tuple finds (established or
/// `TIME_WAIT`, else a listener); `None`: none, or unreadable.
#[inline(always)]
fn socket_state(ctx: &XdpContext, flow: &Parsed) -> Option<u32> {
    let packet = XdpPacket(ctx);
    let ports = packet.load::<4>(flow.l4)?;
    // SAFETY: an all-zero tuple is a valid (empty) tuple.
    let mut tuple: bpf_sock_tuple = unsafe { core::mem::zeroed() };
    let size = if flow.ipv6 {
        let addrs = packet.load::<32>(flow.l3 + 8)?;
        // SAFETY: writing the IPv6 member of a zeroed union.
        let v6 = unsafe { &mut tuple.__bindgen_anon_1.ipv6 };
        for i in 0..4 {
            v6.saddr[i] = u32::from_ne_bytes([
                addrs[4 * i],
                addrs[4 * i + 1],
                addrs[4 * i + 2],
                addrs[4 * i + 3],
            ]);
            v6.daddr[i] = u32::from_ne_bytes([
                addrs[16 + 4 * i],
                addrs[16 + 4 * i + 1],
                addrs[16 + 4 * i + 2],
                addrs[16 + 4 * i + 3],
            ]);
        }
        v6.sport = u16::from_ne_bytes([ports[0], ports[1]]);
        v6.dport = u16::from_ne_bytes([ports[2], ports[3]]);
        36
    } else {
        let addrs = packet.load::<8>(flow.l3 + 12)?;
        // SAFETY: writing the IPv4 member of a zeroed union.
        let v4 = unsafe { &mut tuple.__bindgen_anon_1.ipv4 };
        v4.saddr = u32::from_ne_bytes([addrs[0], addrs[1], addrs[2], addrs[3]]);
        v4.daddr = u32::from_ne_bytes([addrs[4], addrs[5], addrs[6], addrs[7]]);
        v4.sport = u16::from_ne_bytes([ports[0], ports[1]]);
        v4.dport = u16::from_ne_bytes([ports[2], ports[3]]);
        12
    };
    // SAFETY: `tuple` is initialised for `size` bytes; the socket is
    // released below on the only path that holds it.
    let sk = unsafe {
        bpf_skc_lookup_tcp(
            ctx.ctx.cast(),
            &mut tuple,
            size,
            BPF_F_CURRENT_NETNS as u64,
            0,
        )
    };
    if sk.is_null() {
        return None;
    }
    // SAFETY: non-null socket reference from the lookup; `state` is readable
    // on a sock_common.
    let state = unsafe { (*sk).state };
    // SAFETY: releases the reference taken by the lookup.
    unsafe { bpf_sk_release(sk.cast()) };
    Some(state)
}
