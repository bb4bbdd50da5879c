//! What `/metrics` reads besides the request counts: the kernel ban maps
//! (bans in force, fill level) and the listeners' certificates (see
//! [`crate::metrics::ops`]).
//!
//! `/metrics` takes no credential, so what a scrape costs is what anyone
//! who reaches the admin listener can make it cost: the ban maps (up to
//! `xdp.max_bans` entries, a system call each) are walked once per scrape
//! at most, and that walk answers every scrape for [`WALK_TTL_NS`].
use std::sync::{
    atomic::{AtomicU64, Ordering},
    Mutex,
};

use bytes::Bytes;
use gateway_common::{maps, Ban};
use http::{header, HeaderValue, Response};
use http_body_util::Full;

use super::{Admin, AdminResponse};
use crate::{
    clock::monotonic_ns,
    config::Config,
    metrics::{
        ops::{BanMapFill, Certificate},
        Gauges,
    },
    proxy::tls,
    xdp::PinnedMaps,
};

impl Admin {
    /// The listeners' certificates, read again after a reload.
    fn certificates(&self) -> Vec<crate::metrics::ops::Certificate> {
        let mut known = self.certificates.lock().unwrap_or_else(|p| p.into_inner());
        let reloaded = (self.reloader.as_ref()).filter(|r| r.generation() != known.0);
        if let Some(reloader) = reloaded {
            let (generation, config) = reloader.config();
            *known = (generation, certificates(&config));
        }
        known.1.clone()
    }

    /// `GET /metrics`.
    pub(super) fn metrics_response(&self) -> AdminResponse {
        let shared = &self.current();
        let maps = self
            .pin_root
            .as_deref()
            .and_then(|root| PinnedMaps::open(root).ok());
        let now = monotonic_ns();
        // One walk of the kernel's ban maps (cached: see `scrape`) for
        // both its gauges; and the bans only userspace enforces.
        let capacity = self.ban_map_capacity;
        let walk = (maps.as_ref())
            .map(|maps| (self.ban_walks).get(now, || BanWalk::of(maps, capacity, now)));
        let kernel_bans = walk.as_ref().map_or(0, |walk| walk.active);
        let bans_active = Some(kernel_bans + shared.userspace_bans.active(now));
        let mut text = shared.metrics.render(&Gauges {
            pools: shared.pool_gauges(),
            guard: &shared.guard.counters,
            bans_active,
            kernel: maps.as_ref().and_then(|maps| maps.counters().ok()),
            policy_dropped: shared.policy.overflowed(),
            bans_full: shared.policy.full_counters(),
            keys: shared.keys.len(),
        });
        crate::metrics::ops::render(
            &mut text,
            &crate::metrics::ops::Ops {
                policy_failed: shared.policy.failed(),
                ban_maps: walk.map(|walk| walk.fill),
                certificates: &self.certificates(),
            },
        );
        crate::metrics::ops::render_parked(&mut text, shared.parked.counts());
        let (limiter, hostile) = (shared.limiter.backend(), shared.limiter.hostile_values());
        crate::metrics::ops::render_limits(&mut text, limiter, hostile);
        if let Some(fleet) = shared.policy.fleet() {
            fleet.render_metrics(&mut text);
        }
        let mut response = Response::new(Full::new(Bytes::from(text)));
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4"),
        );
        response
    }
}

/// The certificate of each TLS listener, read once at start (the acceptor
/// has just loaded or made it). One that cannot be read is logged and left
/// out; the listener itself would not have started.
pub(super) fn certificates(config: &Config) -> Vec<Certificate> {
    let tls_listeners = config
        .listeners
        .iter()
        .filter_map(|l| l.tls.as_ref().map(|tls| (l.address, tls)));
    tls_listeners
        .filter_map(|(address, tls)| match tls::expiry(tls, &config.state_dir) {
            Ok(expires_at) => Some(Certificate {
                listener: address.to_string(),
                expires_at,
            }),
            Err(error) => {
                tracing::warn!(%error, listener = %address, "cannot read the certificate's expiry");
                None
            }
        })
        .collect()
}

/// How long one walk of the ban maps answers scrapes.
pub(super) const WALK_TTL_NS: u64 = 1_000_000_000;

/// What a scrape shows of the kernel's ban maps, from one walk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) struct BanWalk {
    /// Bans in force at the walk (address and prefix bans).
    pub active: usize,
    /// Both maps' entries (expired ones too) against their configured
    /// sizes; a map that cannot be read is left out.
    pub fill: Vec<BanMapFill>,
}

impl BanWalk {
    /// Both maps, walked once each.
    pub fn of(maps: &PinnedMaps, capacity: (u32, u32), now_ns: u64) -> Self {
        let bans = maps
            .bans()
            .map(|b| b.into_iter().map(|(_, ban)| ban).collect());
        let prefix_bans = maps
            .prefix_bans()
            .map(|b| b.into_iter().map(|(_, ban)| ban).collect());
        Self::from_entries(bans.ok(), prefix_bans.ok(), capacity, now_ns)
    }

    /// From the maps' entries (`None`: that map could not be read).
    fn from_entries(
        bans: Option<Vec<Ban>>,
        prefix_bans: Option<Vec<Ban>>,
        capacity: (u32, u32),
        now_ns: u64,
    ) -> Self {
        let in_force = |entries: &Option<Vec<Ban>>| {
            (entries.iter().flatten())
                .filter(|ban| ban.banned_until_ns > now_ns)
                .count()
        };
        let active = in_force(&bans) + in_force(&prefix_bans);
        let fill = [
            (maps::BANS, bans, capacity.0),
            (maps::PREFIX_BANS, prefix_bans, capacity.1),
        ]
        .into_iter()
        .filter_map(|(map, entries, capacity)| {
            entries.map(|entries| BanMapFill {
                map,
                entries: entries.len(),
                capacity,
            })
        })
        .collect();
        Self { active, fill }
    }
}

/// The last [`BanWalk`], reused for [`WALK_TTL_NS`]; concurrent scrapes
/// wait for one walk rather than each making its own.
#[derive(Default)]
pub(super) struct WalkCache {
    last: Mutex<Option<(u64, BanWalk)>>,
    walks: AtomicU64,
}

impl WalkCache {
    /// The walk at `now_ns`: the cached one while fresh, else `walk`'s.
    pub fn get(&self, now_ns: u64, walk: impl FnOnce() -> BanWalk) -> BanWalk {
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((at, cached)) = last.as_ref() {
            if now_ns >= *at && now_ns - *at < WALK_TTL_NS {
                return cached.clone();
            }
        }
        let fresh = walk();
        self.walks.fetch_add(1, Ordering::Relaxed);
        *last = Some((now_ns, fresh.clone()));
        fresh
    }

    /// Walks made so far.
    #[cfg(test)]
    pub fn walks(&self) -> u64 {
        self.walks.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ban(until: u64) -> Ban {
        Ban {
            banned_until_ns: until,
            reason: 0,
            offences: 1,
        }
    }

    #[test]
    fn one_walk_gives_both_gauges() {
        let walk = BanWalk::from_entries(
            Some(vec![ban(5), ban(20), ban(30)]),
            Some(vec![ban(9), ban(11)]),
            (100, 10),
            10,
        );
        // In force at 10: 20, 30 and 11; every entry takes room.
        assert_eq!(walk.active, 3);
        let fill: Vec<_> = (walk.fill.iter())
            .map(|f| (f.map, f.entries, f.capacity))
            .collect();
        assert_eq!(fill, [(maps::BANS, 3, 100), (maps::PREFIX_BANS, 2, 10)]);
        // A map that cannot be read is left out of both.
        let partial = BanWalk::from_entries(None, Some(vec![ban(20)]), (100, 10), 10);
        assert_eq!(partial.active, 1);
        assert_eq!(partial.fill.len(), 1);
    }

    #[test]
    fn back_to_back_scrapes_share_one_walk() {
        let cache = WalkCache::default();
        let calls = std::cell::Cell::new(0);
        let walk = |active| {
            calls.set(calls.get() + 1);
            BanWalk {
                active,
                fill: Vec::new(),
            }
        };
        let t0 = 5 * WALK_TTL_NS;
        let first = cache.get(t0, || walk(1));
        // A flood of scrapes within the interval: the same answer, no walk.
        for i in 0..100 {
            assert_eq!(cache.get(t0 + i * (WALK_TTL_NS / 200), || walk(2)), first);
        }
        assert_eq!((calls.get(), cache.walks()), (1, 1));
        // Past it, one walk more; a clock that went back walks too.
        assert_eq!(cache.get(t0 + WALK_TTL_NS, || walk(3)).active, 3);
        assert_eq!(cache.get(t0, || walk(4)).active, 4);
        assert_eq!((calls.get(), cache.walks()), (3, 3));
    }
}
