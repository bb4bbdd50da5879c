//! The embedded key store: a SQLite database in WAL mode (crash-safe, and
//! operators can inspect it with `sqlite3`), private to its owner. Every
//! read-modify-write is one IMMEDIATE transaction.
use std::{
    path::Path,
    sync::Mutex,
    time::{Duration, Instant},
};

use rusqlite::{
    params, Connection, ErrorCode, OptionalExtension, Transaction, TransactionBehavior,
};

use super::{
    format,
    store::{BackendError, Client, ClientUpdate, KeyStore, NewClient, StoreError, StoredKey},
};
use crate::private_files;

pub struct SqliteStore {
    conn: Mutex<Connection>,
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS api_clients (
    id          TEXT PRIMARY KEY,
    name        TEXT NOT NULL,
    tier        TEXT NOT NULL,
    scopes      TEXT NOT NULL,            -- space separated
    expires_at  INTEGER,                  -- unix seconds
    disabled    INTEGER NOT NULL DEFAULT 0,
    is_admin    INTEGER NOT NULL DEFAULT 0,
    external_id TEXT UNIQUE,
    created_at  INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS api_keys (
    key_id      TEXT PRIMARY KEY,
    client_id   TEXT NOT NULL REFERENCES api_clients(id) ON DELETE CASCADE,
    secret_hash BLOB NOT NULL,            -- SHA-256 of the secret part
    created_at  INTEGER NOT NULL
);
";

impl SqliteStore {
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        make_private(path)?;
        let open_error = |source: rusqlite::Error| StoreError::Open {
            path: path.display().to_string(),
            source: BackendError::new(source),
        };
        let mut conn = Connection::open(path).map_err(open_error)?;
        // First, so that concurrent openers of a new store wait for each
        // other (the switch to WAL locks the file) instead of failing.
        conn.busy_timeout(BUSY_TIMEOUT).map_err(open_error)?;
        enable_wal(&conn).map_err(open_error)?;
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(open_error)?;
        conn.pragma_update(None, "foreign_keys", "ON")
            .map_err(open_error)?;
        let tx = conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(open_error)?;
        tx.execute_batch(SCHEMA).map_err(open_error)?;
        // Stores made before key rotation lack the per-key expiry.
        let has_expiry: bool = tx
            .query_row(
                "SELECT COUNT(*) FROM pragma_table_info('api_keys') WHERE name = 'expires_at'",
                [],
                |row| row.get(0),
            )
            .map_err(open_error)?;
        if !has_expiry {
            tx.execute_batch("ALTER TABLE api_keys ADD COLUMN expires_at INTEGER")
                .map_err(open_error)?;
        }
        tx.commit().map_err(open_error)?;
        Ok(Self {
            conn: Mutex::new(conn),
        })
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// How long an opener or a write waits for another connection's lock.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// `PRAGMA journal_mode = WAL`, retried while another opener holds the
/// file. The switch reads the header under a shared lock and then needs an
/// exclusive one; SQLite answers that upgrade `SQLITE_BUSY` at once, past
/// the busy handler (waiting could deadlock two such openers), so one of
/// eight connections opening a new store together failed ("database is
/// locked") within a few dozen tries before this. Retries stop after
/// [`BUSY_TIMEOUT`]; an attempt SQLite does wait in may add as much again.
fn enable_wal(conn: &Connection) -> rusqlite::Result<()> {
    let deadline = Instant::now() + BUSY_TIMEOUT;
    loop {
        match conn.pragma_update(None, "journal_mode", "WAL") {
            Err(rusqlite::Error::SqliteFailure(error, _))
                if error.code == ErrorCode::DatabaseBusy && Instant::now() < deadline =>
            {
                #[allow(
                    clippy::disallowed_methods,
                    reason = "opening is synchronous: SQLite's own busy wait blocks the same way"
                )]
                std::thread::sleep(Duration::from_millis(2));
            }
            done => return done,
        }
    }
}

/// The store and its WAL and shared-memory files are 0600: the store is
/// created so before SQLite opens it (SQLite gives its `-wal` and `-shm`
/// files the database's mode); all are narrowed if they were wider.
fn make_private(path: &Path) -> Result<(), StoreError> {
    if path.as_os_str().is_empty() || path == Path::new(":memory:") {
        return Ok(());
    }
    private_files::prepare(path, &["-wal", "-shm", "-journal"]).map_err(|source| StoreError::File {
        path: path.display().to_string(),
        source,
    })
}

fn insert_key(
    tx: &rusqlite::Transaction<'_>,
    key: &format::NewKey,
    client_id: &str,
    now: i64,
) -> rusqlite::Result<usize> {
    tx.execute(
        "INSERT INTO api_keys (key_id, client_id, secret_hash, created_at) VALUES (?1, ?2, ?3, ?4)",
        params![key.id, client_id, key.secret_hash.as_slice(), now],
    )
}

fn key_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<StoredKey> {
    let hash: Vec<u8> = row.get(2)?;
    let mut secret_hash = [0u8; 32];
    // A hash of the wrong length matches nothing (all zero).
    if hash.len() == 32 {
        secret_hash.copy_from_slice(&hash);
    }
    Ok(StoredKey {
        key_id: row.get(0)?,
        client_id: row.get(1)?,
        secret_hash,
        expires_at: row.get(3)?,
        created_at: row.get(4)?,
    })
}

fn read_clients(conn: &Connection) -> Result<Vec<Client>, StoreError> {
    let mut statement = conn.prepare(
        "SELECT id, name, tier, scopes, expires_at, disabled, is_admin, external_id, created_at
         FROM api_clients ORDER BY created_at, id",
    )?;
    let clients = statement
        .query_map([], client_from_row)?
        .collect::<Result<_, _>>()?;
    Ok(clients)
}

fn read_keys(conn: &Connection) -> Result<Vec<StoredKey>, StoreError> {
    let mut statement = conn.prepare(
        "SELECT key_id, client_id, secret_hash, expires_at, created_at FROM api_keys
         ORDER BY created_at, key_id",
    )?;
    let keys = statement
        .query_map([], key_from_row)?
        .collect::<Result<_, _>>()?;
    Ok(keys)
}

fn client_from_row(row: &rusqlite::Row<'_>) -> rusqlite::Result<Client> {
    let scopes: String = row.get(3)?;
    Ok(Client {
        id: row.get(0)?,
        name: row.get(1)?,
        tier: row.get(2)?,
        scopes: scopes.split_whitespace().map(str::to_owned).collect(),
        expires_at: row.get(4)?,
        disabled: row.get(5)?,
        is_admin: row.get(6)?,
        external_id: row.get(7)?,
        created_at: row.get(8)?,
    })
}

/// One IMMEDIATE transaction per read-modify-write: the write lock is
/// taken at `BEGIN`, so nothing another process commits falls between
/// what it reads (an admin exists? an external id is taken?) and writes.
fn immediate(conn: &mut Connection) -> rusqlite::Result<Transaction<'_>> {
    conn.transaction_with_behavior(TransactionBehavior::Immediate)
}

impl SqliteStore {
    /// Creates clients; with `first_admin`, only if no admin client exists
    /// (`Ok(None)`), checked in the same transaction.
    fn insert(
        &self,
        new: Vec<NewClient>,
        now: i64,
        first_admin: bool,
    ) -> Result<Option<Vec<(Client, String)>>, StoreError> {
        let mut conn = self.conn();
        let tx = immediate(&mut conn)?;
        if first_admin {
            let admins: i64 = tx.query_row(
                "SELECT COUNT(*) FROM api_clients WHERE is_admin",
                [],
                |row| row.get(0),
            )?;
            if admins > 0 {
                return Ok(None);
            }
        }
        let mut created = Vec::with_capacity(new.len());
        for new in new {
            let key = format::generate()?;
            let no_key = new.no_key;
            let client = new.into_client(&key.id, now);
            if let Some(external) = &client.external_id {
                let taken: Option<String> = tx
                    .query_row(
                        "SELECT id FROM api_clients WHERE external_id = ?1",
                        [external],
                        |row| row.get(0),
                    )
                    .optional()?;
                if taken.is_some() {
                    return Err(StoreError::DuplicateExternalId(external.clone()));
                }
            }
            tx.execute(
                "INSERT INTO api_clients (id, name, tier, scopes, expires_at, disabled, is_admin, external_id, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, 0, ?6, ?7, ?8)",
                params![
                    client.id,
                    client.name,
                    client.tier,
                    client.scopes.join(" "),
                    client.expires_at,
                    client.is_admin,
                    client.external_id,
                    now
                ],
            )?;
            if no_key {
                created.push((client, String::new()));
                continue;
            }
            insert_key(&tx, &key, &client.id, now)?;
            created.push((client, key.text));
        }
        tx.commit()?;
        Ok(Some(created))
    }
}

/// The store's operations, synchronous: local file I/O. The async
/// [`KeyStore`] methods run these.
impl SqliteStore {
    pub fn create_many(
        &self,
        new: Vec<NewClient>,
        now: i64,
    ) -> Result<Vec<(Client, String)>, StoreError> {
        Ok(self.insert(new, now, false)?.unwrap_or_default())
    }

    pub fn create_first_admin(
        &self,
        new: NewClient,
        now: i64,
    ) -> Result<Option<(Client, String)>, StoreError> {
        Ok(self.insert(vec![new], now, true)?.and_then(|mut c| c.pop()))
    }

    pub fn clients(&self) -> Result<Vec<Client>, StoreError> {
        read_clients(&self.conn())
    }

    pub fn keys(&self) -> Result<Vec<StoredKey>, StoreError> {
        read_keys(&self.conn())
    }

    /// Every client and key in one read transaction: one moment of the
    /// file, whatever another process (the CLI, another gateway) commits.
    pub fn all(&self) -> Result<(Vec<Client>, Vec<StoredKey>), StoreError> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let all = (read_clients(&tx)?, read_keys(&tx)?);
        tx.commit()?;
        Ok(all)
    }

    pub fn client(&self, client_id: &str) -> Result<Option<Client>, StoreError> {
        Ok(self
            .conn()
            .query_row(
                "SELECT id, name, tier, scopes, expires_at, disabled, is_admin, external_id, created_at
                 FROM api_clients WHERE id = ?1",
                [client_id],
                client_from_row,
            )
            .optional()?)
    }

    pub fn update(
        &self,
        client_id: &str,
        update: &ClientUpdate,
    ) -> Result<Option<Client>, StoreError> {
        let mut conn = self.conn();
        let tx = immediate(&mut conn)?;
        let Some(mut client) = tx
            .query_row(
                "SELECT id, name, tier, scopes, expires_at, disabled, is_admin, external_id, created_at
                 FROM api_clients WHERE id = ?1",
                [client_id],
                client_from_row,
            )
            .optional()?
        else {
            return Ok(None);
        };
        client = update.apply(client);
        let result = tx.execute(
            "UPDATE api_clients SET name = ?2, tier = ?3, scopes = ?4, expires_at = ?5,
                 disabled = ?6, is_admin = ?7, external_id = ?8
             WHERE id = ?1",
            params![
                client.id,
                client.name,
                client.tier,
                client.scopes.join(" "),
                client.expires_at,
                client.disabled,
                client.is_admin,
                client.external_id
            ],
        );
        match result {
            Err(rusqlite::Error::SqliteFailure(e, _))
                if e.code == rusqlite::ErrorCode::ConstraintViolation =>
            {
                Err(StoreError::DuplicateExternalId(
                    client.external_id.unwrap_or_default(),
                ))
            }
            Err(e) => Err(e.into()),
            Ok(_) => {
                tx.commit()?;
                Ok(Some(client))
            }
        }
    }

    pub fn delete(&self, client_id: &str) -> Result<bool, StoreError> {
        let mut conn = self.conn();
        let tx = immediate(&mut conn)?;
        tx.execute("DELETE FROM api_keys WHERE client_id = ?1", [client_id])?;
        let deleted = tx.execute("DELETE FROM api_clients WHERE id = ?1", [client_id])?;
        tx.commit()?;
        Ok(deleted == 1)
    }

    pub fn rotate(
        &self,
        client_id: &str,
        grace_seconds: i64,
        now: i64,
    ) -> Result<Option<String>, StoreError> {
        let key = format::generate()?;
        let mut conn = self.conn();
        let tx = immediate(&mut conn)?;
        let exists: Option<String> = tx
            .query_row(
                "SELECT id FROM api_clients WHERE id = ?1",
                [client_id],
                |row| row.get(0),
            )
            .optional()?;
        if exists.is_none() {
            return Ok(None);
        }
        let until = now.saturating_add(grace_seconds.max(0));
        // Keys already ending sooner keep their earlier end.
        tx.execute(
            "UPDATE api_keys SET expires_at = ?2
             WHERE client_id = ?1 AND (expires_at IS NULL OR expires_at > ?2)",
            params![client_id, until],
        )?;
        // Keys whose grace is over are gone for good.
        tx.execute(
            "DELETE FROM api_keys WHERE client_id = ?1 AND expires_at <= ?2",
            params![client_id, now],
        )?;
        insert_key(&tx, &key, client_id, now)?;
        tx.commit()?;
        Ok(Some(key.text))
    }

    pub fn version(&self) -> Result<i64, StoreError> {
        Ok(self
            .conn()
            .query_row("PRAGMA data_version", [], |row| row.get(0))?)
    }
}

impl SqliteStore {
    /// Creates one client with one key.
    pub fn create(&self, new: NewClient, now: i64) -> Result<(Client, String), StoreError> {
        self.create_many(vec![new], now)?
            .pop()
            .ok_or_else(|| StoreError::backend("the store created no client"))
    }

    pub fn client_keys(&self, client_id: &str) -> Result<Vec<StoredKey>, StoreError> {
        let conn = self.conn();
        let mut statement = conn.prepare(
            "SELECT key_id, client_id, secret_hash, expires_at, created_at FROM api_keys
             WHERE client_id = ?1 ORDER BY created_at, key_id",
        )?;
        let keys = statement
            .query_map([client_id], key_from_row)?
            .collect::<Result<_, _>>()?;
        Ok(keys)
    }
}

/// Local file I/O on the caller's thread; on a multi-threaded runtime the
/// runtime first moves its other work elsewhere (as the admin API always
/// did for this store).
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::try_current() {
        Ok(handle) if handle.runtime_flavor() == RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(f)
        }
        _ => f(),
    }
}

#[async_trait::async_trait]
impl KeyStore for SqliteStore {
    async fn create_many(
        &self,
        new: Vec<NewClient>,
        now: i64,
    ) -> Result<Vec<(Client, String)>, StoreError> {
        blocking(|| SqliteStore::create_many(self, new, now))
    }

    async fn create_first_admin(
        &self,
        new: NewClient,
        now: i64,
    ) -> Result<Option<(Client, String)>, StoreError> {
        blocking(|| SqliteStore::create_first_admin(self, new, now))
    }

    async fn clients(&self) -> Result<Vec<Client>, StoreError> {
        blocking(|| SqliteStore::clients(self))
    }

    async fn keys(&self) -> Result<Vec<StoredKey>, StoreError> {
        blocking(|| SqliteStore::keys(self))
    }

    async fn all(&self) -> Result<(Vec<Client>, Vec<StoredKey>), StoreError> {
        blocking(|| SqliteStore::all(self))
    }

    async fn version(&self) -> Result<i64, StoreError> {
        blocking(|| SqliteStore::version(self))
    }

    async fn client(&self, client_id: &str) -> Result<Option<Client>, StoreError> {
        blocking(|| SqliteStore::client(self, client_id))
    }

    async fn update(
        &self,
        client_id: &str,
        update: &ClientUpdate,
    ) -> Result<Option<Client>, StoreError> {
        blocking(|| SqliteStore::update(self, client_id, update))
    }

    async fn delete(&self, client_id: &str) -> Result<bool, StoreError> {
        blocking(|| SqliteStore::delete(self, client_id))
    }

    async fn rotate(
        &self,
        client_id: &str,
        grace_seconds: i64,
        now: i64,
    ) -> Result<Option<String>, StoreError> {
        blocking(|| SqliteStore::rotate(self, client_id, grace_seconds, now))
    }

    async fn client_keys(&self, client_id: &str) -> Result<Vec<StoredKey>, StoreError> {
        blocking(|| SqliteStore::client_keys(self, client_id))
    }
}

#[cfg(test)]
#[path = "sqlite_tests.rs"]
mod tests;
