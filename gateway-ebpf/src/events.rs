//! Rare kernel events, logged with aya-log to its `AYA_LOGS` ring buffer,
//! which the gateway reads and forwards to its log and to `gateway xdp
//! events` (formats: `gateway_common::events`). Never per packet: a ban's
//! first drop is logged once per ban, the other kinds at most once per
//! second each ([`RATE_LIMIT_NS`]). One function per event kind, so call
//! sites stay one line.
use aya_ebpf::{
    btf_maps::Array, helpers::bpf_ktime_get_coarse_ns, macros::btf_map, programs::XdpContext,
};
use aya_log_ebpf::{debug, info, warn};
use gateway_common::{
    events::{self, gave_up, limited, RATE_LIMIT_NS, REASON_UNKNOWN},
    mode, Config, SourceAddr, SourceState,
};

use aya_ebpf::btf_maps::lpm_trie::Key;

use crate::{GW_BANS, GW_PREFIX_BANS};

const LIMITED: usize = limited::COUNT as usize;

/// When each rate-limited event kind was last logged (kernel-written; not
/// pinned: a fresh program starts with a clean clock).
#[btf_map]
static GW_EVENT_CLOCK: Array<u64, LIMITED> = Array::new();

/// The first packet of a source judged under a ban, once per ban: the
/// reported deadline is remembered in its state entry, so a new ban (a new
/// deadline) is reported again and nothing else is. Under a prefix's ban,
/// at most one a second ([`limited::PREFIX_FIRST_DROP`]).
#[inline(always)]
pub fn first_drop_after_ban(
    ctx: &XdpContext,
    state: &mut SourceState,
    src: &SourceAddr,
    config: &Config,
    now: u64,
) {
    if state.ban_reported_until_ns == state.banned_until_ns {
        return;
    }
    state.ban_reported_until_ns = state.banned_until_ns;
    // The ban in force is the later of the source's own and its prefix's.
    // SAFETY: only userspace writes GW_BANS; the value is copied out at once.
    let reason = match unsafe { GW_BANS.get(src) } {
        Some(ban) if ban.banned_until_ns == state.banned_until_ns => ban.reason,
        // A prefix holds as many sources as an attacker rotates through:
        // their first drops share one rate limit, or each is a log line.
        _ if !due(limited::PREFIX_FIRST_DROP) => return,
        _ => match GW_PREFIX_BANS.get(&Key::new(128, src.addr)) {
            Some(ban) => ban.reason,
            None => REASON_UNKNOWN,
        },
    };
    let expires_in_ms = state.banned_until_ns.saturating_sub(now) / 1_000_000;
    let monitor = u8::from(config.mode == mode::MONITOR);
    info!(
        ctx,
        target: events::BAN_FIRST_DROP,
        "source={:i} reason={} expires_in_ms={} monitor={}",
        src.addr,
        reason,
        expires_in_ms,
        monitor
    );
}

/// An insert into the kernel-written map `map` failed (`error`: its errno,
/// negative, or 0 when the entry vanished right after the insert).
#[inline(always)]
pub fn map_full(ctx: &XdpContext, map: &'static str, error: i64) {
    if !due(limited::MAP_FULL) {
        return;
    }
    warn!(ctx, target: events::MAP_FULL, "map={} error={}", map, error);
}

/// The parser gave up on a packet: it ended before a header it needed.
#[inline(always)]
pub fn parse_truncated(ctx: &XdpContext) {
    if !due(limited::PARSE_TRUNCATED) {
        return;
    }
    debug!(ctx, target: events::PARSE_GAVE_UP, "why={}", gave_up::TRUNCATED);
}

/// The parser gave up on an IPv6 extension-header chain longer than it
/// follows.
#[inline(always)]
pub fn parse_ipv6_chain_too_long(ctx: &XdpContext) {
    if !due(limited::PARSE_IPV6_EXT_CHAIN) {
        return;
    }
    debug!(ctx, target: events::PARSE_GAVE_UP, "why={}", gave_up::IPV6_EXT_CHAIN);
}

/// Whether the rate-limited kind `slot` may log now; if so, restarts its
/// clock. One shared clock per kind (not per CPU): two CPUs racing within
/// the same instant may both log, so the hard bound is one per second per
/// CPU and the usual rate one per second.
#[inline(always)]
fn due(slot: u32) -> bool {
    let Some(last) = GW_EVENT_CLOCK.get_ptr_mut(slot) else {
        return false;
    };
    // SAFETY: the helper has no preconditions.
    let now = unsafe { bpf_ktime_get_coarse_ns() };
    // SAFETY: `last` points into the array's value for `slot`; a racing
    // CPU can only make one more event through.
    unsafe {
        if *last != 0 && now.wrapping_sub(*last) < RATE_LIMIT_NS {
            return false;
        }
        *last = now;
    }
    true
}
