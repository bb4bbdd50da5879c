//! Idle admin connections are dropped, so they cannot hold the listener's
//! few slots ([`super::MAX_CONNECTIONS`]) from the admins.
//!
//! hyper's header-read timeout starts only once HTTP/1 is known: a
//! connection that never sends a byte (hyper waits for one to tell HTTP/1
//! from HTTP/2), or one that opens HTTP/2 and then idles, had no deadline,
//! and 64 of them, no credential needed, locked every admin out. Idle is
//! judged by requests, not bytes (a byte now and then, a PING, would
//! otherwise keep a connection for ever): one with no request in flight
//! for `request_timeout` since it opened or its last response ended is
//! dropped. A response is in flight until its body is done with, so an
//! event stream, or a large answer to a slow reader, keeps its connection.
use std::{
    pin::Pin,
    sync::{
        atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed},
        Arc,
    },
    task::{Context, Poll},
    time::Duration,
};

use hyper::body::{Body, Frame, SizeHint};

use crate::clock::monotonic_ns;

/// What one admin connection is doing.
#[derive(Debug)]
pub(super) struct Watch {
    /// When the connection opened or its last response ended.
    last_ns: AtomicU64,
    in_flight: AtomicUsize,
}

impl Default for Watch {
    fn default() -> Self {
        Self {
            last_ns: monotonic_ns().into(),
            in_flight: AtomicUsize::new(0),
        }
    }
}

impl Watch {
    /// Counts a request in flight until the guard drops.
    pub(super) fn begin(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Relaxed);
        InFlight(self.clone())
    }

    /// Whether the connection has been idle (see the module doc) for
    /// `timeout` at `now_ns`.
    pub(super) fn idle(&self, timeout: Duration, now_ns: u64) -> bool {
        let since = Duration::from_nanos(now_ns.saturating_sub(self.last_ns.load(Relaxed)));
        since >= timeout && self.in_flight.load(Relaxed) == 0
    }
}

/// A request of the connection in flight (see [`Watch::begin`]).
pub(super) struct InFlight(Arc<Watch>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.last_ns.store(monotonic_ns(), Relaxed);
        self.0.in_flight.fetch_sub(1, Relaxed);
    }
}

/// A response body that keeps its request in flight until it is done
/// with (written whole, or the stream reset, or the connection gone).
pub(super) struct Guarded<B> {
    body: B,
    _in_flight: InFlight,
}

impl<B> Guarded<B> {
    pub(super) fn new(body: B, in_flight: InFlight) -> Self {
        Self {
            body,
            _in_flight: in_flight,
        }
    }
}

impl<B: Body + Unpin> Body for Guarded<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<B::Data>, B::Error>>> {
        Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_only_with_nothing_in_flight_for_the_timeout() {
        let watch = Arc::new(Watch::default());
        let timeout = Duration::from_secs(1);
        let later = || monotonic_ns() + 2_000_000_000;
        assert!(watch.idle(timeout, later()));
        assert!(!watch.idle(timeout, monotonic_ns()));
        let request = watch.begin();
        assert!(!watch.idle(timeout, later()));
        // Its end counts as the last activity.
        drop(request);
        assert!(!watch.idle(timeout, monotonic_ns()));
        assert!(watch.idle(timeout, later()));
    }
}
