//! A full ban map (`GW_BANS`, `GW_PREFIX_BANS`): by `xdp.bans_full`, the
//! ban closest to expiry makes room for the new one, or the new one is
//! refused. Either way the caller is told, to count it and warn: a ban
//! never fails silently.
//!
//! Finding the ban closest to expiry needs the whole map; an index built
//! from one scan when the map first fills, and kept up to date by this
//! writer's own writes, makes the next evictions cheap. Each candidate is
//! checked against the map before it goes, so a ban another writer (the
//! CLI) changed meanwhile is never evicted on stale data.
use std::{
    collections::BTreeSet,
    sync::atomic::{AtomicU64, Ordering},
};

use gateway_common::{maps, Ban};
use ipnet::IpNet;
use serde::{Deserialize, Serialize};

use super::maps::MapsError;

/// What a full ban map does with one more ban (`xdp.bans_full`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WhenFull {
    /// The ban closest to expiry is removed to make room.
    #[default]
    Evict,
    /// The new ban is not written.
    Refuse,
}

/// Whether an insert found room.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Inserted {
    Done,
    Full,
}

/// A ban map, keyed by the address or network it bans.
pub trait BanMap {
    /// The map's name, for logs and errors.
    fn name(&self) -> &'static str;
    fn get(&self, key: &IpNet) -> Result<Option<Ban>, MapsError>;
    /// Inserts or replaces; [`Inserted::Full`] when a new key finds no room.
    fn insert(&mut self, key: &IpNet, ban: Ban) -> Result<Inserted, MapsError>;
    fn remove(&mut self, key: &IpNet) -> Result<bool, MapsError>;
    fn entries(&self) -> Result<Vec<(IpNet, Ban)>, MapsError>;
}

/// What became of a ban write.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Written {
    Done,
    /// Written after evicting this ban, the one closest to expiry.
    Evicted {
        map: &'static str,
        key: IpNet,
        ban: Ban,
    },
    /// Not written: the map is full (and `refuse`, or nothing to evict).
    Refused {
        map: &'static str,
    },
}

/// Evictions and refusals by map, for metrics.
#[derive(Debug, Default)]
pub struct FullCounters {
    pub bans_evicted: AtomicU64,
    pub bans_refused: AtomicU64,
    pub prefix_bans_evicted: AtomicU64,
    pub prefix_bans_refused: AtomicU64,
    /// When the last warning was logged (monotonic ns), for rate-limiting.
    last_warning_ns: AtomicU64,
    /// Evictions and refusals since then, told in the next warning.
    unwarned: AtomicU64,
}

/// At most one warning about full ban maps per this long.
const WARN_EVERY_NS: u64 = 10_000_000_000;

impl FullCounters {
    /// Counts an eviction or a refusal, and warns (at most every 10 s,
    /// saying how many happened since the last warning).
    pub fn record(&self, written: &Written, now_ns: u64) {
        let (counter, map) = match written {
            Written::Done => return,
            Written::Evicted { map, .. } if *map == maps::BANS => (&self.bans_evicted, *map),
            Written::Evicted { map, .. } => (&self.prefix_bans_evicted, *map),
            Written::Refused { map } if *map == maps::BANS => (&self.bans_refused, *map),
            Written::Refused { map } => (&self.prefix_bans_refused, *map),
        };
        counter.fetch_add(1, Ordering::Relaxed);
        let unwarned = self.unwarned.fetch_add(1, Ordering::Relaxed) + 1;
        let last = self.last_warning_ns.load(Ordering::Relaxed);
        if last != 0 && now_ns.saturating_sub(last) < WARN_EVERY_NS {
            return;
        }
        let claimed = (self.last_warning_ns)
            .compare_exchange(last, now_ns.max(1), Ordering::Relaxed, Ordering::Relaxed)
            .is_ok();
        if !claimed {
            return;
        }
        self.unwarned.fetch_sub(unwarned, Ordering::Relaxed);
        match written {
            Written::Evicted { key, ban, .. } => tracing::warn!(
                map,
                evicted = %key,
                evicted_until_ns = ban.banned_until_ns,
                since_last_warning = unwarned,
                "ban map full: evicted the ban closest to expiry (raise xdp.max_bans)"
            ),
            _ => tracing::warn!(
                map,
                since_last_warning = unwarned,
                "ban map full: new ban refused (xdp.bans_full = \"refuse\"; raise xdp.max_bans)"
            ),
        }
    }
}

/// The eviction index of one ban map: (deadline, key), soonest first.
#[derive(Debug, Default)]
pub struct Evictor {
    queue: BTreeSet<(u64, IpNet)>,
    /// Built: from then on this writer's writes are added to it.
    live: bool,
    /// Entries beyond this (stale duplicates pile up) drop the index, to
    /// be rebuilt on the next full map.
    limit: usize,
}

impl Evictor {
    /// Writes `ban` at `key`; when the map is full, evicts or refuses by `when_full`.
    pub fn write(
        &mut self,
        map: &mut dyn BanMap,
        key: &IpNet,
        ban: Ban,
        when_full: WhenFull,
    ) -> Result<Written, MapsError> {
        if map.insert(key, ban)? == Inserted::Done {
            self.note(key, ban);
            return Ok(Written::Done);
        }
        let refused = Written::Refused { map: map.name() };
        if when_full == WhenFull::Refuse {
            return Ok(refused);
        }
        let mut rebuilt = false;
        loop {
            let Some((until, victim)) = self.queue.pop_first() else {
                if rebuilt {
                    return Ok(refused);
                }
                self.rebuild(map)?;
                rebuilt = true;
                continue;
            };
            // Gone, or changed by another writer: not on this evidence.
            let Some(current) = map.get(&victim)? else {
                continue;
            };
            if current.banned_until_ns != until || victim == *key {
                continue;
            }
            map.remove(&victim)?;
            return Ok(match map.insert(key, ban)? {
                Inserted::Done => {
                    self.note(key, ban);
                    Written::Evicted {
                        map: map.name(),
                        key: victim,
                        ban: current,
                    }
                }
                // Another writer took the slot at once.
                Inserted::Full => refused,
            });
        }
    }

    fn rebuild(&mut self, map: &dyn BanMap) -> Result<(), MapsError> {
        let entries = map.entries()?;
        self.limit = entries.len().saturating_mul(2).saturating_add(1024);
        self.queue = (entries.into_iter())
            .map(|(key, ban)| (ban.banned_until_ns, key))
            .collect();
        self.live = true;
        Ok(())
    }

    fn note(&mut self, key: &IpNet, ban: Ban) {
        if !self.live {
            return;
        }
        if self.queue.len() >= self.limit {
            self.queue.clear();
            self.live = false;
            return;
        }
        self.queue.insert((ban.banned_until_ns, *key));
    }
}

#[cfg(test)]
#[path = "full_tests.rs"]
mod tests;
