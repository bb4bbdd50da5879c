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

    let disable = ClientUpdate {
        disabled: Some(true),
        ..ClientUpdate::default()
    };
    store.update(&created.id, &disable).unwrap().unwrap();
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
    let disable = ClientUpdate {
        disabled: Some(true),
        ..ClientUpdate::default()
    };
    let disabled = store.update(&a.id, &disable).unwrap();
    index.apply_client(&a.id, disabled, &store.client_keys(&a.id).unwrap());
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
