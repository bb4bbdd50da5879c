//! Serving connections: the accept loop (with the per-connection half of
//! the accept phase), TLS handshakes, HTTP/1.1 and HTTP/2 by hyper, and
//! closing connections that had nothing in flight for
//! `limits.request_timeout` (HTTP/2 ones too, with GOAWAY first). A source
//! with `limits.max_connections_per_source` open has its next one closed
//! at accept. On shutdown the accept loop ends and every connection (and
//! WebSocket tunnel) drains (see [`super::drain`]).
use std::{convert::Infallible, net::SocketAddr, sync::Arc, time::Instant};

use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::conn::auto,
};
use tokio::{net::TcpListener, sync::watch};

use super::{drain, drain::OpenConnections, workers::TlsSlot, Current, Gateway};
use crate::clock::monotonic_ns;

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
        loop {
            let (stream, peer) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        tracing::warn!(%error, "accept failed");
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
                tracing::warn!(%peer, "connection limit reached; closing the new connection");
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
                            .serve_connection(current, stream, peer, "http", permit, shutdown)
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

impl Gateway {
    /// A TLS handshake within `limits.request_timeout`, then the connection.
    async fn serve_tls(
        self: Arc<Self>,
        current: Arc<Current>,
        acceptor: Arc<tokio_rustls::TlsAcceptor>,
        stream: tokio::net::TcpStream,
        peer: SocketAddr,
        permit: Arc<ConnectionPermit>,
        shutdown: watch::Receiver<bool>,
    ) {
        let handshake = tokio::time::timeout(self.limits.request_timeout, acceptor.accept(stream));
        match handshake.await {
            Ok(Ok(stream)) => {
                self.serve_connection(current, stream, peer, "https", permit, shutdown)
                    .await
            }
            Ok(Err(error)) => tracing::debug!(%peer, %error, "TLS handshake failed"),
            Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
        }
    }

    async fn serve_connection<I>(
        self: Arc<Self>,
        current: Arc<Current>,
        io: I,
        peer: SocketAddr,
        proto: &'static str,
        permit: Arc<ConnectionPermit>,
        mut shutdown: watch::Receiver<bool>,
    ) where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let header_timeout = self.limits.request_timeout;
        let max_buf = self.limits.max_header_bytes.max(8192);
        let activity = Arc::new(Activity::default());
        let seen = activity.clone();
        let service = hyper::service::service_fn(move |req: hyper::Request<_>| {
            let gateway = current.load();
            let busy = seen.begin(req.version());
            // For a tunnel this connection may become, which outlives it here.
            let permit = permit.clone();
            // Boxed: hyper keeps a slot of the service future's size per
            // connection for its whole life; the request pipeline's state is
            // kilobytes, held this way only while a request is in flight.
            Box::pin(async move {
                let mut response = gateway.handle(req, peer, proto, permit).await;
                busy.close_if_draining(&mut response);
                busy.never_index_per_request_values(&mut response);
                drop(busy);
                Ok::<_, Infallible>(response)
            })
        });
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(header_timeout)
            .max_buf_size(max_buf);
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_header_list_size(u32::try_from(max_buf).unwrap_or(u32::MAX));
        let connection = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
        tokio::pin!(connection);
        // Idle connections (HTTP/2 ones too, which the header-read timeout
        // does not cover) are closed gracefully after `request_timeout`
        // (HTTP/2: GOAWAY), and dropped if the peer lingers as long again.
        let mut ticker = tokio::time::interval(header_timeout / 2);
        let mut closing_since: Option<Instant> = None;
        let mut draining = false;
        let result = loop {
            tokio::select! {
                result = connection.as_mut() => break Some(result),
                _ = shutdown.changed(), if !draining => {
                    draining = true;
                    activity.set_draining(true);
                    ticker = tokio::time::interval(drain::TICK);
                }
                _ = ticker.tick() => match closing_since {
                    Some(since) if since.elapsed() >= header_timeout => break None,
                    Some(_) => {}
                    // Draining: HTTP/2 gets GOAWAY at once (its streams
                    // finish); HTTP/1 closes once idle for the grace, or
                    // after its next response (`Connection: close`).
                    None if activity.idle_for(monotonic_ns()) >= header_timeout
                        || (draining
                            && (activity.is_http2()
                                || activity.idle_for(monotonic_ns()) >= drain::IDLE_GRACE)) =>
                    {
                        connection.as_mut().graceful_shutdown();
                        closing_since = Some(Instant::now());
                    }
                    None => {}
                },
            }
        };
        if let Some(Err(error)) = result {
            tracing::debug!(%peer, %error, "connection ended with an error");
        }
    }
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

/// A connection's requests in flight and when the last one ended; whether
/// it speaks HTTP/2 and is draining.
struct Activity {
    in_flight: std::sync::atomic::AtomicUsize,
    last_ns: std::sync::atomic::AtomicU64,
    http2: std::sync::atomic::AtomicBool,
    draining: std::sync::atomic::AtomicBool,
}

impl Default for Activity {
    fn default() -> Self {
        Self {
            in_flight: Default::default(),
            last_ns: monotonic_ns().into(),
            http2: Default::default(),
            draining: Default::default(),
        }
    }
}

/// Counts one request in flight until dropped.
struct Busy(Arc<Activity>, hyper::Version);

impl Busy {
    /// While draining, an HTTP/1 response ends its connection (hyper
    /// closes after writing a response that says `Connection: close`).
    fn close_if_draining<B>(&self, response: &mut hyper::Response<B>) {
        use std::sync::atomic::Ordering::Relaxed;
        if self.1 < hyper::Version::HTTP_2 && self.0.draining.load(Relaxed) {
            response.headers_mut().insert(
                hyper::header::CONNECTION,
                hyper::header::HeaderValue::from_static("close"),
            );
        }
    }
}

/// Response headers whose value differs on every response: HPACK gains
/// nothing from keeping them in its dynamic table.
const PER_REQUEST_VALUES: [hyper::header::HeaderName; 3] = [
    super::forward::X_REQUEST_ID,
    super::forward::RATELIMIT,
    super::forward::X_RATELIMIT_REMAINING,
];

impl Busy {
    /// HTTP/2: headers whose value changes per response are sent as
    /// never-indexed literals. Indexing them evicted the stable headers
    /// (the rate-limit policy, the server, the content type) from the
    /// HPACK dynamic table and had the encoder compare each new value with
    /// every older one of the same name: a third of the encoder's work.
    /// Other versions ignore the flag.
    fn never_index_per_request_values<B>(&self, response: &mut hyper::Response<B>) {
        if self.1 != hyper::Version::HTTP_2 {
            return;
        }
        let headers = response.headers_mut();
        for name in &PER_REQUEST_VALUES {
            if let Some(value) = headers.get_mut(name) {
                value.set_sensitive(true);
            }
        }
    }
}

impl Drop for Busy {
    fn drop(&mut self) {
        use std::sync::atomic::Ordering::Relaxed;
        self.0.last_ns.store(monotonic_ns(), Relaxed);
        self.0.in_flight.fetch_sub(1, Relaxed);
    }
}

impl Activity {
    fn begin(self: &Arc<Self>, version: hyper::Version) -> Busy {
        use std::sync::atomic::Ordering::Relaxed;
        self.in_flight.fetch_add(1, Relaxed);
        if version == hyper::Version::HTTP_2 {
            self.http2.store(true, Relaxed);
        }
        Busy(self.clone(), version)
    }

    fn is_http2(&self) -> bool {
        self.http2.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn set_draining(&self, draining: bool) {
        self.draining
            .store(draining, std::sync::atomic::Ordering::Relaxed);
    }

    /// How long nothing has happened on the connection (zero while busy).
    fn idle_for(&self, now_ns: u64) -> std::time::Duration {
        use std::sync::atomic::Ordering::Relaxed;
        if self.in_flight.load(Relaxed) > 0 {
            return std::time::Duration::ZERO;
        }
        std::time::Duration::from_nanos(now_ns.saturating_sub(self.last_ns.load(Relaxed)))
    }
}
