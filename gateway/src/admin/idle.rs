//! Idle admin connections are dropped, so they cannot hold the listener's
//! few slots ([`super::MAX_CONNECTIONS`]) from the admins.
//!
//! hyper's header-read timeout starts only once HTTP/1 is known: a
//! connection that never sends a byte (hyper waits for it to tell HTTP/1
//! from HTTP/2), or one that opens HTTP/2 and then idles, had no deadline,
//! and 64 of them, no credential needed, locked every admin out. A
//! connection whose socket moves no byte for `request_timeout`, with no
//! request in flight and no event stream open, is dropped.
use std::{
    io,
    pin::Pin,
    sync::{
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed},
        Arc,
    },
    task::{Context, Poll},
    time::Duration,
};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::clock::monotonic_ns;

/// What one admin connection is doing.
#[derive(Debug)]
pub(super) struct Watch {
    /// When a byte last moved either way.
    last_ns: AtomicU64,
    in_flight: AtomicUsize,
    /// An event stream was answered: its client follows for as long as it
    /// likes (an admin key and one of [`super::events::MAX_FOLLOWERS`]).
    following: AtomicBool,
}

impl Default for Watch {
    fn default() -> Self {
        Self {
            last_ns: monotonic_ns().into(),
            in_flight: AtomicUsize::new(0),
            following: AtomicBool::new(false),
        }
    }
}

impl Watch {
    /// Counts a request in flight until the guard drops.
    pub(super) fn begin(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Relaxed);
        InFlight(self.clone())
    }

    pub(super) fn set_following(&self) {
        self.following.store(true, Relaxed);
    }

    /// Whether the connection has been idle (see the module doc) for
    /// `timeout` at `now_ns`.
    pub(super) fn idle(&self, timeout: Duration, now_ns: u64) -> bool {
        let quiet = Duration::from_nanos(now_ns.saturating_sub(self.last_ns.load(Relaxed)));
        quiet >= timeout && self.in_flight.load(Relaxed) == 0 && !self.following.load(Relaxed)
    }

    fn moved<T>(&self, result: &Poll<io::Result<T>>, bytes: impl FnOnce(&T) -> bool) {
        if let Poll::Ready(Ok(value)) = result {
            if bytes(value) {
                self.last_ns.store(monotonic_ns(), Relaxed);
            }
        }
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

/// The admin connection's socket, noting each byte that moves.
pub(super) struct WatchedIo<S> {
    io: S,
    watch: Arc<Watch>,
}

impl<S> WatchedIo<S> {
    pub(super) fn new(io: S, watch: Arc<Watch>) -> Self {
        Self { io, watch }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for WatchedIo<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let result = Pin::new(&mut this.io).poll_read(cx, buf);
        let read = buf.filled().len() > before;
        this.watch.moved(&result, |()| read);
        result
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for WatchedIo<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.io).poll_write(cx, buf);
        this.watch.moved(&result, |n| *n > 0);
        result
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let result = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        this.watch.moved(&result, |n| *n > 0);
        result
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn idle_only_when_quiet_with_nothing_in_flight_and_no_stream() {
        let watch = Arc::new(Watch::default());
        let timeout = Duration::from_secs(1);
        let later = monotonic_ns() + 2_000_000_000;
        assert!(watch.idle(timeout, later));
        assert!(!watch.idle(timeout, monotonic_ns()));
        let request = watch.begin();
        assert!(!watch.idle(timeout, later));
        drop(request);
        assert!(watch.idle(timeout, monotonic_ns() + 2_000_000_000));
        watch.set_following();
        assert!(!watch.idle(timeout, monotonic_ns() + 2_000_000_000));
    }
}
