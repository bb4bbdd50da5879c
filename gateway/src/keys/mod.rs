//! API keys: their format, the embedded store, the client lifecycle on it,
//! and the in-memory index the request path verifies against.
pub mod clients;
pub mod format;
pub mod index;
pub mod sqlite;
pub mod store;

pub use clients::{ClientError, Clients};
pub use index::{KeyIndex, KeyRejection};
pub use sqlite::SqliteStore;
pub use store::{Client, KeyStore, NewClient, StoreError};
