//! A per-CPU cache of banned sources this CPU dropped recently, so a banned
//! source's flood costs an array slot and a few compares per packet instead
//! of a hash lookup in `GW_STATE`. It holds policy only (a ban deadline,
//! valid for one policy generation, for a source that is not allow-listed),
//! never budget state, so per-CPU copies cannot disagree: restamping
//! `GW_GENERATION` (any ban, unban or allow-list write) invalidates every slot.
use aya_ebpf::{btf_maps::PerCpuArray, macros::btf_map};
use gateway_common::SourceAddr;

const SLOTS: u32 = 64;

/// One cached ban: the source as two words, and the generation it is valid for.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct BanSlot {
    src: [u64; 2],
    generation: u64,
    banned_until_ns: u64,
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

/// Whether `src` is cached as banned under `generation` at `now`.
#[inline(always)]
pub fn banned(src: &SourceAddr, generation: u64, now: u64) -> bool {
    let words = words(src);
    match GW_BAN_CACHE.get(slot(&words)) {
        Some(cached) => {
            generation != 0
                && cached.generation == generation
                && cached.src == words
                && cached.banned_until_ns > now
        }
        None => false,
    }
}

/// Remembers that `src` (banned, not allow-listed) was banned until
/// `banned_until_ns` under `generation`.
#[inline(always)]
pub fn remember(src: &SourceAddr, generation: u64, banned_until_ns: u64) {
    let words = words(src);
    if let Some(cached) = GW_BAN_CACHE.get_ptr_mut(slot(&words)) {
        // SAFETY: this CPU's slot; XDP programs do not nest on one CPU.
        unsafe {
            *cached = BanSlot {
                src: words,
                generation,
                banned_until_ns,
            }
        };
    }
}
