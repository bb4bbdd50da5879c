//! Typed access to the program's pinned maps.
//!
//! The running gateway and the `gateway xdp ...` CLI both go through
//! [`PinnedMaps`], opened from the pin root, so there is one way to read and
//! write kernel policy.
use std::{
    path::{Path, PathBuf},
    sync::atomic::{AtomicU64, Ordering},
};

use aya::maps::{
    lpm_trie::Key, Array, HashMap, IterableMap, LpmTrie, Map, MapData, MapError, PerCpuArray,
};
use gateway_common::{maps, Ban, Budget, Config, Counter, SourceAddr};
use ipnet::IpNet;

use super::{
    full::{Evictor, WhenFull},
    reconfigure::{allow_swap, entry, port_table, AllowKey},
};
use crate::{clock::monotonic_ns, net::allow_key};

#[derive(Debug, thiserror::Error)]
pub enum MapsError {
    #[error(
        "no pinned map at {path}: is a gateway with the kernel path running with this pin root? ({source})"
    )]
    Open { path: PathBuf, source: MapError },
    #[error("pinned map {path} is not the expected type or layout: {source}")]
    Layout { path: PathBuf, source: MapError },
    #[error("map {map} is full")]
    Full { map: &'static str },
    #[error("map {map} holds at most {capacity} entries; {wanted} were asked for")]
    TooMany {
        map: &'static str,
        wanted: usize,
        capacity: usize,
    },
    #[error("{op} on map {map} failed: {source}")]
    Op {
        op: &'static str,
        map: &'static str,
        source: MapError,
    },
}

/// See [`PinnedMaps::own_settings`].
pub(super) struct OwnSettings {
    pub(super) config: Config,
    ports: Vec<u16>,
    allow: Vec<AllowKey>,
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
    pub(super) bans: HashMap<MapData, SourceAddr, Ban>,
    pub(super) prefix_bans: LpmTrie<MapData, [u8; 16], Ban>,
    pub(super) budgets: HashMap<MapData, SourceAddr, Budget>,
    pub(super) prefix_budgets: LpmTrie<MapData, [u8; 16], Budget>,
    /// What a full ban map does (`xdp.bans_full`), and each ban map's
    /// eviction index (see [`super::full`]).
    pub(super) when_full: WhenFull,
    pub(super) evict_bans: Evictor,
    pub(super) evict_prefix_bans: Evictor,
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

pub(super) fn op(op: &'static str, map: &'static str) -> impl FnOnce(MapError) -> MapsError {
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
            prefix_bans: open_map(root, maps::PREFIX_BANS)?,
            budgets: open_map(root, maps::BUDGETS)?,
            prefix_budgets: open_map(root, maps::PREFIX_BUDGETS)?,
            when_full: WhenFull::default(),
            evict_bans: Evictor::default(),
            evict_prefix_bans: Evictor::default(),
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

    /// What a full ban map does from now on.
    pub fn when_full(mut self, when_full: WhenFull) -> Self {
        self.when_full = when_full;
        self
    }

    /// Makes the allow-list exactly `nets` (an adopted map may hold CIDRs
    /// the configuration no longer lists); see [`Self::set_allow_keys`].
    pub fn set_allow_list(&mut self, nets: &[IpNet]) -> Result<(), MapsError> {
        let wanted: Vec<_> = nets.iter().map(|net| entry(&allow_key(net))).collect();
        self.set_allow_keys(&wanted)
    }

    /// The allow-list's entries as they are now.
    pub(super) fn allow_keys(&self) -> Result<Vec<AllowKey>, MapsError> {
        (self.allow.keys())
            .map(|key| key.map(|key| entry(&key)))
            .collect::<Result<_, _>>()
            .map_err(op("iterate", maps::ALLOW))
    }

    /// Entries the allow-list's trie holds at most.
    pub(super) fn allow_capacity(&self) -> Result<usize, MapsError> {
        let info = IterableMap::map(&self.allow)
            .info()
            .map_err(op("info", maps::ALLOW))?;
        Ok(usize::try_from(info.max_entries()).unwrap_or(usize::MAX))
    }

    /// Makes the allow-list exactly `wanted`: adds first, then removes, so
    /// a CIDR in both lists is never dropped for a moment; stale entries go
    /// first only as far as the trie needs room (see [`allow_swap`]).
    pub(super) fn set_allow_keys(&mut self, wanted: &[AllowKey]) -> Result<(), MapsError> {
        let swap = allow_swap(&self.allow_keys()?, wanted, self.allow_capacity()?)?;
        for key in &swap.make_room {
            self.remove_allowed(key)?;
        }
        for &(prefix_len, data) in &swap.insert {
            self.allow
                .insert(&Key::new(prefix_len, data), 1, 0)
                .map_err(op("insert", maps::ALLOW))?;
        }
        for key in &swap.stale {
            self.remove_allowed(key)?;
        }
        self.publish()
    }

    fn remove_allowed(&mut self, &(prefix_len, data): &AllowKey) -> Result<(), MapsError> {
        match self.allow.remove(&Key::new(prefix_len, data)) {
            Ok(()) | Err(MapError::KeyNotFound) => Ok(()),
            Err(source) => Err(op("remove", maps::ALLOW)(source)),
        }
    }

    /// Makes the protected ports exactly `ports` (an adopted map may
    /// protect ports the configuration no longer lists).
    pub fn set_protected_ports(&mut self, ports: &[u16]) -> Result<(), MapsError> {
        let current = self.port_table()?;
        self.write_ports(&current, &port_table(ports))
    }

    /// The port map as it is: one byte per port, 1 = protected.
    pub(super) fn port_table(&self) -> Result<Vec<u8>, MapsError> {
        (0..=u32::from(u16::MAX))
            .map(|index| self.ports.get(&index, 0))
            .collect::<Result<_, _>>()
            .map_err(op("lookup", maps::PORTS))
    }

    /// Writes the ports where `to` differs from `from` (what the map holds).
    pub(super) fn write_ports(&mut self, from: &[u8], to: &[u8]) -> Result<(), MapsError> {
        for ((index, &was), &wanted) in (0u32..).zip(from).zip(to) {
            if was != wanted {
                self.ports
                    .set(index, wanted, 0)
                    .map_err(op("update", maps::PORTS))?;
            }
        }
        Ok(())
    }

    /// What this gateway's configuration wrote here besides policy: kept
    /// when it lends the pin root, written back when it takes it back.
    pub(super) fn own_settings(&self) -> Result<OwnSettings, MapsError> {
        let mut ports = Vec::new();
        for port in 0..=u16::MAX {
            let listed = self
                .ports
                .get(&u32::from(port), 0)
                .map_err(op("lookup", maps::PORTS))?;
            if listed != 0 {
                ports.push(port);
            }
        }
        let allow = self.allow_keys()?;
        Ok(OwnSettings {
            config: self.config()?,
            ports,
            allow,
        })
    }

    /// Writes `kept` back, owned by `owner_pid`.
    pub(super) fn restore(&mut self, kept: &OwnSettings, owner_pid: u32) -> Result<(), MapsError> {
        self.set_protected_ports(&kept.ports)?;
        self.set_allow_keys(&kept.allow)?;
        self.set_config(Config {
            owner_pid,
            ..kept.config
        })
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

    /// Names these maps among every host's (the boot, and the ban map's
    /// kernel id): the fleet's entries carry it, so a node skips what was
    /// written to its own maps already (by itself or by the CLI beside it).
    pub fn identity(&self) -> Result<String, MapsError> {
        let info = IterableMap::map(&self.bans)
            .info()
            .map_err(op("info", maps::BANS))?;
        let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").unwrap_or_default();
        Ok(format!("{}:{}", boot.trim(), info.id()))
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
