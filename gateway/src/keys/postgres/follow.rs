//! Every node follows the shared store: a connection of its own
//! `LISTEN`s on [`CHANNEL`] and refreshes the one client each
//! notification names; a version check every `keys.refresh` catches
//! anything missed (a notification lost with its connection) with a full
//! reload. Without the database the index keeps serving what it holds;
//! [`Contact`] says for how long.
use std::{
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use futures_util::StreamExt;
use tokio_postgres::AsyncMessage;

use super::{pg, rows, PgStore, CHANNEL};
use crate::{
    clock::monotonic_ns,
    keys::{store::StoreError, KeyIndex},
};

/// When this node last heard from the database.
#[derive(Debug)]
pub struct Contact(AtomicU64);

impl Default for Contact {
    fn default() -> Self {
        Self(AtomicU64::new(monotonic_ns()))
    }
}

impl Contact {
    fn touch(&self) {
        self.0.store(monotonic_ns(), Ordering::Relaxed);
    }

    /// How long ago, at `now` (monotonic ns).
    pub fn age(&self, now: u64) -> Duration {
        Duration::from_nanos(now.saturating_sub(self.0.load(Ordering::Relaxed)))
    }
}

/// Longest wait for one query of the follower before its connection
/// counts as lost.
const QUERY_WAIT: Duration = Duration::from_secs(2);
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// Follows the store until the runtime stops, reconnecting with backoff.
pub async fn follow(
    store: Arc<PgStore>,
    index: Arc<KeyIndex>,
    poll: Duration,
    contact: Arc<Contact>,
) {
    let mut follower = Follower {
        store,
        index,
        contact,
        seen: None,
    };
    let mut backoff = Duration::from_millis(50);
    loop {
        let mut connected = false;
        if let Err(error) = follower.session(poll, &mut connected).await {
            tracing::warn!(%error, "lost the shared key store; keys are served from memory until it is back");
        }
        if connected {
            backoff = Duration::from_millis(50);
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

struct Follower {
    store: Arc<PgStore>,
    index: Arc<KeyIndex>,
    contact: Arc<Contact>,
    /// The store version the index reflects.
    seen: Option<i64>,
}

async fn bounded<T>(
    query: impl std::future::Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    tokio::time::timeout(QUERY_WAIT, query)
        .await
        .unwrap_or_else(|_| Err(StoreError::backend("the store did not answer in time")))
}

/// Stops the connection's driver with the session.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Follower {
    async fn session(&mut self, poll: Duration, connected: &mut bool) -> Result<(), StoreError> {
        let (client, mut connection) = self.store.dedicated().await?;
        let (sender, mut notifications) = tokio::sync::mpsc::unbounded_channel();
        let driver = tokio::spawn(async move {
            let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
            while let Some(Ok(message)) = messages.next().await {
                if let AsyncMessage::Notification(note) = message {
                    if sender.send(note.payload().to_owned()).is_err() {
                        break;
                    }
                }
            }
        });
        let _driver = AbortOnDrop(driver);
        bounded(async {
            client
                .batch_execute(&format!("LISTEN {CHANNEL}"))
                .await
                .map_err(pg)
        })
        .await?;
        *connected = true;
        // Whatever changed while this node was not listening.
        self.check_version(&client).await?;
        let mut ticker = tokio::time::interval(poll);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                payload = notifications.recv() => {
                    let Some(payload) = payload else {
                        return Err(StoreError::backend("the notification connection closed"));
                    };
                    self.changed(&payload).await?;
                }
                _ = ticker.tick() => self.check_version(&client).await?,
            }
        }
    }

    /// One notification: one client (or, empty, everything) changed and
    /// the version moved by one.
    async fn changed(&mut self, client_id: &str) -> Result<(), StoreError> {
        if client_id.is_empty() {
            self.seen = None;
            return Ok(());
        }
        bounded(self.index.refresh_client(self.store.as_ref(), client_id)).await?;
        self.contact.touch();
        self.seen = self.seen.map(|seen| seen + 1);
        tracing::debug!(
            client = client_id,
            "API client refreshed from the shared store"
        );
        Ok(())
    }

    /// Reloads everything when the version is not the one the index
    /// reflects.
    async fn check_version(&mut self, client: &tokio_postgres::Client) -> Result<(), StoreError> {
        let version = bounded(rows::version(client)).await?;
        self.contact.touch();
        if self.seen == Some(version) {
            return Ok(());
        }
        let keys = bounded(self.index.load(self.store.as_ref())).await?;
        self.seen = Some(version);
        tracing::info!(keys, version, "API keys reloaded from the shared store");
        Ok(())
    }
}

/// With `store.max_staleness`: marks the index stale (keys refused with
/// 503) while the database has been out of reach longer than `max`.
pub async fn watch_staleness(index: Arc<KeyIndex>, contact: Arc<Contact>, max: Duration) {
    let mut ticker =
        tokio::time::interval((max / 4).clamp(Duration::from_millis(100), Duration::from_secs(1)));
    loop {
        ticker.tick().await;
        let stale = contact.age(monotonic_ns()) > max;
        if stale != index.is_stale() {
            if stale {
                tracing::error!(?max, "the shared key store has been out of reach too long: API keys are refused with 503");
            } else {
                tracing::info!("the shared key store is back: API keys are checked again");
            }
            index.set_stale(stale);
        }
    }
}
