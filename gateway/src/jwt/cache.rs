//! Verified tokens by SHA-256 of the whole token, so a client repeating one
//! token pays for one signature check. Bounded (sharded maps that drop
//! expired entries, then everything, when full); an entry never outlives
//! its token's `exp`.
use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

const SHARDS: usize = 16;

struct Entry<T> {
    value: Arc<T>,
    /// Unix seconds after which the entry is not served.
    until: i64,
}

pub struct TokenCache<T> {
    shards: Vec<Mutex<HashMap<[u8; 32], Entry<T>>>>,
    per_shard: usize,
}

impl<T> TokenCache<T> {
    pub fn new(capacity: usize) -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::new(HashMap::new())).collect(),
            per_shard: capacity.div_ceil(SHARDS).max(1),
        }
    }

    fn shard(&self, key: &[u8; 32]) -> std::sync::MutexGuard<'_, HashMap<[u8; 32], Entry<T>>> {
        self.shards[usize::from(key[0]) % SHARDS]
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn get(&self, key: &[u8; 32], now: i64) -> Option<Arc<T>> {
        let shard = self.shard(key);
        shard
            .get(key)
            .filter(|entry| entry.until > now)
            .map(|entry| entry.value.clone())
    }

    pub fn insert(&self, key: [u8; 32], value: Arc<T>, until: i64, now: i64) {
        let mut shard = self.shard(&key);
        if shard.len() >= self.per_shard {
            shard.retain(|_, entry| entry.until > now);
            if shard.len() >= self.per_shard {
                shard.clear();
            }
        }
        shard.insert(key, Entry { value, until });
    }

    /// A copy holding only the entries whose value `keep` accepts (a
    /// reload keeps unchanged issuers' verified tokens). A copy, not a
    /// filter in place: the old verifier may still insert entries that
    /// the new one must not serve.
    pub fn retained(&self, keep: impl Fn(&T) -> bool) -> Self {
        let shards = (self.shards.iter())
            .map(|shard| {
                let shard = shard.lock().unwrap_or_else(|p| p.into_inner());
                let kept =
                    (shard.iter())
                        .filter(|(_, entry)| keep(&entry.value))
                        .map(|(key, entry)| {
                            let entry = Entry {
                                value: entry.value.clone(),
                                until: entry.until,
                            };
                            (*key, entry)
                        });
                Mutex::new(kept.collect())
            })
            .collect();
        Self {
            shards,
            per_shard: self.per_shard,
        }
    }

    /// Entries held, expired ones included.
    #[cfg(test)]
    pub(super) fn entries(&self) -> usize {
        (self.shards.iter())
            .map(|shard| shard.lock().unwrap_or_else(|p| p.into_inner()).len())
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_expire_and_the_cache_stays_bounded() {
        let cache = TokenCache::new(32);
        cache.insert([1; 32], Arc::new("a"), 100, 0);
        assert_eq!(cache.get(&[1; 32], 99).as_deref(), Some(&"a"));
        assert!(cache.get(&[1; 32], 100).is_none());
        for i in 0..=255u8 {
            let mut key = [i; 32];
            key[0] = 3; // all in one shard
            cache.insert(key, Arc::new("x"), 1_000, 0);
        }
        let total: usize = cache.shards.iter().map(|s| s.lock().unwrap().len()).sum();
        assert!(total <= 32 + 1, "{total}");
    }
}
