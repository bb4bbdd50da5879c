//! The admin listener (default `127.0.0.1:9901`, its own socket, never the
//! public one). Endpoints:
//!
//! - `GET /healthz`: `{"status":"ok"}`; no credential.
//! - `GET /metrics`: Prometheus text (see [`crate::metrics`]); no credential,
//!   like any scrape target: keep the listener on a private address.
//! - `GET /v1/management/openapi.json`: the OpenAPI 3 document of what
//!   follows; no credential.
//! - `POST /v1/management/api-clients`, `GET` (list, paginated, filter by
//!   name or tier), `GET/PATCH/DELETE /v1/management/api-clients/{id}`,
//!   `POST .../{id}/rotate`, `GET/DELETE .../{id}/limits`: see
//!   [`clients`].
//! - `GET /v1/xdp/events[?replay=N]`: the XDP program's kernel events as
//!   newline-delimited JSON, the last few first, then live (what `gateway
//!   xdp events` follows); 409 when no XDP program is loaded, 503 past
//!   [`events::MAX_FOLLOWERS`] streams. See [`events`].
//!
//! - `POST /v1/reload`: re-reads the configuration file the gateway was
//!   started with and applies it (see [`crate::reload`]); 200 with what
//!   changed (and the keys that need a restart), 422 with `check-config`'s
//!   message for an invalid file (nothing changes), 409 when there is no
//!   file (started without `--config`) or the reload could not be applied.
//!
//! - `GET /v1/top`: one snapshot for `gateway top` (requests by route,
//!   tier and status; the busiest clients with their remaining quota; bans
//!   in force with reason and time left; XDP counters; upstream health),
//!   bounded in size. See [`top`].
//!
//! While the gateway drains (it handed its kernel path to a gateway that
//! took over from it, or it is shutting down) every change (`POST
//! /v1/reload`, management writes) is answered 503 `draining` with
//! `Retry-After` and `Connection: close`: see [`draining`].
//!
//! The `/v1/management`, `/v1/xdp`, `/v1/top` and `/v1/reload` endpoints take an admin key (`gateway keys
//! bootstrap`, or `create --admin`) in `Authorization: Bearer`. A key with
//! the `admin:read` scope may only read; other admin keys may also change.
//! Other keys get 403. Every change is one line in the audit log.
pub mod audit;
mod auth;
mod clients;
mod draining;
mod error;
pub mod events;
mod idle;
mod scrape;
mod spec;
mod top;

use std::{convert::Infallible, net::SocketAddr, path::PathBuf, sync::Arc};

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Either, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use serde_json::json;
use tokio::net::TcpListener;

use self::auth::{admit, bearer, Access};
use self::error::json_response;
pub(crate) use self::error::AdminError;
use crate::{
    clock::{monotonic_ns, unix_now},
    config::Config,
    in_flight::InFlight,
    keys::{Client, KeyStore},
    reload::Reloader,
    shared::Shared,
    xdp::EventHub,
};

/// The scope that limits an admin key to reading.
pub const READ_ONLY_SCOPE: &str = "admin:read";
pub use spec::OPENAPI;
/// Largest request body the admin API reads.
const MAX_BODY: usize = 64 * 1024;
/// Open admin connections; more are closed at accept. Operators and
/// scrapers need a handful, and the listener should be private anyway.
pub const MAX_CONNECTIONS: usize = 64;

type AdminResponse = Response<Full<Bytes>>;
/// A whole answer, or the kernel events' stream.
type AdminBody = Either<Full<Bytes>, events::EventStream>;

pub struct Admin {
    pub shared: Shared,
    pub store: Arc<dyn KeyStore>,
    pub audit: audit::AuditLog,
    /// Where the kernel path's maps are pinned, when XDP is attached.
    pub pin_root: Option<PathBuf>,
    /// Reading a request's headers (`limits.request_timeout`).
    pub header_timeout: std::time::Duration,
    /// [`MAX_CONNECTIONS`].
    connections: Arc<tokio::sync::Semaphore>,
    /// The kernel events, when an XDP program is loaded.
    events: Option<EventHub>,
    /// [`events::MAX_FOLLOWERS`].
    followers: Arc<tokio::sync::Semaphore>,
    /// `xdp.max_bans`, `xdp.max_prefix_bans`: the ban maps' sizes.
    ban_map_capacity: (u32, u32),
    /// The last walk of the ban maps, which scrapes share.
    ban_walks: scrape::WalkCache,
    /// The certificates the TLS listeners serve (for their expiry), as of
    /// the reload generation they were read at.
    certificates: std::sync::Mutex<(u64, Vec<crate::metrics::ops::Certificate>)>,
    /// `POST /v1/reload`; what the workers share since the last reload.
    reloader: Option<Arc<Reloader>>,
}

/// One management request, as the handlers see it.
pub(crate) struct Call<'a> {
    pub method: &'a Method,
    /// Path segments after `/v1/management/api-clients`.
    pub rest: &'a [&'a str],
    pub query: Option<&'a str>,
    pub body: Bytes,
    /// The admin client making the call (for the audit log).
    pub actor: &'a Client,
    pub peer: SocketAddr,
}

impl Admin {
    pub fn new(
        config: &Config,
        shared: Shared,
        store: Arc<dyn KeyStore>,
        pin_root: Option<PathBuf>,
    ) -> std::io::Result<Self> {
        Ok(Self {
            shared,
            store,
            audit: audit::AuditLog::open(&config.admin.audit_log)?,
            pin_root,
            header_timeout: config.limits.request_timeout,
            connections: Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS)),
            events: None,
            followers: Arc::new(tokio::sync::Semaphore::new(events::MAX_FOLLOWERS)),
            ban_map_capacity: (config.xdp.max_bans, config.xdp.max_prefix_bans),
            ban_walks: scrape::WalkCache::default(),
            certificates: std::sync::Mutex::new((0, scrape::certificates(config))),
            reloader: None,
        })
    }

    /// Answers `POST /v1/reload` with `reloader`, and reads tiers and
    /// pools from what it last applied.
    pub fn with_reloader(mut self, reloader: Arc<Reloader>) -> Self {
        self.reloader = Some(reloader);
        self
    }

    /// What the workers share now (tiers, issuers and pools change with a
    /// reload; keys, limiter and guard are the same objects throughout).
    fn current(&self) -> Shared {
        (self.reloader.as_ref()).map_or_else(|| self.shared.clone(), |r| r.shared())
    }

    /// Serves the kernel events (`GET /v1/xdp/events`) from `events`.
    pub fn with_events(mut self, events: Option<EventHub>) -> Self {
        self.events = events;
        self
    }

    /// Serves until the runtime stops: at most [`MAX_CONNECTIONS`] at once,
    /// each with `limits.request_timeout` to send a request's headers, and
    /// dropped once idle that long (see [`idle`]).
    /// Stops accepting once the kernel path is handed off (see [`draining`]).
    pub async fn serve(self: Arc<Self>, listener: TcpListener) {
        let handed_off = draining::until_handed_off(self.reloader.clone());
        tokio::pin!(handed_off);
        let mut errors = crate::accept::AcceptErrors::default();
        let mut refusals = crate::accept::LogThrottle::default();
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                () = &mut handed_off => return draining::stop_accepting(&listener),
            };
            let (stream, peer) = match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    errors.failed(&error, "admin listener").await;
                    continue;
                }
            };
            let Ok(permit) = self.connections.clone().try_acquire_owned() else {
                if let Some(unlogged) = refusals.note(tokio::time::Instant::now()) {
                    tracing::warn!(%peer, unlogged, "admin connection limit reached; closing the new connection");
                }
                continue;
            };
            tokio::spawn(self.clone().connection(stream, peer, permit));
        }
    }

    /// Serves one connection until it ends or stays idle for the header
    /// timeout (see [`idle`]).
    async fn connection(
        self: Arc<Self>,
        stream: tokio::net::TcpStream,
        peer: SocketAddr,
        _permit: tokio::sync::OwnedSemaphorePermit,
    ) {
        let header_timeout = self.header_timeout;
        let requests = Arc::new(InFlight::default());
        let service = hyper::service::service_fn({
            let requests = requests.clone();
            move |req| {
                let (admin, requests) = (self.clone(), requests.clone());
                async move {
                    let request = idle::Request::begin(&requests);
                    let response = admin.handle(req, peer).await;
                    Ok::<_, Infallible>(response.map(|body| idle::Guarded::new(body, request)))
                }
            }
        });
        let mut builder = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(header_timeout);
        builder.http2().timer(TokioTimer::new());
        let connection = builder.serve_connection(TokioIo::new(stream), service);
        tokio::pin!(connection);
        let mut ticker = tokio::time::interval(header_timeout / 2);
        loop {
            tokio::select! {
                ended = &mut connection => {
                    if let Err(error) = ended {
                        tracing::debug!(%peer, %error, "admin connection ended with an error");
                    }
                    return;
                }
                _ = ticker.tick() => if requests.idle_for(monotonic_ns()) >= header_timeout {
                    tracing::debug!(%peer, "admin connection idle; dropped");
                    return;
                }
            }
        }
    }

    async fn handle(&self, req: Request<Incoming>, peer: SocketAddr) -> Response<AdminBody> {
        let path = req.uri().path().to_owned();
        let method = req.method().clone();
        let response = if method == Method::GET && path == events::PATH {
            self.events(&req, peer).map(|r| r.map(Either::Right))
        } else {
            self.route(req, peer).await.map(|r| r.map(Either::Left))
        };
        let response = response.unwrap_or_else(|error| error.into_response().map(Either::Left));
        if path.starts_with("/v1/") {
            tracing::info!(%peer, %method, %path, status = response.status().as_u16(), "admin request");
        }
        response
    }

    async fn route(
        &self,
        req: Request<Incoming>,
        peer: SocketAddr,
    ) -> Result<AdminResponse, AdminError> {
        let path = req.uri().path().to_owned();
        let query = req.uri().query().map(str::to_owned);
        let method = req.method().clone();
        let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
        match (&method, segments.as_slice()) {
            (&Method::GET, ["healthz"]) => {
                Ok(json_response(StatusCode::OK, &json!({ "status": "ok" })))
            }
            (&Method::GET, ["metrics"]) => Ok(self.metrics_response()),
            (&Method::GET, ["v1", "management", "openapi.json"]) => {
                let shared = self.current();
                let doc = spec::document(shared.quotas.iter().map(|q| q.name.as_str()));
                Ok(json_response(StatusCode::OK, &doc))
            }
            (_, ["v1", "top"]) => {
                self.authorize_counted(&req, Access::Read, peer)?;
                if method != Method::GET {
                    return Err(AdminError::MethodNotAllowed("GET"));
                }
                // The pinned maps' reads are system calls.
                let snapshot = tokio::task::block_in_place(|| self.top());
                Ok(json_response(StatusCode::OK, &snapshot))
            }
            (_, ["v1", "reload"]) => {
                let actor = self.authorize_counted(&req, Access::Write, peer)?;
                if method != Method::POST {
                    return Err(AdminError::MethodNotAllowed("POST"));
                }
                // Files, sockets and the kernel's maps block; this runtime
                // has other threads for the rest.
                tokio::task::block_in_place(|| self.reload_config(&actor, peer))
            }
            (_, ["v1", "management", "api-clients", rest @ ..]) => {
                let access = if method == Method::GET {
                    Access::Read
                } else {
                    Access::Write
                };
                let actor = self.authorize_counted(&req, access, peer)?;
                let body = Limited::new(req.into_body(), MAX_BODY)
                    .collect()
                    .await
                    .map_err(|e| AdminError::BadRequest(format!("reading the body: {e}")))?
                    .to_bytes();
                let call = Call {
                    method: &method,
                    rest,
                    query: query.as_deref(),
                    body,
                    actor: &actor,
                    peer,
                };
                self.clients(&call).await
            }
            _ => Err(AdminError::NotFound),
        }
    }

    /// `GET /v1/xdp/events`: any admin key, read-only ones included.
    fn events(
        &self,
        req: &Request<Incoming>,
        peer: SocketAddr,
    ) -> Result<Response<events::EventStream>, AdminError> {
        self.authorize_counted(req, Access::Read, peer)?;
        let replay = events::replay(req.uri().query())?;
        let hub = self.events.as_ref().ok_or_else(|| {
            AdminError::Conflict("no XDP program is loaded: there are no kernel events".into())
        })?;
        // A stream holds its connection for as long as the client likes:
        // a few of them must not take every admin connection.
        let follower = (self.followers.clone())
            .try_acquire_owned()
            .map_err(|_| AdminError::TooManyFollowers)?;
        // The key is checked again before each live event: one revoked,
        // disabled or expired since stops the stream.
        let keys = self.shared.keys.clone();
        let key = bearer(req)?.to_owned();
        let still_admitted = move || admit(&keys, &key, Access::Read).is_ok();
        Ok(events::stream(
            hub,
            replay,
            follower,
            Box::new(still_admitted),
        ))
    }

    /// Makes a change to client `id` visible to the request path now,
    /// not at the next refresh. The change is committed, so a store that
    /// fails to answer now does not make it an error: the client leaves
    /// this node's index instead (refused here, never served as it was)
    /// until the store's next notification or version check brings it back.
    async fn refresh(&self, id: &str) {
        let keys = &self.shared.keys;
        if let Err(error) = keys.refresh_client(self.store.as_ref(), id).await {
            tracing::warn!(%error, client = id, "the change is made, but not read back: the client is refused here until the store answers");
            keys.apply_client(id, None, &[]);
        }
    }

    /// `POST /v1/reload`, audited.
    fn reload_config(&self, actor: &Client, peer: SocketAddr) -> Result<AdminResponse, AdminError> {
        let result = match &self.reloader {
            Some(reloader) => reloader.reload_logged().map_err(AdminError::from),
            None => Err(AdminError::Conflict("this gateway cannot reload".into())),
        };
        let status = match &result {
            Ok(_) => StatusCode::OK,
            Err(error) => error.status().0,
        };
        self.audit.record(&audit::AuditEntry {
            ts: unix_now(),
            actor: &actor.id,
            action: "reload",
            client_id: None,
            peer,
            status: status.as_u16(),
        });
        let mut body = serde_json::to_value(result?).unwrap_or_default();
        body["status"] = json!("reloaded");
        Ok(json_response(StatusCode::OK, &body))
    }
}
