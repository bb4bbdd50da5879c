use std::collections::BTreeMap;

use super::*;

/// A ban map of fixed capacity, as the kernel's hash map behaves.
struct Fake {
    capacity: usize,
    entries: BTreeMap<IpNet, Ban>,
}

impl Fake {
    fn new(capacity: u32) -> Self {
        Self {
            capacity: capacity as usize,
            entries: BTreeMap::new(),
        }
    }
}

impl BanMap for Fake {
    fn name(&self) -> &'static str {
        maps::BANS
    }
    fn get(&self, key: &IpNet) -> Result<Option<Ban>, MapsError> {
        Ok(self.entries.get(key).copied())
    }
    fn insert(&mut self, key: &IpNet, ban: Ban) -> Result<Inserted, MapsError> {
        if !self.entries.contains_key(key) && self.entries.len() >= self.capacity {
            return Ok(Inserted::Full);
        }
        self.entries.insert(*key, ban);
        Ok(Inserted::Done)
    }
    fn remove(&mut self, key: &IpNet) -> Result<bool, MapsError> {
        Ok(self.entries.remove(key).is_some())
    }
    fn entries(&self) -> Result<Vec<(IpNet, Ban)>, MapsError> {
        Ok(self.entries.iter().map(|(k, v)| (*k, *v)).collect())
    }
}

fn net(s: &str) -> IpNet {
    crate::net::parse_net(s).unwrap()
}

fn until(ns: u64) -> Ban {
    Ban {
        banned_until_ns: ns,
        ..Ban::default()
    }
}

/// A ban map of capacity 3 (`xdp.max_bans = 3`; `config::kernel` checks
/// that the key reaches the map's size).
fn tiny(when_full: WhenFull) -> (Fake, WhenFull) {
    (Fake::new(3), when_full)
}

#[test]
fn a_full_map_evicts_the_ban_closest_to_expiry_and_counts_it() {
    let (mut map, when_full) = tiny(WhenFull::Evict);
    assert_eq!(when_full, WhenFull::Evict);
    let mut evictor = Evictor::default();
    let counters = FullCounters::default();
    for (addr, deadline) in [("10.0.0.1", 300), ("10.0.0.2", 100), ("fd00::3", 200)] {
        let written = evictor.write(&mut map, &net(addr), until(deadline), when_full);
        assert_eq!(written.unwrap(), Written::Done);
    }
    let written = (evictor.write(&mut map, &net("10.0.0.4"), until(400), when_full)).unwrap();
    assert_eq!(
        written,
        Written::Evicted {
            map: maps::BANS,
            key: net("10.0.0.2"),
            ban: until(100),
        }
    );
    counters.record(&written, 1);
    assert_eq!(counters.bans_evicted.load(Ordering::Relaxed), 1);
    assert_eq!(counters.bans_refused.load(Ordering::Relaxed), 0);
    let left: Vec<IpNet> = map.entries.keys().copied().collect();
    assert_eq!(
        left,
        [net("10.0.0.1"), net("10.0.0.4"), net("fd00::3")],
        "the new ban is in, the soonest to expire is out"
    );
    // Next: fd00::3 (200) goes, from the index.
    let next = (evictor.write(&mut map, &net("10.0.0.5"), until(500), when_full)).unwrap();
    assert!(matches!(next, Written::Evicted { key, .. } if key == net("fd00::3")));
    // Rewriting a ban already in a full map needs no room.
    let again = (evictor.write(&mut map, &net("10.0.0.5"), until(50), when_full)).unwrap();
    assert_eq!(again, Written::Done);
}

#[test]
fn the_index_never_evicts_on_stale_data() {
    let (mut map, when_full) = tiny(WhenFull::Evict);
    let mut evictor = Evictor::default();
    for (addr, deadline) in [("10.0.0.1", 100), ("10.0.0.2", 200), ("10.0.0.3", 300)] {
        evictor
            .write(&mut map, &net(addr), until(deadline), when_full)
            .unwrap();
    }
    evictor
        .write(&mut map, &net("10.0.0.4"), until(400), when_full)
        .unwrap();
    // Another writer (the CLI) extends 10.0.0.2 and removes 10.0.0.3.
    map.entries.insert(net("10.0.0.2"), until(1_000));
    map.entries.remove(&net("10.0.0.3"));
    map.entries.insert(net("10.0.0.9"), until(900));
    let written = (evictor.write(&mut map, &net("10.0.0.5"), until(500), when_full)).unwrap();
    assert!(
        matches!(written, Written::Evicted { key, .. } if key == net("10.0.0.4")),
        "{written:?}"
    );
}

#[test]
fn refuse_leaves_the_map_alone_and_counts_it() {
    let (mut map, when_full) = tiny(WhenFull::Refuse);
    assert_eq!(when_full, WhenFull::Refuse);
    let mut evictor = Evictor::default();
    let counters = FullCounters::default();
    for (addr, deadline) in [("10.0.0.1", 100), ("10.0.0.2", 200), ("10.0.0.3", 300)] {
        evictor
            .write(&mut map, &net(addr), until(deadline), when_full)
            .unwrap();
    }
    let before = map.entries.clone();
    let written = (evictor.write(&mut map, &net("10.0.0.4"), until(400), when_full)).unwrap();
    assert_eq!(written, Written::Refused { map: maps::BANS });
    assert_eq!(map.entries, before);
    counters.record(&written, 1);
    counters.record(
        &Written::Refused {
            map: maps::PREFIX_BANS,
        },
        2,
    );
    assert_eq!(counters.bans_refused.load(Ordering::Relaxed), 1);
    assert_eq!(counters.prefix_bans_refused.load(Ordering::Relaxed), 1);
    assert_eq!(counters.bans_evicted.load(Ordering::Relaxed), 0);
}
