//! Draining on shutdown: a worker stops accepting, lets its connections
//! finish what is in flight, and waits for them up to
//! `limits.drain_timeout`. A connection that became a WebSocket tunnel
//! counts until the tunnel ends (its [`Open`] lives in the connection's
//! permit, which the tunnel holds).
use std::{
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use tokio::sync::Notify;

/// An idle HTTP/1 connection (or one that has not said what it speaks)
/// is closed once idle this long during a drain; an active one gets
/// `Connection: close` on its next response instead. The grace keeps a
/// busy keep-alive client from racing the close with its next request.
pub(super) const IDLE_GRACE: Duration = Duration::from_secs(1);

/// How often a draining connection checks whether it may close.
pub(super) const TICK: Duration = Duration::from_millis(50);

/// A worker's open connections, tunnels included.
#[derive(Clone, Default)]
pub struct OpenConnections(Arc<Inner>);

#[derive(Default)]
struct Inner {
    count: AtomicUsize,
    closed: Notify,
}

/// One open connection, counted until dropped.
pub(super) struct Open(Arc<Inner>);

impl Drop for Open {
    fn drop(&mut self) {
        if self.0.count.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.closed.notify_waiters();
        }
    }
}

impl OpenConnections {
    pub(super) fn open(&self) -> Open {
        self.0.count.fetch_add(1, Ordering::AcqRel);
        Open(self.0.clone())
    }

    pub fn count(&self) -> usize {
        self.0.count.load(Ordering::Acquire)
    }

    /// Waits until every connection is closed, at most `deadline`; how
    /// many were still open (and are cut when the worker's loop ends).
    pub async fn drain(&self, deadline: Duration) -> usize {
        let all_closed = async {
            loop {
                // Registered before the check, so no wake-up is missed.
                let closed = self.0.closed.notified();
                if self.count() == 0 {
                    return;
                }
                closed.await;
            }
        };
        match tokio::time::timeout(deadline, all_closed).await {
            Ok(()) => 0,
            Err(_) => self.count(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn waits_for_the_last_connection_or_the_deadline() {
        let open = OpenConnections::default();
        assert_eq!(open.drain(Duration::from_secs(1)).await, 0);
        let first = open.open();
        let second = open.open();
        let closer = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(10)).await;
            drop(first);
            tokio::time::sleep(Duration::from_millis(10)).await;
            drop(second);
        });
        assert_eq!(open.drain(Duration::from_secs(5)).await, 0);
        closer.await.unwrap();
        let _stuck = open.open();
        assert_eq!(open.drain(Duration::from_millis(20)).await, 1);
    }
}
