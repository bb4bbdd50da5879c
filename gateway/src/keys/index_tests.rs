use super::super::{
    sqlite::SqliteStore,
    store::{ClientUpdate, NewClient},
};
use super::*;

#[test]
fn guessed_keys_count_as_guessing_stale_real_ones_do_not() {
    use KeyRejection::*;
    for reason in [Malformed, Checksum, Unknown, WrongSecret] {
        assert!(reason.is_guessing(), "{reason:?}");
    }
    assert!(!Disabled.is_guessing() && !Expired.is_guessing());
}

/// The index of everything `store` holds.
fn load(index: &KeyIndex, store: &SqliteStore) -> usize {
    index.replace(store.clients().unwrap(), store.keys().unwrap())
}

fn store() -> (tempfile::TempDir, SqliteStore) {
    let dir = tempfile::tempdir().unwrap();
    let store = SqliteStore::open(&dir.path().join("keys.db")).unwrap();
    (dir, store)
}

/// Disables client `id` in `store`, returning its record as it is now.
fn disable(store: &SqliteStore, id: &str) -> Client {
    let update = ClientUpdate {
        disabled: Some(true),
        ..ClientUpdate::default()
    };
    store.update(id, &update).unwrap().unwrap()
}

fn client(name: &str, expires_at: Option<i64>) -> NewClient {
    NewClient {
        name: name.into(),
        tier: "gold".into(),
        scopes: vec!["read".into()],
        expires_at,
        ..NewClient::default()
    }
}

#[test]
fn created_key_verifies_and_others_do_not() {
    let (_dir, store) = store();
    let (created, key) = store.create(client("a", None), 100).unwrap();
    let index = KeyIndex::default();
    assert_eq!(load(&index, &store), 1);
    let (id, outcome) = index.verify(&key, 200);
    assert_eq!(outcome.unwrap().id, created.id);
    assert_eq!(created.id, format!("cl_{}", id.unwrap()));

    let other = format::generate().unwrap().text;
    assert_eq!(
        index.verify(&other, 200).1.err(),
        Some(KeyRejection::Unknown)
    );
    assert_eq!(
        index.verify("nonsense", 200).1.err(),
        Some(KeyRejection::Malformed)
    );
    // Same id, different secret (re-checksummed so it parses).
    let parsed = format::parse(&key).unwrap();
    let body = format!("gk_{}_{}", parsed.id, "x".repeat(format::SECRET_LEN));
    let forged = format!("{body}{}", format::check_digits(&body));
    assert_eq!(
        index.verify(&forged, 200).1.err(),
        Some(KeyRejection::WrongSecret)
    );
}

#[test]
fn rotation_keeps_the_old_key_for_its_grace_and_delete_revokes_all() {
    let (_dir, store) = store();
    let (created, old) = store.create(client("a", None), 100).unwrap();
    let new = store.rotate(&created.id, 60, 1_000).unwrap().unwrap();
    let index = KeyIndex::default();
    assert_eq!(load(&index, &store), 2);
    assert!(index.verify(&old, 1_059).1.is_ok(), "old key within grace");
    assert_eq!(
        index.verify(&old, 1_060).1.unwrap_err(),
        KeyRejection::Expired
    );
    assert!(index.verify(&new, 5_000).1.is_ok());
    // Rotating again with no grace ends every earlier key at once.
    let newest = store.rotate(&created.id, 0, 1_010).unwrap().unwrap();
    load(&index, &store);
    assert!(index.verify(&new, 1_010).1.is_err());
    assert!(index.verify(&newest, 1_010).1.is_ok());
    assert_eq!(store.rotate("cl_nobody", 0, 1).unwrap(), None);

    let update = ClientUpdate {
        tier: Some("silver".into()),
        expires_at: Some(Some(9_999)),
        ..ClientUpdate::default()
    };
    let updated = store.update(&created.id, &update).unwrap().unwrap();
    assert_eq!(
        (updated.tier.as_str(), updated.expires_at),
        ("silver", Some(9_999))
    );
    load(&index, &store);
    assert_eq!(index.verify(&newest, 1_010).1.unwrap().tier, "silver");

    assert!(store.delete(&created.id).unwrap());
    assert!(!store.delete(&created.id).unwrap());
    load(&index, &store);
    assert_eq!(
        index.verify(&newest, 1_010).1.unwrap_err(),
        KeyRejection::Unknown
    );
    assert!(store.keys().unwrap().is_empty());
}

#[test]
fn expired_clients_are_refused() {
    let (_dir, store) = store();
    let (_, key) = store.create(client("old", Some(150)), 100).unwrap();
    let index = KeyIndex::default();
    load(&index, &store);
    assert!(index.verify(&key, 149).1.is_ok());
    assert_eq!(index.verify(&key, 150).1.err(), Some(KeyRejection::Expired));
}

/// The index copies `disabled` and the client's expiry into each key's
/// entry: both still refuse the key, and the earlier of a rotated-out
/// key's grace and its client's expiry ends it.
#[test]
fn disabled_clients_and_the_earlier_expiry_are_refused() {
    let (_dir, store) = store();
    let (created, old) = store.create(client("a", Some(2_000)), 100).unwrap();
    let new = store.rotate(&created.id, 500, 1_000).unwrap().unwrap();
    let index = KeyIndex::default();
    load(&index, &store);
    assert!(index.verify(&old, 1_499).1.is_ok());
    assert_eq!(
        index.verify(&old, 1_500).1.err(),
        Some(KeyRejection::Expired)
    );
    assert!(index.verify(&new, 1_999).1.is_ok());
    assert_eq!(
        index.verify(&new, 2_000).1.err(),
        Some(KeyRejection::Expired)
    );

    disable(&store, &created.id);
    load(&index, &store);
    assert_eq!(
        index.verify(&new, 1_000).1.err(),
        Some(KeyRejection::Disabled)
    );
}

#[test]
fn store_keeps_no_key_text_and_rejects_duplicate_external_ids() {
    let (dir, store) = store();
    let mut first = client("x", None);
    first.external_id = Some("svc-1".into());
    let (_, key) = store.create(first.clone(), 1).unwrap();
    assert!(matches!(
        store.create(first, 2),
        Err(StoreError::DuplicateExternalId(_))
    ));
    drop(store);
    let bytes = std::fs::read(dir.path().join("keys.db")).unwrap();
    let wal = std::fs::read(dir.path().join("keys.db-wal")).unwrap_or_default();
    let secret = &key[key.len() - 49..key.len() - 6];
    for file in [bytes, wal] {
        assert!(!file.windows(secret.len()).any(|w| w == secret.as_bytes()));
    }
}

/// A per-client refresh changes that client only: its keys follow the
/// store, every other client's keys are untouched.
#[test]
fn a_client_refresh_replaces_that_client_alone() {
    let (_dir, store) = store();
    let (a, key_a) = store.create(client("a", None), 1).unwrap();
    let (b, key_b) = store.create(client("b", None), 1).unwrap();
    let index = KeyIndex::default();
    assert_eq!(load(&index, &store), 2);
    let disabled = disable(&store, &a.id);
    index.apply_client(&a.id, Some(disabled), &store.client_keys(&a.id).unwrap());
    assert_eq!(
        index.verify(&key_a, 2).1.err(),
        Some(KeyRejection::Disabled)
    );
    assert!(index.verify(&key_b, 2).1.is_ok());
    let new = store.rotate(&b.id, 0, 3).unwrap().unwrap();
    let keys = store.client_keys(&b.id).unwrap();
    index.apply_client(&b.id, store.client(&b.id).unwrap(), &keys);
    assert!(index.verify(&new, 3).1.is_ok());
    // Rotated without grace: the old key is gone from the store and the index.
    assert_eq!(index.verify(&key_b, 3).1.err(), Some(KeyRejection::Unknown));
    index.apply_client(&a.id, None, &[]);
    assert_eq!(index.verify(&key_a, 3).1.err(), Some(KeyRejection::Unknown));
    assert!(index.client(&a.id).is_none() && index.client(&b.id).is_some());
    assert_eq!(index.len(), 1, "only b's new key is left");
}

/// A full read that began before a client's refresh is not swapped in
/// over it: the revocation this node answered stays in force.
#[test]
fn a_full_read_older_than_a_client_refresh_is_not_swapped_in() {
    let (_dir, store) = store();
    let (a, key) = store.create(client("a", None), 1).unwrap();
    let index = KeyIndex::default();
    load(&index, &store);
    let since = index.changes();
    let (clients, keys) = (store.clients().unwrap(), store.keys().unwrap());
    assert!(store.delete(&a.id).unwrap());
    index.apply_client(&a.id, None, &[]);
    assert_eq!(index.replace_unless_changed(since, clients, keys), None);
    assert_eq!(index.verify(&key, 2).1.err(), Some(KeyRejection::Unknown));
    let since = index.changes();
    let (clients, keys) = (store.clients().unwrap(), store.keys().unwrap());
    assert_eq!(index.replace_unless_changed(since, clients, keys), Some(0));
}

/// The embedded store's background reload (`cli/run.rs` `refresh_keys`)
/// reads every client and key; a client the admin API revokes (store
/// delete + `refresh_client`) while that read is under way must not come
/// back when it is swapped in. The revoke went through the poller's own
/// SQLite connection, so `PRAGMA data_version` does not move and no later
/// poll would have mended it.
#[tokio::test]
async fn a_revocation_during_a_background_reload_is_not_undone() {
    use std::sync::Arc;

    use super::super::store::KeyStore;

    /// The store as the poller sees it; the admin API's delete (and its
    /// index refresh) lands between the poller's two reads.
    struct Racing {
        inner: Arc<SqliteStore>,
        index: Arc<KeyIndex>,
        victim: String,
    }

    #[async_trait::async_trait]
    impl KeyStore for Racing {
        async fn create_many(
            &self,
            new: Vec<NewClient>,
            now: i64,
        ) -> Result<Vec<(Client, String)>, StoreError> {
            KeyStore::create_many(&*self.inner, new, now).await
        }
        async fn create_first_admin(
            &self,
            new: NewClient,
            now: i64,
        ) -> Result<Option<(Client, String)>, StoreError> {
            KeyStore::create_first_admin(&*self.inner, new, now).await
        }
        async fn clients(&self) -> Result<Vec<Client>, StoreError> {
            KeyStore::clients(&*self.inner).await
        }
        async fn keys(&self) -> Result<Vec<StoredKey>, StoreError> {
            let keys = KeyStore::keys(&*self.inner).await;
            // The admin API: DELETE /v1/management/api-clients/{id}.
            assert!(KeyStore::delete(&*self.inner, &self.victim).await.unwrap());
            self.index
                .refresh_client(&*self.inner, &self.victim)
                .await
                .unwrap();
            keys
        }
        async fn version(&self) -> Result<i64, StoreError> {
            KeyStore::version(&*self.inner).await
        }
        async fn client(&self, id: &str) -> Result<Option<Client>, StoreError> {
            KeyStore::client(&*self.inner, id).await
        }
        async fn update(
            &self,
            id: &str,
            update: &ClientUpdate,
        ) -> Result<Option<Client>, StoreError> {
            KeyStore::update(&*self.inner, id, update).await
        }
        async fn delete(&self, id: &str) -> Result<bool, StoreError> {
            KeyStore::delete(&*self.inner, id).await
        }
        async fn rotate(
            &self,
            id: &str,
            grace: i64,
            now: i64,
        ) -> Result<Option<String>, StoreError> {
            KeyStore::rotate(&*self.inner, id, grace, now).await
        }
    }

    let (_dir, store) = store();
    let store = Arc::new(store);
    let (victim, key) = store.create(client("a", None), 100).unwrap();
    let index = Arc::new(KeyIndex::default());
    load(&index, &store);
    assert!(index.verify(&key, 200).1.is_ok());
    let version = store.version().unwrap();

    let racing = Racing {
        inner: store.clone(),
        index: index.clone(),
        victim: victim.id.clone(),
    };
    // `refresh_keys`: the version moved (say the CLI wrote), reload all.
    // Read meanwhile, nothing is swapped in: read again.
    assert_eq!(index.load(&racing).await.unwrap(), None);

    // The revoke was answered 200 and the client is gone from the store...
    assert!(store.client(&victim.id).unwrap().is_none());
    // ...and the poller will not look again: its own connection's writes
    // do not change data_version.
    assert_eq!(store.version().unwrap(), version);
    // The revoked key must be refused.
    assert!(
        index.verify(&key, 300).1.is_err(),
        "a revoked client's key is accepted again after a background reload"
    );
    // The next read is swapped in, without the client.
    assert_eq!(index.load(&*store).await.unwrap(), Some(0));
    assert!(index.verify(&key, 300).1.is_err());
}

/// What a token bought with a key is worth: the key's standing as
/// `verify` would judge it, and only for the client the token names.
#[test]
fn a_keys_standing_follows_its_grace_its_client_and_its_deletion() {
    let (_dir, store) = store();
    let (a, old) = store.create(client("a", Some(2_000)), 100).unwrap();
    let (b, _) = store.create(client("b", None), 100).unwrap();
    let new = store.rotate(&a.id, 500, 1_000).unwrap().unwrap();
    let index = KeyIndex::default();
    load(&index, &store);
    let (old_id, new_id) = (
        format::parse(&old).unwrap().id,
        format::parse(&new).unwrap().id,
    );

    assert_eq!(index.key_standing(&a.id, old_id, 1_499), Ok(()));
    assert_eq!(
        index.key_standing(&a.id, old_id, 1_500),
        Err(KeyRejection::Expired)
    );
    assert_eq!(index.key_standing(&a.id, new_id, 1_999), Ok(()));
    assert_eq!(
        index.key_standing(&a.id, new_id, 2_000),
        Err(KeyRejection::Expired),
        "the client's own expiry ends its keys' tokens too"
    );
    // Another client's key, an id never issued, one not of the format.
    assert_eq!(
        index.key_standing(&b.id, new_id, 1_000),
        Err(KeyRejection::Revoked)
    );
    let unknown = format::parse(&format::generate().unwrap().text)
        .unwrap()
        .id
        .to_owned();
    for id in [unknown.as_str(), "", "nonsense", &format!("{new_id}x")] {
        assert_eq!(
            index.key_standing(&a.id, id, 1_000),
            Err(KeyRejection::Revoked),
            "{id:?}"
        );
    }

    disable(&store, &a.id);
    load(&index, &store);
    assert_eq!(
        index.key_standing(&a.id, new_id, 1_000),
        Err(KeyRejection::Disabled)
    );
    assert!(store.delete(&a.id).unwrap());
    load(&index, &store);
    assert_eq!(
        index.key_standing(&a.id, new_id, 1_000),
        Err(KeyRejection::Revoked)
    );
}
