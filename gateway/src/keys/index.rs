//! The request path's view of the keys: an immutable map swapped whole when
//! the store changes, so verifying a key takes no lock and does no I/O.
use std::{
    collections::HashMap,
    hash::{BuildHasher, Hasher},
    sync::Arc,
};

use arc_swap::ArcSwap;
use subtle::ConstantTimeEq;

use super::{
    format::{self, KeyFormatError},
    store::{Client, KeyStore, StoreError, StoredKey},
};

/// Why a presented key was refused (for metrics and logs; never the key).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyRejection {
    Malformed,
    Checksum,
    Unknown,
    WrongSecret,
    Disabled,
    Expired,
    /// A genuine credential (the gateway's own token) naming a client that
    /// was revoked since.
    Revoked,
}

impl KeyRejection {
    /// What a client is told: an unknown key id and a wrong secret look
    /// the same, so probing cannot tell which key ids exist.
    pub fn public_str(self) -> &'static str {
        match self {
            KeyRejection::Unknown | KeyRejection::WrongSecret => "invalid_key",
            other => other.as_str(),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            KeyRejection::Malformed => "malformed",
            KeyRejection::Checksum => "bad_checksum",
            KeyRejection::Unknown => "unknown_key",
            KeyRejection::WrongSecret => "wrong_secret",
            KeyRejection::Disabled => "disabled",
            KeyRejection::Expired => "expired",
            KeyRejection::Revoked => "revoked",
        }
    }

    /// Whether this refusal suggests someone guessing keys, which the
    /// source guard counts. A disabled, expired or revoked credential is a
    /// real one gone stale (a client not updated yet, a token still within
    /// its lifetime), not a guess.
    pub fn is_guessing(self) -> bool {
        match self {
            KeyRejection::Malformed
            | KeyRejection::Checksum
            | KeyRejection::Unknown
            | KeyRejection::WrongSecret => true,
            KeyRejection::Disabled | KeyRejection::Expired | KeyRejection::Revoked => false,
        }
    }
}

/// A key id as the map holds it: inline, so a lookup compares it without
/// following a pointer to a heap string.
type KeyId = [u8; format::ID_LEN];

/// Hashes key ids for the map with a per-process random seed and a
/// multiply-fold, a tenth of SipHash's cost. Enough here: the ids in the
/// map are random (generated from the OS CSPRNG), and a client only looks
/// ids up, so it cannot lengthen a probe sequence (no hash flooding).
#[derive(Clone)]
struct IdHashing(u64);

impl Default for IdHashing {
    fn default() -> Self {
        Self(std::hash::RandomState::new().hash_one(0x6b65_7973_u64))
    }
}

impl BuildHasher for IdHashing {
    type Hasher = IdHasher;

    fn build_hasher(&self) -> IdHasher {
        IdHasher(self.0)
    }
}

struct IdHasher(u64);

impl Hasher for IdHasher {
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.0 = (self.0 ^ u64::from_le_bytes(word))
                .wrapping_mul(0x9e37_79b9_7f4a_7c15)
                .rotate_left(26);
        }
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

type IdMap = HashMap<KeyId, Entry, IdHashing>;

/// What verifying a key needs, in one place: the client's `disabled` and
/// expiry are copied here (the index is rebuilt whenever the store
/// changes), so a verification touches the client only to hand it out.
#[derive(Clone)]
struct Entry {
    secret_hash: [u8; 32],
    /// The earlier of the key's end of grace (a rotated-out key) and the
    /// client's expiry (unix seconds).
    expires_at: Option<i64>,
    disabled: bool,
    client: Arc<Client>,
}

#[derive(Default)]
pub struct KeyIndex {
    entries: ArcSwap<IdMap>,
    /// Clients by `external_id`, so a JWT can name a stored client.
    external: ArcSwap<HashMap<String, Arc<Client>>>,
    /// Clients by id, for the admin API.
    clients: ArcSwap<HashMap<String, Arc<Client>>>,
    /// Set while a shared store has been out of reach longer than
    /// `store.max_staleness`: keys are then refused (503), not checked
    /// against what may be stale.
    stale: std::sync::atomic::AtomicBool,
    /// One rebuild at a time (a full load, a client's refresh), so two
    /// copy-and-swap updates never lose each other's change; it counts
    /// the clients' refreshes.
    writer: std::sync::Mutex<u64>,
}

/// A key's entry: the earlier of its own end and its client's.
fn entry(key: &StoredKey, client: &Arc<Client>) -> Option<(KeyId, Entry)> {
    let expires_at = match (key.expires_at, client.expires_at) {
        (Some(key), Some(client)) => Some(key.min(client)),
        (key, client) => key.or(client),
    };
    Some((
        KeyId::try_from(key.key_id.as_bytes()).ok()?,
        Entry {
            secret_hash: key.secret_hash,
            expires_at,
            disabled: client.disabled,
            client: client.clone(),
        },
    ))
}

impl KeyIndex {
    /// Rebuilds the index from the store and swaps it in.
    pub async fn load(&self, store: &dyn KeyStore) -> Result<usize, StoreError> {
        let clients = store.clients().await?;
        let keys = store.keys().await?;
        Ok(self.replace(clients, keys))
    }

    /// Swaps in an index of exactly these clients and keys.
    pub fn replace(&self, clients: Vec<Client>, keys: Vec<StoredKey>) -> usize {
        let _writer = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        self.swap_all(clients, keys)
    }

    /// How many client refreshes the index has taken.
    pub fn changes(&self) -> u64 {
        *self.writer.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// [`KeyIndex::replace`], unless a client was refreshed since
    /// [`KeyIndex::changes`] said `changes`: a full read begun before
    /// that refresh may be older than it (a revocation this node just
    /// answered). `None`: nothing swapped, read again.
    pub fn replace_unless_changed(
        &self,
        changes: u64,
        clients: Vec<Client>,
        keys: Vec<StoredKey>,
    ) -> Option<usize> {
        let writer = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        (*writer == changes).then(|| self.swap_all(clients, keys))
    }

    /// Swaps in everything; the caller holds the writer lock.
    fn swap_all(&self, clients: Vec<Client>, keys: Vec<StoredKey>) -> usize {
        let clients: HashMap<String, Arc<Client>> = clients
            .into_iter()
            .map(|client| (client.id.clone(), Arc::new(client)))
            .collect();
        // A stored id not of the key format could never be presented: skipped.
        let entries: IdMap = keys
            .iter()
            .filter_map(|key| entry(key, clients.get(&key.client_id)?))
            .collect();
        let external: HashMap<String, Arc<Client>> = clients
            .values()
            .filter_map(|c| Some((c.external_id.clone()?, c.clone())))
            .collect();
        let count = entries.len();
        self.entries.store(Arc::new(entries));
        self.external.store(Arc::new(external));
        self.clients.store(Arc::new(clients));
        count
    }

    /// Reads one client and its keys from the store and puts them in
    /// place of what the index held for it (gone if the client is gone).
    pub async fn refresh_client(&self, store: &dyn KeyStore, id: &str) -> Result<(), StoreError> {
        let client = store.client(id).await?;
        let keys = match client {
            Some(_) => store.client_keys(id).await?,
            None => Vec::new(),
        };
        self.apply_client(id, client, &keys);
        Ok(())
    }

    /// Replaces client `id` (and its keys) in the index; `None` removes it.
    /// The maps are copied and swapped: readers never wait.
    pub fn apply_client(&self, id: &str, client: Option<Client>, keys: &[StoredKey]) {
        let client = client.filter(|c| c.id == id);
        self.apply_clients(&[id.to_owned()], client.into_iter().collect(), keys);
    }

    /// Replaces the clients `ids` (and their keys) with `clients` in one
    /// copy and swap; an id without its client in `clients` is removed.
    pub fn apply_clients(&self, ids: &[String], clients: Vec<Client>, keys: &[StoredKey]) {
        let mut writer = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        *writer = writer.wrapping_add(1);
        let ids: std::collections::HashSet<&str> = ids.iter().map(String::as_str).collect();
        let fresh: HashMap<String, Arc<Client>> = clients
            .into_iter()
            .filter(|c| ids.contains(c.id.as_str()))
            .map(|c| (c.id.clone(), Arc::new(c)))
            .collect();
        let mut entries: IdMap = IdMap::clone(&self.entries.load());
        entries.retain(|_, entry| !ids.contains(entry.client.id.as_str()));
        entries.extend(
            keys.iter()
                .filter_map(|key| entry(key, fresh.get(&key.client_id)?)),
        );
        let mut external = HashMap::clone(&self.external.load());
        external.retain(|_, c| !ids.contains(c.id.as_str()));
        let mut all = HashMap::clone(&self.clients.load());
        all.retain(|id, _| !ids.contains(id.as_str()));
        for (id, client) in fresh {
            if let Some(external_id) = &client.external_id {
                external.insert(external_id.clone(), client.clone());
            }
            all.insert(id, client);
        }
        self.entries.store(Arc::new(entries));
        self.external.store(Arc::new(external));
        self.clients.store(Arc::new(all));
    }

    pub fn is_stale(&self) -> bool {
        self.stale.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn set_stale(&self, stale: bool) {
        self.stale
            .store(stale, std::sync::atomic::Ordering::Relaxed);
    }

    pub fn client(&self, id: &str) -> Option<Arc<Client>> {
        self.clients.load().get(id).cloned()
    }

    /// How many keys the index holds.
    pub fn len(&self) -> usize {
        self.entries.load().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The stored client a JWT's `ISSUER#CLAIM` maps to, if any.
    pub fn by_external_id(&self, external_id: &str) -> Option<Arc<Client>> {
        self.external.load().get(external_id).cloned()
    }

    /// External ids stored without an issuer (before they were tied to
    /// one): they map no token until set again.
    pub fn unscoped_external_ids(&self) -> usize {
        self.external
            .load()
            .keys()
            .filter(|id| !id.contains('#'))
            .count()
    }

    /// Verifies a presented key at `now` (unix seconds). Returns the key id
    /// (safe to log) with the outcome.
    pub fn verify(
        &self,
        text: &str,
        now: i64,
    ) -> (Option<String>, Result<Arc<Client>, KeyRejection>) {
        let parsed = match format::parse(text) {
            Ok(parsed) => parsed,
            Err(KeyFormatError::Checksum) => return (None, Err(KeyRejection::Checksum)),
            Err(_) => return (None, Err(KeyRejection::Malformed)),
        };
        let key_id = Some(parsed.id.to_owned());
        let Ok(id) = KeyId::try_from(parsed.id.as_bytes()) else {
            return (None, Err(KeyRejection::Malformed));
        };
        let entries = self.entries.load();
        let Some(entry) = entries.get(&id) else {
            return (key_id, Err(KeyRejection::Unknown));
        };
        let presented = format::hash_secret(parsed.secret);
        if !bool::from(presented.ct_eq(&entry.secret_hash)) {
            return (key_id, Err(KeyRejection::WrongSecret));
        }
        if entry.disabled {
            return (key_id, Err(KeyRejection::Disabled));
        }
        if entry.expires_at.is_some_and(|at| at <= now) {
            return (key_id, Err(KeyRejection::Expired));
        }
        (key_id, Ok(entry.client.clone()))
    }
}

#[cfg(test)]
#[path = "index_tests.rs"]
mod tests;
