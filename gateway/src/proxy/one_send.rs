//! A client socket whose small vectored writes go out as one `send`.
//! hyper writes a response's head and body, rustls its records, as one
//! vectored write; for a response of a few hundred bytes `writev` takes
//! the kernel's vectored path (fdget_pos, vfs_writev, the iovec copy),
//! which cost about 2% of the CPU a plain HTTP/1 request took, more than
//! joining the pieces. Large writes stay vectored: nothing is copied that
//! `writev` would not, and no buffer outlives the write (hyper's flatten
//! strategy did the same joining in a buffer kept per connection, grown
//! to the largest body it ever held).
use std::{
    io,
    pin::Pin,
    task::{Context, Poll},
};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

pub(super) struct OneSend<I>(pub I);

/// Up to this many bytes in several buffers are joined into one write:
/// a response head and a small body, a few TLS records.
const JOINED: usize = 4096;

impl<I: AsyncRead + Unpin> AsyncRead for OneSend<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for OneSend<I> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
    }

    /// One buffer with bytes: a plain write of it. Several of at most
    /// [`JOINED`] bytes in all: joined, a plain write. More: the vectored
    /// write as asked. Whatever the write takes is counted from the first
    /// buffer on, as a vectored write counts it.
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let io = &mut self.get_mut().0;
        let mut full = bufs.iter().filter(|buf| !buf.is_empty());
        match (full.next(), full.next()) {
            (Some(only), None) => Pin::new(io).poll_write(cx, only),
            (Some(_), Some(_)) => match joined_len(bufs) {
                Some(len) => {
                    let mut joined = Vec::with_capacity(len);
                    bufs.iter().for_each(|buf| joined.extend_from_slice(buf));
                    Pin::new(io).poll_write(cx, &joined)
                }
                None => Pin::new(io).poll_write_vectored(cx, bufs),
            },
            _ => Pin::new(io).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }
}

/// The bytes `bufs` hold in all, if at most [`JOINED`]: the joined
/// buffer is sized to them, not to the bound.
fn joined_len(bufs: &[io::IoSlice<'_>]) -> Option<usize> {
    (bufs.iter()).try_fold(0usize, |total, buf| {
        Some(total.saturating_add(buf.len())).filter(|total| *total <= JOINED)
    })
}

#[cfg(test)]
mod tests {
    use std::io::IoSlice;

    use tokio::io::AsyncWriteExt;

    use super::*;

    /// Records which write each call was, and the bytes written; takes
    /// at most `take` bytes a write when set.
    #[derive(Default)]
    struct Recorder {
        calls: Vec<(&'static str, Vec<u8>)>,
        take: Option<usize>,
    }

    impl AsyncWrite for Recorder {
        fn poll_write(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            let this = self.get_mut();
            let len = this.take.map_or(buf.len(), |take| take.min(buf.len()));
            this.calls.push(("write", buf[..len].to_vec()));
            Poll::Ready(Ok(len))
        }

        fn poll_write_vectored(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            bufs: &[IoSlice<'_>],
        ) -> Poll<io::Result<usize>> {
            let bytes: Vec<u8> = bufs.iter().flat_map(|buf| buf.iter().copied()).collect();
            let len = bytes.len();
            self.get_mut().calls.push(("vectored", bytes));
            Poll::Ready(Ok(len))
        }

        fn is_write_vectored(&self) -> bool {
            true
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }

        fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    /// One buffer with bytes (empty ones around it or not) is a plain
    /// write of exactly it; several small ones are joined into one plain
    /// write, up to `JOINED` bytes in all; more stay one vectored write.
    /// Every byte arrives, in order.
    #[tokio::test]
    async fn small_writes_are_plain_and_large_ones_stay_vectored() {
        let mut io = OneSend(Recorder::default());
        assert!(io.is_write_vectored());
        let record = b"one record".as_slice();
        let written = io.write_vectored(&[IoSlice::new(record)]).await.unwrap();
        assert_eq!(written, record.len());
        let around = [IoSlice::new(b""), IoSlice::new(record), IoSlice::new(b"")];
        assert_eq!(io.write_vectored(&around).await.unwrap(), record.len());
        let two = [
            IoSlice::new(b"head "),
            IoSlice::new(b""),
            IoSlice::new(b"body"),
        ];
        assert_eq!(io.write_vectored(&two).await.unwrap(), 9);
        let (half, rest) = (vec![b'a'; JOINED / 2], vec![b'b'; JOINED - JOINED / 2]);
        let full = [IoSlice::new(&half), IoSlice::new(&rest)];
        assert_eq!(io.write_vectored(&full).await.unwrap(), JOINED);
        let over = [IoSlice::new(&half), IoSlice::new(&rest), IoSlice::new(b"c")];
        assert_eq!(io.write_vectored(&over).await.unwrap(), JOINED + 1);
        io.write_all(b"plain").await.unwrap();
        let kinds: Vec<(&str, usize)> = (io.0.calls.iter())
            .map(|(kind, bytes)| (*kind, bytes.len()))
            .collect();
        assert_eq!(
            kinds,
            [
                ("write", 10),
                ("write", 10),
                ("write", 9),
                ("write", JOINED),
                ("vectored", JOINED + 1),
                ("write", 5),
            ]
        );
        let all: Vec<u8> = (io.0.calls.iter()).flat_map(|(_, b)| b.clone()).collect();
        let expected = [
            record,
            record,
            b"head body",
            &half,
            &rest,
            &half,
            &rest,
            b"c",
            b"plain",
        ];
        assert_eq!(all, expected.concat());
    }

    /// A joined write the socket takes only part of reports that part,
    /// counted from the first buffer: the caller sends the rest again.
    #[tokio::test]
    async fn a_short_joined_write_counts_from_the_first_buffer() {
        let mut io = OneSend(Recorder {
            take: Some(7),
            ..Recorder::default()
        });
        let two = [IoSlice::new(b"head "), IoSlice::new(b"body")];
        assert_eq!(io.write_vectored(&two).await.unwrap(), 7);
        assert_eq!(io.0.calls, [("write", b"head bo".to_vec())]);
    }
}
