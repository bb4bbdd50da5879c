//! The request as the upstream gets it: hop-by-hop headers and (unless the
//! route keeps them) credentials gone, identity from the gateway only,
//! request id, trace context and `X-Forwarded-*` set, the URI the
//! normalised (and maybe rewritten) path and the client's query in
//! origin-form, for a connection to the chosen server.
use std::net::SocketAddr;

use http::{header, HeaderName, HeaderValue, Request, Uri, Version};

use super::{
    addr_text::{AddrText, Peer},
    error::ProxyError,
    forward,
    forward::X_REQUEST_ID,
    identity::Identity,
    route::Route,
    trace::Trace,
};
use crate::{
    clock::unix_now,
    config::{Config, UpstreamIdentity},
    tokens::{Grant, TokenIssuer},
};

/// The forwarding settings, resolved once per worker.
pub(super) struct Rewriter {
    client_id_header: HeaderName,
    client_tier_header: HeaderName,
    trusted_proxies: Vec<ipnet::IpNet>,
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
        }
    }

    /// `req` rewritten for `server`; the upstream identity is a JWT of the
    /// gateway's own issuer when the route asks for one and `tokens` is on.
    pub(super) fn upstream_request<B>(
        &self,
        req: Request<B>,
        route: &Route,
        origin: &Origin<'_>,
        tokens: Option<&TokenIssuer>,
        server: SocketAddr,
    ) -> Result<Request<B>, ProxyError> {
        let (mut parts, body) = req.into_parts();
        let headers = &mut parts.headers;
        forward::strip_hop_by_hop(headers);
        let query = if route.forward_credential {
            parts.uri.query().map(str::to_owned)
        } else {
            // A bearer JWT travels in Authorization whatever the key sources say.
            headers.remove(header::AUTHORIZATION);
            let (sources, names) = (&route.key_sources, &route.key_headers);
            forward::strip_credentials(headers, parts.uri.query(), sources, names)
        };
        // Identity headers come from us only, never from the client (nor
        // spelt with `_`, which some upstream frameworks read as `-`).
        forward::strip_identity(headers, &[&self.client_id_header, &self.client_tier_header]);
        match (origin.identity, route.upstream_identity, tokens) {
            (Some(client), UpstreamIdentity::Jwt, Some(tokens)) => {
                let grant = Grant {
                    client_id: client.client_id(),
                    tier: client.tier(),
                    scopes: client.scopes(),
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
                for (name, value) in [
                    (&self.client_id_header, client.client_id()),
                    (&self.client_tier_header, client.tier()),
                ] {
                    if let Ok(value) = HeaderValue::from_str(value) {
                        headers.insert(name.clone(), value);
                    }
                }
            }
            (None, _, _) => {}
        }
        headers.insert(X_REQUEST_ID, origin.request_id.clone());
        origin.trace.set_headers(headers);
        forward::set_forwarded(headers, origin.peer, &self.trusted_proxies, origin.proto);
        // HTTP/2 requests carry the host in the URI, not a Host header;
        // a request with neither (HTTP/1.0) names the server, as the
        // pooled client did (`ip:port`, the port left out when 80).
        if !headers.contains_key(header::HOST) {
            let server_text = AddrText::socket(server);
            let fallback = (server_text.as_str())
                .strip_suffix(":80")
                .unwrap_or(server_text.as_str());
            let authority = parts.uri.authority().map_or(fallback, |a| a.as_str());
            if let Ok(value) = HeaderValue::from_str(authority) {
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
        Ok(Request::from_parts(parts, body))
    }
}
