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
//! The `/v1/management`, `/v1/xdp`, `/v1/top` and `/v1/reload` endpoints take an admin key (`gateway keys
//! bootstrap`, or `create --admin`) in `Authorization: Bearer`. A key with
//! the `admin:read` scope may only read; other admin keys may also change.
//! Other keys get 403. Every change is one line in the audit log.
pub mod audit;
mod clients;
pub mod events;
mod scrape;
mod spec;
mod top;

use std::{convert::Infallible, net::SocketAddr, path::PathBuf, sync::Arc};

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Either, Full, Limited};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use serde_json::json;
use tokio::net::TcpListener;

use crate::{
    clock::{monotonic_ns, unix_now},
    config::Config,
    keys::{Client, KeyIndex, KeyRejection, KeyStore},
    metrics::Gauges,
    reload::{ReloadError, Reloader},
    shared::Shared,
    xdp::{EventHub, PinnedMaps},
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
    /// The certificates the TLS listeners serve (for their expiry), as of
    /// the reload generation they were read at.
    certificates: std::sync::Mutex<(u64, Vec<crate::metrics::ops::Certificate>)>,
    /// `POST /v1/reload`; what the workers share since the last reload.
    reloader: Option<Arc<Reloader>>,
}

/// Why the admin API refused a request.
#[derive(Debug, thiserror::Error)]
pub(crate) enum AdminError {
    #[error("an admin key is required (Authorization: Bearer <key>)")]
    MissingCredential,
    /// Kept whole for the guard; the message says only what a client may
    /// see ([`KeyRejection::public_str`]).
    #[error("the key was refused ({})", .0.public_str())]
    InvalidCredential(KeyRejection),
    #[error("this key may not use the admin API")]
    NotAdmin,
    #[error("this admin key may only read")]
    ReadOnly,
    #[error("no client {0:?}")]
    UnknownClient(String),
    #[error("no such endpoint")]
    NotFound,
    /// With the methods the resource has, for `Allow` (RFC 9110 15.5.6).
    #[error("method not allowed here")]
    MethodNotAllowed(&'static str),
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Conflict(String),
    #[error(
        "{} clients already follow the kernel events; try again later",
        events::MAX_FOLLOWERS
    )]
    TooManyFollowers,
    #[error("the key store failed: {0}")]
    Store(#[from] crate::keys::StoreError),
    #[error("{0}")]
    Reload(#[from] ReloadError),
}

impl AdminError {
    fn status(&self) -> (StatusCode, &'static str) {
        match self {
            AdminError::MissingCredential => (StatusCode::UNAUTHORIZED, "missing_credential"),
            AdminError::InvalidCredential(_) => (StatusCode::UNAUTHORIZED, "invalid_credential"),
            AdminError::NotAdmin => (StatusCode::FORBIDDEN, "not_admin"),
            AdminError::ReadOnly => (StatusCode::FORBIDDEN, "read_only"),
            AdminError::UnknownClient(_) | AdminError::NotFound => {
                (StatusCode::NOT_FOUND, "not_found")
            }
            AdminError::MethodNotAllowed(_) => {
                (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed")
            }
            AdminError::BadRequest(_) => (StatusCode::BAD_REQUEST, "bad_request"),
            AdminError::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            AdminError::TooManyFollowers => (StatusCode::SERVICE_UNAVAILABLE, "too_many_followers"),
            AdminError::Store(error) if error.is_unavailable() => {
                (StatusCode::SERVICE_UNAVAILABLE, "store_unavailable")
            }
            AdminError::Store(_) => (StatusCode::INTERNAL_SERVER_ERROR, "store_error"),
            AdminError::Reload(ReloadError::Invalid(_)) => {
                (StatusCode::UNPROCESSABLE_ENTITY, "invalid_config")
            }
            AdminError::Reload(_) => (StatusCode::CONFLICT, "reload_refused"),
        }
    }

    fn into_response(self) -> AdminResponse {
        let (status, code) = self.status();
        let allow = match &self {
            AdminError::MethodNotAllowed(allow) => Some(*allow),
            _ => None,
        };
        if status == StatusCode::INTERNAL_SERVER_ERROR {
            tracing::error!(error = %self, "admin request failed");
        }
        let mut response = json_response(
            status,
            &json!({ "error": code, "message": self.to_string() }),
        );
        if status == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"gateway-admin\""),
            );
        }
        if code == "store_unavailable" {
            tracing::warn!(error = %self, "admin request refused: the key store is out of reach");
            (response.headers_mut()).insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
        }
        if let Some(allow) = allow {
            (response.headers_mut()).insert(header::ALLOW, HeaderValue::from_static(allow));
        }
        response
    }
}

fn json_response(status: StatusCode, body: &serde_json::Value) -> AdminResponse {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// The key in `Authorization: Bearer`.
fn bearer(req: &Request<Incoming>) -> Result<&str, AdminError> {
    req.headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .ok_or(AdminError::MissingCredential)
}

/// The admin client `key` stands for, if it may have `access` now.
fn admit(keys: &KeyIndex, key: &str, access: Access) -> Result<Client, AdminError> {
    let (_, outcome) = keys.verify(key, unix_now());
    let client = outcome.map_err(AdminError::InvalidCredential)?;
    if !client.is_admin {
        return Err(AdminError::NotAdmin);
    }
    if access == Access::Write && client.scopes.iter().any(|s| s == READ_ONLY_SCOPE) {
        return Err(AdminError::ReadOnly);
    }
    Ok(client.as_ref().clone())
}

/// What an admin key may do.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Access {
    Read,
    Write,
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
    /// each with `limits.request_timeout` to send a request's headers.
    pub async fn serve(self: Arc<Self>, listener: TcpListener) {
        loop {
            let (stream, peer) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(%error, "admin accept failed");
                    continue;
                }
            };
            let Ok(permit) = self.connections.clone().try_acquire_owned() else {
                tracing::warn!(%peer, "admin connection limit reached; closing the new connection");
                continue;
            };
            let admin = self.clone();
            tokio::spawn(async move {
                let _permit = permit;
                let header_timeout = admin.header_timeout;
                let service = hyper::service::service_fn(move |req| {
                    let admin = admin.clone();
                    async move { Ok::<_, Infallible>(admin.handle(req, peer).await) }
                });
                let mut builder =
                    hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                builder
                    .http1()
                    .timer(TokioTimer::new())
                    .header_read_timeout(header_timeout);
                builder.http2().timer(TokioTimer::new());
                if let Err(error) = builder
                    .serve_connection(TokioIo::new(stream), service)
                    .await
                {
                    tracing::debug!(%peer, %error, "admin connection ended with an error");
                }
            });
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

    /// [`Admin::authorize`]; key guessing counts like on the proxy (a
    /// disabled or expired key is not guessing).
    fn authorize_counted(
        &self,
        req: &Request<Incoming>,
        access: Access,
        peer: SocketAddr,
    ) -> Result<Client, AdminError> {
        self.authorize(req, access).inspect_err(|error| {
            if let AdminError::InvalidCredential(reason) = error {
                if !reason.is_guessing() {
                    return;
                }
                let remote = crate::guard::Remote::direct(peer.ip());
                let update = self.shared.guard.auth_failed(remote, monotonic_ns());
                self.shared.submit(update);
            }
        })
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

    fn authorize(&self, req: &Request<Incoming>, access: Access) -> Result<Client, AdminError> {
        admit(&self.shared.keys, bearer(req)?, access)
    }

    /// Makes a change to client `id` visible to the request path now,
    /// not at the next refresh.
    async fn refresh(&self, id: &str) -> Result<(), AdminError> {
        self.shared
            .keys
            .refresh_client(self.store.as_ref(), id)
            .await?;
        Ok(())
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

    /// The listeners' certificates, read again after a reload.
    fn certificates(&self) -> Vec<crate::metrics::ops::Certificate> {
        let mut known = self.certificates.lock().unwrap_or_else(|p| p.into_inner());
        let reloaded = (self.reloader.as_ref()).filter(|r| r.generation() != known.0);
        if let Some(reloader) = reloaded {
            let (generation, config) = reloader.config();
            *known = (generation, scrape::certificates(&config));
        }
        known.1.clone()
    }

    fn metrics_response(&self) -> AdminResponse {
        let shared = &self.current();
        let maps = self
            .pin_root
            .as_deref()
            .and_then(|root| PinnedMaps::open(root).ok());
        let now = monotonic_ns();
        // The kernel's bans and those only userspace enforces.
        let kernel_bans = maps.as_ref().map(|maps| {
            (maps.all_bans().ok()).map_or(0, |bans| {
                bans.iter().filter(|(_, b)| b.banned_until_ns > now).count()
            })
        });
        let bans_active = Some(kernel_bans.unwrap_or(0) + shared.userspace_bans.active(now));
        let mut text = shared.metrics.render(&Gauges {
            pools: shared.pool_gauges(),
            guard: &shared.guard.counters,
            bans_active,
            kernel: maps.as_ref().and_then(|maps| maps.counters().ok()),
            policy_dropped: shared.policy.overflowed(),
            bans_full: shared.policy.full_counters(),
            keys: shared.keys.len(),
        });
        crate::metrics::ops::render(
            &mut text,
            &crate::metrics::ops::Ops {
                policy_failed: shared.policy.failed(),
                ban_maps: (maps.as_ref()).map(|m| scrape::ban_maps(m, self.ban_map_capacity)),
                certificates: &self.certificates(),
            },
        );
        let mut response = Response::new(Full::new(Bytes::from(text)));
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4"),
        );
        response
    }
}
