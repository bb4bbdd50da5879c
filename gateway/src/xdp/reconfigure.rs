//! A reload's kernel settings (protected ports, the allow-list, mode, the
//! default budget, UDP, the SYN flood rate), written all or nothing and
//! only by the gateway that owns the pin root.
//!
//! What can be refused is refused before the first write: the maps are
//! read first, and an allow-list the trie cannot hold is turned down. A
//! write that fails anyway (the kernel refusing an update) puts back what
//! was already written, from what was read, so the maps never hold part
//! of one configuration and part of another. After a hand-off the maps
//! are the new gateway's: [`KernelWrites`] refuses, holding the hand-off
//! lock while it writes so a hand-off never lands in the middle.
use std::path::PathBuf;

use aya::maps::lpm_trie::Key;
use gateway_common::{maps, Config};
use tokio::sync::watch;

use super::{
    handoff::HandedOff,
    maps::{MapsError, PinnedMaps},
    XdpSettings,
};
use crate::net::allow_key;

/// An allow-list entry as plain data: (prefix length, address).
pub(super) type AllowKey = (u32, [u8; 16]);

pub(super) fn entry(key: &Key<[u8; 16]>) -> AllowKey {
    (key.prefix_len(), key.data())
}

/// One byte per port (65,536), 1 = protected: the port map's contents.
pub(super) fn port_table(ports: &[u16]) -> Vec<u8> {
    let mut table = vec![0; usize::from(u16::MAX) + 1];
    for &port in ports {
        table[usize::from(port)] = 1;
    }
    table
}

#[derive(Debug, thiserror::Error)]
pub enum ReconfigureError {
    #[error(
        "this gateway handed its XDP pin root to the gateway that took over from it: the \
         kernel's maps are that one's to write"
    )]
    HandedOff,
    /// Nothing was written.
    #[error(transparent)]
    Refused(MapsError),
    #[error("{0}; the kernel's maps were put back as they were")]
    RolledBack(MapsError),
    #[error(
        "{error}; putting the kernel's maps back failed too ({restoring}): they may hold part of \
         the new settings"
    )]
    Mixed {
        error: Box<MapsError>,
        restoring: Box<MapsError>,
    },
}

/// This gateway's right to write the kernel's settings: until it hands
/// the pin root off to a gateway that takes over from it.
#[derive(Clone)]
pub struct KernelWrites {
    root: PathBuf,
    handed_off: HandedOff,
    notice: watch::Receiver<bool>,
}

impl KernelWrites {
    pub(super) fn new(root: PathBuf, handed_off: HandedOff, notice: watch::Receiver<bool>) -> Self {
        Self {
            root,
            handed_off,
            notice,
        }
    }

    /// Whether the pin root was handed off: this gateway is draining.
    pub fn handed_off(&self) -> bool {
        *self.handed_off.lock()
    }

    /// Returns once the pin root is handed off (never, if it never is).
    pub async fn until_handed_off(&self) {
        let mut notice = self.notice.clone();
        if notice.wait_for(|handed_off| *handed_off).await.is_err() {
            // The kernel path is gone (the gateway is stopping): no hand-off.
            std::future::pending::<()>().await;
        }
    }

    /// Writes `settings` to the maps, all or nothing; refused after a
    /// hand-off. Blocks (65,536 port lookups, then the changes).
    pub fn reconfigure(&self, settings: &XdpSettings) -> Result<(), ReconfigureError> {
        let handed_off = self.handed_off.lock();
        if *handed_off {
            return Err(ReconfigureError::HandedOff);
        }
        reconfigure(
            &mut PinnedMaps::open(&self.root).map_err(ReconfigureError::Refused)?,
            settings,
        )
    }
}

/// The maps' contents a reload writes.
struct Policy {
    ports: Vec<u8>,
    allow: Vec<AllowKey>,
    config: Config,
}

/// The write that failed, in the order they are made.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Stage {
    Ports,
    Allow,
    Config,
}

fn reconfigure(maps: &mut PinnedMaps, settings: &XdpSettings) -> Result<(), ReconfigureError> {
    let refused = ReconfigureError::Refused;
    let before = Policy {
        ports: maps.port_table().map_err(refused)?,
        allow: maps.allow_keys().map_err(refused)?,
        config: maps.config().map_err(refused)?,
    };
    let after = Policy {
        ports: port_table(&settings.ports),
        allow: settings
            .allow
            .iter()
            .map(|net| entry(&allow_key(net)))
            .collect(),
        config: Config {
            mode: settings.mode.as_kernel(),
            default_budget: settings.default_budget,
            udp: settings.udp.as_kernel(),
            syn_flood_rate: settings.syn_flood_rate,
            ..before.config
        },
    };
    // The trie must hold the new list (and room to swap it in).
    allow_swap(
        &before.allow,
        &after.allow,
        maps.allow_capacity().map_err(refused)?,
    )
    .map_err(refused)?;
    let Err((stage, error)) = write(maps, &before, &after) else {
        return Ok(());
    };
    // The config is one update, made last: a failed one changed nothing.
    let mut restore = || {
        if stage >= Stage::Allow {
            maps.set_allow_keys(&before.allow)?;
        }
        maps.write_ports(&after.ports, &before.ports)?;
        maps.publish()
    };
    match restore() {
        Ok(()) => Err(ReconfigureError::RolledBack(error)),
        Err(restoring) => Err(ReconfigureError::Mixed {
            error: Box::new(error),
            restoring: Box::new(restoring),
        }),
    }
}

fn write(maps: &mut PinnedMaps, before: &Policy, after: &Policy) -> Result<(), (Stage, MapsError)> {
    (maps.write_ports(&before.ports, &after.ports)).map_err(|e| (Stage::Ports, e))?;
    (maps.set_allow_keys(&after.allow)).map_err(|e| (Stage::Allow, e))?;
    (maps.set_config(after.config)).map_err(|e| (Stage::Config, e))
}

/// How a trie holding `present` comes to hold exactly `wanted`.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct AllowSwap {
    /// Stale entries removed first, only as many as the trie needs room.
    pub make_room: Vec<AllowKey>,
    pub insert: Vec<AllowKey>,
    /// The other stale entries, removed last.
    pub stale: Vec<AllowKey>,
}

/// Adds before it removes, so a CIDR in both lists is never dropped for a
/// moment, but makes room first when `capacity` cannot hold both; refused
/// (before anything is written) when it cannot hold `wanted` at all.
pub(super) fn allow_swap(
    present: &[AllowKey],
    wanted: &[AllowKey],
    capacity: usize,
) -> Result<AllowSwap, MapsError> {
    let mut distinct: Vec<AllowKey> = Vec::with_capacity(wanted.len());
    for key in wanted {
        if !distinct.contains(key) {
            distinct.push(*key);
        }
    }
    if distinct.len() > capacity {
        return Err(MapsError::TooMany {
            map: maps::ALLOW,
            wanted: distinct.len(),
            capacity,
        });
    }
    let insert: Vec<_> = (distinct.iter())
        .filter(|key| !present.contains(key))
        .copied()
        .collect();
    let mut stale: Vec<_> = (present.iter())
        .filter(|key| !distinct.contains(key))
        .copied()
        .collect();
    let room = capacity.saturating_sub(present.len());
    let make_room = stale
        .drain(..insert.len().saturating_sub(room).min(stale.len()))
        .collect();
    Ok(AllowSwap {
        make_room,
        insert,
        stale,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u8) -> AllowKey {
        (128, [n; 16])
    }

    #[test]
    fn an_allow_list_swap_adds_before_it_removes_when_there_is_room() {
        let swap = allow_swap(&[key(1), key(2)], &[key(2), key(3), key(3)], 4).unwrap();
        assert_eq!(
            swap,
            AllowSwap {
                make_room: vec![],
                insert: vec![key(3)],
                stale: vec![key(1)],
            }
        );
    }

    #[test]
    fn a_full_trie_loses_only_as_many_stale_entries_as_it_needs_first() {
        let present = [key(1), key(2), key(3), key(4)];
        let swap = allow_swap(&present, &[key(4), key(5), key(6)], 5).unwrap();
        assert_eq!(swap.make_room, [key(1)]);
        assert_eq!(swap.insert, [key(5), key(6)]);
        assert_eq!(swap.stale, [key(2), key(3)]);
        // Never more than the trie holds along the way.
        assert!(present.len() - swap.make_room.len() + swap.insert.len() <= 5);
    }

    #[test]
    fn a_list_the_trie_cannot_hold_is_refused_before_anything_is_written() {
        let error = allow_swap(&[], &[key(1), key(2), key(3)], 2).unwrap_err();
        assert!(
            matches!(
                error,
                MapsError::TooMany {
                    wanted: 3,
                    capacity: 2,
                    ..
                }
            ),
            "{error}"
        );
        assert!(allow_swap(&[], &[key(1), key(1), key(2)], 2).is_ok());
    }

    #[test]
    fn the_port_table_marks_exactly_the_listed_ports() {
        let table = port_table(&[0, 8080, 8080, u16::MAX]);
        assert_eq!(table.len(), 65_536);
        assert_eq!(table.iter().filter(|&&b| b == 1).count(), 3);
        assert_eq!((table[0], table[8080], table[65_535]), (1, 1, 1));
    }
}
