//! The gateway's XDP program: per-source bans and budgets, enforced before
//! the packet costs userspace anything.
//!
//! Per packet: parse (`gateway_common::packet`, shared with the host's tests
//! and fuzzer: Ethernet, up to two VLAN tags, IPv4 with options or IPv6 with
//! up to four extension headers) → the source is known: only a known,
//! unprotected TCP/UDP port passes unjudged → TCP to a protected port,
//! fragments and packets whose ports cannot be read are metered (banned? →
//! SYN budget, or SYN-cookie mode, see `syncookie` → packet budget); UDP to
//! a protected port and other protocols are judged on the ban alone (and
//! `xdp.udp`), never charged → pass; a deny is overridden by the allow-list.
//! The source's ban, budget and allow-list membership are cached in its
//! `GW_STATE` entry and re-read only after userspace restamps
//! `GW_GENERATION`, so a packet costs one hash lookup, not four; and a
//! plain TCP frame from a source this CPU judged lately (banned, or holding
//! a lease of its budget's tokens) costs none, see [`hot`]. Frames
//! without an IP header pass. Policy maps are written by userspace only; this
//! program writes only `GW_STATE`, `GW_SYN_FLOOD` and `GW_COUNTERS`. Prefix
//! bans and budgets (`GW_PREFIX_*`, LPM tries) are read only with the rest of
//! the cached policy, so they cost nothing per packet. No logging on the
//! packet path: counters say what happened; only rare events (a ban's first
//! drop, a full map, a parse given up, rate-limited) are logged, see
//! [`events`].
#![no_std]
#![feature(asm_experimental_arch)]
#![no_main]

mod direct;
mod events;
mod hot;
mod runtime;
mod synack;
mod syncookie;

use aya_ebpf::btf_maps::lpm_trie::Key;
use aya_ebpf::{
    bindings::{xdp_action, xdp_md},
    btf_maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray},
    helpers::{bpf_ktime_get_coarse_ns, bpf_xdp_load_bytes},
    macros::{btf_map, xdp},
    programs::XdpContext,
};
use gateway_common::{
    mode,
    packet::{self, Packet, L4},
    udp, Ban, Budget, Config, Counter, SourceAddr, SourceState, DEFAULT_ALLOW_ENTRIES,
    DEFAULT_BANS_ENTRIES, DEFAULT_BUDGETS_ENTRIES, DEFAULT_PREFIX_BANS_ENTRIES,
    DEFAULT_PREFIX_BUDGETS_ENTRIES, DEFAULT_STATE_ENTRIES, PORTS_ENTRIES,
};

const MAX_BANS: usize = DEFAULT_BANS_ENTRIES as usize;
const MAX_BUDGETS: usize = DEFAULT_BUDGETS_ENTRIES as usize;
const MAX_STATE: usize = DEFAULT_STATE_ENTRIES as usize;
const MAX_ALLOW: usize = DEFAULT_ALLOW_ENTRIES as usize;
const MAX_PORTS: usize = PORTS_ENTRIES as usize;
const COUNTERS: usize = Counter::COUNT as usize;
const MAX_PREFIX_BANS: usize = DEFAULT_PREFIX_BANS_ENTRIES as usize;
const MAX_PREFIX_BUDGETS: usize = DEFAULT_PREFIX_BUDGETS_ENTRIES as usize;

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
/// Banned CIDRs and until when (userspace-written; read only in `refresh_policy`).
#[btf_map]
static GW_PREFIX_BANS: LpmTrie<[u8; 16], Ban, MAX_PREFIX_BANS> = LpmTrie::new();
/// Budgets by CIDR, for sources without their own (userspace-written).
#[btf_map]
static GW_PREFIX_BUDGETS: LpmTrie<[u8; 16], Budget, MAX_PREFIX_BUDGETS> = LpmTrie::new();

const NS_PER_SEC: u64 = 1_000_000_000;

#[xdp]
pub fn gateway_xdp(ctx: XdpContext) -> u32 {
    match fast_path(&ctx) {
        Fast::Verdict(verdict) => verdict,
        Fast::Miss => plain_path(ctx.ctx),
        Fast::NotPlain => full_path(ctx.ctx),
    }
}

/// What the fast path found.
enum Fast {
    Verdict(u32),
    /// A plain TCP frame to a protected port the cache could not judge.
    Miss,
    /// Any other frame.
    NotPlain,
}

/// The common case in straight-line code with few live values: a plain
/// TCP frame (`packet::parse_plain_tcp`, the same answer as the full
/// parse) to an unprotected port, or from a source this CPU's cache judges
/// (see [`hot`]).
#[inline(always)]
fn fast_path(ctx: &XdpContext) -> Fast {
    let Some(parsed) = packet::parse_plain_tcp(&XdpPacket(ctx)) else {
        return Fast::NotPlain;
    };
    if !protected(parsed.dst_port) {
        return Fast::Verdict(pass(Counter::NotProtected));
    }
    let Some(generation) = GW_GENERATION.get(0) else {
        return Fast::Miss;
    };
    match hot::serve(&parsed.src, *generation, hot::jiffies(), parsed.is_syn()) {
        hot::Hit::Pass => Fast::Verdict(pass(Counter::Passed)),
        hot::Hit::Banned => match GW_CONFIG.get(0) {
            Some(config) => Fast::Verdict(deny(config, Counter::DroppedBanned)),
            None => Fast::Miss,
        },
        hot::Hit::Miss => Fast::Miss,
    }
}

/// A plain TCP frame to a protected port the cache missed, out of line (a
/// BPF subprogram) so the fast path keeps its few values in registers; it
/// parses the frame again, which costs little for this shape.
#[inline(never)]
fn plain_path(ctx: *mut xdp_md) -> u32 {
    let ctx = XdpContext::new(ctx);
    let verdict = match packet::parse_plain_tcp(&XdpPacket(&ctx)) {
        Some(parsed) => judge_metered(&ctx, &parsed, parsed.is_syn()),
        None => Err(()),
    };
    // A packet we cannot read is not ours to judge.
    verdict.unwrap_or(xdp_action::XDP_PASS)
}

/// Every other frame, out of line like [`plain_path`]: the full parse.
#[inline(never)]
fn full_path(ctx: *mut xdp_md) -> u32 {
    // A packet we cannot read is not ours to judge.
    try_gateway_xdp(&XdpContext::new(ctx)).unwrap_or(xdp_action::XDP_PASS)
}

#[inline(always)]
fn try_gateway_xdp(ctx: &XdpContext) -> Result<u32, ()> {
    // No IP header: no source to judge, not ours.
    let Some(parsed) = packet::parse(&XdpPacket(ctx)) else {
        if packet::too_many_vlan_tags(&XdpPacket(ctx)) {
            return Ok(deny(GW_CONFIG.get(0).ok_or(())?, Counter::DroppedVlanTags));
        }
        return Ok(pass(Counter::NotProtected));
    };
    // The source is known from here on: only a known, unprotected
    // destination port lets a packet pass without judging it.
    let metered_syn = match parsed.kind {
        L4::Tcp if protected(parsed.dst_port) => parsed.is_syn(),
        L4::Udp if !parsed.fragment && protected(parsed.dst_port) => {
            return judge_unmetered(&parsed.src, UnmeteredKind::Udp);
        }
        L4::Tcp | L4::Udp if !parsed.fragment => return Ok(pass(Counter::NotProtected)),
        L4::Other if !parsed.fragment => {
            return judge_unmetered(&parsed.src, UnmeteredKind::Other);
        }
        L4::Truncated | L4::LongChain => gave_up(ctx, &parsed),
        // Fragments (any, to any port): the packet budget.
        _ => false,
    };
    judge_metered(ctx, &parsed, metered_syn)
}

/// Judges a packet charged to its source (`metered_syn`: a SYN to a
/// protected port): this CPU's hot-source cache first (see [`hot`]), else
/// its `GW_STATE` entry.
#[inline(always)]
fn judge_metered(ctx: &XdpContext, parsed: &packet::Parsed, metered_syn: bool) -> Result<u32, ()> {
    let generation = *GW_GENERATION.get(0).ok_or(())?;
    let jiffies = hot::jiffies();
    match hot::serve(&parsed.src, generation, jiffies, metered_syn) {
        hot::Hit::Pass => return Ok(pass(Counter::Passed)),
        hot::Hit::Banned => {
            return Ok(deny(GW_CONFIG.get(0).ok_or(())?, Counter::DroppedBanned));
        }
        hot::Hit::Miss => {}
    }
    let config = GW_CONFIG.get(0).ok_or(())?;
    let now = now_ns();
    let state = source_state(ctx, &parsed.src)?;
    // SAFETY: `state` points into this source's GW_STATE value. Another CPU
    // may update it concurrently; a torn or lost update only lets a packet
    // through or refreshes the cache once more.
    let state = unsafe { &mut *state };
    // Generation 0: userspace has not published policy yet; never trust a cache.
    if generation == 0 || state.policy_generation != generation {
        refresh_policy(state, &parsed.src, config, generation);
    }
    let verdict = if state.banned_until_ns > now {
        Counter::DroppedBanned
    } else if let Some(judged) = syncookie::judge(ctx, parsed, state, config, now) {
        // Cookie mode: this CPU's lease, if any, must not pass its ACKs.
        hot::forget(&parsed.src);
        match judged {
            syncookie::Judged::Pass(counter) => return Ok(pass(counter)),
            syncookie::Judged::Deny(counter) => counter,
            syncookie::Judged::Tx(counter) => {
                count(counter);
                return Ok(xdp_action::XDP_TX);
            }
        }
    } else if metered_syn
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
        if generation != 0 {
            hot::renew(
                state,
                &parsed.src,
                config,
                generation,
                metered_syn,
                now,
                jiffies,
            );
        }
        return Ok(pass(Counter::Passed));
    };
    // Allow-listed sources are never dropped.
    if state.allowlisted != 0 {
        return Ok(pass(Counter::Allowlisted));
    }
    if verdict == Counter::DroppedBanned {
        events::first_drop_after_ban(ctx, state, &parsed.src, config, now);
        if generation != 0 {
            hot::ban(&parsed.src, generation, state.banned_until_ns, now, jiffies);
        }
    }
    Ok(deny(config, verdict))
}

#[inline(always)]
fn protected(port: u16) -> bool {
    matches!(GW_PORTS.get(u32::from(port)), Some(&1))
}

/// The one place the program gives up on a packet's ports (its L4 header
/// is cut short or malformed, or its IPv6 chain is longer than the parser
/// follows): it is then metered like a fragment. Returns "not a SYN".
#[inline(always)]
fn gave_up(ctx: &XdpContext, parsed: &packet::Parsed) -> bool {
    count(Counter::ParseGaveUp);
    if parsed.kind == L4::LongChain {
        events::parse_ipv6_chain_too_long(ctx);
    } else {
        events::parse_truncated(ctx);
    }
    false
}

/// Coarse (tick-resolution) CLOCK_MONOTONIC: the precise clock costs more
/// than the rest of the policy path on virtualised hosts, and bans and
/// per-second budgets do not need sub-millisecond resolution.
#[inline(always)]
fn now_ns() -> u64 {
    // SAFETY: the helper has no preconditions.
    unsafe { bpf_ktime_get_coarse_ns() }
}

/// Packets judged on their source but never charged to it.
#[derive(Clone, Copy, PartialEq, Eq)]
enum UnmeteredKind {
    /// UDP to a protected port: passed or dropped as `xdp.udp` says.
    Udp,
    /// Neither TCP nor UDP (ICMP, ESP, ...).
    Other,
}

/// Judges a packet that is not metered: a ban drops it, and so does
/// `xdp.udp = "drop"` for UDP; the allow-list overrides both. Reads the
/// source's cached state when it has one and creates none, so unmetered
/// traffic never fills `GW_STATE`.
#[inline(always)]
fn judge_unmetered(src: &SourceAddr, kind: UnmeteredKind) -> Result<u32, ()> {
    let config = GW_CONFIG.get(0).ok_or(())?;
    let now = now_ns();
    let (banned, allowlisted) = match GW_STATE.get_ptr_mut(src) {
        Some(state) => {
            // SAFETY: as in `try_gateway_xdp`.
            let state = unsafe { &mut *state };
            let generation = *GW_GENERATION.get(0).ok_or(())?;
            if generation == 0 || state.policy_generation != generation {
                refresh_policy(state, src, config, generation);
            }
            (state.banned_until_ns > now, Some(state.allowlisted != 0))
        }
        None => (banned_until(src, &Key::new(128, src.addr)) > now, None),
    };
    let udp_drop = kind == UnmeteredKind::Udp && config.udp == udp::DROP;
    let reason = if banned {
        Counter::DroppedBanned
    } else if udp_drop {
        Counter::DroppedUdp
    } else if kind == UnmeteredKind::Udp {
        return Ok(pass(Counter::UdpPassed));
    } else {
        return Ok(pass(Counter::NotProtected));
    };
    let allowlisted =
        allowlisted.unwrap_or_else(|| GW_ALLOW.get(&Key::new(128, src.addr)).is_some());
    if allowlisted {
        return Ok(pass(Counter::Allowlisted));
    }
    Ok(deny(config, reason))
}

/// Re-reads the source's ban, budget and allow-list membership into its
/// state entry: only when userspace has changed policy since the last read.
/// Ban: the later of its own and its longest banned prefix's. Budget: its
/// own, else its longest prefix's, else the default.
#[inline(always)]
fn refresh_policy(state: &mut SourceState, src: &SourceAddr, config: &Config, generation: u64) {
    let key = Key::new(128, src.addr);
    state.banned_until_ns = banned_until(src, &key);
    // SAFETY: only userspace writes GW_BUDGETS; the value is copied out at once.
    let budget = match unsafe { GW_BUDGETS.get(src) } {
        Some(budget) => *budget,
        None => match GW_PREFIX_BUDGETS.get(&key) {
            Some(budget) => *budget,
            None => config.default_budget,
        },
    };
    (state.syn_interval_ns, state.syn_tolerance_ns) =
        gcra_params(budget.syn_per_sec, budget.syn_burst);
    (state.pkt_interval_ns, state.pkt_tolerance_ns) =
        gcra_params(budget.pkt_per_sec, budget.pkt_burst);
    state.allowlisted = u32::from(GW_ALLOW.get(&key).is_some());
    state.policy_generation = generation;
}

/// The later of the source's own ban deadline and its longest banned
/// prefix's (0: not banned). `key` is the source as a /128 trie key.
#[inline(always)]
fn banned_until(src: &SourceAddr, key: &Key<[u8; 16]>) -> u64 {
    // SAFETY: only userspace writes GW_BANS; the value is copied out at once.
    let own = match unsafe { GW_BANS.get(src) } {
        Some(ban) => ban.banned_until_ns,
        None => 0,
    };
    let prefix = match GW_PREFIX_BANS.get(key) {
        Some(ban) => ban.banned_until_ns,
        None => 0,
    };
    if own > prefix {
        own
    } else {
        prefix
    }
}

/// The source's state entry, created on first sight (its zero generation
/// forces a policy read).
#[inline(always)]
fn source_state(ctx: &XdpContext, src: &SourceAddr) -> Result<*mut SourceState, ()> {
    if let Some(state) = GW_STATE.get_ptr_mut(src) {
        return Ok(state);
    }
    let fresh = SourceState::default();
    // BPF_NOEXIST: if another CPU created it meanwhile, use theirs.
    let inserted = GW_STATE.insert(src, fresh, aya_ebpf::bindings::BPF_NOEXIST.into());
    let state = GW_STATE.get_ptr_mut(src);
    if state.is_none() {
        let error = inserted.err().map_or(0, i64::from);
        events::map_full(ctx, gateway_common::maps::STATE, error);
    }
    state.ok_or(())
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

/// The packet as the kernel hands it over, read through the shared parser.
struct XdpPacket<'a>(&'a XdpContext);

impl Packet for XdpPacket<'_> {
    /// Direct packet access, bounds-checked against `data_end` so the
    /// verifier sees the check.
    #[inline(always)]
    fn read_fixed<const N: usize>(&self, offset: usize) -> Option<[u8; N]> {
        let start = self.0.data();
        if start + offset + N > self.0.data_end() {
            return None;
        }
        // SAFETY: the bytes are inside the packet (checked above).
        Some(unsafe { direct::read::<N>(start + offset) })
    }

    /// `bpf_xdp_load_bytes`, which bounds-checks at run time.
    #[inline(always)]
    fn load<const N: usize>(&self, offset: usize) -> Option<[u8; N]> {
        let mut value = core::mem::MaybeUninit::<[u8; N]>::uninit();
        // SAFETY: `value` is a writable buffer of exactly N bytes.
        let rc = unsafe {
            bpf_xdp_load_bytes(
                self.0.ctx,
                offset as u32,
                value.as_mut_ptr().cast(),
                N as u32,
            )
        };
        if rc < 0 {
            return None;
        }
        // SAFETY: the helper filled every byte on success.
        Some(unsafe { value.assume_init() })
    }
}
