//! A per-CPU cache of hot sources, so a banned source's flood and an
//! in-budget source's traffic cost an array slot and a few compares per
//! packet instead of a `GW_STATE` hash lookup and a clock read. A slot is
//! direct-mapped by a hash of the source and valid for one policy
//! generation (any ban, unban, budget or allow-list write invalidates every
//! slot) until a jiffy deadline (`bpf_jiffies64`, inlined by the verifier).
//! It holds one of:
//!
//! - **a ban** (policy only, for a source that is not allow-listed): until
//!   when, in jiffies, the ban surely lasts. Coarse CLOCK_MONOTONIC and
//!   jiffies advance together at each tick, and a tick is at most
//!   [`MAX_TICK_NS`] (HZ >= 100), so the ban's remaining time less
//!   [`MARGIN_NS`] (for ticks the two counters see at slightly different
//!   moments) is a safe number of jiffies. A ban near its deadline is never
//!   cached: the clock decides, as without the cache.
//! - **a token lease**: SYN and packet tokens this CPU took at once from
//!   the source's shared GCRA buckets in `GW_STATE` (see [`take`]) and
//!   spends locally. The buckets hand out only what they would admit at
//!   that instant, so the cache never admits more than they handed out;
//!   but a CPU holds up to `k - 1` tokens (carried over from lease to
//!   lease while the generation holds) and may spend them after the
//!   buckets ran dry or refilled, so over any window a source gets at most
//!   `CPUs × (k - 1)` packets (and SYNs) more than the exact GCRA, `k` the
//!   lease size ([`extra_tokens`]: at most 64, and 1, exact, for bursts
//!   under 32 or rates under 512/s). A lease is taken only outside
//!   SYN-cookie mode (see `syncookie::leasable`), and SYN tokens only
//!   without a listener-wide flood meter, so cookie mode sees every SYN and
//!   ACK it would see without the cache, less at most `k - 1` per other
//!   CPU (the one entering the mode drops its lease) until those leases
//!   run out or expire ([`LEASE_JIFFIES`]).
use aya_ebpf::{btf_maps::PerCpuArray, helpers::generated::bpf_jiffies64, macros::btf_map};
use gateway_common::{Config, SourceAddr, SourceState};

use crate::syncookie;

const SLOTS: u32 = 256;
/// The longest tick Linux has (HZ = 100).
const MAX_TICK_NS: u64 = 10_000_000;
/// Slack between jiffies and the coarse clock; far more than the tick or
/// two the two counters can differ by.
const MARGIN_NS: u64 = 1_000_000_000;
/// Most tokens a lease holds (the packet that takes it spends one).
const LEASE_MAX: u32 = 64;
/// A lease is at most this fraction of the burst, so small budgets stay
/// exact (a lease of one is the packet's own token).
const LEASE_BURST_SHARE: u32 = 16;
/// A lease is at most what the rate refills in this fraction of a second
/// (4 ms), so low rates stay exact.
const LEASE_RATE_DIVISOR: u64 = 256;
const NS_PER_SEC: u64 = 1_000_000_000;
/// How long a lease lasts (1-2 ticks: 4-8 ms at HZ = 250); its unspent
/// tokens are carried into the next one while the generation holds.
const LEASE_JIFFIES: u64 = 2;
/// The tokens of an unlimited budget (rate 0): never charged, and more
/// than a lease's lifetime can spend.
pub const UNLIMITED: u32 = 1 << 30;

/// One cached verdict: the source as two words, the generation it is
/// valid for, the last jiffy it is valid at, and a ban or a lease.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Slot {
    src: [u64; 2],
    generation: u64,
    until_jiffies: u64,
    /// Nonzero: a ban (no tokens).
    banned: u32,
    syn_left: u32,
    pkt_left: u32,
    _pad: u32,
}

/// Hot sources, per CPU (kernel-written, not pinned).
#[btf_map]
static GW_HOT: PerCpuArray<Slot, { SLOTS as usize }> = PerCpuArray::new();

/// The kernel's tick counter; read before the clock when both are used.
#[inline(always)]
pub fn jiffies() -> u64 {
    // SAFETY: the helper has no preconditions.
    unsafe { bpf_jiffies64() }
}

#[inline(always)]
fn words(src: &SourceAddr) -> [u64; 2] {
    // SAFETY: same size, every bit pattern valid for both.
    unsafe { core::mem::transmute::<[u8; 16], [u64; 2]>(src.addr) }
}

/// The slot of a source: a multiplicative hash of its last four bytes (an
/// IPv4 address, or the end of an IPv6 interface id). Spoofers gain nothing
/// by colliding: a miss only costs the `GW_STATE` lookup.
#[inline(always)]
fn index(words: &[u64; 2]) -> u32 {
    ((words[1] >> 32) as u32).wrapping_mul(0x9e37_79b1) >> (32 - SLOTS.trailing_zeros())
}

/// What the cache says about a packet.
pub enum Hit {
    /// Spent a leased token (a SYN and a packet token for a SYN): pass.
    Pass,
    /// Banned under this generation: drop.
    Banned,
    /// Nothing cached, or no token left: judge it on `GW_STATE`.
    Miss,
}

/// Judges a metered packet from `src` (`syn`: it is a SYN to a protected
/// port) on the cache alone, spending a leased token if it passes.
#[inline(always)]
pub fn serve(src: &SourceAddr, generation: u64, jiffies: u64, syn: bool) -> Hit {
    let words = words(src);
    let Some(slot) = GW_HOT.get_ptr_mut(index(&words)) else {
        return Hit::Miss;
    };
    // SAFETY: this CPU's slot; XDP programs do not nest on one CPU.
    let slot = unsafe { &mut *slot };
    // An empty or cleared slot has deadline 0 and never matches.
    if slot.src != words || slot.generation != generation || slot.until_jiffies < jiffies {
        return Hit::Miss;
    }
    if slot.banned != 0 {
        return Hit::Banned;
    }
    if slot.pkt_left == 0 || (syn && slot.syn_left == 0) {
        return Hit::Miss;
    }
    slot.pkt_left -= 1;
    if syn {
        slot.syn_left -= 1;
    }
    Hit::Pass
}

/// This CPU's slot for `src`, if it holds `src`'s lease for `generation`:
/// the tokens left in it (SYN, packet), carried into the next lease.
#[inline(always)]
fn carried(src: &SourceAddr, generation: u64) -> (u32, u32) {
    let words = words(src);
    match GW_HOT.get(index(&words)) {
        Some(slot) if slot.src == words && slot.generation == generation && slot.banned == 0 => {
            (slot.syn_left, slot.pkt_left)
        }
        _ => (0, 0),
    }
}

/// Tokens a lease takes beyond the packet's own for a GCRA bucket
/// (`interval` 0: unlimited, nothing to take): `k - 1`, where the lease
/// size `k` is at most [`LEASE_MAX`], a sixteenth of the burst and what the
/// rate refills in [`LEASE_RATE_DIVISOR`]ths of a second, and at least 1
/// (exact): so bursts under 32 and rates under 512/s stay exact.
#[inline(always)]
fn extra_tokens(interval: u64, tolerance: u64) -> u32 {
    if interval == 0 {
        return 0;
    }
    let by_burst = (tolerance / interval + 1) / u64::from(LEASE_BURST_SHARE);
    let by_rate = NS_PER_SEC / LEASE_RATE_DIVISOR / interval;
    let size = if by_burst < by_rate {
        by_burst
    } else {
        by_rate
    };
    if size >= u64::from(LEASE_MAX) {
        LEASE_MAX - 1
    } else {
        (size as u32).saturating_sub(1)
    }
}

/// `left` tokens topped up to a full lease from a GCRA bucket right after
/// it admitted a packet at `now` (see [`extra_tokens`], [`take`]);
/// unlimited: [`UNLIMITED`].
#[inline(always)]
fn top_up(left: u32, tat: &mut u64, interval: u64, tolerance: u64, now: u64) -> u32 {
    if interval == 0 {
        return UNLIMITED;
    }
    let extra = extra_tokens(interval, tolerance);
    if left >= extra {
        return left;
    }
    left + take(tat, interval, tolerance, now, extra - left)
}

/// Takes up to `want` tokens at once from a GCRA bucket (emission
/// `interval`, burst `tolerance`) at `now`, right after it admitted a
/// packet: as many as it would admit back to back now, so fewer when fewer
/// are there. Returns how many; `interval` is not 0.
#[inline(always)]
fn take(tat: &mut u64, interval: u64, tolerance: u64, now: u64, want: u32) -> u32 {
    if *tat < now {
        return 0;
    }
    // The next packet conforms while `tat - now <= tolerance`.
    let room = (tolerance + interval).saturating_sub(*tat - now) / interval;
    let taken = if room < u64::from(want) {
        room as u32
    } else {
        want
    };
    *tat += u64::from(taken) * interval;
    taken
}

/// After the buckets admitted a packet: tops up this CPU's token lease for
/// the source, carrying over what its last lease left under
/// the same generation; SYN tokens only for a SYN. Outside what
/// `syncookie::leasable` allows, or with nothing to lease, the slot is
/// cleared.
#[inline(always)]
pub fn renew(
    state: &mut SourceState,
    src: &SourceAddr,
    config: &Config,
    generation: u64,
    syn: bool,
    now: u64,
    jiffies: u64,
) {
    let (syn_ok, pkt_ok) = syncookie::leasable(config, state, now);
    if !pkt_ok {
        forget(src);
        return;
    }
    let (syn_left, pkt_left) = carried(src, generation);
    let syn_left = if !syn_ok {
        0
    } else if syn {
        top_up(
            syn_left,
            &mut state.syn_tat_ns,
            state.syn_interval_ns,
            state.syn_tolerance_ns,
            now,
        )
    } else {
        syn_left
    };
    let pkt_left = top_up(
        pkt_left,
        &mut state.pkt_tat_ns,
        state.pkt_interval_ns,
        state.pkt_tolerance_ns,
        now,
    );
    if pkt_left == 0 {
        forget(src);
        return;
    }
    lease(src, generation, jiffies, syn_left, pkt_left);
}

/// Stores a lease of `syn_left` and `packet_left` tokens for `src` under
/// `generation` (nonzero), taken at jiffy `jiffies`.
#[inline(always)]
fn lease(src: &SourceAddr, generation: u64, jiffies: u64, syn_left: u32, pkt_left: u32) {
    store(
        src,
        Slot {
            src: words(src),
            generation,
            until_jiffies: jiffies + LEASE_JIFFIES,
            banned: 0,
            syn_left,
            pkt_left,
            _pad: 0,
        },
    );
}

/// Remembers that `src` (banned, not allow-listed) was banned until
/// `banned_until_ns` under `generation` (nonzero), as seen at `now` (coarse
/// ns) and `jiffies` (read before `now`). A ban ending within
/// [`MARGIN_NS`] is not cached.
#[inline(always)]
pub fn ban(src: &SourceAddr, generation: u64, banned_until_ns: u64, now: u64, jiffies: u64) {
    let left = banned_until_ns.saturating_sub(now);
    if left <= MARGIN_NS {
        forget(src);
        return;
    }
    store(
        src,
        Slot {
            src: words(src),
            generation,
            until_jiffies: jiffies + (left - MARGIN_NS) / MAX_TICK_NS,
            banned: 1,
            syn_left: 0,
            pkt_left: 0,
            _pad: 0,
        },
    );
}

/// Clears this CPU's slot if it holds `src` (its verdict is no longer a
/// lease or a ban); another source's slot is left alone.
#[inline(always)]
pub fn forget(src: &SourceAddr) {
    let words = words(src);
    if let Some(slot) = GW_HOT.get_ptr_mut(index(&words)) {
        // SAFETY: this CPU's slot; XDP programs do not nest on one CPU.
        let slot = unsafe { &mut *slot };
        if slot.src == words {
            slot.until_jiffies = 0;
        }
    }
}

#[inline(always)]
fn store(src: &SourceAddr, value: Slot) {
    if let Some(slot) = GW_HOT.get_ptr_mut(index(&words(src))) {
        // SAFETY: this CPU's slot; XDP programs do not nest on one CPU.
        unsafe { *slot = value };
    }
}
