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
//! sent) is retried once on a fresh connection; a connection idle for
//! [`IDLE_TIMEOUT`] is closed (checked when taking one, and by a reaper
//! task while any are kept); connects time out after
//! `limits.connect_timeout`, with `TCP_NODELAY`; upgrades (WebSocket)
//! take the connection with them.
use std::{cell::RefCell, collections::VecDeque, io, net::SocketAddr, time::Duration};

use http::Request;
use hyper::{body::Incoming, client::conn::http1, Response};
use hyper_util::rt::TokioIo;
use tokio::{net::TcpStream, time::Instant};

use super::body::RequestBody;

/// How long an idle upstream connection is kept (the pooled client's
/// setting before).
const IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// Busy connections a take checks for a finished exchange: enough to
/// find the one a sequential client just finished with, and a bound on
/// the work per request whatever number is in flight.
const PROMOTE_PER_TAKE: usize = 8;

type Sender = http1::SendRequest<RequestBody>;

/// Why a request got no response.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// No connection to the server (refused, unreachable, timed out).
    #[error("connecting to the upstream: {0}")]
    Connect(io::Error),
    /// The exchange failed on an open connection.
    #[error("upstream request: {0}")]
    Request(hyper::Error),
}

/// A server's connections.
struct Server {
    addr: SocketAddr,
    /// Ready for a request, with when they were found so; most recently
    /// used last (taken first, so the rest can idle out).
    idle: Vec<(Sender, Instant)>,
    /// Handed a request, oldest first: looked at in turns.
    busy: VecDeque<Sender>,
}

impl Server {
    /// Moves up to `count` of the oldest busy connections that finished
    /// to `idle`, drops closed ones and sends the rest to the back.
    fn promote(&mut self, count: usize, now: Instant) {
        for _ in 0..count.min(self.busy.len()) {
            let Some(sender) = self.busy.pop_front() else {
                return;
            };
            #[cfg(test)]
            tests::LOOKED_AT.with(|n| n.set(n.get() + 1));
            if sender.is_closed() {
                continue;
            }
            if sender.is_ready() {
                self.idle.push((sender, now));
            } else {
                self.busy.push_back(sender);
            }
        }
    }

    fn is_empty(&self) -> bool {
        self.idle.is_empty() && self.busy.is_empty()
    }
}

/// This thread's servers, and whether its reaper runs.
#[derive(Default)]
struct Kept {
    servers: Vec<Server>,
    reaping: bool,
}

thread_local! {
    static KEPT: RefCell<Kept> = RefCell::default();
}

/// Sends `req` to `addr` over a kept connection, or a new one.
pub async fn send(
    addr: SocketAddr,
    req: Request<RequestBody>,
    connect_timeout: Duration,
    now: Instant,
) -> Result<Response<Incoming>, SendError> {
    let (sender, reused) = match take(addr, now) {
        Some(sender) => (sender, true),
        None => (connect(addr, connect_timeout).await?, false),
    };
    match exchange(addr, sender, req).await {
        Err((_, Some(req))) if reused => {
            // Closed under us before anything was written: a fresh one.
            let sender = connect(addr, connect_timeout).await?;
            exchange(addr, sender, req).await.map_err(|(e, _)| e)
        }
        result => result.map_err(|(e, _)| e),
    }
}

/// Hands `req` to `sender`, which goes back to the busy queue at once (it
/// is taken again once ready), and waits for the response head. On failure,
/// the request if nothing of it was written.
async fn exchange(
    addr: SocketAddr,
    mut sender: Sender,
    req: Request<RequestBody>,
) -> Result<Response<Incoming>, (SendError, Option<Request<RequestBody>>)> {
    let response = sender.try_send_request(req);
    put_back(addr, sender);
    response.await.map_err(|mut error| {
        let req = error.take_message();
        (SendError::Request(error.into_error()), req)
    })
}

/// A connection to `addr` that is ready for a request, if one is kept.
/// Drops closed and expired ones on the way.
fn take(addr: SocketAddr, now: Instant) -> Option<Sender> {
    KEPT.with_borrow_mut(|kept| {
        let server = kept.servers.iter_mut().find(|s| s.addr == addr)?;
        server.promote(PROMOTE_PER_TAKE, now);
        while let Some((sender, since)) = server.idle.pop() {
            if spent(&sender, since, now) {
                continue;
            }
            if sender.is_ready() {
                return Some(sender);
            }
            server.busy.push_back(sender);
        }
        None
    })
}

/// Whether a kept connection is of no more use: closed, or idle (ready)
/// since `since` for [`IDLE_TIMEOUT`].
fn spent(sender: &Sender, since: Instant, now: Instant) -> bool {
    sender.is_closed() || (sender.is_ready() && now - since >= IDLE_TIMEOUT)
}

/// Keeps `sender` (just handed a request) for `addr`; starts this
/// thread's reaper if it is not running.
fn put_back(addr: SocketAddr, sender: Sender) {
    let start_reaper = KEPT.with_borrow_mut(|kept| {
        match kept.servers.iter_mut().find(|s| s.addr == addr) {
            Some(server) => server.busy.push_back(sender),
            None => kept.servers.push(Server {
                addr,
                idle: Vec::new(),
                busy: VecDeque::from([sender]),
            }),
        }
        !std::mem::replace(&mut kept.reaping, true)
    });
    if start_reaper {
        tokio::spawn(reap());
    }
}

/// Closes this thread's connections idle for [`IDLE_TIMEOUT`] (and drops
/// closed ones) every [`IDLE_TIMEOUT`], until none are kept.
async fn reap() {
    loop {
        tokio::time::sleep(IDLE_TIMEOUT).await;
        let now = Instant::now();
        let done = KEPT.with_borrow_mut(|kept| {
            for server in &mut kept.servers {
                (server.idle).retain(|(sender, since)| !spent(sender, *since, now));
                // Every busy one: those that finished start their idle time.
                server.promote(server.busy.len(), now);
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
    let stream = match tokio::time::timeout(timeout, TcpStream::connect(addr)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(error)) => return Err(SendError::Connect(error)),
        Err(_) => return Err(SendError::Connect(io::ErrorKind::TimedOut.into())),
    };
    stream.set_nodelay(true).map_err(SendError::Connect)?;
    let (mut sender, conn) = http1::handshake(TokioIo::new(stream))
        .await
        .map_err(SendError::Request)?;
    tokio::spawn(async move {
        if let Err(error) = conn.with_upgrades().await {
            tracing::debug!(%error, "upstream connection ended with an error");
        }
    });
    sender.ready().await.map_err(SendError::Request)?;
    Ok(sender)
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    thread_local! {
        /// Busy connections `promote` looked at on this thread.
        pub(super) static LOOKED_AT: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
    }

    /// A request to `addr` with an empty body.
    fn get(addr: SocketAddr) -> Request<RequestBody> {
        Request::builder()
            .uri("/x")
            .header(http::header::HOST, addr.to_string())
            .body(RequestBody::empty())
            .unwrap()
    }

    /// Reads one request head from `stream`.
    async fn read_head(stream: &mut tokio::net::TcpStream) -> bool {
        let mut head = Vec::new();
        let mut byte = [0; 1];
        while !head.ends_with(b"\r\n\r\n") && head.len() < 8192 {
            match stream.read(&mut byte).await {
                Ok(1) => head.push(byte[0]),
                _ => return false,
            }
        }
        true
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_connection_is_reused_and_one_the_upstream_closed_is_replaced() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (closed, mut on_closed) = tokio::sync::oneshot::channel();
        let upstream = tokio::spawn(async move {
            // The first connection answers two requests, then is closed;
            // the second answers one.
            let mut accepted = 0;
            let mut closed = Some(closed);
            for answers in [2, 1] {
                let (mut stream, _) = listener.accept().await.unwrap();
                accepted += 1;
                for _ in 0..answers {
                    assert!(read_head(&mut stream).await);
                    stream
                        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                        .await
                        .unwrap();
                }
                drop(stream);
                if let Some(closed) = closed.take() {
                    let _ = closed.send(());
                }
            }
            accepted
        });
        let timeout = Duration::from_secs(5);
        for i in 0..3 {
            if i == 2 {
                (&mut on_closed).await.unwrap();
                // Time for the connection task to read the close.
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let response = send(addr, get(addr), timeout, Instant::now())
                .await
                .unwrap();
            assert_eq!(response.status(), 200);
            let body = http_body_util::BodyExt::collect(response.into_body()).await;
            assert_eq!(&body.unwrap().to_bytes()[..], b"ok");
        }
        assert_eq!(upstream.await.unwrap(), 2);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_refused_connect_is_a_connect_error() {
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let error = send(addr, get(addr), Duration::from_secs(5), Instant::now())
            .await
            .unwrap_err();
        assert!(matches!(error, SendError::Connect(_)), "{error:?}");
    }

    /// A hung upstream with many requests in flight: each take looks at a
    /// bounded number of them (it scanned them all: CPU per request grew
    /// with the requests in flight), and a connection that finished behind
    /// them is still found.
    #[tokio::test(flavor = "current_thread")]
    async fn a_take_looks_at_a_bounded_number_of_busy_connections() {
        const IN_FLIGHT: usize = 64;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        // Answers the first connection's first request; the rest hang.
        let upstream = tokio::spawn(async move {
            let mut held = Vec::new();
            for i in 0..IN_FLIGHT {
                let (mut stream, _) = listener.accept().await.unwrap();
                assert!(read_head(&mut stream).await);
                if i == 0 {
                    stream
                        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                        .await
                        .unwrap();
                }
                held.push(stream);
            }
            held
        });
        let timeout = Duration::from_secs(5);
        let first = send(addr, get(addr), timeout, Instant::now())
            .await
            .unwrap();
        let body = http_body_util::BodyExt::collect(first.into_body()).await;
        assert_eq!(&body.unwrap().to_bytes()[..], b"ok");
        // IN_FLIGHT hung requests: the first reuses the finished
        // connection, each other one opens its own.
        let hung: Vec<_> = (0..IN_FLIGHT)
            .map(|_| tokio::spawn(send(addr, get(addr), timeout, Instant::now())))
            .collect();
        let held = upstream.await.unwrap();
        assert_eq!(held.len(), IN_FLIGHT);
        let busy = KEPT.with_borrow(|kept| kept.servers[0].busy.len());
        assert_eq!(
            busy, IN_FLIGHT,
            "every in-flight request holds its connection"
        );
        LOOKED_AT.with(|n| n.set(0));
        let takes = 20;
        for _ in 0..takes {
            assert!(
                take(addr, Instant::now()).is_none(),
                "all busy: nothing to take"
            );
        }
        let looked = LOOKED_AT.with(|n| n.get());
        // Less than a scan of every busy one per take (what it did), and
        // within the stated bound.
        assert!(
            looked < takes * IN_FLIGHT && looked <= takes.saturating_mul(PROMOTE_PER_TAKE),
            "{takes} takes looked at {looked} busy connections"
        );
        for task in hung {
            task.abort();
        }
    }
}
