//! The request path's view of the keys: an immutable map swapped whole when
//! the store changes, so verifying a key takes no lock and does no I/O.
use std::{collections::HashMap, sync::Arc};

use arc_swap::ArcSwap;

use super::{
    format::{self, KeyFormatError, KeyIdText},
    store::{Client, KeyStore, StoreError, StoredKey},
    table::{self, KeyId, KeyTable, Slot},
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

#[derive(Default)]
pub struct KeyIndex {
    entries: ArcSwap<KeyTable>,
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
    /// One admin refresh of a client at a time, from its store read to its
    /// swap: each then reads after the one applied before it, so an older
    /// read is never applied last among them (a rename read before a
    /// revocation, swapped in after it, brought the revoked client back).
    /// The PostgreSQL follower applies its notifications without it: a
    /// read it took before a revocation is corrected by the revocation's
    /// own notification.
    refreshing: tokio::sync::Mutex<()>,
}

/// A key's slot, if its client is among `clients`.
fn slot(key: &StoredKey, clients: &HashMap<String, Arc<Client>>) -> Option<Slot> {
    let client = clients.get(&key.client_id)?;
    Slot::new(&key.key_id, key.secret_hash, key.expires_at, client)
}

impl KeyIndex {
    /// Rebuilds the index from the store and swaps it in; `None` if a
    /// client was refreshed while it read (see
    /// [`KeyIndex::replace_unless_changed`]): nothing swapped, read again.
    pub async fn load(&self, store: &dyn KeyStore) -> Result<Option<usize>, StoreError> {
        let since = self.changes();
        let (clients, keys) = store.all().await?;
        Ok(self.replace_unless_changed(since, clients, keys))
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
        let entries = KeyTable::new(keys.iter().filter_map(|key| slot(key, &clients)).collect());
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
    /// Refreshes run one at a time (see `refreshing`).
    pub async fn refresh_client(&self, store: &dyn KeyStore, id: &str) -> Result<(), StoreError> {
        let _one = self.refreshing.lock().await;
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
        let old = self.entries.load();
        let kept = (old.iter()).filter(|slot| {
            (slot.client.as_ref()).is_some_and(|client| !ids.contains(client.id.as_str()))
        });
        let entries = KeyTable::new(
            (kept.cloned())
                .chain(keys.iter().filter_map(|key| slot(key, &fresh)))
                .collect(),
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
    /// (safe to log) with the outcome. Allocates nothing: the id comes
    /// back inline, the client as a shared reference.
    pub fn verify(
        &self,
        text: &str,
        now: i64,
    ) -> (Option<KeyIdText>, Result<Arc<Client>, KeyRejection>) {
        let entries = self.entries.load();
        // The slot's line starts loading while the checksum is computed.
        if let Some(id) = (text.len() == format::KEY_LEN)
            .then(|| {
                text.as_bytes()
                    .get(format::PREFIX.len()..)?
                    .first_chunk::<{ format::ID_LEN }>()
            })
            .flatten()
        {
            entries.prefetch(id);
        }
        let parsed = match format::parse(text) {
            Ok(parsed) => parsed,
            Err(KeyFormatError::Checksum) => return (None, Err(KeyRejection::Checksum)),
            Err(_) => return (None, Err(KeyRejection::Malformed)),
        };
        let Ok(id) = KeyId::try_from(parsed.id.as_bytes()) else {
            return (None, Err(KeyRejection::Malformed));
        };
        let key_id = Some(KeyIdText::from(parsed.id));
        let Some((slot, client)) = entries.get(&id) else {
            return (key_id, Err(KeyRejection::Unknown));
        };
        // The client's reference count (and the fields the request reads
        // next) start loading while the secret is hashed.
        table::prefetch(Arc::as_ptr(client).cast::<u8>().wrapping_sub(16));
        let presented = format::hash_secret(parsed.secret);
        if !table::digests_equal(&presented, &slot.secret_hash) {
            return (key_id, Err(KeyRejection::WrongSecret));
        }
        (key_id, standing(slot, now).map(|()| client.clone()))
    }

    /// Whether the key `key_id` of client `client_id` still verifies at
    /// `now`, as [`KeyIndex::verify`] would judge it but for the secret:
    /// what a token bought with the key is worth. A key rotated away
    /// (its grace over), deleted, disabled or another client's is not.
    pub fn key_standing(
        &self,
        client_id: &str,
        key_id: &str,
        now: i64,
    ) -> Result<(), KeyRejection> {
        let Ok(id) = KeyId::try_from(key_id.as_bytes()) else {
            return Err(KeyRejection::Revoked);
        };
        let entries = self.entries.load();
        match entries.get(&id) {
            Some((_, client)) if client.id != client_id => Err(KeyRejection::Revoked),
            Some((slot, _)) => standing(slot, now),
            None => Err(KeyRejection::Revoked),
        }
    }
}

/// What a key whose secret matched (or a token it bought) is worth at
/// `now`: one rule for [`KeyIndex::verify`] and [`KeyIndex::key_standing`].
fn standing(slot: &Slot, now: i64) -> Result<(), KeyRejection> {
    if slot.disabled {
        Err(KeyRejection::Disabled)
    } else if slot.expires_at <= now {
        Err(KeyRejection::Expired)
    } else {
        Ok(())
    }
}

#[cfg(test)]
#[path = "index_tests.rs"]
mod tests;

#[cfg(test)]
#[path = "refresh_race_tests.rs"]
mod refresh_race_tests;
