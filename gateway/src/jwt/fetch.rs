//! Fetching an issuer's JSON documents (OIDC discovery, JWKS): https
//! only unless the issuer allows http, one timeout over the whole
//! exchange, a size limit.
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::{
    client::legacy::{connect::HttpConnector, Client},
    rt::TokioExecutor,
};

use super::JwtError;

/// Largest JWKS or discovery document we accept.
pub const MAX_DOCUMENT: usize = 1 << 20;
/// The whole of one fetch: connect, TLS, headers and body.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

type HttpsClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Empty<Bytes>>;

/// Fetches JSON documents with one timeout over the whole exchange and a
/// size limit; `http://` only when the issuer allows it.
#[derive(Clone)]
pub struct Fetcher {
    client: HttpsClient,
    timeout: Duration,
    allow_http: bool,
}

impl Fetcher {
    pub fn new() -> Result<Self, JwtError> {
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_provider_and_webpki_roots(rustls::crypto::ring::default_provider())
            .map_err(|e| JwtError::Tls(e.to_string()))?
            .https_or_http()
            .enable_http1()
            .build();
        Ok(Self {
            client: Client::builder(TokioExecutor::new()).build(https),
            timeout: FETCH_TIMEOUT,
            allow_http: false,
        })
    }

    /// The same client with another timeout (tests).
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The same client, allowed (or not) to fetch over plain HTTP.
    pub fn allow_http(mut self, allow: bool) -> Self {
        self.allow_http = allow;
        self
    }

    pub async fn json<T: serde::de::DeserializeOwned>(&self, url: &str) -> Result<T, JwtError> {
        let fail = |message: String| JwtError::Fetch {
            url: url.to_owned(),
            message,
        };
        let uri: http::Uri = url.parse().map_err(|e| fail(format!("not a URL: {e}")))?;
        match uri.scheme_str() {
            Some("https") => {}
            Some("http") if self.allow_http => {}
            _ => {
                return Err(fail(
                    "only https:// (allow_insecure_http = true permits http:// for testing)".into(),
                ))
            }
        }
        let exchange = async {
            let response = self
                .client
                .get(uri)
                .await
                .map_err(|e| fail(e.to_string()))?;
            if !response.status().is_success() {
                return Err(fail(format!("status {}", response.status())));
            }
            Limited::new(response.into_body(), MAX_DOCUMENT)
                .collect()
                .await
                .map(|body| body.to_bytes())
                .map_err(|e| fail(e.to_string()))
        };
        let body = tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| fail(format!("timed out after {:?}", self.timeout)))??;
        serde_json::from_slice(&body).map_err(|e| fail(format!("invalid JSON: {e}")))
    }
}
