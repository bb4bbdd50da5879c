//! `gateway store copy`: every client and key record from one store into
//! another (empty) one, then proof that both hold the same: counts and a
//! checksum over each side's records, read back through the store.
use sha2::{Digest, Sha256};

use super::store::{Client, KeyStore, StoreError, StoredKey};

/// What a store holds, summarised.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Summary {
    pub clients: usize,
    pub keys: usize,
    /// SHA-256 (hex) over every record in a fixed order and encoding.
    pub checksum: String,
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} clients, {} keys, sha256:{}",
            self.clients, self.keys, self.checksum
        )
    }
}

/// Counts and checksum of these records, whatever order they came in.
pub fn summarise(clients: &[Client], keys: &[StoredKey]) -> Summary {
    let mut clients: Vec<&Client> = clients.iter().collect();
    clients.sort_by(|a, b| a.id.cmp(&b.id));
    let mut keys: Vec<&StoredKey> = keys.iter().collect();
    keys.sort_by(|a, b| a.key_id.cmp(&b.key_id));
    let mut hash = Sha256::new();
    // Each field length-prefixed: no two different records encode alike.
    let mut field = |bytes: &[u8]| {
        hash.update((bytes.len() as u64).to_le_bytes());
        hash.update(bytes);
    };
    let number = |n: Option<i64>| n.map_or("-".to_owned(), |n| n.to_string());
    for c in &clients {
        field(b"client");
        for text in [&c.id, &c.name, &c.tier, &c.scopes.join(" ")] {
            field(text.as_bytes());
        }
        field(number(c.expires_at).as_bytes());
        field(&[u8::from(c.disabled), u8::from(c.is_admin)]);
        field(c.external_id.as_deref().unwrap_or("\0none").as_bytes());
        field(number(Some(c.created_at)).as_bytes());
    }
    for k in &keys {
        field(b"key");
        field(k.key_id.as_bytes());
        field(k.client_id.as_bytes());
        field(&k.secret_hash);
        field(number(k.expires_at).as_bytes());
        field(number(Some(k.created_at)).as_bytes());
    }
    let checksum = hash.finalize().iter().map(|b| format!("{b:02x}")).collect();
    Summary {
        clients: clients.len(),
        keys: keys.len(),
        checksum,
    }
}

/// A store's summary, read through it.
pub async fn summary(store: &dyn KeyStore) -> Result<Summary, StoreError> {
    let (clients, keys) = store.all().await?;
    Ok(summarise(&clients, &keys))
}

/// Copies `from` into `to` (which must hold no clients); returns both
/// sides' summaries read back after the copy, refused if they differ.
pub async fn copy(
    from: &dyn KeyStore,
    to: &dyn KeyStore,
) -> Result<(Summary, Summary), StoreError> {
    let (clients, keys) = from.all().await?;
    let source = summarise(&clients, &keys);
    to.import(&clients, &keys).await?;
    let target = summary(to).await?;
    if source != target {
        return Err(StoreError::backend(format!(
            "the copy does not match its source: source {source}, target {target}"
        )));
    }
    Ok((source, target))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn client(id: &str) -> Client {
        Client {
            id: id.into(),
            name: "n".into(),
            tier: "gold".into(),
            scopes: vec!["a".into()],
            expires_at: None,
            disabled: false,
            is_admin: false,
            external_id: None,
            created_at: 1,
        }
    }

    #[test]
    fn the_checksum_ignores_order_and_sees_every_field() {
        let a = summarise(&[client("a"), client("b")], &[]);
        assert_eq!(a, summarise(&[client("b"), client("a")], &[]));
        let mut changed = client("b");
        changed.disabled = true;
        assert_ne!(a.checksum, summarise(&[client("a"), changed], &[]).checksum);
        let key = StoredKey {
            key_id: "k".into(),
            client_id: "a".into(),
            secret_hash: [1; 32],
            expires_at: None,
            created_at: 1,
        };
        let with_key = summarise(&[client("a"), client("b")], std::slice::from_ref(&key));
        let other_hash = StoredKey {
            secret_hash: [2; 32],
            ..key
        };
        assert_ne!(
            with_key,
            summarise(&[client("a"), client("b")], &[other_hash])
        );
        assert_eq!((with_key.clients, with_key.keys), (2, 1));
    }
}
