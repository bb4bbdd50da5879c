//! Bans and budgets in the pinned maps, by address or by CIDR: one address
//! (a /32 or /128) lives in the hash maps (`GW_BANS`, `GW_BUDGETS`), a
//! wider prefix in the LPM tries (`GW_PREFIX_BANS`, `GW_PREFIX_BUDGETS`).
//! The kernel applies the later of a source's own ban and its longest
//! banned prefix's; its own budget, else its longest prefix's, else the
//! default.
use std::net::IpAddr;

use aya::maps::{lpm_trie::Key, MapError};
use gateway_common::{maps, Ban, Budget, FLEET_ORIGIN};
use ipnet::IpNet;

use super::{
    full::{BanMap, Inserted, Written},
    maps::{op, MapsError, PinnedMaps},
};
use crate::net::{allow_key, is_host, key_net, source_ip, source_key};

/// Whether a failed insert means "no room for a new key": E2BIG from a
/// hash map, ENOSPC from an LPM trie.
fn is_full(error: &MapError) -> bool {
    matches!(error, MapError::SyscallError(e)
        if matches!(e.io_error.raw_os_error(), Some(libc::E2BIG | libc::ENOSPC)))
}

fn inserted(map: &'static str, result: Result<(), MapError>) -> Result<Inserted, MapsError> {
    match result {
        Ok(()) => Ok(Inserted::Done),
        Err(error) if is_full(&error) => Ok(Inserted::Full),
        Err(source) => Err(op("insert", map)(source)),
    }
}

/// Whether a remove found nothing: aya reports ENOENT from
/// `bpf_map_delete_elem` as a syscall error, not as `KeyNotFound`.
fn is_absent(error: &MapError) -> bool {
    match error {
        MapError::KeyNotFound => true,
        MapError::SyscallError(e) => e.io_error.raw_os_error() == Some(libc::ENOENT),
        _ => false,
    }
}

fn removed(map: &'static str, result: Result<(), MapError>) -> Result<bool, MapsError> {
    match result {
        Ok(()) => Ok(true),
        Err(error) if is_absent(&error) => Ok(false),
        Err(source) => Err(op("remove", map)(source)),
    }
}

fn host(net: &IpNet) -> IpAddr {
    net.addr()
}

/// `GW_BANS` as a [`BanMap`].
struct Exact<'a>(&'a mut aya::maps::HashMap<aya::maps::MapData, gateway_common::SourceAddr, Ban>);

impl BanMap for Exact<'_> {
    fn name(&self) -> &'static str {
        maps::BANS
    }
    fn get(&self, key: &IpNet) -> Result<Option<Ban>, MapsError> {
        match self.0.get(&source_key(host(key)), 0) {
            Ok(ban) => Ok(Some(ban)),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(source) => Err(op("lookup", maps::BANS)(source)),
        }
    }
    fn insert(&mut self, key: &IpNet, ban: Ban) -> Result<Inserted, MapsError> {
        inserted(maps::BANS, self.0.insert(source_key(host(key)), ban, 0))
    }
    fn remove(&mut self, key: &IpNet) -> Result<bool, MapsError> {
        removed(maps::BANS, self.0.remove(&source_key(host(key))))
    }
    fn entries(&self) -> Result<Vec<(IpNet, Ban)>, MapsError> {
        (self.0.iter())
            .map(|entry| {
                entry
                    .map(|(key, ban)| (IpNet::from(source_ip(&key)), ban))
                    .map_err(op("iterate", maps::BANS))
            })
            .collect()
    }
}

/// `GW_PREFIX_BANS` as a [`BanMap`].
struct Prefixes<'a>(&'a mut aya::maps::LpmTrie<aya::maps::MapData, [u8; 16], Ban>);

impl BanMap for Prefixes<'_> {
    fn name(&self) -> &'static str {
        maps::PREFIX_BANS
    }
    /// The trie answers with the longest prefix covering `key`: it is
    /// `key`'s own entry when a lookup one bit shorter answers otherwise.
    /// (Two nested prefixes with identical entries read as not exact.)
    fn get(&self, key: &IpNet) -> Result<Option<Ban>, MapsError> {
        let lookup = |len: u32| match self.0.get(&Key::new(len, allow_key(key).data()), 0) {
            Ok(ban) => Ok(Some(ban)),
            Err(MapError::KeyNotFound) => Ok(None),
            Err(source) => Err(op("lookup", maps::PREFIX_BANS)(source)),
        };
        let len = allow_key(key).prefix_len();
        let found = lookup(len)?;
        if found.is_none() || len == 0 || lookup(len - 1)? != found {
            return Ok(found);
        }
        Ok(None)
    }
    fn insert(&mut self, key: &IpNet, ban: Ban) -> Result<Inserted, MapsError> {
        inserted(maps::PREFIX_BANS, self.0.insert(&allow_key(key), ban, 0))
    }
    fn remove(&mut self, key: &IpNet) -> Result<bool, MapsError> {
        removed(maps::PREFIX_BANS, self.0.remove(&allow_key(key)))
    }
    fn entries(&self) -> Result<Vec<(IpNet, Ban)>, MapsError> {
        trie_entries(self.0, maps::PREFIX_BANS)
    }
}

fn trie_entries<V: aya::Pod>(
    trie: &aya::maps::LpmTrie<aya::maps::MapData, [u8; 16], V>,
    map: &'static str,
) -> Result<Vec<(IpNet, V)>, MapsError> {
    (trie.iter())
        .map(|entry| {
            entry
                .map(|(key, value): (Key<[u8; 16]>, V)| (key_net(&key), value))
                .map_err(op("iterate", map))
        })
        .collect()
}

impl PinnedMaps {
    /// Bans `net` (an address or a CIDR) until `until_ns` (monotonic),
    /// counting the offence; says whether a full map evicted or refused.
    pub fn ban(
        &mut self,
        net: IpNet,
        until_ns: u64,
        reason: u32,
    ) -> Result<(Ban, Written), MapsError> {
        let written = self.write_ban(net, until_ns, reason)?;
        self.publish()?;
        Ok(written)
    }

    pub(super) fn write_ban(
        &mut self,
        net: IpNet,
        until_ns: u64,
        reason: u32,
    ) -> Result<(Ban, Written), MapsError> {
        let when_full = self.when_full;
        let (mut map, evictor): (Box<dyn BanMap + '_>, _) = if is_host(&net) {
            (Box::new(Exact(&mut self.bans)), &mut self.evict_bans)
        } else {
            (
                Box::new(Prefixes(&mut self.prefix_bans)),
                &mut self.evict_prefix_bans,
            )
        };
        let offences = map.get(&net)?.map_or(0, |previous| previous.offences);
        let ban = Ban {
            banned_until_ns: until_ns,
            reason,
            offences: offences.saturating_add(1),
        };
        let written = evictor.write(map.as_mut(), &net, ban, when_full)?;
        Ok((ban, written))
    }

    /// Lifts a ban of exactly `net` at once. `Ok(false)`: there was none.
    pub fn unban(&mut self, net: IpNet) -> Result<bool, MapsError> {
        let removed = self.remove_prefix_ban(net)?;
        if removed {
            self.publish()?;
        }
        Ok(removed)
    }

    pub(super) fn remove_ban(&mut self, ip: IpAddr) -> Result<bool, MapsError> {
        Exact(&mut self.bans).remove(&IpNet::from(ip))
    }

    /// Lifts the ban of exactly `net` (a /32 or /128 from the address map).
    pub(super) fn remove_prefix_ban(&mut self, net: IpNet) -> Result<bool, MapsError> {
        match is_host(&net) {
            true => self.remove_ban(net.addr()),
            false => Prefixes(&mut self.prefix_bans).remove(&net),
        }
    }

    /// Every address ban entry, expired ones included.
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

    /// Every prefix ban entry, expired ones included.
    pub fn prefix_bans(&self) -> Result<Vec<(IpNet, Ban)>, MapsError> {
        trie_entries(&self.prefix_bans, maps::PREFIX_BANS)
    }

    /// Address and prefix bans, as CIDRs (an address as its /32 or /128).
    pub fn all_bans(&self) -> Result<Vec<(IpNet, Ban)>, MapsError> {
        let mut bans: Vec<(IpNet, Ban)> = (self.bans()?.into_iter())
            .map(|(ip, ban)| (IpNet::from(ip), ban))
            .collect();
        bans.extend(self.prefix_bans()?);
        Ok(bans)
    }

    /// Deletes bans that ended before `now_ns`; returns how many. Publishes
    /// only when a prefix ban went: a shorter prefix's ban it hid may apply
    /// now (cached deadlines of the others have passed already).
    pub fn remove_expired_bans(&mut self, now_ns: u64) -> Result<usize, MapsError> {
        let expired: Vec<IpAddr> = (self.bans()?.into_iter())
            .filter(|(_, ban)| ban.banned_until_ns <= now_ns)
            .map(|(ip, _)| ip)
            .collect();
        for ip in &expired {
            self.remove_ban(*ip)?;
        }
        let expired_prefixes: Vec<IpNet> = (self.prefix_bans()?.into_iter())
            .filter(|(_, ban)| ban.banned_until_ns <= now_ns)
            .map(|(net, _)| net)
            .collect();
        for net in &expired_prefixes {
            Prefixes(&mut self.prefix_bans).remove(net)?;
        }
        if !expired_prefixes.is_empty() {
            self.publish()?;
        }
        Ok(expired.len() + expired_prefixes.len())
    }

    /// The bans (addresses as /32 or /128) and the address budgets the
    /// fleet wrote here, marked [`FLEET_ORIGIN`], expired ones included.
    pub fn fleet_entries(&self) -> Result<(Vec<IpNet>, Vec<IpAddr>), MapsError> {
        let bans = (self.all_bans()?.into_iter())
            .filter(|(_, ban)| ban.reason & FLEET_ORIGIN != 0)
            .map(|(net, _)| net)
            .collect();
        let budgets = (self.budgets()?.into_iter())
            .filter(|(_, budget)| budget.tier & FLEET_ORIGIN != 0)
            .map(|(ip, _)| ip)
            .collect();
        Ok((bans, budgets))
    }

    /// Whether `ip`'s own budget is one the fleet wrote.
    pub fn fleet_budget(&self, ip: IpAddr) -> Result<bool, MapsError> {
        match self.budgets.get(&source_key(ip), 0) {
            Ok(budget) => Ok(budget.tier & FLEET_ORIGIN != 0),
            Err(MapError::KeyNotFound) => Ok(false),
            Err(source) => Err(op("lookup", maps::BUDGETS)(source)),
        }
    }

    /// Every per-address budget (sources without one get their prefix's or the default).
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

    /// Every prefix budget.
    pub fn prefix_budgets(&self) -> Result<Vec<(IpNet, Budget)>, MapsError> {
        trie_entries(&self.prefix_budgets, maps::PREFIX_BUDGETS)
    }

    /// Sets the budget of an address, or of every address in a CIDR that
    /// has none of its own (each keeps its own token state).
    pub fn set_budget(&mut self, net: IpNet, budget: Budget) -> Result<(), MapsError> {
        match is_host(&net) {
            true => self.write_budget(net.addr(), budget)?,
            false => (self.prefix_budgets)
                .insert(&allow_key(&net), budget, 0)
                .map_err(|source| match is_full(&source) {
                    true => MapsError::Full {
                        map: maps::PREFIX_BUDGETS,
                    },
                    false => op("insert", maps::PREFIX_BUDGETS)(source),
                })?,
        }
        self.publish()
    }

    pub(super) fn write_budget(&mut self, ip: IpAddr, budget: Budget) -> Result<(), MapsError> {
        self.budgets
            .insert(source_key(ip), budget, 0)
            .map_err(op("insert", maps::BUDGETS))
    }

    /// Back to the default (or the covering prefix's) budget.
    pub fn clear_budget(&mut self, net: IpNet) -> Result<(), MapsError> {
        match is_host(&net) {
            true => self.remove_budget(net.addr())?,
            false => {
                removed(
                    maps::PREFIX_BUDGETS,
                    self.prefix_budgets.remove(&allow_key(&net)),
                )?;
            }
        }
        self.publish()
    }

    pub(super) fn remove_budget(&mut self, ip: IpAddr) -> Result<(), MapsError> {
        removed(maps::BUDGETS, self.budgets.remove(&source_key(ip))).map(drop)
    }
}
