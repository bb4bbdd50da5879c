//! [`KeyStore`] on PostgreSQL: the same operations and answers as the
//! embedded store, each write one transaction that also announces itself
//! ([`super::changed`]).
use tokio_postgres::{error::SqlState, GenericClient, Row};

use super::{begin_write, changed, pg, PgStore, CALL_WAIT, READ_ALL_WAIT};
use crate::keys::{
    format,
    store::{Client, ClientUpdate, KeyStore, NewClient, StoreError, StoredKey},
};

const CLIENT_COLUMNS: &str =
    "id, name, tier, scopes, expires_at, disabled, is_admin, external_id, created_at";
const KEY_COLUMNS: &str = "key_id, client_id, secret_hash, expires_at, created_at";

fn client_from_row(row: &Row) -> Client {
    let scopes: String = row.get(3);
    Client {
        id: row.get(0),
        name: row.get(1),
        tier: row.get(2),
        scopes: scopes.split_whitespace().map(str::to_owned).collect(),
        expires_at: row.get(4),
        disabled: row.get(5),
        is_admin: row.get(6),
        external_id: row.get(7),
        created_at: row.get(8),
    }
}

fn key_from_row(row: &Row) -> StoredKey {
    let hash: Vec<u8> = row.get(2);
    // A hash of the wrong length matches nothing (all zero).
    let secret_hash = <[u8; 32]>::try_from(hash.as_slice()).unwrap_or([0; 32]);
    StoredKey {
        key_id: row.get(0),
        client_id: row.get(1),
        secret_hash,
        expires_at: row.get(3),
        created_at: row.get(4),
    }
}

/// A unique violation on `external_id` is the caller's conflict.
fn duplicate_or(error: tokio_postgres::Error, external: Option<&str>) -> StoreError {
    match (error.code(), external) {
        (Some(code), Some(external)) if *code == SqlState::UNIQUE_VIOLATION => {
            StoreError::DuplicateExternalId(external.to_owned())
        }
        _ => pg(error),
    }
}

pub(crate) async fn client(
    conn: &impl GenericClient,
    id: &str,
) -> Result<Option<Client>, StoreError> {
    let query = format!("SELECT {CLIENT_COLUMNS} FROM api_clients WHERE id = $1");
    let row = conn.query_opt(&query, &[&id]).await.map_err(pg)?;
    Ok(row.as_ref().map(client_from_row))
}

pub(crate) async fn client_keys(
    conn: &impl GenericClient,
    id: &str,
) -> Result<Vec<StoredKey>, StoreError> {
    let query = format!(
        "SELECT {KEY_COLUMNS} FROM api_keys WHERE client_id = $1 ORDER BY created_at, key_id"
    );
    let rows = conn.query(&query, &[&id]).await.map_err(pg)?;
    Ok(rows.iter().map(key_from_row).collect())
}

async fn all_clients(conn: &impl GenericClient) -> Result<Vec<Client>, StoreError> {
    let query = format!("SELECT {CLIENT_COLUMNS} FROM api_clients ORDER BY created_at, id");
    let rows = conn.query(&query, &[]).await.map_err(pg)?;
    Ok(rows.iter().map(client_from_row).collect())
}

async fn all_keys(conn: &impl GenericClient) -> Result<Vec<StoredKey>, StoreError> {
    let query = format!("SELECT {KEY_COLUMNS} FROM api_keys ORDER BY created_at, key_id");
    let rows = conn.query(&query, &[]).await.map_err(pg)?;
    Ok(rows.iter().map(key_from_row).collect())
}

/// A read-only transaction that sees one moment of the store: the
/// clients and keys it reads belong together, and so does the version.
async fn snapshot(
    conn: &mut tokio_postgres::Client,
) -> Result<tokio_postgres::Transaction<'_>, StoreError> {
    conn.build_transaction()
        .isolation_level(tokio_postgres::IsolationLevel::RepeatableRead)
        .read_only(true)
        .start()
        .await
        .map_err(pg)
}

/// Everything the store holds and the version it holds it at, as of one
/// moment (a full reload).
pub(crate) async fn everything(
    conn: &mut tokio_postgres::Client,
) -> Result<(i64, Vec<Client>, Vec<StoredKey>), StoreError> {
    let tx = snapshot(conn).await?;
    let version = version(&tx).await?;
    let clients = all_clients(&tx).await?;
    let keys = all_keys(&tx).await?;
    tx.commit().await.map_err(pg)?;
    Ok((version, clients, keys))
}

/// These clients (those that exist) and their keys, as of one moment.
pub(crate) async fn some(
    conn: &mut tokio_postgres::Client,
    ids: &[String],
) -> Result<(Vec<Client>, Vec<StoredKey>), StoreError> {
    let tx = snapshot(conn).await?;
    let query = format!("SELECT {CLIENT_COLUMNS} FROM api_clients WHERE id = ANY($1)");
    let clients = tx.query(&query, &[&ids]).await.map_err(pg)?;
    let query = format!("SELECT {KEY_COLUMNS} FROM api_keys WHERE client_id = ANY($1)");
    let keys = tx.query(&query, &[&ids]).await.map_err(pg)?;
    tx.commit().await.map_err(pg)?;
    Ok((
        clients.iter().map(client_from_row).collect(),
        keys.iter().map(key_from_row).collect(),
    ))
}

pub(crate) async fn version(conn: &impl GenericClient) -> Result<i64, StoreError> {
    let row = conn
        .query_one("SELECT version FROM store_version WHERE id = 1", &[])
        .await
        .map_err(pg)?;
    Ok(row.get(0))
}

async fn insert_key(tx: &impl GenericClient, key: &StoredKey) -> Result<(), StoreError> {
    tx.execute(
        "INSERT INTO api_keys (key_id, client_id, secret_hash, expires_at, created_at)
         VALUES ($1, $2, $3, $4, $5)",
        &[
            &key.key_id,
            &key.client_id,
            &key.secret_hash.as_slice(),
            &key.expires_at,
            &key.created_at,
        ],
    )
    .await
    .map_err(pg)?;
    Ok(())
}

async fn insert_client(tx: &impl GenericClient, client: &Client) -> Result<(), StoreError> {
    tx.execute(
        "INSERT INTO api_clients (id, name, tier, scopes, expires_at, disabled, is_admin, external_id, created_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        &[
            &client.id,
            &client.name,
            &client.tier,
            &client.scopes.join(" "),
            &client.expires_at,
            &client.disabled,
            &client.is_admin,
            &client.external_id,
            &client.created_at,
        ],
    )
    .await
    .map_err(|e| duplicate_or(e, client.external_id.as_deref()))?;
    Ok(())
}

impl PgStore {
    async fn insert(
        &self,
        new: Vec<NewClient>,
        now: i64,
        first_admin: bool,
    ) -> Result<Option<Vec<(Client, String)>>, StoreError> {
        let mut conn = self.conn().await?;
        let tx = begin_write(&mut conn).await?;
        if first_admin {
            let admins: i64 = tx
                .query_one("SELECT COUNT(*) FROM api_clients WHERE is_admin", &[])
                .await
                .map_err(pg)?
                .get(0);
            if admins > 0 {
                return Ok(None);
            }
        }
        let mut created = Vec::with_capacity(new.len());
        for new in new {
            let key = format::generate()?;
            let no_key = new.no_key;
            let client = new.into_client(&key.id, now);
            insert_client(&*tx, &client).await?;
            changed(&tx, &client.id).await?;
            if no_key {
                created.push((client, String::new()));
                continue;
            }
            let stored = StoredKey {
                key_id: key.id.clone(),
                client_id: client.id.clone(),
                secret_hash: key.secret_hash,
                expires_at: None,
                created_at: now,
            };
            insert_key(&*tx, &stored).await?;
            created.push((client, key.text));
        }
        tx.commit().await.map_err(pg)?;
        Ok(Some(created))
    }
}

#[async_trait::async_trait]
impl KeyStore for PgStore {
    async fn create_many(
        &self,
        new: Vec<NewClient>,
        now: i64,
    ) -> Result<Vec<(Client, String)>, StoreError> {
        super::bounded(CALL_WAIT, async {
            Ok(self.insert(new, now, false).await?.unwrap_or_default())
        })
        .await
    }

    async fn create_first_admin(
        &self,
        new: NewClient,
        now: i64,
    ) -> Result<Option<(Client, String)>, StoreError> {
        super::bounded(CALL_WAIT, async {
            Ok(self
                .insert(vec![new], now, true)
                .await?
                .and_then(|mut c| c.pop()))
        })
        .await
    }

    async fn clients(&self) -> Result<Vec<Client>, StoreError> {
        super::bounded(READ_ALL_WAIT, async {
            all_clients(&**self.conn().await?).await
        })
        .await
    }

    async fn keys(&self) -> Result<Vec<StoredKey>, StoreError> {
        super::bounded(READ_ALL_WAIT, async {
            all_keys(&**self.conn().await?).await
        })
        .await
    }

    async fn all(&self) -> Result<(Vec<Client>, Vec<StoredKey>), StoreError> {
        super::bounded(READ_ALL_WAIT, async {
            let mut conn = self.conn().await?;
            let (_, clients, keys) = everything(&mut conn).await?;
            Ok((clients, keys))
        })
        .await
    }

    async fn version(&self) -> Result<i64, StoreError> {
        super::bounded(CALL_WAIT, async { version(&**self.conn().await?).await }).await
    }

    async fn client(&self, client_id: &str) -> Result<Option<Client>, StoreError> {
        super::bounded(CALL_WAIT, async {
            client(&**self.conn().await?, client_id).await
        })
        .await
    }

    async fn client_keys(&self, client_id: &str) -> Result<Vec<StoredKey>, StoreError> {
        super::bounded(CALL_WAIT, async {
            client_keys(&**self.conn().await?, client_id).await
        })
        .await
    }

    async fn update(
        &self,
        client_id: &str,
        update: &ClientUpdate,
    ) -> Result<Option<Client>, StoreError> {
        super::bounded(CALL_WAIT, async {
            let mut conn = self.conn().await?;
            let tx = begin_write(&mut conn).await?;
            let Some(current) = client(&*tx, client_id).await? else {
                return Ok(None);
            };
            let client = update.apply(current);
            tx.execute(
                "UPDATE api_clients SET name = $2, tier = $3, scopes = $4, expires_at = $5,
                     disabled = $6, is_admin = $7, external_id = $8
                 WHERE id = $1",
                &[
                    &client.id,
                    &client.name,
                    &client.tier,
                    &client.scopes.join(" "),
                    &client.expires_at,
                    &client.disabled,
                    &client.is_admin,
                    &client.external_id,
                ],
            )
            .await
            .map_err(|e| {
                duplicate_or(e, Some(client.external_id.as_deref().unwrap_or_default()))
            })?;
            changed(&tx, client_id).await?;
            tx.commit().await.map_err(pg)?;
            Ok(Some(client))
        })
        .await
    }

    async fn delete(&self, client_id: &str) -> Result<bool, StoreError> {
        super::bounded(CALL_WAIT, async {
            let mut conn = self.conn().await?;
            let tx = begin_write(&mut conn).await?;
            tx.execute("DELETE FROM api_keys WHERE client_id = $1", &[&client_id])
                .await
                .map_err(pg)?;
            let deleted = tx
                .execute("DELETE FROM api_clients WHERE id = $1", &[&client_id])
                .await
                .map_err(pg)?;
            if deleted == 1 {
                changed(&tx, client_id).await?;
            }
            tx.commit().await.map_err(pg)?;
            Ok(deleted == 1)
        })
        .await
    }

    async fn rotate(
        &self,
        client_id: &str,
        grace_seconds: i64,
        now: i64,
    ) -> Result<Option<String>, StoreError> {
        super::bounded(CALL_WAIT, async {
            let key = format::generate()?;
            let mut conn = self.conn().await?;
            let tx = begin_write(&mut conn).await?;
            if client(&*tx, client_id).await?.is_none() {
                return Ok(None);
            }
            let until = now.saturating_add(grace_seconds.max(0));
            // Keys already ending sooner keep their earlier end.
            tx.execute(
                "UPDATE api_keys SET expires_at = $2
                 WHERE client_id = $1 AND (expires_at IS NULL OR expires_at > $2)",
                &[&client_id, &until],
            )
            .await
            .map_err(pg)?;
            // Keys whose grace is over are gone for good.
            tx.execute(
                "DELETE FROM api_keys WHERE client_id = $1 AND expires_at <= $2",
                &[&client_id, &now],
            )
            .await
            .map_err(pg)?;
            let stored = StoredKey {
                key_id: key.id.clone(),
                client_id: client_id.to_owned(),
                secret_hash: key.secret_hash,
                expires_at: None,
                created_at: now,
            };
            insert_key(&*tx, &stored).await?;
            changed(&tx, client_id).await?;
            tx.commit().await.map_err(pg)?;
            Ok(Some(key.text))
        })
        .await
    }

    async fn import(&self, clients: &[Client], keys: &[StoredKey]) -> Result<(), StoreError> {
        // Not bounded: a copy takes as long as the store is large.
        let mut conn = self.conn().await?;
        let tx = begin_write(&mut conn).await?;
        let present: i64 = tx
            .query_one("SELECT COUNT(*) FROM api_clients", &[])
            .await
            .map_err(pg)?
            .get(0);
        if present > 0 {
            return Err(StoreError::backend(format!(
                "the target store holds {present} clients already: copy into an empty store"
            )));
        }
        for client in clients {
            insert_client(&*tx, client).await?;
        }
        for key in keys {
            insert_key(&*tx, key).await?;
        }
        changed(&tx, "").await?;
        tx.commit().await.map_err(pg)?;
        Ok(())
    }
}
