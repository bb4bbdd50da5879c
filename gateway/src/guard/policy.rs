//! What the guard decides, as plain data: where a request came from, whom
//! a ban is for (which decides who enforces it), and the policy updates
//! the guard returns for the policy writer.
use std::{net::IpAddr, sync::Arc};

use gateway_common::Budget;
use ipnet::IpNet;

/// Where a request came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Remote {
    /// The TCP peer: where its packets come from (canonical).
    pub peer: IpAddr,
    /// The address the request is judged by (canonical): the peer, or the
    /// client a trusted proxy's `X-Forwarded-For` names.
    pub client: IpAddr,
}

impl Remote {
    pub fn new(peer: IpAddr, client: IpAddr) -> Self {
        Self {
            peer: peer.to_canonical(),
            client: client.to_canonical(),
        }
    }

    /// A client connected directly.
    pub fn direct(peer: IpAddr) -> Self {
        Self::new(peer, peer)
    }

    /// Whether the client address came from `X-Forwarded-For`, so the
    /// kernel cannot drop its packets (they are the proxy's).
    pub fn forwarded(&self) -> bool {
        self.peer != self.client
    }
}

/// Whom a ban is for, which decides who enforces it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum BanTarget {
    /// A packet source: the kernel drops it (userspace refuses its
    /// connections when XDP is unavailable).
    Source(IpAddr),
    /// A client address learnt from a trusted proxy's `X-Forwarded-For`:
    /// userspace refuses its requests; the proxy is never dropped.
    Forwarded(IpAddr),
    /// One client at one address whose other clients are in good
    /// standing: userspace refuses that client's requests from there.
    Client { client: Arc<str>, ip: IpAddr },
    /// A prefix of packet sources (see [`super::escalation`]): the kernel drops it.
    SourcePrefix(IpNet),
    /// A prefix of forwarded client addresses: userspace refuses them.
    ForwardedPrefix(IpNet),
}

impl BanTarget {
    /// The address, or the prefix's network address.
    pub fn ip(&self) -> IpAddr {
        match self {
            BanTarget::Source(ip) | BanTarget::Forwarded(ip) | BanTarget::Client { ip, .. } => *ip,
            BanTarget::SourcePrefix(net) | BanTarget::ForwardedPrefix(net) => net.network(),
        }
    }

    /// Whether the kernel enforces it (when XDP is attached).
    pub fn in_kernel(&self) -> bool {
        matches!(self, BanTarget::Source(_) | BanTarget::SourcePrefix(_))
    }

    /// The metrics' name for it.
    pub fn kind(&self) -> &'static str {
        match self {
            BanTarget::Source(_) => "source",
            BanTarget::Forwarded(_) => "forwarded",
            BanTarget::Client { .. } => "client",
            BanTarget::SourcePrefix(_) => "source_prefix",
            BanTarget::ForwardedPrefix(_) => "forwarded_prefix",
        }
    }
}

/// One change to policy: what the guard decides and the policy writer
/// (`xdp::policy`) applies, to the kernel's maps or to the userspace bans.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PolicyUpdate {
    Ban {
        target: BanTarget,
        until_ns: u64,
        reason: u32,
    },
    /// Lifts an address's ban (source or forwarded).
    Unban {
        ip: IpAddr,
    },
    /// Lifts a prefix's ban (source or forwarded) of exactly `net`.
    UnbanPrefix {
        net: IpNet,
    },
    Budget {
        ip: IpAddr,
        budget: Budget,
    },
    /// Back to the default budget.
    ClearBudget {
        ip: IpAddr,
    },
}

impl PolicyUpdate {
    /// Whether the kernel applies it when XDP is attached; the rest only
    /// userspace can enforce.
    pub fn in_kernel(&self) -> bool {
        match self {
            PolicyUpdate::Ban { target, .. } => target.in_kernel(),
            _ => true,
        }
    }
}
