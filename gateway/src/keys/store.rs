//! What a key store is: the clients and key records it keeps, and the
//! [`KeyStore`] trait, so a shared store can replace the embedded one
//! ([`super::sqlite`]) without touching the request path, which reads
//! [`super::KeyIndex`]. Only key ids and secret hashes are stored.
use super::format::KeyFormatError;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("key store {path}: {source}")]
    Open {
        path: String,
        source: rusqlite::Error,
    },
    #[error("key store {path}: {source}")]
    File {
        path: String,
        source: std::io::Error,
    },
    #[error("key store: {0}")]
    Sql(#[from] rusqlite::Error),
    #[error(transparent)]
    Key(#[from] KeyFormatError),
    #[error("external id {0:?} already belongs to another client")]
    DuplicateExternalId(String),
}

impl StoreError {
    /// Whether the caller asked for something impossible (vs. a store failure).
    pub fn is_conflict(&self) -> bool {
        matches!(self, StoreError::DuplicateExternalId(_))
    }
}

/// An API client: who a key belongs to and what it may do.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Client {
    pub id: String,
    pub name: String,
    pub tier: String,
    pub scopes: Vec<String>,
    /// Unix seconds; `None` never expires.
    pub expires_at: Option<i64>,
    pub disabled: bool,
    pub is_admin: bool,
    /// Value of a JWT claim that maps a token to this same client.
    pub external_id: Option<String>,
    pub created_at: i64,
}

/// What `create` needs.
#[derive(Clone, Debug, Default)]
pub struct NewClient {
    pub name: String,
    pub tier: String,
    pub scopes: Vec<String>,
    pub expires_at: Option<i64>,
    pub is_admin: bool,
    pub external_id: Option<String>,
    /// A client known only by JWTs (`external_id`) needs no API key.
    pub no_key: bool,
}

/// Changes to a client; `None` leaves a field as it is.
#[derive(Clone, Debug, Default)]
pub struct ClientUpdate {
    pub name: Option<String>,
    pub tier: Option<String>,
    pub scopes: Option<Vec<String>>,
    /// `Some(None)` removes the expiry.
    pub expires_at: Option<Option<i64>>,
    pub disabled: Option<bool>,
    pub is_admin: Option<bool>,
    /// `Some(None)` removes the external id.
    pub external_id: Option<Option<String>>,
}

/// A key as stored: never the key itself.
#[derive(Clone, Debug)]
pub struct StoredKey {
    pub key_id: String,
    pub client_id: String,
    pub secret_hash: [u8; 32],
    /// Unix seconds; set on the old key when a key is rotated with grace.
    pub expires_at: Option<i64>,
    pub created_at: i64,
}

pub trait KeyStore: Send + Sync {
    /// Creates clients with one key each, all or none; returns the key
    /// texts, shown once.
    fn create_many(
        &self,
        new: Vec<NewClient>,
        now: i64,
    ) -> Result<Vec<(Client, String)>, StoreError>;

    /// Creates one client with one key.
    fn create(&self, new: NewClient, now: i64) -> Result<(Client, String), StoreError> {
        self.create_many(vec![new], now)?
            .pop()
            .ok_or_else(|| StoreError::Sql(rusqlite::Error::QueryReturnedNoRows))
    }

    /// Creates `new` unless an admin client exists, atomically: of two
    /// concurrent calls on an empty store exactly one creates. `Ok(None)`:
    /// an admin client exists.
    fn create_first_admin(
        &self,
        new: NewClient,
        now: i64,
    ) -> Result<Option<(Client, String)>, StoreError>;
    fn clients(&self) -> Result<Vec<Client>, StoreError>;
    fn keys(&self) -> Result<Vec<StoredKey>, StoreError>;
    /// Changes whenever another process commits to the store.
    fn version(&self) -> Result<i64, StoreError>;
    /// `Ok(false)`: no such client.
    fn set_disabled(&self, client_id: &str, disabled: bool) -> Result<bool, StoreError> {
        let update = ClientUpdate {
            disabled: Some(disabled),
            ..ClientUpdate::default()
        };
        Ok(self.update(client_id, &update)?.is_some())
    }
    fn client(&self, client_id: &str) -> Result<Option<Client>, StoreError>;
    /// `Ok(None)`: no such client.
    fn update(&self, client_id: &str, update: &ClientUpdate) -> Result<Option<Client>, StoreError>;
    /// Deletes the client and its keys; `Ok(false)`: no such client.
    fn delete(&self, client_id: &str) -> Result<bool, StoreError>;
    /// A new key for the client; its current keys stop working at
    /// `now + grace_seconds` (at once for 0). `Ok(None)`: no such client.
    fn rotate(
        &self,
        client_id: &str,
        grace_seconds: i64,
        now: i64,
    ) -> Result<Option<String>, StoreError>;
    /// The client's keys (ids and expiry, never secrets).
    fn client_keys(&self, client_id: &str) -> Result<Vec<StoredKey>, StoreError> {
        Ok(self
            .keys()?
            .into_iter()
            .filter(|key| key.client_id == client_id)
            .collect())
    }
}
