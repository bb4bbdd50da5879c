//! Every node follows the shared store: a connection of its own
//! `LISTEN`s on [`CHANNEL`] and refreshes the clients the notifications
//! name (all those waiting, in one read on that connection, so admin
//! calls filling the pool never hold it up); a version check every
//! `keys.refresh` catches anything missed (a notification lost with its
//! connection) with a full reload as of one moment. Notifications are
//! hints, not facts: anyone who may connect can send one, so they are
//! bounded and never count as a version seen. Without the database the
//! index keeps serving what it holds; [`Contact`] says for how long.
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
/// Longest wait for a full reload (every client and key).
const LOAD_WAIT: Duration = Duration::from_secs(10);
const MAX_BACKOFF: Duration = Duration::from_secs(1);
/// Most clients refreshed from the notifications waiting at once (one
/// read for all); more (a bulk change, or a flood anyone who may connect
/// can send) cost a full reload instead.
const MAX_PENDING: usize = 256;
/// Least time between two full reloads that notifications ask for, so a
/// flood of them reloads ten times a second at most.
const RELOAD_GAP: Duration = Duration::from_millis(100);

/// How often the follower checks the version: every `keys.refresh`, and
/// often enough that a healthy database never looks out of reach for
/// `store.max_staleness`.
pub fn poll_every(refresh: Duration, max_staleness: Option<Duration>) -> Duration {
    max_staleness.map_or(refresh, |max| refresh.min(max / 4))
}

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
        reload_due: None,
        reloaded: tokio::time::Instant::now(),
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
    /// The store version of the index's last full reload. Notifications
    /// never move it: anyone who may connect can send one, and one may
    /// arrive after a reload that already holds its change, so counting
    /// them could make a later, missed change look seen.
    seen: Option<i64>,
    /// When a full reload notifications asked for is due.
    reload_due: Option<tokio::time::Instant>,
    /// When the last full reload finished.
    reloaded: tokio::time::Instant,
}

async fn bounded<T>(
    wait: Duration,
    query: impl std::future::Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    tokio::time::timeout(wait, query)
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

/// The notifications not handled yet, bounded: the connection's driver
/// never waits for the follower, and a flood costs one full reload.
#[derive(Default)]
struct Inbox {
    pending: std::sync::Mutex<Pending>,
    ready: tokio::sync::Notify,
}

#[derive(Default)]
struct Pending {
    clients: std::collections::BTreeSet<String>,
    /// Too many, or one that names no client: reload everything.
    everything: bool,
    /// The notification connection ended.
    closed: bool,
}

/// Whether a payload can be a client id (`cl_` and a key id; any other
/// short printable text an older store may hold).
fn plausible_client_id(payload: &str) -> bool {
    (1..=64).contains(&payload.len()) && payload.bytes().all(|b| b.is_ascii_graphic())
}

impl Inbox {
    fn push(&self, payload: &str) {
        let mut pending = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        if !plausible_client_id(payload) || pending.clients.len() >= MAX_PENDING {
            pending.everything = true;
            pending.clients.clear();
        } else if !pending.everything {
            pending.clients.insert(payload.to_owned());
        }
        drop(pending);
        self.ready.notify_one();
    }

    fn close(&self) {
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .closed = true;
        self.ready.notify_one();
    }

    fn take(&self) -> Pending {
        std::mem::take(&mut *self.pending.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

impl Follower {
    async fn session(&mut self, poll: Duration, connected: &mut bool) -> Result<(), StoreError> {
        let (mut client, mut connection) = self.store.dedicated().await?;
        let inbox = Arc::new(Inbox::default());
        let heard = inbox.clone();
        let driver = tokio::spawn(async move {
            let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
            while let Some(Ok(message)) = messages.next().await {
                if let AsyncMessage::Notification(note) = message {
                    heard.push(note.payload());
                }
            }
            heard.close();
        });
        let _driver = AbortOnDrop(driver);
        bounded(QUERY_WAIT, async {
            client
                .batch_execute(&format!("LISTEN {CHANNEL}"))
                .await
                .map_err(pg)
        })
        .await?;
        *connected = true;
        // Whatever changed while this node was not listening.
        self.check_version(&mut client).await?;
        let mut ticker = tokio::time::interval(poll);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = inbox.ready.notified() => {
                    let pending = inbox.take();
                    if pending.closed {
                        return Err(StoreError::backend("the notification connection closed"));
                    }
                    self.changed(&mut client, pending).await?;
                }
                () = due(self.reload_due) => self.check_version(&mut client).await?,
                _ = ticker.tick() => self.check_version(&mut client).await?,
            }
        }
    }

    /// Notifications: these clients changed (one read for all of them),
    /// or anything may have (a full reload at the next version check).
    async fn changed(
        &mut self,
        client: &mut tokio_postgres::Client,
        pending: Pending,
    ) -> Result<(), StoreError> {
        if pending.everything {
            self.seen = None;
            let earliest = self.reloaded + RELOAD_GAP;
            self.reload_due = Some(earliest.max(tokio::time::Instant::now()));
        }
        if pending.clients.is_empty() {
            return Ok(());
        }
        let ids: Vec<String> = pending.clients.into_iter().collect();
        let (clients, keys) = bounded(QUERY_WAIT, rows::some(client, &ids)).await?;
        self.index.apply_clients(&ids, clients, &keys);
        self.contact.touch();
        tracing::debug!(
            clients = ids.len(),
            "API clients refreshed from the shared store"
        );
        Ok(())
    }

    /// Reloads everything, as of one moment, when the version is not the
    /// one the index reflects.
    async fn check_version(
        &mut self,
        client: &mut tokio_postgres::Client,
    ) -> Result<(), StoreError> {
        let version = bounded(QUERY_WAIT, rows::version(&*client)).await?;
        if self.seen == Some(version) {
            self.contact.touch();
            return Ok(());
        }
        // In touch only once the index is current: a database that
        // answers but whose keys cannot be read leaves the index stale.
        let since = self.index.changes();
        let (version, clients, keys) = bounded(LOAD_WAIT, rows::everything(client)).await?;
        self.contact.touch();
        let Some(count) = self.index.replace_unless_changed(since, clients, keys) else {
            // This node's admin API refreshed a client meanwhile: what
            // was read may be older than that. Read again shortly.
            self.seen = None;
            self.reload_due = Some(tokio::time::Instant::now() + RELOAD_GAP);
            return Ok(());
        };
        self.seen = Some(version);
        self.reload_due = None;
        self.reloaded = tokio::time::Instant::now();
        tracing::info!(
            keys = count,
            version,
            "API keys reloaded from the shared store"
        );
        Ok(())
    }
}

/// Waits until `at`; forever without it.
async fn due(at: Option<tokio::time::Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flood_of_notifications_is_bounded_and_asks_for_one_reload() {
        let inbox = Inbox::default();
        inbox.push("cl_a");
        inbox.push("cl_a");
        inbox.push("cl_b");
        let pending = inbox.take();
        assert_eq!(pending.clients.len(), 2);
        assert!(!pending.everything && !pending.closed);
        for n in 0..100_000 {
            inbox.push(&format!("cl_{n}"));
        }
        let pending = inbox.take();
        assert!(pending.everything && pending.clients.is_empty());
        // Oversized, empty or unprintable: any client may have changed.
        for payload in ["", &"x".repeat(8_000), "cl_a\u{0}", "cl a", "clé"] {
            inbox.push(payload);
            let pending = inbox.take();
            assert!(
                pending.everything && pending.clients.is_empty(),
                "{payload:?}"
            );
        }
        inbox.close();
        assert!(inbox.take().closed);
    }

    #[test]
    fn the_version_is_checked_often_enough_for_max_staleness() {
        let second = Duration::from_secs(1);
        assert_eq!(poll_every(second, None), second);
        assert_eq!(poll_every(second * 30, Some(second * 4)), second);
        assert_eq!(poll_every(second, Some(second * 300)), second);
    }
}
