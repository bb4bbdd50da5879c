//! A request's upstream exchange run in the request's own task, on a
//! connection this worker keeps, when the request's body (if any) was read
//! ahead whole (see `body::read_ahead`): head and body written at once,
//! the response head read and parsed ([`crate::h1`]), the body read as
//! the client's side polls it, and the connection kept again once the
//! body is complete (dropped if it is not read to its end). hyper's
//! client, which still carries streamed bodies and upgrades
//! ([`super::upstream_conns`]), runs a task per connection and hands each
//! request, response and body chunk over channels: that was about 11,700
//! instructions of a proxied GET's 51,400.
//!
//! Kept as hyper's were: a connection the upstream closed (or wrote to)
//! while idle is dropped when next taken, once the worker's event loop
//! has seen its socket become readable (hyper's connection task saw it no
//! sooner), or, after a response that has no body by rule (HEAD, 204,
//! 304), once it has rested [`BODILESS_REST`] (see `Conn::bodiless`); one
//! idle for
//! `limits.upstream_idle_timeout` is closed; a request is sent again once
//! on a fresh connection when a kept one took none of it (or not all of
//! a bodiless one), or, if idempotent, bodiless and on a connection idle
//! for [`RISKY_IDLE`], when the upstream closed before a byte of a
//! response.
use std::{
    cell::RefCell,
    io,
    net::SocketAddr,
    pin::Pin,
    task::{ready, Context, Poll},
    time::Duration,
};

use bytes::{Bytes, BytesMut};
use http::{header, Method, Request, Response};
use hyper::body::{Body, Frame, SizeHint};
use tokio::{io::AsyncWriteExt, net::TcpStream, time::Instant};
use tokio_util::io::poll_read_buf;

use super::{body::RequestBody, rewrite::Added};
use crate::h1::{self, Decoder, H1Error, Head, Step};

/// Idle this long since its last request, a kept connection may be one
/// the upstream's keep-alive timer closes as the next request goes out
/// (those timers are seconds: gunicorn 2 s, Node and Apache 5 s, nginx
/// 75 s): such a request, if idempotent, is sent again on a fresh one.
pub const RISKY_IDLE: Duration = Duration::from_millis(250);

/// How long a connection that answered a HEAD, a 204 or a 304 rests
/// before it is kept (see [`Conn::bodiless`]): past a delayed ACK's 40 ms,
/// and the gap between a naive server's head and body writes.
pub const BODILESS_REST: Duration = Duration::from_millis(50);

/// Spare room a read asks for.
const READ_CHUNK: usize = 8 * 1024;

/// Why a request got no response, or its body no end.
#[derive(Debug, thiserror::Error)]
pub enum DirectError {
    #[error("connecting to the upstream: {0}")]
    Connect(io::Error),
    /// After `sent` bytes of the request.
    #[error("writing the request to the upstream: {error}")]
    Write { sent: usize, error: io::Error },
    /// Closed or reset before a byte of a response came.
    #[error("the upstream closed the connection without answering")]
    Unanswered,
    #[error("reading the upstream's response: {0}")]
    Read(io::Error),
    #[error("the upstream's response: {0}")]
    Protocol(#[from] H1Error),
}

/// A kept connection: the socket and what was read past the last response.
#[derive(Debug)]
pub struct Conn {
    stream: TcpStream,
    buf: BytesMut,
    // Boxed: a `Conn` moves in and out of the pool per request.
    names: Box<h1::Names>,
    /// The last response had no body by rule (HEAD, 204, 304). Upstreams
    /// that send one anyway (a known bug; naive servers answer a HEAD,
    /// which any client can send to any path, with the GET's body) may
    /// send it a moment after the head, when the connection is already
    /// idle: taken before those bytes came, it would answer the next
    /// client with them, and that client's answer the one after (a chain,
    /// found by an attack). So the head's ACK goes out at once
    /// (`TCP_QUICKACK`: an upstream with Nagle's algorithm on holds a
    /// second small write until its first is acknowledged, which a delayed
    /// ACK left to the next request's segment), the connection rests
    /// [`BODILESS_REST`] out of the pool, and it is kept only if the
    /// socket itself (one `recv` syscall) then has nothing. Closing it
    /// instead would let any client make the gateway open (and leave in
    /// `TIME_WAIT`) an upstream connection per HEAD. Bytes later still are
    /// any upstream's out-of-turn bytes.
    bodiless: bool,
}

/// This thread's idle connections per server (most recently used last),
/// with when each was last handed a request; and whether the reaper runs.
#[derive(Default)]
struct Kept {
    servers: Vec<(SocketAddr, Vec<(Conn, Instant)>)>,
    reaping: bool,
    idle_timeout: Duration,
}

thread_local! {
    static KEPT: RefCell<Kept> = RefCell::default();
}

/// Whether `req` goes this way: its body (if any) read ahead whole, no
/// upgrade asked for.
pub fn eligible(req: &Request<RequestBody>) -> bool {
    req.body().complete().is_some()
        && req.method() != Method::CONNECT
        && !req.headers().contains_key(header::UPGRADE)
}

/// Sends `req` (see [`eligible`]) to `addr` and reads its response head;
/// the body follows as the returned response's is polled.
pub async fn send(
    addr: SocketAddr,
    req: &Request<RequestBody>,
    added: &Added<'_>,
    connect_timeout: Duration,
    idle_timeout: Duration,
    now: Instant,
) -> Result<Response<DirectBody>, DirectError> {
    let body: Vec<&Bytes> = req.body().complete().into_iter().flatten().collect();
    let body_len = body.iter().map(|data| data.len()).sum();
    let mut message = Vec::with_capacity(512 + body_len);
    let gateway_fields =
        |out: &mut Vec<u8>| added.each(|name, value| h1::write_field(out, name, value));
    h1::encode_request_head(req, gateway_fields, body_len, &mut message);
    body.iter().for_each(|data| message.extend_from_slice(data));
    let head_request = req.method() == Method::HEAD;
    let (mut conn, kept_since) = match take(addr, now, idle_timeout) {
        Some((conn, used)) => (conn, Some(used)),
        None => (fresh(addr, connect_timeout).await?, None),
    };
    let risky = kept_since.is_some_and(|used| now.saturating_duration_since(used) >= RISKY_IDLE);
    match exchange(&mut conn, &message, head_request).await {
        Ok(response) => return Ok(body_of(response, conn, addr, now)),
        // Nothing taken, or a bodiless head not taken whole: the upstream
        // cannot have acted on it.
        Err(DirectError::Write { sent, .. })
            if kept_since.is_some() && (sent == 0 || body_len == 0) => {}
        Err(DirectError::Unanswered) if risky && body_len == 0 && req.method().is_idempotent() => {
            tracing::debug!(upstream = %addr, "a kept connection closed under the request; sending it again");
        }
        Err(error) => return Err(error),
    }
    let mut conn = fresh(addr, connect_timeout).await?;
    let response = exchange(&mut conn, &message, head_request).await?;
    Ok(body_of(response, conn, addr, now))
}

/// Writes `message`, then reads until a final response head (1xx skipped).
async fn exchange(
    conn: &mut Conn,
    message: &[u8],
    head_request: bool,
) -> Result<h1::ResponseHead, DirectError> {
    let mut sent = 0;
    while sent < message.len() {
        let error = match conn.stream.write(&message[sent..]).await {
            Ok(0) => io::ErrorKind::WriteZero.into(),
            Ok(n) => {
                sent += n;
                continue;
            }
            Err(error) => error,
        };
        return Err(DirectError::Write { sent, error });
    }
    let mut answered = false;
    // The buffer's length when a head was last found incomplete.
    let mut parsed_at = None;
    loop {
        let buf = &conn.buf;
        if !buf.is_empty() && parsed_at.is_none_or(|at| h1::may_end_head(buf, at)) {
            answered = true;
            match h1::parse_response_head(&mut conn.buf, head_request, &mut conn.names)? {
                Some(Head::Final(head)) => return Ok(head),
                Some(Head::Informational) => {
                    parsed_at = None;
                    continue;
                }
                None => parsed_at = Some(conn.buf.len()),
            }
        }
        match std::future::poll_fn(|cx| conn.poll_read(cx)).await {
            Ok(0) if answered => return Err(H1Error::Incomplete.into()),
            Ok(0) => return Err(DirectError::Unanswered),
            Ok(_) => {}
            Err(error) if !answered && reset(&error) => return Err(DirectError::Unanswered),
            Err(error) => return Err(DirectError::Read(error)),
        }
    }
}

fn reset(error: &io::Error) -> bool {
    matches!(
        error.kind(),
        io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe
    )
}

impl Conn {
    /// Reads what the socket has into the buffer; `Ok(0)` at its end.
    fn poll_read(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.buf.capacity() - self.buf.len() < READ_CHUNK / 2 {
            self.buf.reserve(READ_CHUNK);
        }
        poll_read_buf(Pin::new(&mut self.stream), cx, &mut self.buf)
    }

    /// Whether the upstream closed (or wrote to) the idle connection: its
    /// socket is readable. Costs no syscall while the runtime saw nothing
    /// come (tokio checks its readiness first), unless the last response
    /// was [`bodiless`](Self::bodiless).
    fn closed_while_idle(&self) -> bool {
        let would_block = |result: io::Result<usize>| matches!(result, Err(e) if e.kind() == io::ErrorKind::WouldBlock);
        if self.bodiless {
            // A peek on the non-blocking socket: `EAGAIN` if nothing came.
            let mut probe = [std::mem::MaybeUninit::uninit(); 1];
            return !would_block(socket2::SockRef::from(&self.stream).peek(&mut probe));
        }
        !would_block(self.stream.try_read(&mut [0u8; 1]))
    }
}

/// A new connection to `addr`.
async fn fresh(addr: SocketAddr, timeout: Duration) -> Result<Conn, DirectError> {
    let stream = dial(addr, timeout).await.map_err(DirectError::Connect)?;
    Ok(Conn {
        stream,
        buf: BytesMut::with_capacity(READ_CHUNK),
        names: Box::default(),
        bodiless: false,
    })
}

/// Connects to `addr` within `timeout`, with `TCP_NODELAY`.
pub async fn dial(addr: SocketAddr, timeout: Duration) -> io::Result<TcpStream> {
    let stream = match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Ok(stream) => stream?,
        Err(_) => return Err(io::ErrorKind::TimedOut.into()),
    };
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// The response, its body reading from `conn`.
fn body_of(
    head: h1::ResponseHead,
    mut conn: Conn,
    addr: SocketAddr,
    used: Instant,
) -> Response<DirectBody> {
    conn.bodiless = head.framing == h1::Framing::Empty;
    let keep_alive = head.keep_alive;
    if conn.bodiless && keep_alive {
        // Best effort: without it the peek still runs.
        let _ = socket2::SockRef::from(&conn.stream).set_quickack(true);
    }
    let decoder = Decoder::new(head.framing);
    let mut body = DirectBody {
        conn: Some(conn),
        decoder,
        eof: false,
        keep_alive,
        addr,
        used,
    };
    if body.decoder.is_done() {
        body.finish();
    }
    head.response.map(|()| body)
}

/// A response body read from the upstream connection as it is polled.
#[derive(Debug)]
pub struct DirectBody {
    /// Until the body is complete (then kept again) or failed (dropped).
    conn: Option<Conn>,
    decoder: Decoder,
    /// The connection has ended (only a close-delimited body may then end).
    eof: bool,
    keep_alive: bool,
    addr: SocketAddr,
    used: Instant,
}

impl DirectBody {
    /// The body is complete: the connection is kept if it can carry
    /// another request and nothing came past the response.
    fn finish(&mut self) {
        let Some(conn) = self.conn.take() else {
            return;
        };
        if !self.keep_alive || self.eof || !conn.buf.is_empty() {
            return;
        }
        if !conn.bodiless {
            return put_back(self.addr, conn, self.used);
        }
        let (addr, used) = (self.addr, self.used);
        tokio::spawn(async move {
            tokio::time::sleep(BODILESS_REST).await;
            if !conn.closed_while_idle() {
                put_back(addr, conn, used);
            }
        });
    }
}

impl Body for DirectBody {
    type Data = Bytes;
    type Error = DirectError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, DirectError>>> {
        let this = self.get_mut();
        loop {
            let Some(conn) = this.conn.as_mut() else {
                return Poll::Ready(None);
            };
            let step = match this.decoder.decode(&mut conn.buf, this.eof) {
                Ok(step) => step,
                Err(error) => {
                    this.conn = None;
                    return Poll::Ready(Some(Err(error.into())));
                }
            };
            let frame = match step {
                Step::NeedMore => None,
                Step::Data(data) => Some(Frame::data(data)),
                Step::Trailers(trailers) => Some(Frame::trailers(trailers)),
                Step::Done => {
                    this.finish();
                    return Poll::Ready(None);
                }
            };
            if let Some(frame) = frame {
                if this.decoder.is_done() {
                    this.finish();
                }
                return Poll::Ready(Some(Ok(frame)));
            }
            match ready!(conn.poll_read(cx)) {
                Ok(0) => this.eof = true,
                Ok(_) => {}
                Err(error) => {
                    this.conn = None;
                    return Poll::Ready(Some(Err(DirectError::Read(error))));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.conn.is_none() || self.decoder.is_done()
    }

    fn size_hint(&self) -> SizeHint {
        match self.decoder.remaining() {
            Some(n) => SizeHint::with_exact(n),
            None => SizeHint::default(),
        }
    }
}

/// A kept connection to `addr` that is idle and open, with when it was
/// last handed a request. Drops closed and expired ones on the way.
fn take(addr: SocketAddr, now: Instant, idle_timeout: Duration) -> Option<(Conn, Instant)> {
    KEPT.with_borrow_mut(|kept| {
        kept.idle_timeout = idle_timeout;
        let (_, idle) = kept.servers.iter_mut().find(|(a, _)| *a == addr)?;
        while let Some((conn, used)) = idle.pop() {
            if now.saturating_duration_since(used) < idle_timeout && !conn.closed_while_idle() {
                return Some((conn, used));
            }
        }
        None
    })
}

/// Keeps `conn` (last handed a request at `used`) for `addr`; starts
/// this thread's reaper if it is not running.
fn put_back(addr: SocketAddr, conn: Conn, used: Instant) {
    let start_reaper = KEPT.with_borrow_mut(|kept| {
        match kept.servers.iter_mut().find(|(a, _)| *a == addr) {
            Some((_, idle)) => idle.push((conn, used)),
            None => kept.servers.push((addr, vec![(conn, used)])),
        }
        !std::mem::replace(&mut kept.reaping, true)
    });
    if start_reaper {
        tokio::spawn(reap());
    }
}

/// Closes this thread's connections idle for the idle timeout (and closed
/// ones) every idle timeout, until none are kept.
async fn reap() {
    loop {
        let idle_timeout = KEPT.with_borrow(|kept| kept.idle_timeout);
        tokio::time::sleep(idle_timeout.max(Duration::from_millis(10))).await;
        let now = Instant::now();
        let done = KEPT.with_borrow_mut(|kept| {
            let timeout = kept.idle_timeout;
            for (_, idle) in &mut kept.servers {
                idle.retain(|(conn, used)| {
                    now.saturating_duration_since(*used) < timeout && !conn.closed_while_idle()
                });
            }
            kept.servers.retain(|(_, idle)| !idle.is_empty());
            kept.reaping = !kept.servers.is_empty();
            !kept.reaping
        });
        if done {
            return;
        }
    }
}

#[cfg(test)]
#[path = "direct_tests.rs"]
mod tests;
