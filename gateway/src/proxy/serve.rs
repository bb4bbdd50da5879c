//! Serving connections: the accept loop (with the per-connection half of
//! the accept phase), TLS handshakes, HTTP/1.1 and HTTP/2 by hyper, and
//! closing connections that had nothing in flight for
//! `limits.request_timeout` (HTTP/2 ones too, with GOAWAY first). A source
//! with `limits.max_connections_per_source` open has its next one closed
//! at accept. A plain connection's heads are read before hyper takes it
//! ([`super::first_head`]), and an idle plain HTTP/1.1 connection is
//! parked without hyper's state ([`super::park`]). On shutdown the accept
//! loop ends and every connection (and WebSocket tunnel) drains (see
//! [`super::drain`]).
use std::{
    convert::Infallible,
    future::Future,
    net::SocketAddr,
    os::fd::AsRawFd,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::{Duration, Instant},
};

use hyper::body::{Body as _, Incoming};
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    server::conn::auto,
};
use tokio::{
    net::{TcpListener, TcpStream},
    sync::watch,
};

use super::{
    activity::{Activity, Busy, StreamExec, Tracked},
    drain,
    drain::OpenConnections,
    first_head,
    flagged::Flagged,
    head_timer::HeadTimer,
    one_send::OneSend,
    park::ClientIo,
    workers::TlsSlot,
    Current, Gateway, ProxyBody,
};
use crate::{
    accept::{AcceptErrors, LogThrottle},
    clock::monotonic_ns,
};

/// hyper does not read the client's socket while a request is in flight
/// (HTTP/1). A client that half-closes after its request still gets its
/// response (as HAProxy's default), and hyper's read buffer is not
/// replaced per request: its look for an early EOF reserved a fresh 8 KiB
/// buffer while the request's head still held the old one. A client that
/// leaves is noticed when its response is written; until then its request
/// holds its connection slot, as a connected client's would.
const HALF_CLOSE: bool = true;

/// Streams one HTTP/2 connection may have open at once (hyper's default is
/// 200; HAProxy's 100, nginx's 128). Each may hold an upstream connection.
const H2_MAX_STREAMS: u32 = 100;

/// Response bytes hyper holds per HTTP/2 stream that the client's window
/// has not let out (hyper's default is 400 KiB): a client that grants no
/// window held that much per stream until [`super::window_stalls`] saw
/// it. 64 KiB is a default stream window's worth; with the 16 KiB pieces
/// [`super::activity`] hands over, a stream holds about 100 KiB at most.
const H2_SEND_BUFFER: usize = 64 << 10;

impl Current {
    /// Accepts connections until `shutdown` turns true (or the task is
    /// aborted: a reload removed the listener); with `tls`, each
    /// connection is a TLS handshake first (ALPN picks h2 or HTTP/1.1),
    /// with the certificate of the last reload. Connections are counted in
    /// `open` until they close; they drain on `shutdown`. Each connection
    /// is served by the gateway current at accept, each request by the one
    /// current when it arrives.
    pub async fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        tls: Option<TlsSlot>,
        mut shutdown: watch::Receiver<bool>,
        open: OpenConnections,
    ) {
        let (mut errors, mut refusals) = (AcceptErrors::default(), LogThrottle::default());
        loop {
            let (stream, peer) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        errors.failed(&error, "proxy listener").await;
                        continue;
                    }
                },
                _ = shutdown.changed() => return,
            };
            // Phase: accept (per connection).
            let gateway = self.load();
            if gateway.is_banned(peer.ip()) {
                continue;
            }
            let Ok(all) = gateway.shared.connections.clone().try_acquire_owned() else {
                if let Some(unlogged) = refusals.note(tokio::time::Instant::now()) {
                    tracing::warn!(%peer, unlogged, "connection limit reached; closing the new connection");
                }
                continue;
            };
            let source = if gateway.shared.guard.spared(peer.ip()) {
                Some(crate::connections::SourcePermit::uncounted())
            } else {
                gateway.shared.per_source.try_acquire(peer.ip())
            };
            let Some(source) = source else {
                tracing::debug!(%peer, "per-source connection limit reached; closing the new connection");
                continue;
            };
            // Counted open (for the drain) with the permit: as long as the
            // connection or the tunnel it becomes lives.
            let permit = Arc::new(ConnectionPermit {
                _all: all,
                _source: source,
                _open: open.open(),
            });
            let current = self.clone();
            let tls = tls.as_ref().map(|slot| slot.load_full());
            let shutdown = shutdown.clone();
            tokio::spawn(async move {
                match tls {
                    None => {
                        gateway
                            .serve_plain(current, stream, peer, permit, shutdown)
                            .await
                    }
                    // Boxed: the handshake and the TLS connection's state
                    // would otherwise size every plain connection's task too.
                    Some(acceptor) => {
                        let serve =
                            gateway.serve_tls(current, acceptor, stream, peer, permit, shutdown);
                        Box::pin(serve).await
                    }
                }
            });
        }
    }
}

/// A request's answer, boxed: hyper keeps a slot of the service future's
/// size per connection for its whole life; the request pipeline's state is
/// kilobytes, held this way only while a request is in flight.
type Answer =
    Pin<Box<dyn Future<Output = Result<hyper::Response<Tracked<ProxyBody>>, Infallible>> + Send>>;

/// How a connection's serving ended.
enum Ended<E> {
    /// hyper's connection finished (closed, upgraded, or closed for parking).
    Done(Result<(), E>),
    /// Asked to close, it lingered as long again as `request_timeout`.
    Dropped,
}

impl Gateway {
    /// The most a request head may take (hyper's read buffer limit):
    /// `limits.max_header_bytes`, and never under hyper's minimum.
    fn max_head(&self) -> usize {
        self.limits.max_header_bytes.max(8192)
    }

    /// A plain connection: each head read by [`first_head`] before hyper
    /// takes the connection (HTTP/2 with prior knowledge by the auto
    /// builder, HTTP/1.1 by hyper's own), parked between requests once
    /// idle for `limits.park_idle_after` (see [`super::park`]).
    async fn serve_plain(
        self: Arc<Self>,
        current: Arc<Current>,
        stream: TcpStream,
        peer: SocketAddr,
        permit: Arc<ConnectionPermit>,
        shutdown: watch::Receiver<bool>,
    ) {
        let activity = Arc::new(Activity::for_socket(stream.as_raw_fd()));
        let (max, timeout) = (self.max_head(), self.limits.request_timeout);
        let (mut stream, mut head, mut started) = (stream, Vec::new(), tokio::time::Instant::now());
        let mut parked = None;
        loop {
            let read = first_head::read(stream, head, max, started, timeout, shutdown.clone());
            let Some(io) = read.await else {
                return;
            };
            // HTTP/2 with prior knowledge starts a connection; after an
            // HTTP/1.1 request it is no preface but a bad request.
            let resumed = parked.take().is_some();
            activity.touch();
            if !resumed && io.is_http2() {
                let (current, shutdown) = (current.clone(), shutdown.clone());
                // Never parked; wrapped for its writes (the send timeout).
                let io = ClientIo::new(io, activity.clone());
                let serve =
                    self.serve_connection(current, io, peer, "http", permit, shutdown, activity);
                return Box::pin(serve).await;
            }
            let serve = self.serve_http1(&current, io, peer, &permit, &shutdown, &activity);
            let Some((next, rest)) = Box::pin(serve).await else {
                return;
            };
            let idle = activity.idle_for(monotonic_ns());
            let now = tokio::time::Instant::now();
            (stream, head, started) = (next, rest, now.checked_sub(idle).unwrap_or(now));
            parked = Some(self.shared.parked.park());
        }
    }

    /// HTTP/1.1 by hyper until the connection closes, or until it is
    /// parked: then its socket and the bytes hyper had read of the next
    /// head.
    async fn serve_http1(
        &self,
        current: &Arc<Current>,
        io: first_head::Prefixed<TcpStream>,
        peer: SocketAddr,
        permit: &Arc<ConnectionPermit>,
        shutdown: &watch::Receiver<bool>,
        activity: &Arc<Activity>,
    ) -> Option<(TcpStream, Vec<u8>)> {
        let service = service(
            current.clone(),
            peer,
            "http",
            permit.clone(),
            activity.clone(),
        );
        let mut builder = hyper::server::conn::http1::Builder::new();
        builder
            .timer(HeadTimer::default())
            .header_read_timeout(self.limits.request_timeout)
            .half_close(HALF_CLOSE)
            .max_buf_size(self.max_head());
        // A small response goes out in one `send` (see `OneSend`).
        let io = TokioIo::new(ClientIo::new(OneSend(io), activity.clone()));
        let mut connection = builder.serve_connection(io, service).with_upgrades();
        let park_after = Some(self.limits.park_idle_after).filter(|after| !after.is_zero());
        let graceful = |c: Pin<&mut _>| {
            hyper::server::conn::http1::UpgradeableConnection::graceful_shutdown(c)
        };
        let ended = self
            .drive(
                Pin::new(&mut connection),
                graceful,
                activity,
                shutdown.clone(),
                park_after,
            )
            .await;
        if let Ended::Done(Err(error)) = &ended {
            tracing::debug!(%peer, %error, "connection ended with an error");
        }
        let (Ended::Done(Ok(())), Some(parts)) = (ended, connection.into_parts()) else {
            return None;
        };
        let (unread, stream) = parts.io.into_inner().resumable()?.0.into_parts();
        let mut head = parts.read_buf.to_vec();
        head.extend_from_slice(&unread);
        Some((stream, head))
    }

    /// A TLS handshake within `limits.request_timeout`, then the connection.
    async fn serve_tls(
        self: Arc<Self>,
        current: Arc<Current>,
        acceptor: Arc<tokio_rustls::TlsAcceptor>,
        stream: TcpStream,
        peer: SocketAddr,
        permit: Arc<ConnectionPermit>,
        shutdown: watch::Receiver<bool>,
    ) {
        let activity = Arc::new(Activity::for_socket(stream.as_raw_fd()));
        let handshake = tokio::time::timeout(
            self.limits.request_timeout,
            acceptor.accept(ClientIo::new(OneSend(stream), activity.clone())),
        );
        match handshake.await {
            Ok(Ok(stream)) => {
                self.serve_connection(current, stream, peer, "https", permit, shutdown, activity)
                    .await
            }
            Ok(Err(error)) => tracing::debug!(%peer, %error, "TLS handshake failed"),
            Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
        }
    }

    /// HTTP/1.1 or HTTP/2 (the auto builder tells), never parked.
    #[allow(clippy::too_many_arguments)]
    async fn serve_connection<I>(
        self: Arc<Self>,
        current: Arc<Current>,
        io: I,
        peer: SocketAddr,
        proto: &'static str,
        permit: Arc<ConnectionPermit>,
        shutdown: watch::Receiver<bool>,
        activity: Arc<Activity>,
    ) where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let max_buf = self.max_head();
        let service = service(current, peer, proto, permit, activity.clone());
        let mut builder = auto::Builder::new(StreamExec(activity.clone()));
        builder
            .http1()
            .timer(HeadTimer::default())
            .header_read_timeout(self.limits.request_timeout)
            .half_close(HALF_CLOSE)
            .max_buf_size(max_buf);
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_concurrent_streams(H2_MAX_STREAMS)
            .max_send_buf_size(H2_SEND_BUFFER)
            .max_header_list_size(u32::try_from(max_buf).unwrap_or(u32::MAX));
        let connection = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
        tokio::pin!(connection);
        let graceful = |c: Pin<&mut _>| auto::UpgradeableConnection::graceful_shutdown(c);
        let ended = self
            .drive(connection, graceful, &activity, shutdown, None)
            .await;
        if let Ended::Done(Err(error)) = ended {
            tracing::debug!(%peer, %error, "connection ended with an error");
        }
    }

    /// Polls `connection` to its end. Idle connections (HTTP/2 ones too,
    /// which the header-read timeout does not cover) are closed gracefully
    /// after `request_timeout` (HTTP/2: GOAWAY), and dropped if the peer
    /// lingers as long again; with `park_after`, one that may be parked
    /// ([`Activity::may_park`]) is closed for parking once idle that long.
    async fn drive<C, E>(
        &self,
        mut connection: Pin<&mut C>,
        graceful: impl Fn(Pin<&mut C>),
        activity: &Activity,
        mut shutdown: watch::Receiver<bool>,
        park_after: Option<Duration>,
    ) -> Ended<E>
    where
        C: Future<Output = Result<(), E>>,
    {
        let header_timeout = self.limits.request_timeout;
        let period = park_after.map_or(header_timeout / 2, |after| after.min(header_timeout / 2));
        let mut ticker = tokio::time::interval(period);
        let mut closing_since: Option<Instant> = None;
        // Where a blocked response was first seen stuck, and when.
        let mut stuck = None;
        let mut draining = false;
        let mut changed = std::pin::pin!(shutdown.changed());
        // The side futures are polled only when they woke the task.
        let (mut ticked, mut signalled) = (Flagged::default(), Flagged::default());
        loop {
            let event = std::future::poll_fn(|cx| {
                if let Poll::Ready(result) = connection.as_mut().poll(cx) {
                    return Poll::Ready(Event::Done(result));
                }
                if let Some(waker) = signalled.due(cx.waker()).filter(|_| !draining) {
                    let mut side = Context::from_waker(waker);
                    if changed.as_mut().poll(&mut side).is_ready() {
                        return Poll::Ready(Event::Shutdown);
                    }
                }
                if let Some(waker) = ticked.due(cx.waker()) {
                    if ticker.poll_tick(&mut Context::from_waker(waker)).is_ready() {
                        ticked.again();
                        return Poll::Ready(Event::Tick);
                    }
                }
                Poll::Pending
            })
            .await;
            match event {
                Event::Done(result) => return Ended::Done(result),
                Event::Shutdown => {
                    draining = true;
                    activity.set_draining(true);
                    ticker = tokio::time::interval(drain::TICK);
                    ticked.again();
                }
                Event::Tick => match closing_since {
                    _ if stalled(activity, &mut stuck, header_timeout, period) => {
                        return Ended::Dropped
                    }
                    Some(since) if since.elapsed() >= header_timeout => return Ended::Dropped,
                    Some(_) => {}
                    // Draining: HTTP/2 gets GOAWAY at once (its streams
                    // finish); HTTP/1 closes once idle for the grace, or
                    // after its next response (`Connection: close`).
                    None if activity.idle_for(monotonic_ns()) >= header_timeout
                        || (draining
                            && (activity.is_http2()
                                || activity.idle_for(monotonic_ns()) >= drain::IDLE_GRACE)) =>
                    {
                        graceful(connection.as_mut());
                        closing_since = Some(Instant::now());
                    }
                    None if !draining
                        && park_after
                            .is_some_and(|after| activity.may_park(after, monotonic_ns())) =>
                    {
                        activity.set_parking(true);
                        graceful(connection.as_mut());
                        closing_since = Some(Instant::now());
                    }
                    None => {}
                },
            }
        }
    }
}

/// Whether a response has had its socket full, no write taking a byte and
/// the client acknowledging none, for `timeout` (see
/// [`Activity::blocked_writes`]), or an HTTP/2 stream waiting that long
/// for the client's window could not be reset alone (see
/// [`super::window_stalls`], which resets the others; `period`: the ticks'
/// longest period): the connection is dropped, not closed gracefully,
/// which would wait for that write. `stuck`: where the
/// response was first seen blocked, and when.
fn stalled(
    activity: &Activity,
    stuck: &mut Option<((u64, i32), Instant)>,
    timeout: Duration,
    period: Duration,
) -> bool {
    let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    if activity.is_http2()
        && (activity.window_stalls).tick(monotonic_ns() / 1_000_000, ms(timeout), ms(period))
    {
        return true;
    }
    let Some(stands) = activity.blocked_writes() else {
        *stuck = None;
        return false;
    };
    match stuck {
        Some((at, since)) if *at == stands => since.elapsed() >= timeout,
        _ => {
            *stuck = Some((stands, Instant::now()));
            false
        }
    }
}

/// What woke [`Gateway::drive`]'s loop.
enum Event<E> {
    Done(Result<(), E>),
    Shutdown,
    Tick,
}

/// The service hyper calls per request: the gateway current when the
/// request arrives handles it; its [`Busy`] lives as long as its response
/// body.
fn service(
    current: Arc<Current>,
    peer: SocketAddr,
    proto: &'static str,
    permit: Arc<ConnectionPermit>,
    activity: Arc<Activity>,
) -> impl hyper::service::Service<
    hyper::Request<Incoming>,
    Response = hyper::Response<Tracked<ProxyBody>>,
    Error = Infallible,
    Future = Answer,
> + Clone
       + Send
       + 'static {
    let peer = super::addr_text::Peer::from(peer);
    hyper::service::service_fn(move |req: hyper::Request<Incoming>| -> Answer {
        let gateway = current.load();
        // Once answered, hyper is between messages only if it read the
        // whole request with its head (see `super::park`).
        let parkable = req.body().is_end_stream()
            && req.method() != hyper::Method::CONNECT
            && !req.headers().contains_key(hyper::header::UPGRADE);
        let busy = activity.begin(req.version(), parkable);
        // For a tunnel this connection may become, which outlives it here.
        let (permit, peer) = (permit.clone(), peer.clone());
        boxed_in_place(|| {
            gateway.handle(req, peer, proto, permit, move |mut response| {
                close_if_draining(&busy, &mut response);
                Ok(response.map(|body| Tracked::new(body, busy)))
            })
        })
    })
}

/// `make()`'s future in a box allocated before it is built, so the
/// compiler can build (part of) it there: `Box::pin(make())` builds the
/// request's future (kilobytes) on the stack and copies all of it into the
/// box (measured: memcpy -148 instructions a request, of ~330).
fn boxed_in_place<F: Future>(make: impl FnOnce() -> F) -> Pin<Box<F>> {
    let slot = Box::<F>::new_uninit();
    Box::into_pin(Box::write(slot, make()))
}

/// What an open client connection holds: its slot in
/// `limits.max_connections` and in its source's count, and its count in
/// the worker's open connections (a drain waits for it). Shared (`Arc`)
/// with the WebSocket tunnel the connection may become, so the slots stay
/// taken, and a drain waits, as long as the tunnel lives.
pub(super) struct ConnectionPermit {
    _all: tokio::sync::OwnedSemaphorePermit,
    _source: crate::connections::SourcePermit,
    _open: drain::Open,
}

/// While draining, an HTTP/1 response ends its connection (hyper closes
/// after writing a response that says `Connection: close`).
fn close_if_draining<B>(busy: &Busy, response: &mut hyper::Response<B>) {
    if busy.version() < hyper::Version::HTTP_2 && busy.draining() {
        response.headers_mut().insert(
            hyper::header::CONNECTION,
            hyper::header::HeaderValue::from_static("close"),
        );
    }
}
