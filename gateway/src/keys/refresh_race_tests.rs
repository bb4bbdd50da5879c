//! Two admin writes to one client, their index refreshes interleaved: the
//! older read must never be applied last (a revoked client came back, and
//! with SQLite stayed back: the admin API's own writes move no
//! `data_version`, so no reload ever corrected it).
#![allow(clippy::unwrap_used, reason = "tests: a panic is the failure report")]

use std::{sync::Mutex, time::Duration};

use tokio::sync::oneshot;

use super::{
    super::{
        sqlite::SqliteStore,
        store::{Client, ClientUpdate, KeyStore, NewClient, StoreError, StoredKey},
    },
    *,
};

/// The SQLite store, whose first `client_keys` read pauses after reading
/// (a refresh scheduled out between its read and its swap).
struct Gated {
    inner: SqliteStore,
    reached: Mutex<Option<oneshot::Sender<()>>>,
    gate: tokio::sync::Mutex<Option<oneshot::Receiver<()>>>,
}

#[async_trait::async_trait]
impl KeyStore for Gated {
    async fn create_many(
        &self,
        new: Vec<NewClient>,
        now: i64,
    ) -> Result<Vec<(Client, String)>, StoreError> {
        KeyStore::create_many(&self.inner, new, now).await
    }
    async fn create_first_admin(
        &self,
        new: NewClient,
        now: i64,
    ) -> Result<Option<(Client, String)>, StoreError> {
        KeyStore::create_first_admin(&self.inner, new, now).await
    }
    async fn clients(&self) -> Result<Vec<Client>, StoreError> {
        KeyStore::clients(&self.inner).await
    }
    async fn keys(&self) -> Result<Vec<StoredKey>, StoreError> {
        KeyStore::keys(&self.inner).await
    }
    async fn version(&self) -> Result<i64, StoreError> {
        KeyStore::version(&self.inner).await
    }
    async fn client(&self, id: &str) -> Result<Option<Client>, StoreError> {
        KeyStore::client(&self.inner, id).await
    }
    async fn update(&self, id: &str, u: &ClientUpdate) -> Result<Option<Client>, StoreError> {
        KeyStore::update(&self.inner, id, u).await
    }
    async fn delete(&self, id: &str) -> Result<bool, StoreError> {
        KeyStore::delete(&self.inner, id).await
    }
    async fn rotate(&self, id: &str, grace: i64, now: i64) -> Result<Option<String>, StoreError> {
        KeyStore::rotate(&self.inner, id, grace, now).await
    }
    async fn client_keys(&self, id: &str) -> Result<Vec<StoredKey>, StoreError> {
        let keys = KeyStore::client_keys(&self.inner, id).await;
        let gate = self.gate.lock().await.take();
        if let Some(gate) = gate {
            if let Some(reached) = self.reached.lock().unwrap().take() {
                let _ = reached.send(());
            }
            let _ = gate.await;
        }
        keys
    }
}

#[tokio::test]
async fn a_rename_read_before_a_revocation_never_brings_the_client_back() {
    let dir = tempfile::tempdir().unwrap();
    let inner = SqliteStore::open(&dir.path().join("keys.db")).unwrap();
    let new = NewClient {
        name: "victim".into(),
        tier: "gold".into(),
        ..NewClient::default()
    };
    let (client, key) = inner.create(new, 100).unwrap();
    let (reached_tx, reached_rx) = oneshot::channel();
    let (gate_tx, gate_rx) = oneshot::channel();
    let store = Gated {
        inner,
        reached: Mutex::new(Some(reached_tx)),
        gate: tokio::sync::Mutex::new(Some(gate_rx)),
    };
    let index = KeyIndex::default();
    index.replace(store.inner.clients().unwrap(), store.inner.keys().unwrap());
    let version_before = store.inner.version().unwrap();

    // Admin call B (a rename) committed; its refresh has read the client
    // and its keys and is about to swap.
    let rename = ClientUpdate {
        name: Some("renamed".into()),
        ..Default::default()
    };
    store.inner.update(&client.id, &rename).unwrap();
    let b = index.refresh_client(&store, &client.id);
    let a = async {
        reached_rx.await.unwrap();
        // Admin call A: DELETE, then its refresh (as `Admin::delete`).
        assert!(KeyStore::delete(&store, &client.id).await.unwrap());
        let refresh = index.refresh_client(&store, &client.id);
        tokio::pin!(refresh);
        // Unserialised, A's refresh ends before B's swap; serialised, it
        // waits for B and reads after it.
        let early = tokio::time::timeout(Duration::from_millis(200), &mut refresh).await;
        gate_tx.send(()).unwrap();
        match early {
            Ok(done) => done.unwrap(),
            Err(_) => refresh.await.unwrap(),
        }
    };
    let (b, ()) = tokio::join!(b, a);
    b.unwrap();

    assert_eq!(store.inner.version().unwrap(), version_before);
    assert!(store.inner.client(&client.id).unwrap().is_none());
    let (_, outcome) = index.verify(&key, 200);
    assert_eq!(
        outcome.map(|c| c.id.clone()).err(),
        Some(KeyRejection::Unknown),
        "the revoked client's key still verifies"
    );
}
