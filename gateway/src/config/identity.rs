//! Who clients are: trusted JWT issuers, the gateway's own tokens, the API
//! key store, and the tiers that identities map to.
use std::{path::PathBuf, time::Duration};

use serde::Deserialize;

use super::{
    bounds::{At, COUNT, DAY, HOUR, MS, SECOND, YEAR},
    durations,
    routes::LimitBy,
    ConfigError,
};
use crate::jwt::{self, IssuerSettings};

/// One trusted JWT issuer (an OAuth2/OIDC provider).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssuerConfig {
    /// Must equal the token's `iss`.
    pub issuer: String,
    /// The token's `aud` must contain one of these (string or array form).
    /// Required: `["*"]` accepts any audience, with a warning at start.
    #[serde(default)]
    pub audiences: Vec<String>,
    /// Accepted header `typ` values, case-insensitive, `application/`
    /// optional; a token without `typ` is accepted. Empty or absent: the
    /// default, `["at+jwt", "JWT"]`.
    #[serde(default)]
    pub typ: Vec<String>,
    /// Fetch `jwks_url`/`discovery_url` (and the JWKS discovery names)
    /// over plain `http://`: local testing only, logged at start.
    #[serde(default)]
    pub allow_insecure_http: bool,
    /// Exactly one key source: a PEM public key file...
    pub pem: Option<PathBuf>,
    /// ...a JWKS URL...
    pub jwks_url: Option<String>,
    /// ...or an OIDC discovery URL (`.../.well-known/openid-configuration`).
    pub discovery_url: Option<String>,
    /// Accepted `alg` values; `none` and HS* are refused.
    #[serde(default = "default_algorithms")]
    pub algorithms: Vec<String>,
    #[serde(default = "jwt::default_leeway", with = "durations")]
    pub leeway: Duration,
    /// The claim that names the client (`sub`, `azp`, `client_id`, ...).
    #[serde(default = "default_client_claim")]
    pub client_claim: String,
    /// The claim whose values name tiers (the highest named wins).
    #[serde(default = "default_tier_claim")]
    pub tier_claim: String,
    /// Periodic refresh of remote keys.
    #[serde(default = "default_key_refresh", with = "durations")]
    pub refresh: Duration,
    /// Least time between refreshes triggered by unknown `kid`s.
    #[serde(default = "default_min_refresh", with = "durations")]
    pub min_refresh_interval: Duration,
}

fn default_algorithms() -> Vec<String> {
    [
        "RS256", "RS384", "RS512", "PS256", "ES256", "ES384", "EdDSA",
    ]
    .into_iter()
    .map(str::to_owned)
    .collect()
}

fn default_client_claim() -> String {
    "sub".into()
}

fn default_tier_claim() -> String {
    "scope".into()
}

fn default_key_refresh() -> Duration {
    Duration::from_secs(600)
}

fn default_min_refresh() -> Duration {
    Duration::from_secs(30)
}

impl IssuerConfig {
    pub(super) fn check(&self, at: &At) -> Result<(), ConfigError> {
        at.within("leeway", self.leeway, Duration::ZERO..=HOUR)?;
        at.within("refresh", self.refresh, MS..=DAY)?;
        // Unknown-`kid` refusals are not counted as guessing (key
        // rotation), so this interval is all that keeps random `kid`s from
        // making the gateway hammer the identity provider.
        at.within(
            "min_refresh_interval",
            self.min_refresh_interval,
            SECOND..=DAY,
        )
    }

    /// The gateway's own issuer: its EdDSA keys, its audience.
    pub fn own(issuer: &str, audience: &str) -> Self {
        Self {
            issuer: issuer.to_owned(),
            audiences: vec![audience.to_owned()],
            typ: Vec::new(),
            allow_insecure_http: false,
            pem: None,
            jwks_url: None,
            discovery_url: None,
            algorithms: vec!["EdDSA".into()],
            leeway: jwt::default_leeway(),
            client_claim: "client_id".into(),
            tier_claim: default_tier_claim(),
            refresh: default_key_refresh(),
            min_refresh_interval: default_min_refresh(),
        }
    }
}

/// The verifier's view of an issuer: config depends on jwt, never the
/// reverse, so jwt owns its settings type and config converts into it.
impl From<IssuerConfig> for IssuerSettings {
    fn from(config: IssuerConfig) -> Self {
        Self {
            issuer: config.issuer,
            audiences: config.audiences,
            typ: match config.typ.is_empty() {
                true => jwt::preparse::default_typ(),
                false => config.typ,
            },
            allow_insecure_http: config.allow_insecure_http,
            pem: config.pem,
            jwks_url: config.jwks_url,
            discovery_url: config.discovery_url,
            algorithms: config.algorithms,
            leeway: config.leeway,
            client_claim: config.client_claim,
            tier_claim: config.tier_claim,
            refresh: config.refresh,
            min_refresh_interval: config.min_refresh_interval,
        }
    }
}

impl From<&IssuerConfig> for IssuerSettings {
    fn from(config: &IssuerConfig) -> Self {
        config.clone().into()
    }
}

/// `POST /oauth2/token` (client credentials: an API key buys a JWT), the
/// JWKS and discovery documents, and tokens for upstreams.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TokensConfig {
    pub enabled: bool,
    /// The tokens' `iss`; default `http(s)://` and the first listener's address.
    pub issuer: Option<String>,
    /// The `aud` of tokens from the token endpoint (the gateway accepts it).
    pub audience: String,
    /// Lifetime of tokens from the token endpoint.
    #[serde(with = "durations")]
    pub ttl: Duration,
    /// Lifetime of tokens the gateway hands upstreams (`upstream_identity = "jwt"`).
    #[serde(with = "durations")]
    pub upstream_ttl: Duration,
    /// Limit `/oauth2/token` (after the secret is checked), so no client
    /// mints tokens fast enough to churn the verified-token cache: each of
    /// `limit_by` is its own bucket of `limit_requests` per `limit_window`
    /// (bursts up to `limit_requests`), all must allow. Its own quota, not
    /// the tier's: a client needs one token per `ttl`, not one per request.
    pub rate_limit: bool,
    pub limit_by: Vec<LimitBy>,
    pub limit_requests: u32,
    #[serde(with = "durations")]
    pub limit_window: Duration,
}

impl Default for TokensConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            issuer: None,
            audience: "gateway".into(),
            ttl: Duration::from_secs(300),
            upstream_ttl: Duration::from_secs(60),
            rate_limit: true,
            limit_by: vec![LimitBy::Client, LimitBy::Source],
            limit_requests: 20,
            limit_window: Duration::from_secs(60),
        }
    }
}

impl TokensConfig {
    /// Whole seconds (tokens carry seconds), at most a day; the token
    /// endpoint's own limit when it is on.
    pub(super) fn check(&self, at: &At) -> Result<(), ConfigError> {
        at.within("ttl", self.ttl, SECOND..=DAY)?;
        at.within("upstream_ttl", self.upstream_ttl, SECOND..=DAY)?;
        if !(self.enabled && self.rate_limit) {
            return Ok(());
        }
        if self.limit_by.is_empty() {
            let message = "empty: name client, source or both (or set rate_limit = false)";
            return Err(at.invalid("limit_by", message));
        }
        at.within("limit_requests", self.limit_requests, 1..=COUNT)?;
        at.within("limit_window", self.limit_window, MS..=DAY)
    }

    /// The token endpoint's quota (`None`: not limited).
    pub fn limit_quota(&self) -> Option<crate::limits::Quota> {
        let (requests, window) = (self.limit_requests, self.limit_window);
        let limited = self.enabled && self.rate_limit && !self.limit_by.is_empty();
        limited.then(|| crate::limits::Quota::new("token_endpoint", requests, window, requests))
    }

    /// How long a retired signing key must stay published.
    pub fn max_ttl_seconds(&self) -> i64 {
        self.ttl.max(self.upstream_ttl).as_secs() as i64
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KeysConfig {
    /// The embedded key store (SQLite, WAL mode).
    pub store: PathBuf,
    /// How often the running gateway picks up keys changed in the store.
    #[serde(with = "durations")]
    pub refresh: Duration,
}

impl Default for KeysConfig {
    fn default() -> Self {
        Self {
            store: "gateway-keys.db".into(),
            refresh: Duration::from_secs(1),
        }
    }
}

impl KeysConfig {
    pub(super) fn check(&self, at: &At) -> Result<(), ConfigError> {
        at.within("refresh", self.refresh, MS..=DAY)
    }
}

/// A client tier and its request limit.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TierConfig {
    pub name: String,
    /// Requests allowed per `window`.
    pub requests: u32,
    #[serde(default = "default_tier_window", with = "durations")]
    pub window: Duration,
    /// Requests allowed back to back; default: `requests`.
    pub burst: Option<u32>,
    /// Kernel budgets for a source this tier's clients authenticate from:
    /// new connections and packets per second, and their bursts. Default:
    /// `xdp.default_*` times the tier's position (1 for the first tier).
    pub syn_rate: Option<u32>,
    pub syn_burst: Option<u32>,
    pub pkt_rate: Option<u32>,
    pub pkt_burst: Option<u32>,
}

fn default_tier_window() -> Duration {
    Duration::from_secs(60)
}

impl TierConfig {
    /// Kernel rates may be 0 (unlimited); bursts admit at least one.
    pub(super) fn check(&self, at: &At) -> Result<(), ConfigError> {
        at.within("requests", self.requests, 1..=u32::MAX)?;
        at.within("window", self.window, MS..=YEAR)?;
        at.within_opt("burst", self.burst, 1..=u32::MAX)?;
        at.within_opt("syn_burst", self.syn_burst, 1..=u32::MAX)?;
        at.within_opt("pkt_burst", self.pkt_burst, 1..=u32::MAX)
    }

    pub fn quota(&self) -> crate::limits::Quota {
        crate::limits::Quota::new(
            &self.name,
            self.requests,
            self.window,
            self.burst.unwrap_or(self.requests),
        )
    }
}

/// The tiers a config without `[[tiers]]` gets, lowest first.
pub(super) fn default_tiers() -> Vec<TierConfig> {
    [("bronze", 10), ("silver", 100), ("gold", 1000)]
        .into_iter()
        .map(|(name, requests)| TierConfig {
            name: name.into(),
            requests,
            window: default_tier_window(),
            burst: None,
            syn_rate: None,
            syn_burst: None,
            pkt_rate: None,
            pkt_burst: None,
        })
        .collect()
}

/// Each issuer has exactly one key source and only algorithms the verifier
/// accepts, audiences, an issuer name without `#` (principals are
/// `ISSUER#CLAIM`; OIDC issuers have no fragment anyway) used once, and
/// https key URLs unless `allow_insecure_http`; so a bad issuer is a config
/// error, not a start-up failure or a silent hole.
pub(super) fn validate_issuers(issuers: &[IssuerConfig]) -> Result<(), ConfigError> {
    for (index, issuer) in issuers.iter().enumerate() {
        let path = |key: &str| format!("issuers[{index}].{key}");
        if issuer.issuer.is_empty() || issuer.issuer.contains('#') {
            return Err(ConfigError::invalid(
                path("issuer"),
                "must be non-empty and contain no '#' (an issuer URL has no fragment)",
            ));
        }
        if issuers[..index].iter().any(|i| i.issuer == issuer.issuer) {
            return Err(ConfigError::invalid(
                path("issuer"),
                format!("{:?} is configured twice", issuer.issuer),
            ));
        }
        let any = issuer.audiences.iter().any(|a| a == jwt::ANY_AUDIENCE);
        if issuer.audiences.is_empty() || (any && issuer.audiences.len() > 1) {
            return Err(ConfigError::invalid(
                path("audiences"),
                "required: the `aud` values accepted from this issuer, or [\"*\"] alone for any",
            ));
        }
        if let Some(t) = issuer.typ.iter().position(|t| t.trim().is_empty()) {
            return Err(ConfigError::invalid(
                format!("issuers[{index}].typ[{t}]"),
                "must not be empty",
            ));
        }
        for (key, url) in [
            ("jwks_url", &issuer.jwks_url),
            ("discovery_url", &issuer.discovery_url),
        ] {
            let Some(url) = url else { continue };
            let scheme = url
                .split_once("://")
                .map(|(scheme, _)| scheme.to_ascii_lowercase());
            match scheme.as_deref() {
                Some("https") => {}
                Some("http") if issuer.allow_insecure_http => {}
                Some("http") => {
                    return Err(ConfigError::invalid(
                        path(key),
                        "must be https:// (set allow_insecure_http = true for local testing only)",
                    ))
                }
                _ => return Err(ConfigError::invalid(path(key), "must be an https:// URL")),
            }
        }
        let sources = [
            issuer.pem.is_some(),
            issuer.jwks_url.is_some(),
            issuer.discovery_url.is_some(),
        ];
        if sources.iter().filter(|given| **given).count() != 1 {
            return Err(ConfigError::invalid(
                format!("issuers[{index}]"),
                "give exactly one of pem, jwks_url, discovery_url",
            ));
        }
        for (a, name) in issuer.algorithms.iter().enumerate() {
            jwt::parse_algorithm(name).map_err(|message| {
                ConfigError::invalid(format!("issuers[{index}].algorithms[{a}]"), message)
            })?;
        }
    }
    Ok(())
}

/// The gateway's own issuer name, when given, follows the same rule as
/// others' and is none of theirs: its tokens name stored clients by id.
pub(super) fn validate_tokens(
    tokens: &TokensConfig,
    issuers: &[IssuerConfig],
) -> Result<(), ConfigError> {
    let Some(own) = &tokens.issuer else {
        return Ok(());
    };
    if own.is_empty() || own.contains('#') {
        return Err(ConfigError::invalid(
            "tokens.issuer",
            "must be non-empty and contain no '#' (an issuer URL has no fragment)",
        ));
    }
    if let Some(index) = issuers.iter().position(|i| &i.issuer == own) {
        return Err(ConfigError::invalid(
            format!("issuers[{index}].issuer"),
            "is the gateway's own tokens.issuer",
        ));
    }
    Ok(())
}

#[cfg(test)]
#[path = "identity_tests.rs"]
mod tests;
