//! The admin listener (default `127.0.0.1:9901`, its own socket, never the
//! public one). Endpoints:
//!
//! - `GET /healthz`: `{"status":"ok"}`; no credential.
//! - `GET /metrics`: Prometheus text (see [`crate::metrics`]); no credential,
//!   like any scrape target: keep the listener on a private address.
//! - `GET /v1/management/api-clients/{id}/limits`: the client's tier limit,
//!   what is left of it and when it is whole again.
//! - `DELETE /v1/management/api-clients/{id}/limits`: makes it whole now.
//!
//! The `/v1/management` endpoints take an admin key (`gateway keys create
//! --admin`) in `Authorization: Bearer`. A key with the `admin:read` scope
//! may only read; other admin keys may also change. Other keys get 403.
use std::{convert::Infallible, net::SocketAddr, path::PathBuf, sync::Arc};

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::json;
use tokio::net::TcpListener;

use crate::{
    clock::{monotonic_ns, unix_now},
    keys::KeyRejection,
    limits::LimitKey,
    metrics::{Gauges, Metrics},
    proxy::Shared,
    xdp::PinnedMaps,
};

/// The scope that limits an admin key to reading.
pub const READ_ONLY_SCOPE: &str = "admin:read";

type AdminResponse = Response<Full<Bytes>>;

pub struct Admin {
    pub shared: Shared,
    pub metrics: Arc<Metrics>,
    /// Where the kernel path's maps are pinned, when XDP is attached.
    pub pin_root: Option<PathBuf>,
}

/// Why the admin API refused a request.
#[derive(Debug, thiserror::Error)]
enum AdminError {
    #[error("an admin key is required (Authorization: Bearer <key>)")]
    MissingCredential,
    #[error("the key was refused ({0})")]
    InvalidCredential(&'static str),
    #[error("this key may not use the admin API")]
    NotAdmin,
    #[error("this admin key may only read")]
    ReadOnly,
    #[error("no client {0:?}")]
    UnknownClient(String),
    #[error("no such endpoint")]
    NotFound,
    #[error("method not allowed here")]
    MethodNotAllowed,
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
            AdminError::MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, "method_not_allowed"),
        }
    }

    fn into_response(self) -> AdminResponse {
        let (status, code) = self.status();
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

/// What an admin key may do.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Access {
    Read,
    Write,
}

impl Admin {
    /// Serves until the runtime stops.
    pub async fn serve(self: Arc<Self>, listener: TcpListener) {
        loop {
            let (stream, peer) = match listener.accept().await {
                Ok(accepted) => accepted,
                Err(error) => {
                    tracing::warn!(%error, "admin accept failed");
                    continue;
                }
            };
            let admin = self.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| {
                    let admin = admin.clone();
                    async move { Ok::<_, Infallible>(admin.handle(req, peer)) }
                });
                if let Err(error) =
                    hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await
                {
                    tracing::debug!(%peer, %error, "admin connection ended with an error");
                }
            });
        }
    }

    fn handle(&self, req: Request<Incoming>, peer: SocketAddr) -> AdminResponse {
        let path = req.uri().path().to_owned();
        let method = req.method().clone();
        let response = self
            .route(&req, &method, &path)
            .unwrap_or_else(AdminError::into_response);
        if path.starts_with("/v1/") {
            tracing::info!(%peer, %method, %path, status = response.status().as_u16(), "admin request");
        }
        response
    }

    fn route(
        &self,
        req: &Request<Incoming>,
        method: &Method,
        path: &str,
    ) -> Result<AdminResponse, AdminError> {
        let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
        match (method, segments.as_slice()) {
            (&Method::GET, ["healthz"]) => {
                Ok(json_response(StatusCode::OK, &json!({ "status": "ok" })))
            }
            (&Method::GET, ["metrics"]) => Ok(self.metrics_response()),
            (_, ["v1", "management", "api-clients", id, "limits"]) => {
                let access = match *method {
                    Method::GET => Access::Read,
                    Method::DELETE => Access::Write,
                    _ => return Err(AdminError::MethodNotAllowed),
                };
                self.authorize(req, access)?;
                self.limits(id, access == Access::Write)
            }
            _ => Err(AdminError::NotFound),
        }
    }

    fn authorize(&self, req: &Request<Incoming>, access: Access) -> Result<(), AdminError> {
        let key = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or(AdminError::MissingCredential)?;
        let (_, outcome) = self.shared.keys.verify(key.trim(), unix_now());
        let client = outcome.map_err(|reason| {
            AdminError::InvalidCredential(match reason {
                KeyRejection::Unknown | KeyRejection::WrongSecret => "invalid_key",
                other => other.as_str(),
            })
        })?;
        if !client.is_admin {
            return Err(AdminError::NotAdmin);
        }
        if access == Access::Write && client.scopes.iter().any(|s| s == READ_ONLY_SCOPE) {
            return Err(AdminError::ReadOnly);
        }
        Ok(())
    }

    /// A client's limit state; with `reset`, made whole first.
    fn limits(&self, id: &str, reset: bool) -> Result<AdminResponse, AdminError> {
        let client = self
            .shared
            .keys
            .client(id)
            .ok_or_else(|| AdminError::UnknownClient(id.to_owned()))?;
        let (_, quota) = self.shared.tier(&client.tier);
        let key = LimitKey::Client(client.id.clone());
        if reset {
            self.shared.limiter.reset(&key);
            tracing::info!(client_id = %client.id, "limit reset by the admin API");
        }
        let state = self.shared.limiter.peek(&key, quota, monotonic_ns());
        Ok(json_response(
            StatusCode::OK,
            &json!({
                "client_id": client.id,
                "tier": quota.name,
                "limit": quota.requests,
                "window_seconds": quota.window.as_secs_f64(),
                "burst": quota.burst,
                "remaining": state.remaining,
                "reset_seconds": state.reset.as_secs_f64(),
            }),
        ))
    }

    fn metrics_response(&self) -> AdminResponse {
        let shared = &self.shared;
        let maps = self
            .pin_root
            .as_deref()
            .and_then(|root| PinnedMaps::open(root).ok());
        let now = monotonic_ns();
        let bans_active = match (&maps, &shared.userspace_bans) {
            (Some(maps), _) => maps
                .bans()
                .ok()
                .map(|bans| bans.iter().filter(|(_, b)| b.banned_until_ns > now).count()),
            (None, Some(bans)) => Some(bans.active(now)),
            (None, None) => None,
        };
        let text = self.metrics.render(&Gauges {
            pools: shared
                .pools
                .iter()
                .map(|(name, pool)| (name.as_str(), &pool.load))
                .collect(),
            guard: &shared.guard.counters,
            bans_active,
            kernel: maps.as_ref().and_then(|maps| maps.counters().ok()),
            policy_dropped: shared.policy.overflowed(),
            keys: shared.keys.len(),
        });
        let mut response = Response::new(Full::new(Bytes::from(text)));
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4"),
        );
        response
    }
}
