//! What a key store is: the clients and key records it keeps, and the
//! [`KeyStore`] trait, so the shared store ([`super::postgres`]) and the
//! embedded one ([`super::sqlite`]) are interchangeable behind it without
//! touching the request path, which reads [`super::KeyIndex`]. Only key
//! ids and secret hashes are stored. Async, so a store on the network
//! never blocks a runtime thread.
use super::format::KeyFormatError;

/// A backend's own error, kept opaque so the store's errors do not name
/// the driver of either backend.
#[derive(Debug)]
pub struct BackendError(Box<dyn std::error::Error + Send + Sync>);

impl BackendError {
    pub fn new(error: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        Self(error.into())
    }
}

impl std::fmt::Display for BackendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for BackendError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("key store {path}: {source}")]
    Open { path: String, source: BackendError },
    #[error("key store {path}: {source}")]
    File {
        path: String,
        source: std::io::Error,
    },
    #[error("key store: {0}")]
    Backend(BackendError),
    /// The store cannot be reached now (a shared store's network or
    /// server); a later try may work.
    #[error("key store unavailable: {0}")]
    Unavailable(BackendError),
    /// The shared store's schema is not the one this gateway runs on.
    #[error("key store schema: {0}")]
    Schema(String),
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

    /// Whether the store is out of reach (503, try again) rather than broken.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, StoreError::Unavailable(_))
    }

    pub(super) fn backend(message: impl Into<String>) -> Self {
        StoreError::Backend(BackendError::new(message.into()))
    }
}

impl From<rusqlite::Error> for StoreError {
    fn from(error: rusqlite::Error) -> Self {
        StoreError::Backend(BackendError::new(error))
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

impl NewClient {
    /// The client `self` describes, named after its first key's id.
    pub fn into_client(self, key_id: &str, now: i64) -> Client {
        Client {
            id: format!("cl_{key_id}"),
            name: self.name,
            tier: self.tier,
            scopes: self.scopes,
            expires_at: self.expires_at,
            disabled: false,
            is_admin: self.is_admin,
            external_id: self.external_id,
            created_at: now,
        }
    }
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

impl ClientUpdate {
    /// `client` with these changes.
    pub fn apply(&self, mut client: Client) -> Client {
        let update = self.clone();
        client.name = update.name.unwrap_or(client.name);
        client.tier = update.tier.unwrap_or(client.tier);
        client.scopes = update.scopes.unwrap_or(client.scopes);
        client.expires_at = update.expires_at.unwrap_or(client.expires_at);
        client.disabled = update.disabled.unwrap_or(client.disabled);
        client.is_admin = update.is_admin.unwrap_or(client.is_admin);
        client.external_id = update.external_id.unwrap_or(client.external_id);
        client
    }
}

/// A key as stored: never the key itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StoredKey {
    pub key_id: String,
    pub client_id: String,
    pub secret_hash: [u8; 32],
    /// Unix seconds; set on the old key when a key is rotated with grace.
    pub expires_at: Option<i64>,
    pub created_at: i64,
}

#[async_trait::async_trait]
pub trait KeyStore: Send + Sync {
    /// Creates clients with one key each, all or none; returns the key
    /// texts, shown once.
    async fn create_many(
        &self,
        new: Vec<NewClient>,
        now: i64,
    ) -> Result<Vec<(Client, String)>, StoreError>;

    /// Creates one client with one key.
    async fn create(&self, new: NewClient, now: i64) -> Result<(Client, String), StoreError> {
        self.create_many(vec![new], now)
            .await?
            .pop()
            .ok_or_else(|| StoreError::backend("the store created no client"))
    }

    /// Creates `new` unless an admin client exists, atomically: of two
    /// concurrent calls on an empty store exactly one creates. `Ok(None)`:
    /// an admin client exists.
    async fn create_first_admin(
        &self,
        new: NewClient,
        now: i64,
    ) -> Result<Option<(Client, String)>, StoreError>;
    async fn clients(&self) -> Result<Vec<Client>, StoreError>;
    async fn keys(&self) -> Result<Vec<StoredKey>, StoreError>;
    /// Every client and key as of one moment (a full reload): read apart,
    /// a client another process created or revoked in between is half
    /// seen (its keys without it, or it without its keys).
    async fn all(&self) -> Result<(Vec<Client>, Vec<StoredKey>), StoreError> {
        Ok((self.clients().await?, self.keys().await?))
    }
    /// Changes whenever anyone (another process, another node) commits.
    async fn version(&self) -> Result<i64, StoreError>;
    async fn client(&self, client_id: &str) -> Result<Option<Client>, StoreError>;
    /// `Ok(None)`: no such client.
    async fn update(
        &self,
        client_id: &str,
        update: &ClientUpdate,
    ) -> Result<Option<Client>, StoreError>;
    /// Deletes the client and its keys; `Ok(false)`: no such client.
    async fn delete(&self, client_id: &str) -> Result<bool, StoreError>;
    /// A new key for the client; its current keys stop working at
    /// `now + grace_seconds` (at once for 0). `Ok(None)`: no such client.
    async fn rotate(
        &self,
        client_id: &str,
        grace_seconds: i64,
        now: i64,
    ) -> Result<Option<String>, StoreError>;
    /// The client's keys (ids and expiry, never secrets).
    async fn client_keys(&self, client_id: &str) -> Result<Vec<StoredKey>, StoreError> {
        Ok(self
            .keys()
            .await?
            .into_iter()
            .filter(|key| key.client_id == client_id)
            .collect())
    }
    /// Takes clients and key records as they are (`gateway store copy`),
    /// all or none, into a store holding no clients.
    async fn import(&self, clients: &[Client], keys: &[StoredKey]) -> Result<(), StoreError> {
        let _ = (clients, keys);
        Err(StoreError::backend("this store cannot import"))
    }
}
