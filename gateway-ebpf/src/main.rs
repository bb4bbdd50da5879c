//! The gateway's XDP program: per-source bans and budgets for traffic to the
//! protected ports, enforced before the packet costs userspace anything.
//!
//! Per packet: parse (Ethernet, up to two VLAN tags, IPv4 with options or
//! IPv6 with up to four extension headers) → protected port? → banned? →
//! SYN budget → packet budget → pass; a deny is overridden by the allow-list.
//! The source's ban, budget and allow-list membership are cached in its
//! `GW_STATE` entry and re-read only after userspace restamps
//! `GW_GENERATION`, so a packet costs one hash lookup, not four. Everything it does not
//! understand passes. Policy maps are written by userspace only; this program
//! writes only `GW_STATE` and `GW_COUNTERS`. No logging on the packet path:
//! counters say what happened.
#![no_std]
#![no_main]

mod runtime;

use aya_ebpf::btf_maps::lpm_trie::Key;
use aya_ebpf::{
    bindings::xdp_action,
    btf_maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray},
    helpers::{bpf_ktime_get_coarse_ns, bpf_xdp_load_bytes},
    macros::{btf_map, xdp},
    programs::XdpContext,
};
use gateway_common::{
    mode, Ban, Budget, Config, Counter, SourceAddr, SourceState, DEFAULT_ALLOW_ENTRIES,
    DEFAULT_BANS_ENTRIES, DEFAULT_BUDGETS_ENTRIES, DEFAULT_STATE_ENTRIES, PORTS_ENTRIES,
};

const MAX_BANS: usize = DEFAULT_BANS_ENTRIES as usize;
const MAX_BUDGETS: usize = DEFAULT_BUDGETS_ENTRIES as usize;
const MAX_STATE: usize = DEFAULT_STATE_ENTRIES as usize;
const MAX_ALLOW: usize = DEFAULT_ALLOW_ENTRIES as usize;
const MAX_PORTS: usize = PORTS_ENTRIES as usize;
const COUNTERS: usize = Counter::COUNT as usize;

/// Banned sources and until when (userspace-written; never evicted).
#[btf_map]
static GW_BANS: HashMap<SourceAddr, Ban, MAX_BANS> = HashMap::new();
/// Per-source budgets from the tier userspace last saw (userspace-written).
#[btf_map]
static GW_BUDGETS: LruHashMap<SourceAddr, Budget, MAX_BUDGETS> = LruHashMap::new();
/// Per-source GCRA state and cached policy (kernel-written).
#[btf_map]
static GW_STATE: LruHashMap<SourceAddr, SourceState, MAX_STATE> = LruHashMap::new();
/// Allow-listed CIDRs, never dropped (userspace-written).
#[btf_map]
static GW_ALLOW: LpmTrie<[u8; 16], u8, MAX_ALLOW> = LpmTrie::new();
/// Protected destination ports, indexed by port (userspace-written).
#[btf_map]
static GW_PORTS: Array<u8, MAX_PORTS> = Array::new();
/// Mode and default budget at index 0 (userspace-written).
#[btf_map]
static GW_CONFIG: Array<Config, 1> = Array::new();
/// Policy generation stamp at index 0 (userspace-written); see `GW_STATE`.
#[btf_map]
static GW_GENERATION: Array<u64, 1> = Array::new();
/// Verdict counters by reason (kernel-written).
#[btf_map]
static GW_COUNTERS: PerCpuArray<u64, COUNTERS> = PerCpuArray::new();

const ETH_HDR_LEN: usize = 14;
const ETH_P_IP: u16 = 0x0800;
const ETH_P_IPV6: u16 = 0x86DD;
const ETH_P_8021Q: u16 = 0x8100;
const ETH_P_8021AD: u16 = 0x88A8;
const IPPROTO_TCP: u8 = 6;
const IPPROTO_UDP: u8 = 17;
const TCP_SYN: u8 = 0x02;
const TCP_ACK: u8 = 0x10;
const NS_PER_SEC: u64 = 1_000_000_000;

#[xdp]
pub fn gateway_xdp(ctx: XdpContext) -> u32 {
    // A packet we cannot read is not ours to judge.
    try_gateway_xdp(&ctx).unwrap_or(xdp_action::XDP_PASS)
}

/// What the parser found in a packet addressed to some L4 port.
struct Flow {
    src: SourceAddr,
    dst_port: u16,
    is_syn: bool,
}

#[inline(always)]
fn try_gateway_xdp(ctx: &XdpContext) -> Result<u32, ()> {
    let flow = match parse(ctx)? {
        Some(flow) => flow,
        None => return Ok(pass(Counter::NotProtected)),
    };
    match GW_PORTS.get(u32::from(flow.dst_port)) {
        Some(&1) => {}
        _ => return Ok(pass(Counter::NotProtected)),
    }
    let config = GW_CONFIG.get(0).ok_or(())?;
    let generation = *GW_GENERATION.get(0).ok_or(())?;
    // Coarse (tick-resolution) CLOCK_MONOTONIC: the precise clock costs
    // more than the rest of the policy path on virtualised hosts, and bans
    // and per-second budgets do not need sub-millisecond resolution.
    // SAFETY: the helper has no preconditions.
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    let state = source_state(&flow.src)?;
    // SAFETY: `state` points into this source's GW_STATE value. Another CPU
    // may update it concurrently; a torn or lost update only lets a packet
    // through or refreshes the cache once more.
    let state = unsafe { &mut *state };
    // Generation 0: userspace has not published policy yet; never trust a cache.
    if generation == 0 || state.policy_generation != generation {
        refresh_policy(state, &flow.src, config, generation);
    }
    let verdict = if state.banned_until_ns > now {
        Counter::DroppedBanned
    } else if flow.is_syn
        && !gcra(
            &mut state.syn_tat_ns,
            state.syn_interval_ns,
            state.syn_tolerance_ns,
            now,
        )
    {
        Counter::DroppedConnBudget
    } else if !gcra(
        &mut state.pkt_tat_ns,
        state.pkt_interval_ns,
        state.pkt_tolerance_ns,
        now,
    ) {
        Counter::DroppedPktBudget
    } else {
        return Ok(pass(Counter::Passed));
    };
    // Allow-listed sources are never dropped.
    if state.allowlisted != 0 {
        return Ok(pass(Counter::Allowlisted));
    }
    Ok(deny(config, verdict))
}

/// Re-reads the source's ban, budget and allow-list membership into its
/// state entry: only when userspace has changed policy since the last read.
#[inline(always)]
fn refresh_policy(state: &mut SourceState, src: &SourceAddr, config: &Config, generation: u64) {
    // SAFETY: only userspace writes GW_BANS/GW_BUDGETS; values copied out at once.
    state.banned_until_ns = match unsafe { GW_BANS.get(src) } {
        Some(ban) => ban.banned_until_ns,
        None => 0,
    };
    let budget = match unsafe { GW_BUDGETS.get(src) } {
        Some(budget) => *budget,
        None => config.default_budget,
    };
    (state.syn_interval_ns, state.syn_tolerance_ns) =
        gcra_params(budget.syn_per_sec, budget.syn_burst);
    (state.pkt_interval_ns, state.pkt_tolerance_ns) =
        gcra_params(budget.pkt_per_sec, budget.pkt_burst);
    state.allowlisted = u32::from(GW_ALLOW.get(&Key::new(128, src.addr)).is_some());
    state.policy_generation = generation;
}

/// The source's state entry, created on first sight (its zero generation
/// forces a policy read).
#[inline(always)]
fn source_state(src: &SourceAddr) -> Result<*mut SourceState, ()> {
    if let Some(state) = GW_STATE.get_ptr_mut(src) {
        return Ok(state);
    }
    let fresh = SourceState::default();
    // BPF_NOEXIST: if another CPU created it meanwhile, use theirs.
    let _ = GW_STATE.insert(src, &fresh, aya_ebpf::bindings::BPF_NOEXIST.into());
    GW_STATE.get_ptr_mut(src).ok_or(())
}

/// GCRA emission interval and burst tolerance for `rate`/s with `burst`
/// back to back; rate 0 means unlimited (interval 0).
#[inline(always)]
fn gcra_params(rate: u32, burst: u32) -> (u64, u64) {
    if rate == 0 {
        return (0, 0);
    }
    let interval = NS_PER_SEC / u64::from(rate);
    (interval, interval * u64::from(burst.saturating_sub(1)))
}

/// Generic cell rate algorithm: admits `tolerance / interval + 1` events
/// back to back, then one per `interval`. Updates `tat` only on admission.
#[inline(always)]
fn gcra(tat: &mut u64, interval: u64, tolerance: u64, now: u64) -> bool {
    if interval == 0 {
        return true;
    }
    let start = if *tat > now { *tat } else { now };
    if start - now > tolerance {
        return false;
    }
    *tat = start + interval;
    true
}

#[inline(always)]
fn pass(counter: Counter) -> u32 {
    count(counter);
    xdp_action::XDP_PASS
}

/// Drops in `enforce` mode; counts what would have been dropped in `monitor`.
#[inline(always)]
fn deny(config: &Config, reason: Counter) -> u32 {
    if config.mode == mode::MONITOR {
        return pass(reason.monitored());
    }
    count(reason);
    xdp_action::XDP_DROP
}

#[inline(always)]
fn count(counter: Counter) {
    if let Some(slot) = GW_COUNTERS.get_ptr_mut(counter as u32) {
        // SAFETY: per-CPU slot, and XDP programs do not nest on one CPU.
        unsafe { *slot += 1 };
    }
}

/// Reads a `T` at a constant-ish `offset` with direct packet access
/// (Ethernet and VLAN headers, whose offsets the verifier can follow).
#[inline(always)]
fn read_direct<T: Copy>(ctx: &XdpContext, offset: usize) -> Result<T, ()> {
    let start = ctx.data();
    if start + offset + core::mem::size_of::<T>() > ctx.data_end() {
        return Err(());
    }
    // SAFETY: the bytes are inside the packet (checked above); unaligned read.
    Ok(unsafe { core::ptr::read_unaligned((start + offset) as *const T) })
}

/// Reads a `T` at a data-dependent `offset` (after IPv4 options or IPv6
/// extension headers) through `bpf_xdp_load_bytes`, which bounds-checks at
/// run time: variable packet offsets are where verifier and LLVM disagree.
#[inline(always)]
fn load<T: Copy>(ctx: &XdpContext, offset: usize) -> Result<T, ()> {
    let mut value = core::mem::MaybeUninit::<T>::uninit();
    // SAFETY: `value` is a writable buffer of exactly size_of::<T>() bytes.
    let rc = unsafe {
        bpf_xdp_load_bytes(
            ctx.ctx,
            offset as u32,
            value.as_mut_ptr().cast(),
            core::mem::size_of::<T>() as u32,
        )
    };
    if rc < 0 {
        return Err(());
    }
    // SAFETY: the helper filled every byte on success.
    Ok(unsafe { value.assume_init() })
}

/// Finds source, destination port and SYN-ness of a TCP/UDP packet.
/// `Ok(None)`: not TCP/UDP over IP (or a non-first fragment, which carries no
/// ports and cannot be reassembled without the first one we do judge).
#[inline(always)]
fn parse(ctx: &XdpContext) -> Result<Option<Flow>, ()> {
    // Up to two VLAN tags (802.1Q, or 802.1ad outer + 802.1Q inner), each
    // at a fixed offset so direct access stays verifiable.
    let mut offset = ETH_HDR_LEN;
    let mut ethertype = u16::from_be_bytes(read_direct(ctx, 12)?);
    if is_vlan(ethertype) {
        ethertype = u16::from_be_bytes(read_direct(ctx, 16)?);
        offset = ETH_HDR_LEN + 4;
        if is_vlan(ethertype) {
            ethertype = u16::from_be_bytes(read_direct(ctx, 20)?);
            offset = ETH_HDR_LEN + 8;
        }
    }
    let (src, proto, l4) = match ethertype {
        ETH_P_IP => match parse_ipv4(ctx, offset)? {
            Some(found) => found,
            None => return Ok(None),
        },
        ETH_P_IPV6 => match parse_ipv6(ctx, offset)? {
            Some(found) => found,
            None => return Ok(None),
        },
        _ => return Ok(None),
    };
    // Ports (and for TCP, the flags byte at 13) from the L4 header.
    let l4_head: [u8; 14] = if proto == IPPROTO_TCP {
        read_l4(ctx, l4)?
    } else {
        let ports: [u8; 4] = read_l4(ctx, l4)?;
        [
            ports[0], ports[1], ports[2], ports[3], 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
        ]
    };
    let dst_port = u16::from_be_bytes([l4_head[2], l4_head[3]]);
    let is_syn = proto == IPPROTO_TCP && l4_head[13] & (TCP_SYN | TCP_ACK) == TCP_SYN;
    Ok(Some(Flow {
        src,
        dst_port,
        is_syn,
    }))
}

/// The L4 header sits at one of a few fixed offsets in the common case (no
/// IP options or IPv6 extension headers): read those directly, which is far
/// cheaper than the helper call.
#[inline(always)]
fn read_l4<T: Copy>(ctx: &XdpContext, l4: usize) -> Result<T, ()> {
    // Ethernet + 0, 1 or 2 VLAN tags + a 20-byte IPv4 or 40-byte IPv6 header.
    const V4: usize = ETH_HDR_LEN + 20;
    const V4_VLAN: usize = V4 + 4;
    const V4_QINQ: usize = V4 + 8;
    const V6: usize = ETH_HDR_LEN + 40;
    const V6_VLAN: usize = V6 + 4;
    const V6_QINQ: usize = V6 + 8;
    match l4 {
        V4 => read_direct(ctx, V4),
        V4_VLAN => read_direct(ctx, V4_VLAN),
        V4_QINQ => read_direct(ctx, V4_QINQ),
        V6 => read_direct(ctx, V6),
        V6_VLAN => read_direct(ctx, V6_VLAN),
        V6_QINQ => read_direct(ctx, V6_QINQ),
        _ => load(ctx, l4),
    }
}

#[inline(always)]
fn is_vlan(ethertype: u16) -> bool {
    ethertype == ETH_P_8021Q || ethertype == ETH_P_8021AD
}

#[inline(always)]
fn parse_ipv4(ctx: &XdpContext, offset: usize) -> Result<Option<(SourceAddr, u8, usize)>, ()> {
    let header: [u8; 20] = read_direct(ctx, offset)?;
    let header_len = usize::from(header[0] & 0x0f) * 4;
    if header[0] >> 4 != 4 || header_len < 20 {
        return Ok(None);
    }
    let fragment_offset = u16::from_be_bytes([header[6], header[7]]) & 0x1fff;
    let proto = header[9];
    if fragment_offset != 0 || (proto != IPPROTO_TCP && proto != IPPROTO_UDP) {
        return Ok(None);
    }
    let src = SourceAddr::from_v4([header[12], header[13], header[14], header[15]]);
    Ok(Some((src, proto, offset + header_len)))
}

const IPV6_HOPOPTS: u8 = 0;
const IPV6_ROUTING: u8 = 43;
const IPV6_FRAGMENT: u8 = 44;
const IPV6_DSTOPTS: u8 = 60;
const IPV6_MAX_EXT_HEADERS: usize = 4;

#[inline(always)]
fn parse_ipv6(ctx: &XdpContext, offset: usize) -> Result<Option<(SourceAddr, u8, usize)>, ()> {
    let header: [u8; 40] = read_direct(ctx, offset)?;
    let mut src = SourceAddr::default();
    src.addr.copy_from_slice(&header[8..24]);
    let mut next = header[6];
    let mut l4 = offset + 40;
    // Extension headers a banned source could add to slip past the parser.
    for _ in 0..IPV6_MAX_EXT_HEADERS {
        match next {
            IPV6_HOPOPTS | IPV6_ROUTING | IPV6_DSTOPTS => {
                let ext: [u8; 2] = load(ctx, l4)?;
                next = ext[0];
                l4 += (usize::from(ext[1]) + 1) * 8;
            }
            IPV6_FRAGMENT => {
                let ext: [u8; 4] = load(ctx, l4)?;
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
