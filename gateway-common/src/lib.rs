//! Types and names shared by the XDP program and the gateway.
//!
//! Everything here is plain `#[repr(C)]` data: the kernel reads and writes it
//! through BPF maps, `bpftool` prints it by field name (BTF), and userspace
//! implements `aya::Pod` for it behind the `user` feature. [`packet`] is the
//! XDP program's packet parser, kept here so the host tests and fuzzes it.
//!
//! Ownership rule: userspace writes policy (`GW_BANS`, `GW_BUDGETS`,
//! `GW_PREFIX_BANS`, `GW_PREFIX_BUDGETS`, `GW_ALLOW`, `GW_PORTS`,
//! `GW_CONFIG`); the kernel writes only `GW_STATE` and `GW_COUNTERS`.
//! Neither side ever writes the other's maps.
// `std` only for the host's unit tests (they build frames in `Vec`s).
#![cfg_attr(not(test), no_std)]

pub mod events;
pub mod packet;

/// Map names. They must match the statics in `gateway-ebpf` (the loader
/// checks every one of them is present in the object it loads).
pub mod maps {
    /// Bans by source: [`crate::SourceAddr`] → [`crate::Ban`]. A plain hash
    /// (not LRU) so a spoofed flood can never evict a ban.
    pub const BANS: &str = "GW_BANS";
    /// Per-source kernel budgets written from the tier the gateway last saw:
    /// [`crate::SourceAddr`] → [`crate::Budget`]. LRU: an evicted entry falls
    /// back to the default budget, which is harmless.
    pub const BUDGETS: &str = "GW_BUDGETS";
    /// Kernel-owned token state: [`crate::SourceAddr`] → [`crate::SourceState`].
    /// LRU so spoofed sources evict old state instead of failing inserts.
    pub const STATE: &str = "GW_STATE";
    /// Allow-listed CIDRs (LPM trie, IPv6 keys): never dropped.
    pub const ALLOW: &str = "GW_ALLOW";
    /// Protected destination ports: index = port, value 1 = protected.
    pub const PORTS: &str = "GW_PORTS";
    /// One [`crate::Config`] at index 0.
    pub const CONFIG: &str = "GW_CONFIG";
    /// One `u64` at index 0, restamped by userspace after every policy write
    /// (bans, budgets, allow-list, config). The kernel caches each source's
    /// policy in its `GW_STATE` entry and re-reads it when this changes.
    pub const GENERATION: &str = "GW_GENERATION";
    /// Per-CPU `u64` counters indexed by [`crate::Counter`].
    pub const COUNTERS: &str = "GW_COUNTERS";
    /// Bans by CIDR (LPM trie, IPv6 keys with IPv4 mapped, like `GW_ALLOW`)
    /// → [`crate::Ban`]. Read only when a source's cached policy is stale.
    pub const PREFIX_BANS: &str = "GW_PREFIX_BANS";
    /// Budgets by CIDR (LPM trie, like `GW_PREFIX_BANS`) → [`crate::Budget`]:
    /// each source inside gets it, unless it has its own in `GW_BUDGETS`.
    pub const PREFIX_BUDGETS: &str = "GW_PREFIX_BUDGETS";
    /// Kernel-owned listener-wide SYN meter: one [`crate::SynFlood`] at index 0.
    pub const SYN_FLOOD: &str = "GW_SYN_FLOOD";

    /// Every map the program must define, in the order `xdp status` shows them.
    pub const ALL: [&str; 11] = [
        BANS,
        BUDGETS,
        STATE,
        ALLOW,
        PORTS,
        CONFIG,
        GENERATION,
        COUNTERS,
        PREFIX_BANS,
        PREFIX_BUDGETS,
        SYN_FLOOD,
    ];
}

/// Name of the XDP entry function in the object.
pub const PROGRAM: &str = "gateway_xdp";
/// File name of the pinned program under the pin root.
pub const PROGRAM_PIN: &str = "gateway_xdp_prog";
/// File name of the pinned XDP link under the pin root: it keeps the
/// program attached while no gateway runs, and the next one swaps its
/// program into it.
pub const LINK_PIN: &str = "gateway_xdp_link";

/// Default map sizes (the gateway may override them at load time).
pub const DEFAULT_BANS_ENTRIES: u32 = 65_536;
pub const DEFAULT_BUDGETS_ENTRIES: u32 = 262_144;
pub const DEFAULT_STATE_ENTRIES: u32 = 262_144;
pub const DEFAULT_ALLOW_ENTRIES: u32 = 1_024;
pub const PORTS_ENTRIES: u32 = 65_536;
pub const DEFAULT_PREFIX_BANS_ENTRIES: u32 = 16_384;
pub const DEFAULT_PREFIX_BUDGETS_ENTRIES: u32 = 4_096;

/// A source address: IPv6, with IPv4 mapped as `::ffff:a.b.c.d`, so one map
/// serves both families.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Default)]
pub struct SourceAddr {
    pub addr: [u8; 16],
}

impl SourceAddr {
    /// From its sixteen bytes as two native-endian words: the XDP program
    /// builds it from two loads this way, where sixteen byte stores would
    /// cost more than the rest of its fast path.
    #[inline(always)]
    pub fn from_words(words: [u64; 2]) -> Self {
        // SAFETY: same size, and every bit pattern is valid for both types.
        let addr = unsafe { core::mem::transmute::<[u64; 2], [u8; 16]>(words) };
        Self { addr }
    }

    /// [`SourceAddr::from_v4`] from the address's four bytes as one
    /// native-endian word (see [`SourceAddr::from_words`]).
    #[inline(always)]
    pub fn from_v4_word(v4: u32) -> Self {
        let [a, b, c, d] = v4.to_ne_bytes();
        Self::from_words([0, u64::from_ne_bytes([0, 0, 0xff, 0xff, a, b, c, d])])
    }

    /// The IPv4-mapped form of an IPv4 address given as its four bytes.
    #[inline(always)]
    pub const fn from_v4(octets: [u8; 4]) -> Self {
        let [a, b, c, d] = octets;
        Self {
            addr: [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, a, b, c, d],
        }
    }
}

/// Why a source is banned (shown by `gateway xdp bans`).
pub mod ban_reason {
    /// An operator ran `gateway xdp ban`.
    pub const MANUAL: u32 = 0;
    /// The source kept sending past its rate limit.
    pub const RATE_LIMIT: u32 = 1;
    /// Too many authentication failures (key or token guessing).
    pub const AUTH_FAILURES: u32 = 2;
    /// Too many addresses of one prefix were banned: the prefix is.
    pub const PREFIX_ESCALATION: u32 = 3;

    /// The one spelling of each reason, shared by `gateway xdp bans` and
    /// the metrics labels. Any other code reads as manual: userspace
    /// writes every ban, so an unknown code can only be an operator's.
    pub const fn name(code: u32) -> &'static str {
        match code & !super::FLEET_ORIGIN {
            RATE_LIMIT => "rate_limit",
            AUTH_FAILURES => "auth_failures",
            PREFIX_ESCALATION => "prefix_escalation",
            _ => "manual",
        }
    }
}

/// Set in a ban's `reason` and a budget's `tier` (which the kernel never
/// interprets) when the fleet wrote the entry, not this node: pinned maps
/// outlive the gateway, and a restarted node reconciles exactly these
/// entries against the fleet's active set (an unban it missed).
pub const FLEET_ORIGIN: u32 = 1 << 31;

/// A ban written by userspace. The kernel only reads it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Ban {
    /// `CLOCK_MONOTONIC` deadline in ns (the kernel compares it with
    /// `bpf_ktime_get_coarse_ns`, the same clock at tick resolution).
    pub banned_until_ns: u64,
    /// One of [`ban_reason`].
    pub reason: u32,
    /// How many times this source has been banned (for doubling on repeat).
    pub offences: u32,
}

/// A source's kernel budget. A rate of 0 means "no limit" for that budget.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Budget {
    /// New TCP connections (SYN without ACK) per second.
    pub syn_per_sec: u32,
    /// SYNs allowed back to back before the rate applies.
    pub syn_burst: u32,
    /// Packets (TCP or UDP, to protected ports) per second.
    pub pkt_per_sec: u32,
    /// Packets allowed back to back before the rate applies.
    pub pkt_burst: u32,
    /// Tier index the budget came from (0 = default), for display only.
    pub tier: u32,
}

/// Kernel-written per-source state: GCRA theoretical arrival times, plus the
/// kernel's cached copy of the source's policy, so a packet costs one map
/// lookup instead of four. The cache is valid while `policy_generation`
/// equals the value in `GW_GENERATION`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct SourceState {
    pub syn_tat_ns: u64,
    pub pkt_tat_ns: u64,
    pub policy_generation: u64,
    /// Cached from `GW_BANS` (0 = not banned).
    pub banned_until_ns: u64,
    /// Cached GCRA parameters from the budget (interval 0 = unlimited).
    pub syn_interval_ns: u64,
    pub syn_tolerance_ns: u64,
    pub pkt_interval_ns: u64,
    pub pkt_tolerance_ns: u64,
    /// Cached: 1 if the source is inside an allow-listed CIDR.
    pub allowlisted: u32,
    pub _pad: u32,
    /// The ban deadline whose first drop was already logged (see
    /// [`events::BAN_FIRST_DROP`]): one event per ban, not per packet.
    pub ban_reported_until_ns: u64,
    /// SYN-cookie mode (see `Config::syn_cookies`) lasts until this
    /// deadline: the source's SYNs pass uncharged for the kernel to answer
    /// with a cookie, and only its completed handshakes are charged.
    pub cookie_until_ns: u64,
    /// GCRA of the SYNs offered in cookie mode (spoofable, so it only
    /// decides how long the mode lasts, never what is charged).
    pub offered_tat_ns: u64,
}

/// Kernel-written listener-wide SYN meter (`GW_SYN_FLOOD`): past
/// `Config::syn_flood_rate`, every source is in SYN-cookie mode.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct SynFlood {
    pub tat_ns: u64,
    pub cookie_until_ns: u64,
}

/// Enforcement modes (value of [`Config::mode`]).
pub mod mode {
    /// Drop what policy says to drop.
    pub const ENFORCE: u32 = 0;
    /// Count what would be dropped; pass everything.
    pub const MONITOR: u32 = 1;
}

/// How the program is attached (value of [`Config::attach_mode`]); recorded
/// for `gateway xdp status`, the kernel ignores it.
pub mod attach_mode {
    pub const NONE: u32 = 0;
    pub const NATIVE: u32 = 1;
    pub const SKB: u32 = 2;

    /// The one spelling of each mode, shared by the ready line and
    /// `gateway xdp status`.
    pub const fn name(code: u32) -> &'static str {
        match code {
            NATIVE => "native",
            SKB => "skb",
            _ => "none",
        }
    }
}

/// Who answers SYNs in cookie mode (value of [`Config::syn_cookies`]).
pub mod syn_cookies {
    /// No cookie mode: over-budget SYNs are dropped.
    pub const OFF: u32 = 0;
    /// The kernel (`net.ipv4.tcp_syncookies = 2`).
    pub const KERNEL: u32 = 1;
    /// XDP itself (`XDP_TX`), the kernel for shapes it does not rewrite.
    pub const XDP: u32 = 2;
}

/// Global settings, written by userspace at index 0 of `GW_CONFIG`.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Config {
    /// One of [`mode`].
    pub mode: u32,
    /// Interface index the program is attached to (0 = not attached).
    pub ifindex: u32,
    /// One of [`attach_mode`].
    pub attach_mode: u32,
    /// PID of the gateway that owns the pins (for `xdp status`).
    pub owner_pid: u32,
    /// Budget for sources without an entry in `GW_BUDGETS`.
    pub default_budget: Budget,
    /// Interface name, NUL-padded.
    pub ifname: [u8; 16],
    /// What happens to UDP to a protected port: one of [`udp`].
    pub udp: u32,
    /// One of [`syn_cookies`]: spoof-resistant SYN budgets. A source over
    /// its SYN budget (or every source, past `syn_flood_rate`) has its SYNs
    /// answered with SYN cookies, uncharged; only handshakes completed with
    /// a valid cookie are charged. Off: over-budget SYNs are dropped.
    pub syn_cookies: u32,
    /// Protected SYNs per second (all sources) above which every source is
    /// in SYN-cookie mode; 0 = only per source.
    pub syn_flood_rate: u32,
}

/// What the program does with UDP to a protected port (value of
/// [`Config::udp`]). It is never charged to its source's budgets (a
/// spoofer could spend a client's budget with it); a ban still drops it.
pub mod udp {
    pub const PASS: u32 = 0;
    pub const DROP: u32 = 1;
}

/// Counter indexes in `GW_COUNTERS`. Packets to unprotected ports and
/// frames without an IP header are counted as `NotProtected` and passed;
/// every other packet is judged on its source.
/// `Allowlisted` counts packets policy would have dropped but the allow-list
/// let through.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Counter {
    Passed = 0,
    Allowlisted = 1,
    DroppedBanned = 2,
    DroppedConnBudget = 3,
    DroppedPktBudget = 4,
    MonitorBanned = 5,
    MonitorConnBudget = 6,
    MonitorPktBudget = 7,
    NotProtected = 8,
    /// The parser gave up on the ports (cut or malformed L4 header, IPv6
    /// chain longer than it follows); the packet was judged on its source.
    ParseGaveUp = 9,
    /// UDP to a protected port, passed without charging its source.
    UdpPassed = 10,
    /// UDP to a protected port dropped by `xdp.udp = "drop"`.
    DroppedUdp = 11,
    MonitorUdp = 12,
    SynCookieSent = 13,
    SynCookieValid = 14,
    SynCookieInvalid = 15,
    SynCookieXdp = 16,
    /// More VLAN tags than the parser follows: no source to judge, and the
    /// kernel would strip priority tags and deliver the packet; dropped.
    DroppedVlanTags = 17,
    MonitorVlanTags = 18,
}

impl Counter {
    pub const COUNT: u32 = 19;
    /// Every counter with its metric-friendly name, in index order.
    pub const ALL: [(Counter, &'static str); Self::COUNT as usize] = [
        (Counter::Passed, "passed"),
        (Counter::Allowlisted, "allowlisted"),
        (Counter::DroppedBanned, "dropped_banned"),
        (Counter::DroppedConnBudget, "dropped_conn_budget"),
        (Counter::DroppedPktBudget, "dropped_pkt_budget"),
        (Counter::MonitorBanned, "monitor_would_drop_banned"),
        (Counter::MonitorConnBudget, "monitor_would_drop_conn_budget"),
        (Counter::MonitorPktBudget, "monitor_would_drop_pkt_budget"),
        (Counter::NotProtected, "not_protected"),
        (Counter::ParseGaveUp, "parse_gave_up"),
        (Counter::UdpPassed, "udp_passed"),
        (Counter::DroppedUdp, "dropped_udp"),
        (Counter::MonitorUdp, "monitor_would_drop_udp"),
        // SYNs in cookie mode, passed uncharged for a kernel SYN cookie.
        (Counter::SynCookieSent, "syn_cookies_sent"),
        // Handshakes completed with a valid cookie (then charged).
        (Counter::SynCookieValid, "syn_cookies_valid"),
        // ACKs in cookie mode without a valid cookie: established traffic
        // or forged; passed, never charged.
        (Counter::SynCookieInvalid, "syn_cookies_invalid"),
        // Of `syn_cookies_sent`: answered by XDP itself (XDP_TX).
        (Counter::SynCookieXdp, "syn_cookies_xdp"),
        (Counter::DroppedVlanTags, "dropped_vlan_tags"),
        (Counter::MonitorVlanTags, "monitor_would_drop_vlan_tags"),
    ];

    /// The counter that records this drop reason in monitor mode.
    #[inline(always)]
    pub const fn monitored(self) -> Counter {
        match self {
            Counter::DroppedBanned => Counter::MonitorBanned,
            Counter::DroppedConnBudget => Counter::MonitorConnBudget,
            Counter::DroppedPktBudget => Counter::MonitorPktBudget,
            Counter::DroppedUdp => Counter::MonitorUdp,
            Counter::DroppedVlanTags => Counter::MonitorVlanTags,
            other => other,
        }
    }
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all are `#[repr(C)]`, contain only integers and byte arrays, and
    // have no padding (checked by the size assertions below).
    unsafe impl aya::Pod for super::SourceAddr {}
    unsafe impl aya::Pod for super::Ban {}
    unsafe impl aya::Pod for super::Budget {}
    unsafe impl aya::Pod for super::SourceState {}
    unsafe impl aya::Pod for super::Config {}
    unsafe impl aya::Pod for super::SynFlood {}

    const _: () = assert!(core::mem::size_of::<super::Ban>() == 16);
    const _: () = assert!(core::mem::size_of::<super::Budget>() == 20);
    const _: () = assert!(core::mem::size_of::<super::Config>() == 64);
    const _: () = assert!(core::mem::size_of::<super::SourceState>() == 96);
}
