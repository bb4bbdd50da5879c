//! The shared key store: PostgreSQL, for a fleet of gateways. Every change
//! is one transaction that also bumps the `store_version` row and
//! `NOTIFY`s [`CHANNEL`] with the client's id, so every node hears of it
//! as it commits ([`follow`]) and a missed notification still shows as a
//! new version. Writes take one advisory lock: read-modify-writes (first
//! admin, external ids) are atomic fleet-wide, as SQLite's IMMEDIATE
//! transactions are on one host.
pub mod follow;
mod rows;
pub mod schema;
mod tls;

use std::time::Duration;

use deadpool_postgres::{
    Manager, ManagerConfig, Object, Pool, RecyclingMethod, Runtime, Transaction,
};
use tokio_postgres::Socket;
use tokio_postgres_rustls::MakeRustlsConnect;

use super::store::{BackendError, StoreError};

/// The notification channel; the payload is the changed client's id
/// (empty: anything may have changed).
pub const CHANNEL: &str = "gateway_keys";
/// Serialises writes across the fleet (`pg_advisory_xact_lock`).
const WRITE_LOCK: i64 = 0x6761_7465_6b65_7973;
/// Serialises `gateway store migrate` runs.
const MIGRATE_LOCK: i64 = 0x6761_7465_6d69_6772;
/// How long a caller waits for a connection before the store counts as
/// unavailable.
const WAIT: Duration = Duration::from_secs(2);

/// Longest a call on the store (admin API, CLI) may take: a database
/// that takes connections but never answers (stopped, hung, a
/// black-holed network) is out of reach (503), not a call that never
/// ends holding a pooled connection.
const CALL_WAIT: Duration = Duration::from_secs(5);
/// The same for reading every client or every key (start-up, copy).
const READ_ALL_WAIT: Duration = Duration::from_secs(60);

/// `call`, bounded by `wait`. A write cut off before its commit is
/// rolled back with its transaction.
async fn bounded<T>(
    wait: Duration,
    call: impl std::future::Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    tokio::time::timeout(wait, call).await.unwrap_or_else(|_| {
        Err(StoreError::Unavailable(BackendError::new(format!(
            "no answer within {wait:?}"
        ))))
    })
}

pub struct PgStore {
    pool: Pool,
    config: tokio_postgres::Config,
    tls: MakeRustlsConnect,
}

/// A connection of the pool (or the notification connection's client).
pub(crate) type Connection = tokio_postgres::Connection<
    Socket,
    <MakeRustlsConnect as tokio_postgres::tls::MakeTlsConnect<Socket>>::Stream,
>;

/// Whether `url` names a PostgreSQL server, by its scheme.
pub fn is_postgres_url(url: &str) -> bool {
    url.starts_with("postgres://") || url.starts_with("postgresql://")
}

/// Parses `url` without connecting. The message never holds the password.
pub fn parse_url(url: &str) -> Result<tokio_postgres::Config, String> {
    let shown = redacted(url);
    if !is_postgres_url(url) {
        return Err(format!(
            "{shown}: use postgres://user[:password]@host[:port]/database (or \
             postgresql:///database?host=/socket/dir)"
        ));
    }
    let (driver_url, _) = tls::driver_url(url);
    let mut config: tokio_postgres::Config = driver_url
        .parse()
        .map_err(|e: tokio_postgres::Error| format!("{shown}: {}", scrub(&e.to_string(), url)))?;
    if config.get_hosts().is_empty() {
        return Err(format!("{shown}: names no host (or host=/socket/dir)"));
    }
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(WAIT);
    }
    if config.get_application_name().is_none() {
        config.application_name("gateway");
    }
    Ok(config)
}

/// `url` with its password (user info or `password=`) replaced, for
/// messages and logs; a URL that is not PostgreSQL's is not shown (a typo
/// in its scheme would hide where its password is).
pub fn redacted(url: &str) -> String {
    if !is_postgres_url(url) {
        return "(not a PostgreSQL URL)".to_owned();
    }
    scrub(url, url)
}

/// `text` without any password `url` holds (the longest first, so one
/// inside another is not left half shown).
fn scrub(text: &str, url: &str) -> String {
    let mut passwords = passwords(url);
    passwords.sort_by_key(|p| std::cmp::Reverse(p.len()));
    let mut text = text.to_owned();
    for password in passwords {
        text = text.replace(&password, "***");
    }
    text
}

/// The passwords `url` holds, as written and as the driver decodes them:
/// the user info's, which runs to the last `@` (the driver reads
/// `postgres://gw:pa/ss@db` as password `pa/ss`), and any parameter the
/// driver reads as `password` (`pass%77ord=` too).
fn passwords(url: &str) -> Vec<String> {
    let mut found = Vec::new();
    if let Some((_, rest)) = url.split_once("://") {
        if let Some((userinfo, _)) = rest.rsplit_once('@') {
            if let Some((_, password)) = userinfo.split_once(':') {
                found.push(password.to_owned());
            }
        }
    }
    for pair in url.split(['?', '&', ' ']) {
        if let Some((name, value)) = pair.split_once('=') {
            if percent_decoded(name).eq_ignore_ascii_case("password") {
                found.push(value.to_owned());
            }
        }
    }
    let decoded: Vec<String> = found.iter().map(|p| percent_decoded(p)).collect();
    found.extend(decoded);
    found.retain(|p| !p.is_empty());
    found
}

/// `text` with its `%XX` escapes decoded (lossily, for comparing).
fn percent_decoded(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut at = 0;
    while at < bytes.len() {
        let hex = bytes
            .get(at + 1..at + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[at], hex) {
            (b'%', Some(byte)) => {
                out.push(byte);
                at += 3;
            }
            (byte, _) => {
                out.push(byte);
                at += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A driver error: one from the server about the statement is the
/// store's; anything else (a closed or failed connection) means the
/// store is out of reach.
pub(crate) fn pg(error: tokio_postgres::Error) -> StoreError {
    if error.as_db_error().is_some() {
        StoreError::Backend(BackendError::new(error))
    } else {
        StoreError::Unavailable(BackendError::new(tls::describe(&error)))
    }
}

impl PgStore {
    /// A pool on `url`; connects on first use, not here.
    pub fn open(url: &str, pool_size: usize) -> Result<Self, StoreError> {
        let shown = redacted(url);
        let config = parse_url(url).map_err(StoreError::backend)?;
        let tls = tls::connector(tls::driver_url(url).1.as_deref())?;
        let manager = Manager::from_config(
            config.clone(),
            tls.clone(),
            ManagerConfig {
                // Checked on checkout (one round trip): a connection left behind a
                // call that timed out on a hung server is replaced, not reused.
                recycling_method: RecyclingMethod::Verified,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(pool_size.max(1))
            .runtime(Runtime::Tokio1)
            .wait_timeout(Some(WAIT))
            .create_timeout(Some(WAIT))
            .recycle_timeout(Some(WAIT))
            .build()
            .map_err(|e| StoreError::Open {
                path: shown,
                source: BackendError::new(e.to_string()),
            })?;
        Ok(Self { pool, config, tls })
    }

    pub(crate) async fn conn(&self) -> Result<Object, StoreError> {
        self.pool
            .get()
            .await
            .map_err(|e| StoreError::Unavailable(BackendError::new(tls::describe(&e))))
    }

    /// A connection of its own, outside the pool (for `LISTEN`); the
    /// caller drives the returned connection.
    pub(crate) async fn dedicated(
        &self,
    ) -> Result<(tokio_postgres::Client, Connection), StoreError> {
        let connect = self.config.connect(self.tls.clone());
        match tokio::time::timeout(WAIT, connect).await {
            Ok(connected) => connected.map_err(pg),
            Err(_) => Err(StoreError::Unavailable(BackendError::new(
                "connecting timed out",
            ))),
        }
    }

    /// The applied schema version (0: none).
    pub async fn schema_version(&self) -> Result<i32, StoreError> {
        bounded(CALL_WAIT, async {
            schema_version(&**self.conn().await?).await
        })
        .await
    }

    /// Refuses a schema this gateway was not built for.
    pub async fn check_schema(&self) -> Result<(), StoreError> {
        schema::check(self.schema_version().await?, schema::MIGRATIONS)
    }

    /// Applies the missing migrations in one transaction; returns the
    /// versions before and after.
    pub async fn migrate(&self) -> Result<(i32, i32), StoreError> {
        let mut conn = self.conn().await?;
        let tx = conn.transaction().await.map_err(pg)?;
        tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATE_LOCK])
            .await
            .map_err(pg)?;
        tx.batch_execute(&format!(
            "CREATE TABLE IF NOT EXISTS {} (
                 version    INTEGER PRIMARY KEY,
                 name       TEXT NOT NULL,
                 applied_at TIMESTAMPTZ NOT NULL DEFAULT now()
             )",
            schema::TABLE
        ))
        .await
        .map_err(pg)?;
        let before = schema_version(&*tx).await?;
        let mut after = before;
        for migration in schema::plan(before, schema::MIGRATIONS)? {
            tx.batch_execute(migration.sql).await.map_err(pg)?;
            let insert = format!(
                "INSERT INTO {} (version, name) VALUES ($1, $2)",
                schema::TABLE
            );
            tx.execute(&insert, &[&migration.version, &migration.name])
                .await
                .map_err(pg)?;
            after = migration.version;
        }
        tx.commit().await.map_err(pg)?;
        Ok((before, after))
    }
}

async fn schema_version(conn: &impl tokio_postgres::GenericClient) -> Result<i32, StoreError> {
    let exists: Option<String> = conn
        .query_one("SELECT to_regclass($1)::text", &[&schema::TABLE])
        .await
        .map_err(pg)?
        .get(0);
    if exists.is_none() {
        return Ok(0);
    }
    let query = format!("SELECT COALESCE(MAX(version), 0) FROM {}", schema::TABLE);
    Ok(conn.query_one(&query, &[]).await.map_err(pg)?.get(0))
}

/// Starts a write: one at a time fleet-wide.
async fn begin_write(conn: &mut Object) -> Result<Transaction<'_>, StoreError> {
    let tx = conn.transaction().await.map_err(pg)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&WRITE_LOCK])
        .await
        .map_err(pg)?;
    Ok(tx)
}

/// Records a change in `tx`: the version row moves and every node is
/// told which client changed, both only if `tx` commits.
async fn changed(tx: &Transaction<'_>, client_id: &str) -> Result<(), StoreError> {
    tx.execute(
        "WITH bumped AS (UPDATE store_version SET version = version + 1 WHERE id = 1 RETURNING 1)
         SELECT pg_notify($1, $2) FROM bumped",
        &[&CHANNEL, &client_id],
    )
    .await
    .map_err(pg)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_checked_and_passwords_never_shown() {
        assert!(parse_url("postgres://gw:pw@127.0.0.1:5432/keys").is_ok());
        assert!(parse_url("postgresql:///keys?host=/run/postgresql").is_ok());
        for bad in [
            "mysql://gw:hunter2@db/keys",
            "postgres://gw:hunter2@db:notaport/keys",
            "postgresql:///keys?password=hunter2&sslmode=sometimes",
        ] {
            let message = parse_url(bad).unwrap_err();
            assert!(!message.contains("hunter2"), "{message}");
            let hidden = message.contains("***") || message.starts_with("(not a PostgreSQL URL)");
            assert!(hidden, "{message}");
        }
        assert_eq!(
            redacted("postgres://gw:s3cret@db/keys"),
            "postgres://gw:***@db/keys"
        );
    }

    /// The driver reads the password up to the last `@`: one holding `/`
    /// or `?` is hidden whole.
    #[test]
    fn passwords_holding_a_slash_or_question_mark_are_redacted() {
        for (url, password) in [
            ("postgres://gw:pa/ss@db/keys", "pa/ss"),
            ("postgres://gw:pa?ss@db/keys", "pa?ss"),
        ] {
            let config = parse_url(url).unwrap();
            assert_eq!(config.get_password(), Some(password.as_bytes()), "{url}");
            let shown = redacted(url);
            assert!(!shown.contains(password), "{url}: {shown}");
            assert!(shown.ends_with("@db/keys"), "{url}: {shown}");
        }
        // Everything to the last `@` goes, whatever the driver makes of it.
        assert_eq!(
            redacted("postgres://gw:p@ss@db/keys"),
            "postgres://gw:***@db/keys"
        );
    }
}
