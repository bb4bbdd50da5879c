//! The worker's keep-alive HTTP/1.1 connections to upstream servers. Each
//! worker thread keeps its own (a thread-local list per server address),
//! so taking one and putting it back costs no lock, no hash and no task:
//! hyper-util's pooled client cost ~6,800 instructions a request here
//! (a mutex, SipHash of the pool key, a spawned task per response to
//! return the connection once idle).
//!
//! What the pooled client did and this keeps: a connection goes back (to
//! the server's busy queue) as soon as the request is handed to it and is
//! taken again only once hyper says it is ready (its previous exchange
//! finished, response body included); one closed by the upstream is
//! dropped when next looked at; a take looks at no more than
//! [`PROMOTE_PER_TAKE`] busy connections, so a hung upstream with
//! thousands of requests in flight does not make every request scan them;
//! a request the connection closed before it was written (nothing of it
//! sent) is retried once on a fresh connection, and so is an idempotent
//! request without a body that went out on a connection idle for
//! [`RISKY_IDLE`] when the upstream closed it before answering (see
//! [`send`]); a connection idle for `limits.upstream_idle_timeout` is
//! closed (checked when taking one, and by a reaper task while any are
//! kept); connects time out after
//! `limits.connect_timeout`, with `TCP_NODELAY`; upgrades (WebSocket)
//! take the connection with them.
use std::{
    cell::RefCell,
    collections::VecDeque,
    future::Future,
    io,
    net::SocketAddr,
    sync::{
        atomic::{AtomicU8, Ordering::Relaxed},
        Arc,
    },
    time::Duration,
};

use std::{
    pin::Pin,
    task::{Context, Poll},
};

use bytes::Bytes;
use http::Request;
use hyper::{
    body::{Body, Frame, Incoming, SizeHint},
    client::conn::http1,
    Response,
};
use hyper_util::rt::TokioIo;
use tokio::time::Instant;

use super::{
    body::RequestBody,
    direct::{self, DirectBody, DirectError, RISKY_IDLE},
    rewrite::Added,
};

/// Busy connections a take checks for a finished exchange: enough to
/// find the one a sequential client just finished with, and a bound on
/// the work per request whatever number is in flight.
const PROMOTE_PER_TAKE: usize = 8;

/// A kept connection's handle, and where its last exchange stands (see
/// [`exchange`]).
struct Sender {
    hyper: http1::SendRequest<RequestBody>,
    state: Arc<AtomicU8>,
}

/// [`Sender::state`]: its last response's head has come and allows another
/// request.
const OPEN: u8 = 0;
/// Its response's head has not come yet: hyper may call it ready before
/// the request's task has seen the head, which may retire it.
const AWAITING_HEAD: u8 = 1;
/// It carries no other request: to be dropped.
const RETIRED: u8 = 2;

impl Sender {
    /// Closed, or retired: either way to be dropped.
    fn is_closed(&self) -> bool {
        self.hyper.is_closed() || self.state.load(Relaxed) == RETIRED
    }

    /// Ready for a request: hyper's exchange done and its head judged.
    fn is_ready(&self) -> bool {
        self.state.load(Relaxed) == OPEN && self.hyper.is_ready()
    }
}

/// Retires its connection unless disarmed: an exchange dropped before its
/// head was judged (the client gone) leaves no connection waiting for ever.
struct UntilJudged(Arc<AtomicU8>);

impl Drop for UntilJudged {
    fn drop(&mut self) {
        let _ = (self.0).compare_exchange(AWAITING_HEAD, RETIRED, Relaxed, Relaxed);
    }
}

/// Why a request got no response.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// No connection to the server (refused, unreachable, timed out).
    #[error("connecting to the upstream: {0}")]
    Connect(io::Error),
    /// The exchange failed on an open connection.
    #[error("upstream request: {0}")]
    Request(hyper::Error),
    /// The same, on a bodiless request's own exchange ([`direct`]).
    #[error(transparent)]
    Direct(DirectError),
}

impl From<DirectError> for SendError {
    fn from(error: DirectError) -> Self {
        match error {
            DirectError::Connect(error) => Self::Connect(error),
            error => Self::Direct(error),
        }
    }
}

/// An upstream response's body: read by hyper's client, or in the
/// request's own task ([`direct`]).
#[derive(Debug)]
pub enum UpstreamBody {
    Hyper(Incoming),
    Direct(DirectBody),
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match self.get_mut() {
            Self::Hyper(body) => Pin::new(body).poll_frame(cx).map_err(Into::into),
            Self::Direct(body) => Pin::new(body).poll_frame(cx).map_err(Into::into),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            Self::Hyper(body) => body.is_end_stream(),
            Self::Direct(body) => body.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Hyper(body) => body.size_hint(),
            Self::Direct(body) => body.size_hint(),
        }
    }
}

/// A server's connections.
struct Server {
    addr: SocketAddr,
    /// Ready for a request, with when they were last handed one; most
    /// recently used last (taken first, so the rest can idle out).
    idle: Vec<(Sender, Instant)>,
    /// Handed a request (at that instant), oldest first: looked at in turns.
    busy: VecDeque<(Sender, Instant)>,
}

impl Server {
    /// Moves up to `count` of the oldest busy connections that finished
    /// to `idle`, drops closed ones and sends the rest to the back.
    fn promote(&mut self, count: usize) {
        for _ in 0..count.min(self.busy.len()) {
            let Some((sender, used)) = self.busy.pop_front() else {
                return;
            };
            #[cfg(test)]
            tests::LOOKED_AT.with(|n| n.set(n.get() + 1));
            if sender.is_closed() {
                continue;
            }
            if sender.is_ready() {
                self.idle.push((sender, used));
            } else {
                self.busy.push_back((sender, used));
            }
        }
    }

    fn is_empty(&self) -> bool {
        self.idle.is_empty() && self.busy.is_empty()
    }
}

/// This thread's servers, whether its reaper runs, and the idle timeout
/// of the latest request (a reload's applies from its first request on).
#[derive(Default)]
struct Kept {
    servers: Vec<Server>,
    reaping: bool,
    idle_timeout: Duration,
}

thread_local! {
    static KEPT: RefCell<Kept> = RefCell::default();
}

/// The pool's two timeouts (`limits.connect_timeout`,
/// `limits.upstream_idle_timeout`).
#[derive(Clone, Copy, Debug)]
pub struct Timeouts {
    pub connect: Duration,
    pub idle: Duration,
}

/// Sends `req` to `addr` over a kept connection, or a new one: a bodiless
/// one in this task ([`direct`]), others through hyper's client. On a kept
/// connection, a request is sent again once on a fresh one when the
/// upstream had closed it before anything was written, or, when the
/// request is idempotent and bodiless and the connection idle for
/// [`RISKY_IDLE`], when the upstream closed it before a response head
/// came (its keep-alive timer and our request crossed).
///
/// Not an `async fn`, whose future would keep `req` twice (see
/// `Gateway::handle`).
#[allow(clippy::manual_async_fn)] // what this says
pub fn send<'a>(
    addr: SocketAddr,
    mut req: Request<RequestBody>,
    added: Added<'a>,
    timeouts: Timeouts,
    now: Instant,
) -> impl Future<Output = Result<Response<UpstreamBody>, SendError>> + use<'a> {
    async move {
        if direct::eligible(&req) {
            let response =
                direct::send(addr, &req, &added, timeouts.connect, timeouts.idle, now).await?;
            return Ok(response.map(UpstreamBody::Direct));
        }
        added.insert_into(req.headers_mut());
        // The client's expectation was met here (hyper's server sent its
        // 100 as the body was read), and hyper's client sends the body at
        // once: an upstream refusing it (417) and keeping the connection
        // would read that body as a request. As `h1::encode_request_head`.
        req.headers_mut().remove(http::header::EXPECT);
        // Boxed: hyper's exchange is 2.6 KB of future that every request's
        // future would otherwise carry (and copy) for the few that take it.
        let response = Box::pin(send_by_hyper(addr, req, timeouts, now)).await?;
        Ok(response.map(UpstreamBody::Hyper))
    }
}

/// [`send`] through hyper's client.
async fn send_by_hyper(
    addr: SocketAddr,
    req: Request<RequestBody>,
    timeouts: Timeouts,
    now: Instant,
) -> Result<Response<Incoming>, SendError> {
    let (sender, used) = match take(addr, now, timeouts.idle) {
        Some((sender, used)) => (sender, Some(used)),
        None => (connect(addr, timeouts.connect).await?, None),
    };
    let replay = match used {
        Some(used) if now.saturating_duration_since(used) >= RISKY_IDLE => replayable(&req),
        _ => None,
    };
    match (
        exchange(addr, sender, req, now, timeouts.idle).await,
        replay,
    ) {
        // Closed under us before anything was written: a fresh one.
        (Err((_, Some(req))), _) if used.is_some() => {
            let sender = connect(addr, timeouts.connect).await?;
            (exchange(addr, sender, req, now, timeouts.idle).await).map_err(|(e, _)| e)
        }
        (Err((error, None)), Some(req)) if unanswered(&error) => {
            tracing::debug!(%error, upstream = %addr, "a kept connection closed under the request; sending it again");
            let sender = connect(addr, timeouts.connect).await?;
            (exchange(addr, sender, req, now, timeouts.idle).await).map_err(|(e, _)| e)
        }
        (result, _) => result.map_err(|(e, _)| e),
    }
}

/// A copy of `req` to send again, when that is safe: an idempotent method
/// (RFC 9110 §9.2.2) and no body.
fn replayable(req: &Request<RequestBody>) -> Option<Request<RequestBody>> {
    if !req.method().is_idempotent() || !req.body().is_end_stream() {
        return None;
    }
    let mut copy = Request::new(RequestBody::empty());
    *copy.method_mut() = req.method().clone();
    *copy.uri_mut() = req.uri().clone();
    *copy.version_mut() = req.version();
    *copy.headers_mut() = req.headers().clone();
    Some(copy)
}

/// Whether the upstream ended the connection with no response to the
/// request: hyper saw it close (or reset) before a complete response
/// head. Not a response it could not parse, nor a timeout.
fn unanswered(error: &SendError) -> bool {
    let SendError::Request(error) = error else {
        return false;
    };
    let reset = std::error::Error::source(error)
        .and_then(|source| source.downcast_ref::<io::Error>())
        .is_some_and(|io| {
            matches!(
                io.kind(),
                io::ErrorKind::ConnectionReset | io::ErrorKind::BrokenPipe
            )
        });
    error.is_incomplete_message() || error.is_canceled() || reset
}

/// Hands `req` to `sender`, which goes back to the busy queue at once (it
/// is taken again once ready), and waits for the response head. On failure,
/// the request if nothing of it was written.
///
/// A connection that answered a HEAD, a 204 or a 304 carries no other
/// request: upstreams that send a body anyway (a known bug) may send it
/// after the head, where hyper would read it as the next request's
/// response (see `direct::Conn::bodiless`). So no connection is taken
/// until its response's head has been judged here: hyper calls a
/// bodiless exchange done with its head, before this task runs again.
/// (These requests carry streamed bodies; the bodiless ones, most of them,
/// go [`direct`], which keeps such connections after a rest.)
async fn exchange(
    addr: SocketAddr,
    mut sender: Sender,
    req: Request<RequestBody>,
    now: Instant,
    idle_timeout: Duration,
) -> Result<Response<Incoming>, (SendError, Option<Request<RequestBody>>)> {
    let head_request = req.method() == http::Method::HEAD;
    sender.state.store(AWAITING_HEAD, Relaxed);
    let judged = UntilJudged(sender.state.clone());
    let response = sender.hyper.try_send_request(req);
    put_back(addr, sender, now, idle_timeout);
    let response = response.await.map_err(|mut error| {
        let req = error.take_message();
        (SendError::Request(error.into_error()), req)
    })?;
    let bodiless = head_request
        || matches!(
            response.status(),
            http::StatusCode::NO_CONTENT | http::StatusCode::NOT_MODIFIED
        );
    (judged.0).store(if bodiless { RETIRED } else { OPEN }, Relaxed);
    Ok(response)
}

/// A connection to `addr` that is ready for a request, if one is kept,
/// with when it was last handed one. Drops closed and expired ones on
/// the way.
fn take(addr: SocketAddr, now: Instant, idle_timeout: Duration) -> Option<(Sender, Instant)> {
    KEPT.with_borrow_mut(|kept| {
        let server = kept.servers.iter_mut().find(|s| s.addr == addr)?;
        server.promote(PROMOTE_PER_TAKE);
        while let Some((sender, used)) = server.idle.pop() {
            if spent(&sender, used, now, idle_timeout) {
                continue;
            }
            if sender.is_ready() {
                return Some((sender, used));
            }
            server.busy.push_back((sender, used));
        }
        None
    })
}

/// Whether a kept connection is of no more use: closed, or idle (ready)
/// with its last request handed over `idle_timeout` ago. Counted from the
/// request, not the response: a little early, never later than the
/// upstream's own timer, which starts at its response.
fn spent(sender: &Sender, used: Instant, now: Instant, idle_timeout: Duration) -> bool {
    sender.is_closed() || (sender.is_ready() && now.saturating_duration_since(used) >= idle_timeout)
}

/// Keeps `sender` (just handed a request at `now`) for `addr`; starts
/// this thread's reaper if it is not running.
fn put_back(addr: SocketAddr, sender: Sender, now: Instant, idle_timeout: Duration) {
    let start_reaper = KEPT.with_borrow_mut(|kept| {
        match kept.servers.iter_mut().find(|s| s.addr == addr) {
            Some(server) => server.busy.push_back((sender, now)),
            None => kept.servers.push(Server {
                addr,
                idle: Vec::new(),
                busy: VecDeque::from([(sender, now)]),
            }),
        }
        kept.idle_timeout = idle_timeout;
        !std::mem::replace(&mut kept.reaping, true)
    });
    if start_reaper {
        tokio::spawn(reap());
    }
}

/// Closes this thread's connections idle for the idle timeout (and drops
/// closed ones) every idle timeout, until none are kept.
async fn reap() {
    loop {
        let idle_timeout = KEPT.with_borrow(|kept| kept.idle_timeout);
        tokio::time::sleep(idle_timeout).await;
        let now = Instant::now();
        let done = KEPT.with_borrow_mut(|kept| {
            for server in &mut kept.servers {
                // Every busy one: those that finished may be spent.
                server.promote(server.busy.len());
                (server.idle).retain(|(sender, used)| !spent(sender, *used, now, idle_timeout));
            }
            kept.servers.retain(|server| !server.is_empty());
            kept.reaping = !kept.servers.is_empty();
            !kept.reaping
        });
        if done {
            return;
        }
    }
}

/// A new connection to `addr`, its hyper connection task spawned, ready
/// for a request.
async fn connect(addr: SocketAddr, timeout: Duration) -> Result<Sender, SendError> {
    let stream = direct::dial(addr, timeout)
        .await
        .map_err(SendError::Connect)?;
    let (mut hyper, conn) = http1::handshake(TokioIo::new(stream))
        .await
        .map_err(SendError::Request)?;
    tokio::spawn(async move {
        if let Err(error) = conn.with_upgrades().await {
            tracing::debug!(%error, "upstream connection ended with an error");
        }
    });
    hyper.ready().await.map_err(SendError::Request)?;
    Ok(Sender {
        hyper,
        state: Arc::new(AtomicU8::new(OPEN)),
    })
}

#[cfg(test)]
#[path = "upstream_conns_tests.rs"]
mod tests;
