//! API keys: their format, the embedded store, and the in-memory index the
//! request path verifies against.
pub mod format;
pub mod index;
pub mod store;

pub use index::{KeyIndex, KeyRejection};
pub use store::{Client, KeyStore, NewClient, SqliteStore, StoreError};
