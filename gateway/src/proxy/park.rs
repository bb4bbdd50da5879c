//! Parking idle plain HTTP/1.1 keep-alive connections. hyper keeps its
//! read and write buffers (16 KiB and more) for as long as a connection
//! lives; a connection idle for `limits.park_idle_after` has hyper's state
//! dropped and keeps only its socket and a small task, which reads the
//! next head with [`super::first_head`] and hands it to a fresh hyper
//! connection.
//!
//! hyper is asked to close (`graceful_shutdown`) and its leftover bytes
//! taken back (`into_parts`); that is only right between messages, when
//! hyper holds nothing but the start of the next head. So a connection is
//! parked only when:
//! - every request on it was bodiless and not an upgrade or CONNECT: once
//!   such a response is written, hyper has read all of its message (a
//!   request with a body could leave body bytes unread, which a fresh
//!   parser would take for a request: smuggling);
//! - no request is in flight and the last response body was dropped by
//!   hyper `park_idle_after` ago;
//! - hyper wrote nothing after it was asked to close (it writes only if it
//!   was still inside a response: then the connection just closes).
use std::{
    io,
    pin::Pin,
    sync::{atomic::Ordering::Relaxed, Arc},
    task::{Context, Poll},
};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use super::activity::Activity;

/// A client's socket as hyper sees it (plain, or under rustls): each
/// write is noted in the connection's [`Activity`] (its send timeout,
/// [`Activity::blocked_writes`]) and watched while parking, and hyper's
/// shutdown leaves the socket open for the next head while parking.
pub(super) struct ClientIo<I> {
    io: I,
    activity: Arc<Activity>,
}

impl<I> ClientIo<I> {
    pub(super) fn new(io: I, activity: Arc<Activity>) -> Self {
        Self { io, activity }
    }

    /// The socket, to read the next head from, if hyper was between
    /// messages when it closed (see the module doc).
    pub(super) fn resumable(self) -> Option<I> {
        let parked =
            self.activity.parking.load(Relaxed) && !self.activity.wrote_while_parking.load(Relaxed);
        self.activity.set_parking(false);
        parked.then_some(self.io)
    }

    fn wrote(&self, bytes: usize) {
        if bytes > 0 && self.activity.parking.load(Relaxed) {
            self.activity.wrote_while_parking.store(true, Relaxed);
        }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for ClientIo<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for ClientIo<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.wrote(buf.len());
        let result = Pin::new(&mut this.io).poll_write(cx, buf);
        this.activity.note_write(&result);
        result
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        this.wrote(bufs.iter().map(|b| b.len()).sum());
        let result = Pin::new(&mut this.io).poll_write_vectored(cx, bufs);
        this.activity.note_write(&result);
        result
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    /// Parking: the socket stays open (hyper's close is only of its own
    /// state); otherwise hyper's shutdown goes through.
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.activity.parking.load(Relaxed) {
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}
