//! Every way the proxy refuses or fails a request, and the one function that
//! turns each into its HTTP response (small JSON bodies, per the brief).
//! Headers that depend on the request rather than the error (request id,
//! rate limits) are the respond phase's.
use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};
use http_body_util::{BodyExt, Full};

use std::sync::Arc;

use super::{tier_reply::TierReply, ProxyBody};
use crate::{jwt::TokenRejection, keys::KeyRejection, limits::Quota, path::PathError};

#[derive(Debug)]
pub enum ProxyError {
    /// The path is not origin-form after normalisation (see [`crate::path`]).
    InvalidPath(PathError),
    /// Two `Host` headers, or one that differs from the request target's
    /// authority (absolute-form, or HTTP/2's `:authority`).
    InvalidHost(&'static str),
    NoRoute,
    /// `CONNECT` (HTTP/1.1, HTTP/2, extended CONNECT): a reverse proxy
    /// opens no tunnels but WebSocket upgrades (see [`super::forward`]).
    MethodNotAllowed,
    MissingCredential,
    InvalidCredential(KeyRejection),
    InvalidToken(TokenRejection),
    MissingScope(String),
    /// Over quota (the limiter's answer is in the request context, whose
    /// respond phase sets the rate-limit headers).
    /// Its body and fixed headers were built once, for the tier.
    RateLimited(Arc<TierReply>),
    NoHealthyUpstream,
    UpstreamConnect,
    UpstreamTimeout,
    Upstream,
    /// The upstream broke the protocol (what it did, for the log): a 101
    /// the client did not ask for, or to another protocol.
    UpstreamProtocol(&'static str),
    BannedSource,
    /// Banned in userspace on a connection that may carry other clients'
    /// requests (a trusted proxy's), so it stays open: the forwarded
    /// client address, or this client at its address. Until the ban ends.
    BannedForwarded(std::time::Duration),
    BannedClient(std::time::Duration),
    /// Shed: the upstream pool is overloaded and this tier goes first.
    Overloaded(std::time::Duration),
    /// Our fault (e.g. signing an upstream token failed); logged.
    Internal,
    /// Framing the gateway will not forward (what was wrong, for the log).
    MalformedRequest(&'static str),
    /// A body over `limits.max_body_bytes`, declared or streamed.
    BodyTooLarge,
    /// The body did not arrive within `limits.request_timeout`.
    BodyTimeout,
    /// The shared key store has been out of reach longer than
    /// `store.max_staleness`: keys are not checked against stale data.
    KeyStoreStale,
}

/// The methods a route serves (every one but `CONNECT`), for `Allow`.
pub const ALLOWED_METHODS: &str = "GET, HEAD, POST, PUT, PATCH, DELETE, OPTIONS";

/// Who caused a failure, for logs: the client, the upstream, or us.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Blame {
    Client,
    Upstream,
    /// The gateway itself.
    Internal,
}

/// A small JSON answer from the gateway itself.
pub fn json_response(status: StatusCode, body: &serde_json::Value) -> Response<ProxyBody> {
    json_bytes_response(status, Bytes::from(body.to_string()))
}

/// Headers a gateway answer may get: its own few, the request id and the
/// rate-limit headers (room for all at once: the map never regrows).
const ANSWER_HEADERS: usize = 12;

/// [`json_response`] with a body already serialised.
fn json_bytes_response(status: StatusCode, body: Bytes) -> Response<ProxyBody> {
    let mut response = Response::new(Full::new(body).map_err(|never| match never {}).boxed());
    *response.status_mut() = status;
    *response.headers_mut() = http::HeaderMap::with_capacity(ANSWER_HEADERS);
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

fn rate_limited_message(quota: &Quota) -> String {
    format!(
        "over the {} tier's limit of {} requests per {} s",
        quota.name,
        quota.requests,
        quota.window.as_secs()
    )
}

/// The 429 body for `quota`, as every other refusal's is built.
pub fn rate_limited_body(quota: &Quota) -> Bytes {
    let body =
        serde_json::json!({ "error": "rate_limited", "message": rate_limited_message(quota) });
    Bytes::from(body.to_string())
}

impl Blame {
    /// As serde writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            Blame::Client => "client",
            Blame::Upstream => "upstream",
            Blame::Internal => "internal",
        }
    }
}

impl ProxyError {
    /// Stable machine-readable code (also the access log's `error`).
    pub fn code(&self) -> &'static str {
        match self {
            ProxyError::InvalidPath(_) => "invalid_path",
            ProxyError::InvalidHost(_) => "invalid_host",
            ProxyError::NoRoute => "no_route",
            ProxyError::MethodNotAllowed => "method_not_allowed",
            ProxyError::MissingCredential => "missing_credential",
            ProxyError::InvalidCredential(_) => "invalid_credential",
            ProxyError::InvalidToken(_) => "invalid_token",
            ProxyError::MissingScope(_) => "insufficient_scope",
            ProxyError::RateLimited(_) => "rate_limited",
            ProxyError::NoHealthyUpstream => "no_healthy_upstream",
            ProxyError::UpstreamConnect => "upstream_unavailable",
            ProxyError::UpstreamTimeout => "upstream_timeout",
            ProxyError::Upstream | ProxyError::UpstreamProtocol(_) => "upstream_error",
            ProxyError::BannedSource
            | ProxyError::BannedForwarded(_)
            | ProxyError::BannedClient(_) => "banned",
            ProxyError::Overloaded(_) => "overloaded",
            ProxyError::Internal => "internal_error",
            ProxyError::MalformedRequest(_) => "bad_request",
            ProxyError::BodyTooLarge => "body_too_large",
            ProxyError::BodyTimeout => "request_timeout",
            ProxyError::KeyStoreStale => "key_store_unavailable",
        }
    }

    /// The precise reason, for the access log (clients may see less).
    pub fn detail(&self) -> Option<&'static str> {
        match self {
            ProxyError::InvalidCredential(reason) => Some(reason.as_str()),
            ProxyError::InvalidToken(reason) => Some(reason.as_str()),
            ProxyError::InvalidPath(reason) => Some(reason.as_str()),
            ProxyError::InvalidHost(reason) => Some(reason),
            ProxyError::MalformedRequest(what) | ProxyError::UpstreamProtocol(what) => Some(what),
            ProxyError::BannedForwarded(_) => Some("forwarded_address"),
            ProxyError::BannedClient(_) => Some("client_at_address"),
            _ => None,
        }
    }

    pub fn blame(&self) -> Blame {
        match self {
            ProxyError::NoHealthyUpstream
            | ProxyError::UpstreamConnect
            | ProxyError::UpstreamTimeout
            | ProxyError::Upstream
            | ProxyError::UpstreamProtocol(_)
            | ProxyError::Overloaded(_) => Blame::Upstream,
            ProxyError::Internal | ProxyError::KeyStoreStale => Blame::Internal,
            _ => Blame::Client,
        }
    }

    fn status_and_message(&self) -> (StatusCode, String) {
        match self {
            ProxyError::InvalidPath(reason) => (
                StatusCode::BAD_REQUEST,
                format!("the request path was refused: {reason}"),
            ),
            ProxyError::InvalidHost(reason) => (
                StatusCode::BAD_REQUEST,
                format!("the request's host was refused ({reason})"),
            ),
            ProxyError::NoRoute => (
                StatusCode::NOT_FOUND,
                "no route matches this host and path".into(),
            ),
            ProxyError::MethodNotAllowed => (
                StatusCode::METHOD_NOT_ALLOWED,
                "CONNECT is not served: this gateway is a reverse proxy".into(),
            ),
            ProxyError::MissingCredential => {
                (StatusCode::UNAUTHORIZED, "an API key is required".into())
            }
            ProxyError::InvalidCredential(reason) => (
                StatusCode::UNAUTHORIZED,
                format!("the API key was refused ({})", reason.public_str()),
            ),
            ProxyError::InvalidToken(reason) => (
                StatusCode::UNAUTHORIZED,
                format!("the token was refused ({})", reason.as_str()),
            ),
            ProxyError::MissingScope(scope) => (
                StatusCode::FORBIDDEN,
                format!("the client lacks the scope {scope:?} this route requires"),
            ),
            ProxyError::RateLimited(tier) => (
                StatusCode::TOO_MANY_REQUESTS,
                rate_limited_message(&tier.quota),
            ),
            ProxyError::NoHealthyUpstream => (
                StatusCode::SERVICE_UNAVAILABLE,
                "no healthy upstream server".into(),
            ),
            ProxyError::UpstreamConnect => (
                StatusCode::BAD_GATEWAY,
                "the upstream refused the connection".into(),
            ),
            ProxyError::UpstreamTimeout => (
                StatusCode::GATEWAY_TIMEOUT,
                "the upstream did not answer in time".into(),
            ),
            ProxyError::Upstream | ProxyError::UpstreamProtocol(_) => {
                (StatusCode::BAD_GATEWAY, "the upstream failed".into())
            }
            ProxyError::BannedSource | ProxyError::BannedForwarded(_) => {
                (StatusCode::FORBIDDEN, "this source is banned".into())
            }
            ProxyError::BannedClient(_) => (
                StatusCode::FORBIDDEN,
                "this client is banned from this address".into(),
            ),
            ProxyError::Overloaded(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "the upstream is overloaded; lower tiers are shed first".into(),
            ),
            ProxyError::Internal => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "the gateway failed; this is not the client's fault".into(),
            ),
            ProxyError::MalformedRequest(what) => (
                StatusCode::BAD_REQUEST,
                format!("the request's framing is malformed ({what})"),
            ),
            ProxyError::BodyTooLarge => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "the request body is over the gateway's limit".into(),
            ),
            ProxyError::BodyTimeout => (
                StatusCode::REQUEST_TIMEOUT,
                "the request body did not arrive in time".into(),
            ),
            ProxyError::KeyStoreStale => (
                StatusCode::SERVICE_UNAVAILABLE,
                "the gateway has lost its key store for too long to check API keys".into(),
            ),
        }
    }

    fn body(&self, message: &str) -> serde_json::Value {
        serde_json::json!({ "error": self.code(), "message": message })
    }

    pub fn into_response(self) -> Response<ProxyBody> {
        let mut response = match &self {
            // Built once per tier (see `tier_reply`): the path a flood takes.
            ProxyError::RateLimited(tier) => {
                json_bytes_response(StatusCode::TOO_MANY_REQUESTS, tier.refused.clone())
            }
            _ => {
                let (status, message) = self.status_and_message();
                json_response(status, &self.body(&message))
            }
        };
        let headers = response.headers_mut();
        match self {
            ProxyError::MissingCredential => {
                headers.insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"gateway\""),
                );
            }
            ProxyError::InvalidCredential(_) | ProxyError::InvalidToken(_) => {
                headers.insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer realm=\"gateway\", error=\"invalid_token\""),
                );
            }
            // What a route serves; a CONNECT's client may already be
            // sending tunnel bytes, which are no request: the connection
            // is closed.
            ProxyError::MethodNotAllowed => {
                headers.insert(header::ALLOW, HeaderValue::from_static(ALLOWED_METHODS));
                headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            // The rest of the connection cannot be trusted (or read).
            ProxyError::BannedSource
            | ProxyError::MalformedRequest(_)
            | ProxyError::BodyTooLarge
            | ProxyError::BodyTimeout => {
                headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            ProxyError::BannedForwarded(left) | ProxyError::BannedClient(left) => {
                headers.insert(
                    header::RETRY_AFTER,
                    HeaderValue::from(left.as_secs().max(1)),
                );
            }
            ProxyError::Overloaded(retry) => {
                headers.insert(
                    header::RETRY_AFTER,
                    HeaderValue::from(retry.as_secs().max(1)),
                );
            }
            ProxyError::KeyStoreStale => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
            }
            _ => {}
        }
        response
    }
}
