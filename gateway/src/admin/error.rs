//! The admin API's refusals and the one place they become responses
//! (status, error code, `WWW-Authenticate`, `Allow`).
use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::Full;
use serde_json::json;

use super::{events, AdminResponse};
use crate::{
    keys::KeyRejection,
    reload::{Drain, ReloadError},
};

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
    /// The shared store is out of reach past `store.max_staleness`: this
    /// node's copy of the keys may hold an admin key revoked elsewhere.
    #[error("the key store cannot be reached, so admin keys cannot be checked; retry later")]
    KeysStale,
    #[error("{0}")]
    Reload(#[from] ReloadError),
    #[error("this gateway is draining ({0}); retry: a new connection reaches the one in charge")]
    Draining(Drain),
}

impl AdminError {
    pub(super) fn status(&self) -> (StatusCode, &'static str) {
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
            AdminError::KeysStale => (StatusCode::SERVICE_UNAVAILABLE, "store_unavailable"),
            AdminError::Store(_) => (StatusCode::INTERNAL_SERVER_ERROR, "store_error"),
            AdminError::Reload(ReloadError::Invalid(_)) => {
                (StatusCode::UNPROCESSABLE_ENTITY, "invalid_config")
            }
            AdminError::Draining(_) | AdminError::Reload(ReloadError::Draining(_)) => {
                (StatusCode::SERVICE_UNAVAILABLE, super::draining::CODE)
            }
            AdminError::Reload(_) => (StatusCode::CONFLICT, "reload_refused"),
        }
    }

    pub(super) fn into_response(self) -> AdminResponse {
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
        if code == super::draining::CODE {
            super::draining::retry_elsewhere(&mut response);
        }
        response
    }
}

pub(super) fn json_response(status: StatusCode, body: &serde_json::Value) -> AdminResponse {
    let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}
