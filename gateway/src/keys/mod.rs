//! API keys: their format, the stores (embedded SQLite, shared
//! PostgreSQL), the client lifecycle on them, and the in-memory index the
//! request path verifies against.
pub mod clients;
pub mod copy;
pub mod format;
pub mod index;
pub mod postgres;
pub mod sqlite;
pub mod store;
mod table;

pub use clients::{ClientError, Clients};
pub use index::{KeyIndex, KeyRejection};
pub use postgres::PgStore;
pub use sqlite::SqliteStore;
pub use store::{Client, KeyStore, NewClient, StoreError};
