//! Typed access to the program's pinned maps.
//!
//! The running gateway and the `gateway xdp ...` CLI both go through
//! [`PinnedMaps`], opened from the pin root, so there is one way to read and
//! write kernel policy.
use std::{
    net::IpAddr,
    path::{Path, PathBuf},
    sync::atomic::{AtomicU64, Ordering},
};

use aya::maps::{Array, HashMap, LpmTrie, Map, MapData, MapError, PerCpuArray};
use gateway_common::{maps, Ban, Budget, Config, Counter, SourceAddr};
use ipnet::IpNet;

use crate::{
    clock::monotonic_ns,
    net::{allow_key, source_ip, source_key},
};

#[derive(Debug, thiserror::Error)]
pub enum MapsError {
    #[error(
        "no pinned map at {path}: is a gateway with the kernel path running with this pin root? ({source})"
    )]
    Open { path: PathBuf, source: MapError },
    #[error("pinned map {path} is not the expected type or layout: {source}")]
    Layout { path: PathBuf, source: MapError },
    #[error("{op} on map {map} failed: {source}")]
    Op {
        op: &'static str,
        map: &'static str,
        source: MapError,
    },
}

/// Counter totals summed over CPUs, indexed like [`Counter`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counters(pub [u64; Counter::COUNT as usize]);

impl Counters {
    pub fn get(&self, counter: Counter) -> u64 {
        self.0[counter as usize]
    }

    /// `(name, value)` pairs in index order.
    pub fn named(&self) -> impl Iterator<Item = (&'static str, u64)> + '_ {
        Counter::ALL
            .iter()
            .map(|(counter, name)| (*name, self.get(*counter)))
    }
}

/// Handles on every map of one loaded program, opened from its pins.
pub struct PinnedMaps {
    bans: HashMap<MapData, SourceAddr, Ban>,
    budgets: HashMap<MapData, SourceAddr, Budget>,
    allow: LpmTrie<MapData, [u8; 16], u8>,
    ports: Array<MapData, u8>,
    config: Array<MapData, Config>,
    generation: Array<MapData, u64>,
    counters: PerCpuArray<MapData, u64>,
}

/// A generation stamp no other write (from this or another process) has
/// used: strictly increasing odd values here, mixed with the pid so the CLI
/// and the gateway never publish the same one. Never 0 (the kernel treats 0
/// as "no policy published yet").
fn next_generation() -> u64 {
    static LAST: AtomicU64 = AtomicU64::new(0);
    let now = monotonic_ns() | 1;
    let mut previous = LAST.load(Ordering::Relaxed);
    loop {
        let next = now.max(previous + 2);
        match LAST.compare_exchange(previous, next, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => return next ^ (u64::from(std::process::id()) << 40),
            Err(actual) => previous = actual,
        }
    }
}

fn op(op: &'static str, map: &'static str) -> impl FnOnce(MapError) -> MapsError {
    move |source| MapsError::Op { op, map, source }
}

fn open_map<T>(root: &Path, name: &str) -> Result<T, MapsError>
where
    T: TryFrom<Map, Error = MapError>,
{
    let path = root.join(name);
    let data = MapData::from_pin(&path).map_err(|source| MapsError::Open {
        path: path.clone(),
        source,
    })?;
    Map::from_map_data(data)
        .and_then(T::try_from)
        .map_err(|source| MapsError::Layout { path, source })
}

impl PinnedMaps {
    /// Opens the maps pinned under `root` (e.g. `/sys/fs/bpf/gateway`).
    pub fn open(root: &Path) -> Result<Self, MapsError> {
        Ok(Self {
            bans: open_map(root, maps::BANS)?,
            budgets: open_map(root, maps::BUDGETS)?,
            allow: open_map(root, maps::ALLOW)?,
            ports: open_map(root, maps::PORTS)?,
            config: open_map(root, maps::CONFIG)?,
            generation: open_map(root, maps::GENERATION)?,
            counters: open_map(root, maps::COUNTERS)?,
        })
    }

    /// Tells the kernel that policy changed, so sources re-read their cached
    /// ban, budget and allow-list membership. Every public writer below
    /// publishes; the batch writer publishes once per batch instead.
    pub fn publish(&mut self) -> Result<(), MapsError> {
        self.generation
            .set(0, next_generation(), 0)
            .map_err(op("update", maps::GENERATION))
    }

    /// Bans `ip` until `until_ns` (monotonic), counting the offence.
    pub fn ban(&mut self, ip: IpAddr, until_ns: u64, reason: u32) -> Result<Ban, MapsError> {
        let ban = self.write_ban(ip, until_ns, reason)?;
        self.publish()?;
        Ok(ban)
    }

    pub(super) fn write_ban(
        &mut self,
        ip: IpAddr,
        until_ns: u64,
        reason: u32,
    ) -> Result<Ban, MapsError> {
        let key = source_key(ip);
        let offences = self
            .bans
            .get(&key, 0)
            .map(|previous| previous.offences)
            .unwrap_or(0);
        let ban = Ban {
            banned_until_ns: until_ns,
            reason,
            offences: offences.saturating_add(1),
        };
        self.bans
            .insert(key, ban, 0)
            .map_err(op("insert", maps::BANS))?;
        Ok(ban)
    }

    /// Lifts a ban at once. `Ok(false)`: there was none.
    pub fn unban(&mut self, ip: IpAddr) -> Result<bool, MapsError> {
        let removed = self.remove_ban(ip)?;
        if removed {
            self.publish()?;
        }
        Ok(removed)
    }

    pub(super) fn remove_ban(&mut self, ip: IpAddr) -> Result<bool, MapsError> {
        match self.bans.remove(&source_key(ip)) {
            Ok(()) => Ok(true),
            Err(MapError::KeyNotFound) => Ok(false),
            Err(source) => Err(op("remove", maps::BANS)(source)),
        }
    }

    /// Every ban entry, expired ones included.
    pub fn bans(&self) -> Result<Vec<(IpAddr, Ban)>, MapsError> {
        self.bans
            .iter()
            .map(|entry| {
                entry
                    .map(|(key, ban)| (source_ip(&key), ban))
                    .map_err(op("iterate", maps::BANS))
            })
            .collect()
    }

    /// Every per-source budget (sources without one get the default).
    pub fn budgets(&self) -> Result<Vec<(IpAddr, Budget)>, MapsError> {
        self.budgets
            .iter()
            .map(|entry| {
                entry
                    .map(|(key, budget)| (source_ip(&key), budget))
                    .map_err(op("iterate", maps::BUDGETS))
            })
            .collect()
    }

    /// Deletes bans that ended before `now_ns`; returns how many. No publish:
    /// cached deadlines have passed already, so caches stay valid.
    pub fn remove_expired_bans(&mut self, now_ns: u64) -> Result<usize, MapsError> {
        let expired: Vec<IpAddr> = self
            .bans()?
            .into_iter()
            .filter(|(_, ban)| ban.banned_until_ns <= now_ns)
            .map(|(ip, _)| ip)
            .collect();
        for ip in &expired {
            self.remove_ban(*ip)?;
        }
        Ok(expired.len())
    }

    pub fn set_budget(&mut self, ip: IpAddr, budget: Budget) -> Result<(), MapsError> {
        self.write_budget(ip, budget)?;
        self.publish()
    }

    pub(super) fn write_budget(&mut self, ip: IpAddr, budget: Budget) -> Result<(), MapsError> {
        self.budgets
            .insert(source_key(ip), budget, 0)
            .map_err(op("insert", maps::BUDGETS))
    }

    pub fn clear_budget(&mut self, ip: IpAddr) -> Result<(), MapsError> {
        self.remove_budget(ip)?;
        self.publish()
    }

    pub(super) fn remove_budget(&mut self, ip: IpAddr) -> Result<(), MapsError> {
        match self.budgets.remove(&source_key(ip)) {
            Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
            Err(source) => Err(op("remove", maps::BUDGETS)(source)),
        }
    }

    /// Makes the allow-list exactly `nets` (an adopted map may hold CIDRs
    /// the configuration no longer lists): adds first, then removes, so a
    /// CIDR in both lists is never dropped for a moment.
    pub fn set_allow_list(&mut self, nets: &[IpNet]) -> Result<(), MapsError> {
        let wanted: Vec<_> = nets.iter().map(allow_key).collect();
        for key in &wanted {
            self.allow
                .insert(key, 1, 0)
                .map_err(op("insert", maps::ALLOW))?;
        }
        let present: Vec<_> = self
            .allow
            .keys()
            .collect::<Result<_, _>>()
            .map_err(op("iterate", maps::ALLOW))?;
        for key in present {
            let listed = wanted
                .iter()
                .any(|w| w.prefix_len() == key.prefix_len() && w.data() == key.data());
            if !listed {
                match self.allow.remove(&key) {
                    Ok(()) | Err(MapError::KeyNotFound) => {}
                    Err(source) => return Err(op("remove", maps::ALLOW)(source)),
                }
            }
        }
        self.publish()
    }

    /// Makes the protected ports exactly `ports` (an adopted map may
    /// protect ports the configuration no longer lists).
    pub fn set_protected_ports(&mut self, ports: &[u16]) -> Result<(), MapsError> {
        for port in 0..=u16::MAX {
            let wanted = u8::from(ports.contains(&port));
            let index = u32::from(port);
            let current = self
                .ports
                .get(&index, 0)
                .map_err(op("lookup", maps::PORTS))?;
            if current != wanted {
                self.ports
                    .set(index, wanted, 0)
                    .map_err(op("update", maps::PORTS))?;
            }
        }
        Ok(())
    }

    pub fn config(&self) -> Result<Config, MapsError> {
        self.config.get(&0, 0).map_err(op("lookup", maps::CONFIG))
    }

    pub fn set_config(&mut self, config: Config) -> Result<(), MapsError> {
        self.config
            .set(0, config, 0)
            .map_err(op("update", maps::CONFIG))?;
        self.publish()
    }

    /// Counter totals over all CPUs.
    pub fn counters(&self) -> Result<Counters, MapsError> {
        let mut totals = Counters::default();
        for (counter, _) in Counter::ALL {
            let per_cpu = self
                .counters
                .get(&(counter as u32), 0)
                .map_err(op("lookup", maps::COUNTERS))?;
            totals.0[counter as usize] = per_cpu.iter().sum();
        }
        Ok(totals)
    }
}
