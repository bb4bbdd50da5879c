//! Kernel events: the rare things the XDP program logs with aya-log (never
//! per packet), and how the gateway recognises them. Each event is one
//! aya-log record whose target is one of the names below and whose message
//! is `key=value` pairs, so the gateway can forward it with structured
//! fields (`gateway::xdp::events`).
//!
//! - [`BAN_FIRST_DROP`] (info): a banned source's first packet judged
//!   under a ban, once per ban (its `SourceState` remembers the deadline it
//!   reported). Message: `source={addr} reason={code} expires_in_ms={ms}
//!   monitor={0|1}`; `reason` is a [`crate::ban_reason`] code, or
//!   [`REASON_UNKNOWN`] when the ban came from no `GW_BANS` entry.
//! - [`MAP_FULL`] (warn): an insert into a kernel-written map failed.
//!   Message: `map={name} error={errno}`. Rate-limited.
//! - [`PARSE_GAVE_UP`] (debug): the parser gave up on a packet (it passes).
//!   Message: `why={`[`gave_up`]`}`. Rate-limited.
//!
//! Rate limit: a rate-limited kind logs at most once per [`RATE_LIMIT_NS`]
//! (one second) for the whole host; CPUs racing in the same instant may
//! each log one, so the hard bound is one per second per CPU.

/// Target of the first drop of a source after it is banned.
pub const BAN_FIRST_DROP: &str = "ban_first_drop";
/// Target of a failed insert into a kernel-written map.
pub const MAP_FULL: &str = "map_full";
/// Target of a packet the parser gave up on.
pub const PARSE_GAVE_UP: &str = "parse_gave_up";

/// `reason` of a [`BAN_FIRST_DROP`] whose ban has no `GW_BANS` entry.
pub const REASON_UNKNOWN: u32 = u32::MAX;

/// Minimum time between two events of one rate-limited kind.
pub const RATE_LIMIT_NS: u64 = 1_000_000_000;

/// Why the parser gave up (the `why` of [`PARSE_GAVE_UP`]).
pub mod gave_up {
    /// The packet ended before a header the parser needed.
    pub const TRUNCATED: &str = "truncated";
    /// More IPv6 extension headers than the parser follows.
    pub const IPV6_EXT_CHAIN: &str = "ipv6_ext_chain";
}

/// Slots of the rate-limited kinds in the program's event clock.
pub mod limited {
    pub const MAP_FULL: u32 = 0;
    pub const PARSE_TRUNCATED: u32 = 1;
    pub const PARSE_IPV6_EXT_CHAIN: u32 = 2;
    /// First drops under a prefix ban: its sources are unbounded.
    pub const PREFIX_FIRST_DROP: u32 = 3;
    pub const COUNT: u32 = 4;
}
