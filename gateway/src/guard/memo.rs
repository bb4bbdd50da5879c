//! How often a worker tells the guard about authenticated requests.
use std::{
    collections::HashMap,
    hash::{BuildHasher, BuildHasherDefault, Hasher},
    net::IpAddr,
    sync::Mutex,
};

/// One worker's memory of which clients at which addresses it told the
/// guard about, so a busy address does not make every worker queue on the
/// same guard shard: a worker reports a client at an address at most once
/// per [`ReportMemo::EVERY_NS`], or sooner when a higher tier
/// authenticates there. Budgets decay over minutes and standing is judged
/// over seconds, so a second is plenty. Bounded: a full memo starts over.
#[derive(Debug, Default)]
pub struct ReportMemo {
    /// Keyed hash of (address, client id) → (tier rank, when). The key is
    /// already a keyed hash, so the map does not hash it again.
    reported: Mutex<HashMap<u64, (usize, u64), BuildHasherDefault<Prehashed>>>,
    /// foldhash, randomly seeded, not SipHash (this runs once per
    /// authenticated request): the memo is bounded and a collision only
    /// delays one report by a second.
    hasher: hashbrown::DefaultHashBuilder,
}

/// The hasher of a map whose keys are hashes already.
#[derive(Default)]
struct Prehashed(u64);

impl Hasher for Prehashed {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(byte);
        }
    }

    fn write_u64(&mut self, value: u64) {
        self.0 = value;
    }
}

impl ReportMemo {
    pub const EVERY_NS: u64 = 1_000_000_000;
    const REMEMBERED: usize = 4096;

    /// Whether client `client` of tier `rank` authenticating from `ip` at
    /// `now_ns` should be reported to the guard; if so, remembers that it was.
    pub fn due(&self, ip: IpAddr, client: &str, rank: usize, now_ns: u64) -> bool {
        let key = self.hasher.hash_one((ip, client));
        let mut reported = self.reported.lock().unwrap_or_else(|p| p.into_inner());
        match reported.get(&key) {
            Some(&(seen, at)) if seen >= rank && now_ns.saturating_sub(at) < Self::EVERY_NS => {
                false
            }
            _ => {
                if reported.len() >= Self::REMEMBERED {
                    reported.clear();
                }
                reported.insert(key, (rank, now_ns));
                true
            }
        }
    }
}
