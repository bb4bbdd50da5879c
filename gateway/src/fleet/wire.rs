//! What a node tells the fleet about its kernel policy: one [`Entry`] per
//! ban, unban or budget, as JSON in a Redis Stream and in the set of
//! active entries. Plain data with the clocks passed in: a kernel deadline
//! is per host (`CLOCK_MONOTONIC`), so it travels as wall-clock
//! milliseconds and is converted back on each node.
//!
//! Everything read back is hostile until parsed: any other client of the
//! Redis server can write the stream, so sizes are bounded, unknown fields
//! refused and deadlines clamped.
use std::{net::IpAddr, sync::Arc};

use gateway_common::{Budget, FLEET_ORIGIN};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use crate::{
    guard::{BanTarget, PolicyUpdate},
    net::{canonical_net, covers_every_v4},
};

/// Longest entry accepted from the stream, in bytes.
pub const MAX_ENTRY: usize = 2048;
/// Longest client id a client ban may carry.
const MAX_CLIENT: usize = 256;
/// A remote deadline further out than this is clamped to it.
const MAX_BAN_MS: u64 = 366 * 24 * 3600 * 1000;
/// How long a published budget stays in the active set: a source's budget
/// is re-sent when its tier rises, and a stale one only wastes a slot.
pub const BUDGET_TTL_MS: u64 = 3600 * 1000;

/// Both clocks read at one instant.
#[derive(Clone, Copy, Debug)]
pub struct Clocks {
    /// Unix milliseconds.
    pub wall_ms: u64,
    /// `CLOCK_MONOTONIC` nanoseconds ([`crate::clock::monotonic_ns`]).
    pub mono_ns: u64,
}

impl Clocks {
    pub fn now() -> Self {
        let wall_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        Clocks {
            wall_ms,
            mono_ns: crate::clock::monotonic_ns(),
        }
    }

    fn to_wall(self, until_ns: u64) -> u64 {
        let left_ms = until_ns.saturating_sub(self.mono_ns) / 1_000_000;
        self.wall_ms.saturating_add(left_ms.min(MAX_BAN_MS))
    }

    /// `None`: the deadline has passed.
    fn to_monotonic(self, until_ms: u64) -> Option<u64> {
        let left_ms = until_ms.checked_sub(self.wall_ms).filter(|ms| *ms > 0)?;
        let left_ns = left_ms.min(MAX_BAN_MS).saturating_mul(1_000_000);
        Some(self.mono_ns.saturating_add(left_ns))
    }
}

/// Who a ban is for, as [`BanTarget`] says it, with nets for addresses.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Target {
    /// Packet sources: the kernel drops them.
    Source { net: IpNet },
    /// Client addresses a trusted proxy forwarded: userspace refuses them.
    Forwarded { net: IpNet },
    /// One client at one address.
    Client { ip: IpAddr, client: String },
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Entry {
    Ban {
        target: Target,
        until_ms: u64,
        reason: u32,
    },
    /// Lifts an address's source and forwarded bans.
    Unban {
        ip: IpAddr,
    },
    /// Lifts a prefix's source and forwarded bans (of exactly `net`).
    UnbanPrefix {
        net: IpNet,
    },
    Budget {
        ip: IpAddr,
        syn_per_sec: u32,
        syn_burst: u32,
        pkt_per_sec: u32,
        pkt_burst: u32,
        tier: u32,
        until_ms: u64,
    },
    ClearBudget {
        ip: IpAddr,
    },
}

impl Entry {
    /// What the fleet is told about `update`.
    pub fn from_update(update: &PolicyUpdate, now: Clocks) -> Self {
        match update {
            PolicyUpdate::Ban {
                target,
                until_ns,
                reason,
            } => Entry::Ban {
                target: match target {
                    BanTarget::Source(ip) => Target::Source { net: host(*ip) },
                    BanTarget::SourcePrefix(net) => Target::Source { net: *net },
                    BanTarget::Forwarded(ip) => Target::Forwarded { net: host(*ip) },
                    BanTarget::ForwardedPrefix(net) => Target::Forwarded { net: *net },
                    BanTarget::Client { client, ip } => Target::Client {
                        ip: *ip,
                        client: client.to_string(),
                    },
                },
                until_ms: now.to_wall(*until_ns),
                reason: *reason & !FLEET_ORIGIN,
            },
            PolicyUpdate::Unban { ip } => Entry::Unban { ip: *ip },
            PolicyUpdate::UnbanPrefix { net } => match single(*net) {
                Some(ip) => Entry::Unban { ip },
                None => Entry::UnbanPrefix { net: *net },
            },
            PolicyUpdate::Budget { ip, budget } => Entry::Budget {
                ip: *ip,
                syn_per_sec: budget.syn_per_sec,
                syn_burst: budget.syn_burst,
                pkt_per_sec: budget.pkt_per_sec,
                pkt_burst: budget.pkt_burst,
                tier: budget.tier & !FLEET_ORIGIN,
                until_ms: now.wall_ms.saturating_add(BUDGET_TTL_MS),
            },
            PolicyUpdate::ClearBudget { ip } => Entry::ClearBudget { ip: *ip },
        }
    }

    /// The update this node applies; `None` when it has expired.
    pub fn to_update(&self, now: Clocks) -> Option<PolicyUpdate> {
        Some(match self {
            Entry::Ban {
                target,
                until_ms,
                reason,
            } => PolicyUpdate::Ban {
                target: match target {
                    Target::Source { net } => match single(*net) {
                        Some(ip) => BanTarget::Source(ip),
                        None => BanTarget::SourcePrefix(canonical_net(*net)),
                    },
                    Target::Forwarded { net } => match single(*net) {
                        Some(ip) => BanTarget::Forwarded(ip),
                        None => BanTarget::ForwardedPrefix(canonical_net(*net)),
                    },
                    Target::Client { ip, client } => BanTarget::Client {
                        client: Arc::from(client.as_str()),
                        ip: ip.to_canonical(),
                    },
                },
                until_ns: now.to_monotonic(*until_ms)?,
                reason: *reason,
            },
            Entry::Unban { ip } => PolicyUpdate::Unban {
                ip: ip.to_canonical(),
            },
            Entry::UnbanPrefix { net } => match single(*net) {
                Some(ip) => PolicyUpdate::Unban { ip },
                None => PolicyUpdate::UnbanPrefix {
                    net: canonical_net(*net),
                },
            },
            Entry::Budget {
                ip,
                syn_per_sec,
                syn_burst,
                pkt_per_sec,
                pkt_burst,
                tier,
                until_ms,
            } => {
                now.to_monotonic(*until_ms)?;
                PolicyUpdate::Budget {
                    ip: ip.to_canonical(),
                    budget: Budget {
                        syn_per_sec: *syn_per_sec,
                        syn_burst: *syn_burst,
                        pkt_per_sec: *pkt_per_sec,
                        pkt_burst: *pkt_burst,
                        tier: *tier,
                    },
                }
            }
            Entry::ClearBudget { ip } => PolicyUpdate::ClearBudget {
                ip: ip.to_canonical(),
            },
        })
    }

    /// The entry's place in the set of active entries: a later entry for
    /// the same place replaces it. `None`: it removes places instead
    /// ([`Entry::removes`]).
    pub fn slot(&self) -> Option<String> {
        match self {
            Entry::Ban { target, .. } => Some(match target {
                Target::Source { net } => format!("ban:source:{}", canonical_net(*net)),
                Target::Forwarded { net } => format!("ban:forwarded:{}", canonical_net(*net)),
                Target::Client { ip, client } => {
                    format!("ban:client:{}:{client}", ip.to_canonical())
                }
            }),
            Entry::Budget { ip, .. } => Some(format!("budget:{}", ip.to_canonical())),
            Entry::Unban { .. } | Entry::UnbanPrefix { .. } | Entry::ClearBudget { .. } => None,
        }
    }

    /// The places an unban or a budget reset empties.
    pub fn removes(&self) -> Vec<String> {
        match self {
            Entry::Unban { ip } => {
                let net = host(ip.to_canonical());
                vec![format!("ban:source:{net}"), format!("ban:forwarded:{net}")]
            }
            Entry::UnbanPrefix { net } => {
                let net = canonical_net(*net);
                vec![format!("ban:source:{net}"), format!("ban:forwarded:{net}")]
            }
            Entry::ClearBudget { ip } => vec![format!("budget:{}", ip.to_canonical())],
            Entry::Ban { .. } | Entry::Budget { .. } => Vec::new(),
        }
    }

    /// When the entry stops mattering (Unix ms); `None` never.
    pub fn until_ms(&self) -> Option<u64> {
        match self {
            Entry::Ban { until_ms, .. } | Entry::Budget { until_ms, .. } => Some(*until_ms),
            Entry::Unban { .. } | Entry::UnbanPrefix { .. } | Entry::ClearBudget { .. } => None,
        }
    }

    /// What this node applies, marked as the fleet's ([`FLEET_ORIGIN`]):
    /// a restarted node tells these apart from its own guard's.
    pub fn to_marked_update(&self, now: Clocks) -> Option<PolicyUpdate> {
        Some(match self.to_update(now)? {
            PolicyUpdate::Ban {
                target,
                until_ns,
                reason,
            } => PolicyUpdate::Ban {
                target,
                until_ns,
                reason: reason | FLEET_ORIGIN,
            },
            PolicyUpdate::Budget { ip, budget } => PolicyUpdate::Budget {
                ip,
                budget: Budget {
                    tier: budget.tier | FLEET_ORIGIN,
                    ..budget
                },
            },
            other => other,
        })
    }

    /// Whether this node's allow-list covers what the entry bans: such a
    /// ban is not applied here (the allow-list always wins locally).
    pub fn allowed_by(&self, allow: &[IpNet]) -> bool {
        let Entry::Ban { target, .. } = self else {
            return false;
        };
        let net = match target {
            Target::Source { net } | Target::Forwarded { net } => canonical_net(*net),
            Target::Client { ip, .. } => host(ip.to_canonical()),
        };
        allow.iter().any(|a| {
            let a = canonical_net(*a);
            a.contains(&net.network()) && a.prefix_len() <= net.prefix_len()
        })
    }

    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// Parses what another node (or anyone who can write to Redis) sent.
    pub fn parse(text: &[u8]) -> Result<Self, WireError> {
        if text.len() > MAX_ENTRY {
            return Err(WireError::TooLong(text.len()));
        }
        let entry: Entry = serde_json::from_slice(text).map_err(WireError::Json)?;
        match &entry {
            Entry::Ban {
                target: Target::Client { client, .. },
                ..
            } if client.is_empty() || client.len() > MAX_CLIENT => Err(WireError::Client),
            Entry::Ban {
                target: Target::Source { net } | Target::Forwarded { net },
                ..
            } if covers_every_v4(&canonical_net(*net)) => Err(WireError::EveryV4(*net)),
            _ => Ok(entry),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum WireError {
    #[error("entry of {0} bytes (at most {MAX_ENTRY})")]
    TooLong(usize),
    #[error("not a fleet entry: {0}")]
    Json(serde_json::Error),
    #[error("a client ban's client id must be 1 to {MAX_CLIENT} bytes")]
    Client,
    /// What `gateway xdp ban` refuses too: a typo, not a policy.
    #[error("a ban of {0} would drop every IPv4 source")]
    EveryV4(IpNet),
}

fn host(ip: IpAddr) -> IpNet {
    IpNet::from(ip.to_canonical())
}

/// The address of a one-address net.
fn single(net: IpNet) -> Option<IpAddr> {
    let net = canonical_net(net);
    (net.prefix_len() == net.max_prefix_len()).then(|| net.addr())
}
