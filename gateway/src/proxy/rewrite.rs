//! The request as the upstream gets it: hop-by-hop headers and (unless the
//! route keeps them) credentials gone, identity from the gateway only,
//! request id, trace context and `X-Forwarded-*` set, the URI the
//! normalised (and maybe rewritten) path and the client's query in
//! origin-form, for a connection to the chosen server.
use std::net::SocketAddr;

use http::{header, HeaderMap, HeaderName, HeaderValue, Request, Uri, Version};

use super::{
    addr_text::{AddrText, Peer},
    error::ProxyError,
    forward::{self, Forwarded, X_REQUEST_ID},
    identity::Identity,
    route::Route,
    trace::{Trace, TRACEPARENT, TRACESTATE},
};
use crate::{
    clock::unix_now,
    config::{Config, UpstreamIdentity},
    tokens::{without_tiers, Grant, TokenIssuer},
};

/// The forwarding settings, resolved once per worker.
pub(super) struct Rewriter {
    client_id_header: HeaderName,
    client_tier_header: HeaderName,
    trusted_proxies: Vec<ipnet::IpNet>,
    /// The configured tiers' names, kept out of upstream tokens' scopes
    /// (see [`without_tiers`]).
    tiers: Vec<String>,
}

/// What the rewrite needs to know about the request beyond its route.
pub(super) struct Origin<'a> {
    /// The path to forward: normalised, then the route's prefix rewrite.
    pub path: &'a str,
    pub peer: &'a Peer,
    /// What the listener speaks, for `X-Forwarded-Proto`.
    pub proto: &'static str,
    pub request_id: &'a HeaderValue,
    /// The request's trace (see [`super::trace`]).
    pub trace: &'a Trace,
    pub identity: Option<&'a Identity>,
}

impl Rewriter {
    pub(super) fn new(config: &Config) -> Self {
        // Validated in Config::parse; the fallbacks are never used.
        let header = |name: &str, fallback: &'static str| {
            HeaderName::from_bytes(name.as_bytes()).unwrap_or(HeaderName::from_static(fallback))
        };
        Self {
            client_id_header: header(&config.forwarding.client_id_header, "x-client-id"),
            client_tier_header: header(&config.forwarding.client_tier_header, "x-client-tier"),
            trusted_proxies: config.forwarding.trusted_proxies.clone(),
            tiers: config.tiers.iter().map(|t| t.name.clone()).collect(),
        }
    }

    /// `req` rewritten for `server`; the upstream identity is a JWT of the
    /// gateway's own issuer when the route asks for one and `tokens` is on.
    /// The fields the gateway adds come beside it ([`Added`]).
    pub(super) fn upstream_request<'a, B>(
        &'a self,
        req: Request<B>,
        route: &Route,
        origin: &Origin<'a>,
        tokens: Option<&TokenIssuer>,
        server: SocketAddr,
    ) -> Result<(Request<B>, Added<'a>), ProxyError> {
        let (mut parts, body) = req.into_parts();
        let headers = &mut parts.headers;
        forward::strip_hop_by_hop(headers);
        let query = if route.forward_credential {
            parts.uri.query().map(str::to_owned)
        } else {
            let (sources, names) = (&route.key_sources, &route.key_headers);
            forward::strip_credentials(headers, parts.uri.query(), sources, names)
        };
        // Identity headers come from us only, never from the client (nor
        // spelt with `_`, which some upstream frameworks read as `-`); so
        // do the request id and the trace parent.
        let identity = [&self.client_id_header, &self.client_tier_header];
        // A trace the gateway started passes on no `tracestate` (see
        // [`Trace::trim_state`]): gone in the same pass.
        let ours = [X_REQUEST_ID, TRACEPARENT, TRACESTATE];
        let ours = if origin.trace.inherited {
            &ours[..2]
        } else {
            &ours[..]
        };
        forward::strip_identity(headers, &identity, ours);
        let mut added = Added {
            identity: None,
            request_id: origin.request_id,
            trace: origin.trace,
            forwarded: Forwarded::of(headers, origin.peer, &self.trusted_proxies, origin.proto),
        };
        if origin.trace.inherited {
            origin.trace.trim_state(headers);
        }
        match (origin.identity, route.upstream_identity, tokens) {
            (Some(client), UpstreamIdentity::Jwt, Some(tokens)) => {
                let is_tier = |s: &str| self.tiers.iter().any(|t| t.eq_ignore_ascii_case(s));
                let scopes = without_tiers(client.scopes(), is_tier);
                let grant = Grant {
                    client_id: client.client_id(),
                    tier: client.tier(),
                    scopes: &scopes,
                };
                let token = tokens
                    .upstream_token(&grant, &route.upstream, unix_now())
                    .map_err(|error| {
                        tracing::error!(%error, "signing an upstream token failed");
                        ProxyError::Internal
                    })?;
                if let Ok(value) = HeaderValue::from_str(&format!("Bearer {token}")) {
                    headers.insert(header::AUTHORIZATION, value);
                }
            }
            (Some(client), _, _) => {
                added.identity = Some([
                    (&self.client_id_header, client.client_id()),
                    (&self.client_tier_header, client.tier()),
                ]);
            }
            (None, _, _) => {}
        }
        // HTTP/2 requests carry the host in the URI, not a Host header;
        // a request with neither (HTTP/1.0) names the server, as the
        // pooled client did (`ip:port`, the port left out when 80).
        if !headers.contains_key(header::HOST) {
            let value = match parts.uri.authority() {
                Some(authority) => HeaderValue::from_str(authority.as_str()),
                None => {
                    let server_text = AddrText::socket(server);
                    let text = server_text.as_str();
                    HeaderValue::from_str(text.strip_suffix(":80").unwrap_or(text))
                }
            };
            if let Ok(value) = value {
                headers.insert(header::HOST, value);
            }
        }
        // Origin-form (`/path?query`): the connection is to `server`. A
        // target already so (most HTTP/1.1 requests) is kept as it is.
        let path = origin.path;
        let unchanged = parts.uri.scheme().is_none()
            && parts.uri.authority().is_none()
            && parts.uri.path() == path
            && parts.uri.query() == query.as_deref();
        if !unchanged {
            let path_and_query = match query {
                Some(query) => format!("{path}?{query}"),
                None => path.to_owned(),
            };
            parts.uri = Uri::builder()
                .path_and_query(path_and_query)
                .build()
                .map_err(|_| ProxyError::Upstream)?;
        }
        parts.version = Version::HTTP_11;
        Ok((Request::from_parts(parts, body), added))
    }
}

/// The fields the gateway adds to every upstream request: the client's
/// identity, `X-Request-Id`, `traceparent`, `X-Forwarded-For`/`-Proto`.
/// Kept beside the header map, from which the client's own are gone:
/// the direct path writes them after the client's fields as it encodes
/// the head (six hashed inserts a request saved), hyper's path inserts
/// them ([`Added::insert_into`]).
pub(super) struct Added<'a> {
    /// Name and value of the id and the tier; a value that is no valid
    /// field value is not sent.
    identity: Option<[(&'a HeaderName, &'a str); 2]>,
    request_id: &'a HeaderValue,
    trace: &'a Trace,
    forwarded: Forwarded,
}

impl Added<'_> {
    /// Each field as name and value, in the order they are sent.
    pub(super) fn each(&self, mut field: impl FnMut(&str, &[u8])) {
        for (name, value) in self.identity.iter().flatten() {
            if crate::h1::valid_value(value) {
                field(name.as_str(), value.as_bytes());
            }
        }
        field(X_REQUEST_ID_TEXT, self.request_id.as_bytes());
        field(TRACEPARENT_TEXT, &self.trace.traceparent());
        field(
            forward::X_FORWARDED_FOR_TEXT,
            self.forwarded.for_.as_bytes(),
        );
        if let Some(proto) = self.forwarded.proto {
            field(forward::X_FORWARDED_PROTO_TEXT, proto.as_bytes());
        }
    }

    /// Puts them in `headers`, for hyper's path.
    pub(super) fn insert_into(&self, headers: &mut HeaderMap) {
        for (name, value) in self.identity.iter().flatten() {
            if let Ok(value) = HeaderValue::from_str(value) {
                headers.insert((*name).clone(), value);
            }
        }
        headers.insert(X_REQUEST_ID, self.request_id.clone());
        if let Ok(value) = HeaderValue::from_bytes(&self.trace.traceparent()) {
            headers.insert(TRACEPARENT, value);
        }
        self.forwarded.insert_into(headers);
    }
}

#[cfg(test)]
impl Added<'static> {
    /// A client `cl_test` of tier `gold`, from 192.0.2.1 over HTTP, for the
    /// upstream exchange tests (leaked: a few bytes a test).
    pub(super) fn for_tests() -> Self {
        let leak = |name: &'static str| &*Box::leak(Box::new(HeaderName::from_static(name)));
        Self {
            identity: Some([
                (leak("x-client-id"), "cl_test"),
                (leak("x-client-tier"), "gold"),
            ]),
            request_id: Box::leak(Box::new(HeaderValue::from_static("test-request"))),
            trace: Box::leak(Box::new(Trace::of(&HeaderMap::new()))),
            forwarded: Forwarded {
                for_: HeaderValue::from_static("192.0.2.1"),
                proto: Some("http"),
            },
        }
    }
}

const X_REQUEST_ID_TEXT: &str = "x-request-id";
const TRACEPARENT_TEXT: &str = "traceparent";

#[cfg(test)]
mod tests {
    use super::*;

    /// The names written raw are the header names'.
    #[test]
    fn the_raw_names_are_the_header_names() {
        assert_eq!(X_REQUEST_ID_TEXT, X_REQUEST_ID.as_str());
        assert_eq!(TRACEPARENT_TEXT, TRACEPARENT.as_str());
    }
}
