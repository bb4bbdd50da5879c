//! An issuer's verification keys: from a PEM file, a JWKS URL, or OIDC
//! discovery (which names the JWKS URL). Remote keys are refreshed
//! periodically and on an unknown `kid`, at most once per
//! `min_refresh_interval`.
use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use arc_swap::ArcSwap;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::{
    client::legacy::{connect::HttpConnector, Client},
    rt::TokioExecutor,
};
use jsonwebtoken::{jwk::JwkSet, DecodingKey};

use super::JwtError;

/// Largest JWKS or discovery document we accept.
const MAX_DOCUMENT: usize = 1 << 20;
const FETCH_TIMEOUT: Duration = Duration::from_secs(5);

pub enum KeySource {
    /// Keys given, not fetched: a PEM file, or the gateway's own.
    Static(Vec<Key>),
    Jwks(String),
    Discovery(String),
}

#[derive(Clone)]
pub struct Key {
    pub kid: Option<String>,
    pub key: DecodingKey,
}

type HttpsClient = Client<hyper_rustls::HttpsConnector<HttpConnector>, Empty<Bytes>>;

/// Fetches JSON documents over HTTP(S) with a timeout and a size limit.
#[derive(Clone)]
pub struct Fetcher {
    client: HttpsClient,
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
        })
    }

    pub async fn json<T: serde::de::DeserializeOwned>(&self, url: &str) -> Result<T, JwtError> {
        let fail = |message: String| JwtError::Fetch {
            url: url.to_owned(),
            message,
        };
        let uri: http::Uri = url.parse().map_err(|e| fail(format!("not a URL: {e}")))?;
        let response = tokio::time::timeout(FETCH_TIMEOUT, self.client.get(uri))
            .await
            .map_err(|_| fail("timed out".into()))?
            .map_err(|e| fail(e.to_string()))?;
        if !response.status().is_success() {
            return Err(fail(format!("status {}", response.status())));
        }
        let body = Limited::new(response.into_body(), MAX_DOCUMENT)
            .collect()
            .await
            .map_err(|e| fail(e.to_string()))?
            .to_bytes();
        serde_json::from_slice(&body).map_err(|e| fail(format!("invalid JSON: {e}")))
    }
}

pub struct IssuerKeys {
    issuer: String,
    source: KeySource,
    keys: ArcSwap<Vec<Key>>,
    fetcher: Fetcher,
    min_refresh_interval: Duration,
    /// When the last refresh for an unknown `kid` ran; the lock also makes
    /// concurrent requests with the same new `kid` wait for one fetch.
    last_on_demand: tokio::sync::Mutex<Option<Instant>>,
}

#[derive(serde::Deserialize)]
struct Discovery {
    issuer: String,
    jwks_uri: String,
}

impl IssuerKeys {
    pub fn new(
        issuer: &str,
        source: KeySource,
        fetcher: Fetcher,
        min_refresh_interval: Duration,
    ) -> Self {
        let initial = match &source {
            KeySource::Static(keys) => keys.clone(),
            _ => Vec::new(),
        };
        Self {
            issuer: issuer.to_owned(),
            source,
            keys: ArcSwap::from_pointee(initial),
            fetcher,
            min_refresh_interval,
            last_on_demand: tokio::sync::Mutex::new(None),
        }
    }

    pub fn is_remote(&self) -> bool {
        !matches!(self.source, KeySource::Static(_))
    }

    /// Replaces static keys (the gateway's own, after a rotation).
    pub fn set(&self, keys: Vec<Key>) {
        self.keys.store(Arc::new(keys));
    }

    /// The key for `kid`; a token without `kid` matches a sole key.
    pub fn find(&self, kid: Option<&str>) -> Option<DecodingKey> {
        let keys = self.keys.load();
        match kid {
            Some(kid) => keys.iter().find(|k| k.kid.as_deref() == Some(kid)),
            None if keys.len() == 1 => keys.first(),
            None => None,
        }
        .map(|k| k.key.clone())
    }

    /// Re-fetches remote keys now (start-up and periodic refresh).
    pub async fn refresh(&self) -> Result<usize, JwtError> {
        self.fetch().await
    }

    /// Re-fetches for an unknown `kid`, unless another unknown `kid` did so
    /// within `min_refresh_interval` (so forged kids cannot hammer the IdP).
    pub async fn refresh_for_unknown_kid(&self, kid: Option<&str>) -> bool {
        if !self.is_remote() {
            return false;
        }
        let mut last = self.last_on_demand.lock().await;
        // A request that waited on the lock may find the key already there.
        if self.find(kid).is_some() {
            return true;
        }
        if last.is_some_and(|at| at.elapsed() < self.min_refresh_interval) {
            return false;
        }
        let result = self.fetch().await;
        *last = Some(Instant::now());
        match result {
            Ok(_) => true,
            Err(error) => {
                tracing::warn!(issuer = %self.issuer, %error, "refreshing keys for an unknown kid failed");
                false
            }
        }
    }

    async fn fetch(&self) -> Result<usize, JwtError> {
        let jwks_url = match &self.source {
            KeySource::Static(_) => return Ok(self.keys.load().len()),
            KeySource::Jwks(url) => url.clone(),
            KeySource::Discovery(url) => {
                let discovery: Discovery = self.fetcher.json(url).await?;
                if discovery.issuer != self.issuer {
                    return Err(JwtError::Fetch {
                        url: url.clone(),
                        message: format!(
                            "discovery names issuer {:?}, configured {:?}",
                            discovery.issuer, self.issuer
                        ),
                    });
                }
                discovery.jwks_uri
            }
        };
        let set: JwkSet = self.fetcher.json(&jwks_url).await?;
        let keys: Vec<Key> = set
            .keys
            .iter()
            .filter(|jwk| jwk.is_supported())
            .filter_map(|jwk| {
                Some(Key {
                    kid: jwk.common.key_id.clone(),
                    key: DecodingKey::from_jwk(jwk).ok()?,
                })
            })
            .collect();
        let count = keys.len();
        self.keys.store(Arc::new(keys));
        tracing::info!(issuer = %self.issuer, keys = count, "JWKS loaded");
        Ok(count)
    }
}
