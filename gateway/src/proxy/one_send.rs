//! A client socket under TLS whose vectored writes of one buffer go out
//! as one `send`. rustls hands its queued records to the socket as a
//! vectored write, and a response is one record: `writev` with a single
//! iovec takes the kernel's vectored path (fdget_pos, vfs_writev, the
//! iovec copy), which costs more than `send` for the same bytes. Plain
//! HTTP/1 avoids it the same way (hyper's flatten strategy, see `serve`).
use std::{
    io,
    pin::Pin,
    task::{Context, Poll},
};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

pub(super) struct OneSend<I>(pub I);

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

    /// One buffer with bytes: a plain write. Several: still one vectored
    /// write (one syscall for many records beats one each).
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let io = &mut self.get_mut().0;
        let mut full = bufs.iter().filter(|buf| !buf.is_empty());
        if let (Some(only), None) = (full.next(), full.next()) {
            return Pin::new(io).poll_write(cx, only);
        }
        Pin::new(io).poll_write_vectored(cx, bufs)
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

#[cfg(test)]
mod tests {
    use std::io::IoSlice;

    use tokio::io::AsyncWriteExt;

    use super::*;

    /// Records which write each call was, and the bytes written.
    #[derive(Default)]
    struct Recorder {
        calls: Vec<(&'static str, Vec<u8>)>,
    }

    impl AsyncWrite for Recorder {
        fn poll_write(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
            buf: &[u8],
        ) -> Poll<io::Result<usize>> {
            self.get_mut().calls.push(("write", buf.to_vec()));
            Poll::Ready(Ok(buf.len()))
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
    /// write of exactly it; two or more stay one vectored write; every
    /// byte arrives, in order.
    #[tokio::test]
    async fn one_buffer_is_a_plain_write_and_more_stay_vectored() {
        let mut io = OneSend(Recorder::default());
        assert!(io.is_write_vectored());
        let record = b"one record".as_slice();
        let written = io.write_vectored(&[IoSlice::new(record)]).await.unwrap();
        assert_eq!(written, record.len());
        let around = [IoSlice::new(b""), IoSlice::new(record), IoSlice::new(b"")];
        assert_eq!(io.write_vectored(&around).await.unwrap(), record.len());
        let two = [IoSlice::new(b"first "), IoSlice::new(b"second")];
        assert_eq!(io.write_vectored(&two).await.unwrap(), 12);
        io.write_all(b"plain").await.unwrap();
        let calls: Vec<(&str, &[u8])> = (io.0.calls.iter())
            .map(|(kind, bytes)| (*kind, bytes.as_slice()))
            .collect();
        assert_eq!(
            calls,
            [
                ("write", record),
                ("write", record),
                ("vectored", b"first second".as_slice()),
                ("write", b"plain".as_slice()),
            ]
        );
    }
}
