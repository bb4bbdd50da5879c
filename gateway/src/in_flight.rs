//! Requests in flight on one connection, and when the last one ended: how
//! the proxy's and the admin's listeners judge a connection idle. A
//! request counts from its head until its response body is done with
//! (written whole, its stream reset, or the connection gone), so an event
//! stream, or a large answer to a slow reader, keeps its connection busy;
//! a byte now and then (an HTTP/2 PING) does not.
use std::{
    sync::atomic::{
        AtomicU64, AtomicUsize,
        Ordering::{Acquire, Relaxed, Release},
    },
    time::Duration,
};

use crate::clock::monotonic_ns;

#[derive(Debug)]
pub struct InFlight {
    count: AtomicUsize,
    /// When the connection opened, the last request ended, or [`touch`](Self::touch).
    last_ns: AtomicU64,
}

impl Default for InFlight {
    fn default() -> Self {
        Self {
            count: AtomicUsize::new(0),
            last_ns: monotonic_ns().into(),
        }
    }
}

impl InFlight {
    /// A request begins; its guard calls [`InFlight::end`] when its
    /// response is done with.
    pub fn begin(&self) {
        self.count.fetch_add(1, Relaxed);
    }

    /// A request's response is done with: idle counts from now.
    pub fn end(&self) {
        self.last_ns.store(monotonic_ns(), Relaxed);
        // Release, with `any`'s Acquire: whoever sees the count this
        // leaves sees this end's time too, never an older one that would
        // make a connection just done with a request look long idle.
        self.count.fetch_sub(1, Release);
    }

    /// Whether a request is in flight.
    pub fn any(&self) -> bool {
        self.count.load(Acquire) > 0
    }

    /// How long no request has been in flight at `now_ns` (zero while one is).
    pub fn idle_for(&self, now_ns: u64) -> Duration {
        if self.any() {
            return Duration::ZERO;
        }
        Duration::from_nanos(now_ns.saturating_sub(self.last_ns.load(Relaxed)))
    }

    /// Something began that is not yet a request (a parked connection's
    /// next head): idle counts from now.
    pub fn touch(&self) {
        self.last_ns.store(monotonic_ns(), Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_only_with_nothing_in_flight_and_from_the_last_end() {
        let requests = InFlight::default();
        let later = || monotonic_ns() + 2_000_000_000;
        let second = Duration::from_secs(1);
        assert!(requests.idle_for(later()) >= second, "idle since it opened");
        assert!(requests.idle_for(monotonic_ns()) < second);
        requests.begin();
        requests.begin();
        assert_eq!(requests.idle_for(later()), Duration::ZERO);
        requests.end();
        assert!(requests.any());
        assert_eq!(requests.idle_for(later()), Duration::ZERO);
        requests.end();
        assert!(!requests.any());
        // The last end counts as the last activity.
        assert!(requests.idle_for(monotonic_ns()) < second);
        assert!(requests.idle_for(later()) >= second);
    }
}
