//! A plain connection's bytes up to the end of a request head (or the
//! HTTP/2 preface, which ends like one), read into a buffer of their size
//! before hyper takes the connection: for its first request, and again for
//! the next request of a parked connection (see [`super::park`]). hyper's
//! connection state (an 8 KiB write buffer, a read buffer that grows to
//! 16 KiB, the connection future itself) is only allocated once there is a
//! request to serve, so a connection waiting for a head holds a few hundred
//! bytes instead of ~16 KiB.
//!
//! The bounds stay hyper's: the head must be in within
//! `limits.request_timeout` of the connection's start (or of the end of its
//! last response) or the connection is closed without an answer (as hyper
//! closes a head that times out); at `max` bytes hyper gets what came (and
//! answers 431, as it would have); on a drain a connection waiting for a
//! head is closed once it is [`drain::IDLE_GRACE`] idle (as hyper's
//! graceful shutdown closes one that has no request yet).
use std::{
    io,
    pin::Pin,
    task::{Context, Poll},
    time::Duration,
};

use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
    sync::watch,
    time::Instant,
};

use super::drain;

/// What one read takes from the socket at most; the head grows by what
/// came, so a slow head costs its own size.
const CHUNK: usize = 2048;

/// Reads `stream` after the bytes already in `head` until the end of a
/// head (a blank line), `max` bytes, or the end of the stream, and returns
/// it with those bytes to be read again; `None` when the connection should
/// close unanswered (the head timed out or a drain closed it, the socket
/// failed, or it ended with no byte). `started`: when the connection began
/// to wait (accepted, or its last response ended).
pub(super) async fn read(
    stream: TcpStream,
    mut head: Vec<u8>,
    max: usize,
    started: Instant,
    timeout: Duration,
    mut shutdown: watch::Receiver<bool>,
) -> Option<Prefixed<TcpStream>> {
    let mut end = HeadEnd::default();
    end.scan(&head);
    let mut draining = *shutdown.borrow_and_update();
    let close_at = |draining: bool| match draining {
        true => (started + drain::IDLE_GRACE).min(started + timeout),
        false => started + timeout,
    };
    let deadline = tokio::time::sleep_until(close_at(draining));
    tokio::pin!(deadline);
    while !end.found && head.len() < max {
        tokio::select! {
            ready = stream.readable() => {
                ready.ok()?;
                let mut chunk = [0u8; CHUNK];
                let room = chunk.len().min(max - head.len());
                match stream.try_read(&mut chunk[..room]) {
                    // The peer is done: hyper sees what came, then the end.
                    Ok(0) => break,
                    Ok(n) => {
                        let new = &chunk[..n];
                        end.scan(new);
                        head.extend_from_slice(new);
                    }
                    Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
                    Err(_) => return None,
                }
            }
            () = &mut deadline => return None,
            changed = shutdown.changed(), if !draining => {
                // A dropped sender is a worker going away: drain too.
                draining = changed.is_err() || *shutdown.borrow_and_update();
                deadline.as_mut().reset(close_at(draining));
            }
        }
    }
    if head.is_empty() {
        return None;
    }
    Some(Prefixed {
        prefix: head,
        read: 0,
        io: stream,
    })
}

/// Finds the blank line that ends a head (`\r\n\r\n`, or `\n\n` as the
/// parser also accepts), fed the bytes as they arrive: each byte is looked
/// at once, however the head is split.
#[derive(Default)]
struct HeadEnd {
    /// Line feeds seen since the last byte that was not CR or LF.
    feeds: u8,
    found: bool,
}

impl HeadEnd {
    fn scan(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            match byte {
                b'\n' => self.feeds += 1,
                b'\r' => {}
                _ => self.feeds = 0,
            }
            if self.feeds >= 2 {
                self.found = true;
                return;
            }
        }
    }
}

/// `io` with `prefix` read first; the prefix's memory goes once read.
pub(super) struct Prefixed<I> {
    prefix: Vec<u8>,
    read: usize,
    io: I,
}

impl<I> Prefixed<I> {
    /// An HTTP/2 connection preface (h2c with prior knowledge).
    pub(super) fn is_http2(&self) -> bool {
        self.prefix.starts_with(b"PRI * HTTP/2.0\r\n")
    }

    /// What of the prefix was not read yet, and the stream.
    pub(super) fn into_parts(self) -> (Vec<u8>, I) {
        let mut prefix = self.prefix;
        prefix.drain(..self.read);
        (prefix, self.io)
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for Prefixed<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some(rest) = this.prefix.get(this.read..).filter(|r| !r.is_empty()) {
            let n = rest.len().min(buf.remaining());
            buf.put_slice(&rest[..n]);
            this.read += n;
            if this.read == this.prefix.len() {
                this.prefix = Vec::new();
                this.read = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.io).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for Prefixed<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
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
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    fn ends(parts: &[&[u8]]) -> bool {
        let mut end = HeadEnd::default();
        parts.iter().for_each(|part| end.scan(part));
        end.found
    }

    #[test]
    fn a_blank_line_ends_a_head_however_it_is_split() {
        assert!(ends(&[b"GET / HTTP/1.1\r\nHost: a\r\n\r\n"]));
        assert!(ends(&[b"GET / HTTP/1.1\r\nHost: a\r\n\r", b"\n"]));
        assert!(ends(&[b"GET / HTTP/1.1\r\nHost: a\r", b"\n", b"\r", b"\n"]));
        assert!(ends(&[b"GET / HTTP/1.1\nHost: a\n\n"]));
        assert!(ends(&[b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"]));
        assert!(!ends(&[b"GET / HTTP/1.1\r\nHost: a\r\n"]));
        assert!(!ends(&[
            b"GET / HTTP/1.1\r\n",
            b"Host: a\r\nX-Api-Key: k\r\n"
        ]));
        assert!(!ends(&[b""]));
    }

    #[tokio::test]
    async fn the_prefix_is_read_before_the_stream_and_writes_pass_through() {
        let (ours, mut theirs) = tokio::io::duplex(64);
        let mut io = Prefixed {
            prefix: b"GET / HTTP/1.1\r\n\r\n".to_vec(),
            read: 0,
            io: ours,
        };
        theirs.write_all(b"next").await.unwrap();
        let mut small = [0u8; 4];
        io.read_exact(&mut small).await.unwrap();
        assert_eq!(&small, b"GET ");
        let mut rest = vec![0u8; 14 + 4];
        io.read_exact(&mut rest).await.unwrap();
        assert_eq!(&rest, b"/ HTTP/1.1\r\n\r\nnext");
        assert!(io.prefix.is_empty() && io.prefix.capacity() == 0);
        io.write_all(b"answer").await.unwrap();
        let mut answer = [0u8; 6];
        theirs.read_exact(&mut answer).await.unwrap();
        assert_eq!(&answer, b"answer");
    }
}
