//! How long a connection has had nothing in flight, so idle connections
//! (HTTP/2 ones too) can be closed after `limits.request_timeout`.
use std::sync::Arc;

use crate::clock::monotonic_ns;

/// A connection's requests in flight and when the last one ended.
pub(super) struct Activity {
    in_flight: std::sync::atomic::AtomicUsize,
    last_ns: std::sync::atomic::AtomicU64,
}

impl Default for Activity {
    fn default() -> Self {
        Self {
            in_flight: Default::default(),
            last_ns: monotonic_ns().into(),
        }
    }
}

/// Counts one request in flight until dropped.
pub(super) struct Busy(Arc<Activity>);

impl Drop for Busy {
    fn drop(&mut self) {
        use std::sync::atomic::Ordering::Relaxed;
        self.0.last_ns.store(monotonic_ns(), Relaxed);
        self.0.in_flight.fetch_sub(1, Relaxed);
    }
}

impl Activity {
    pub(super) fn begin(self: &Arc<Self>) -> Busy {
        self.in_flight
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Busy(self.clone())
    }

    /// How long nothing has happened on the connection (zero while busy).
    pub(super) fn idle_for(&self, now_ns: u64) -> std::time::Duration {
        use std::sync::atomic::Ordering::Relaxed;
        if self.in_flight.load(Relaxed) > 0 {
            return std::time::Duration::ZERO;
        }
        std::time::Duration::from_nanos(now_ns.saturating_sub(self.last_ns.load(Relaxed)))
    }
}
