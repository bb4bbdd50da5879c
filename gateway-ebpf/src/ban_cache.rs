//! A per-CPU cache of banned sources this CPU dropped recently, so a banned
//! source's flood costs an array slot and a few compares per packet instead
//! of a hash lookup in `GW_STATE`. It holds policy only (a ban deadline,
//! valid for one policy generation, for a source that is not allow-listed),
//! never budget state, so per-CPU copies cannot disagree: restamping
//! `GW_GENERATION` (any ban, unban or allow-list write) invalidates every slot.
//!
//! A hit reads no clock (the helper costs a third of a cached drop): a slot
//! holds until when, in jiffies (`bpf_jiffies64`, inlined by the verifier),
//! its ban surely lasts. Coarse CLOCK_MONOTONIC and jiffies advance together
//! at each tick, and a tick is at most [`MAX_TICK_NS`] (HZ >= 100), so the
//! ban's remaining time less [`MARGIN_NS`] (for ticks the two counters see
//! at slightly different moments) is a safe number of jiffies. Near its
//! deadline a ban is never cached: the clock decides, as without the cache.
use aya_ebpf::{btf_maps::PerCpuArray, helpers::generated::bpf_jiffies64, macros::btf_map};
use gateway_common::SourceAddr;

const SLOTS: u32 = 64;
/// The longest tick Linux has (HZ = 100).
const MAX_TICK_NS: u64 = 10_000_000;
/// Slack between jiffies and the coarse clock; far more than the tick or
/// two the two counters can differ by.
const MARGIN_NS: u64 = 1_000_000_000;

/// One cached ban: the source as two words, the generation it is valid
/// for, and the last jiffy at which it is surely still in force.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct BanSlot {
    src: [u64; 2],
    generation: u64,
    until_jiffies: u64,
}

/// The kernel's tick counter; read before the clock when both are used.
#[inline(always)]
pub fn jiffies() -> u64 {
    // SAFETY: the helper has no preconditions.
    unsafe { bpf_jiffies64() }
}

/// Recently dropped banned sources, per CPU (kernel-written, not pinned).
#[btf_map]
static GW_BAN_CACHE: PerCpuArray<BanSlot, { SLOTS as usize }> = PerCpuArray::new();

#[inline(always)]
fn words(src: &SourceAddr) -> [u64; 2] {
    // SAFETY: same size, every bit pattern valid for both.
    unsafe { core::mem::transmute::<[u8; 16], [u64; 2]>(src.addr) }
}

#[inline(always)]
fn slot(words: &[u64; 2]) -> u32 {
    // The address's last byte (little-endian word): spoofers gain nothing by
    // colliding, a miss only costs the hash lookup.
    ((words[1] >> 56) as u32) % SLOTS
}

/// Whether `src` is cached as banned under `generation` at jiffy `jiffies`.
#[inline(always)]
pub fn banned(src: &SourceAddr, generation: u64, jiffies: u64) -> bool {
    let words = words(src);
    match GW_BAN_CACHE.get(slot(&words)) {
        Some(cached) => {
            generation != 0
                && cached.generation == generation
                && cached.src == words
                && cached.until_jiffies >= jiffies
        }
        None => false,
    }
}

/// Remembers that `src` (banned, not allow-listed) was banned until
/// `banned_until_ns` under `generation`, as seen at `now` (coarse ns) and
/// `jiffies` (read before `now`). A ban ending within [`MARGIN_NS`] is not
/// cached.
#[inline(always)]
pub fn remember(src: &SourceAddr, generation: u64, banned_until_ns: u64, now: u64, jiffies: u64) {
    let left = banned_until_ns.saturating_sub(now);
    if left <= MARGIN_NS {
        return;
    }
    let words = words(src);
    if let Some(cached) = GW_BAN_CACHE.get_ptr_mut(slot(&words)) {
        // SAFETY: this CPU's slot; XDP programs do not nest on one CPU.
        unsafe {
            *cached = BanSlot {
                src: words,
                generation,
                until_jiffies: jiffies + (left - MARGIN_NS) / MAX_TICK_NS,
            }
        };
    }
}
