//! The gateway's configuration: one TOML file, or embedded defaults that
//! work on a laptop. Unknown keys are errors; every error names the key path.
use std::{net::SocketAddr, path::PathBuf, time::Duration};

use ipnet::IpNet;
use serde::Deserialize;

use crate::guard::{GuardMode, GuardSettings};
use crate::xdp::{MapSizes, Mode, XdpSettings, DEFAULT_BUDGET, DEFAULT_PIN_ROOT};

/// What `gateway run` uses when given no file.
pub const EMBEDDED_DEFAULT: &str = include_str!("default.toml");

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message}")]
    Invalid { path: String, message: String },
}

impl ConfigError {
    fn invalid(path: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError::Invalid {
            path: path.into(),
            message: message.into(),
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where the gateway keeps what it generates (self-signed certificate).
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    #[serde(default)]
    pub xdp: XdpConfig,
    #[serde(default)]
    pub keys: KeysConfig,
    #[serde(default)]
    pub forwarding: ForwardingConfig,
    #[serde(default)]
    pub limits: LimitsConfig,
    /// Kernel feedback: bans and tier budgets from what requests show.
    #[serde(default)]
    pub guard: GuardConfig,
    #[serde(default)]
    pub admin: AdminConfig,
    /// The gateway's own OAuth2 token endpoint and signing keys.
    #[serde(default)]
    pub tokens: TokensConfig,
    #[serde(default)]
    pub listeners: Vec<ListenerConfig>,
    #[serde(default)]
    pub upstreams: Vec<UpstreamConfig>,
    #[serde(default)]
    pub routes: Vec<RouteConfig>,
    #[serde(default)]
    pub tiers: Vec<TierConfig>,
    /// Trusted JWT issuers.
    #[serde(default)]
    pub issuers: Vec<IssuerConfig>,
}

/// One trusted JWT issuer (an OAuth2/OIDC provider).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssuerConfig {
    /// Must equal the token's `iss`.
    pub issuer: String,
    /// The token's `aud` must contain one of these (not checked when empty).
    #[serde(default)]
    pub audiences: Vec<String>,
    /// Exactly one key source: a PEM public key file...
    pub pem: Option<PathBuf>,
    /// ...a JWKS URL...
    pub jwks_url: Option<String>,
    /// ...or an OIDC discovery URL (`.../.well-known/openid-configuration`).
    pub discovery_url: Option<String>,
    /// Accepted `alg` values; `none` and HS* are refused.
    #[serde(default = "default_algorithms")]
    pub algorithms: Vec<String>,
    #[serde(
        default = "crate::jwt::default_leeway",
        with = "humantime_serde_compat"
    )]
    pub leeway: Duration,
    /// The claim that names the client (`sub`, `azp`, `client_id`, ...).
    #[serde(default = "default_client_claim")]
    pub client_claim: String,
    /// The claim whose values name tiers (the highest named wins).
    #[serde(default = "default_tier_claim")]
    pub tier_claim: String,
    /// Periodic refresh of remote keys.
    #[serde(default = "default_key_refresh", with = "humantime_serde_compat")]
    pub refresh: Duration,
    /// Least time between refreshes triggered by unknown `kid`s.
    #[serde(default = "default_min_refresh", with = "humantime_serde_compat")]
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

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct XdpConfig {
    /// `false`: no kernel path at all (bans are enforced in userspace).
    pub enabled: bool,
    pub interface: String,
    /// Protected ports; empty means the listeners' ports.
    pub ports: Vec<u16>,
    pub pin_root: PathBuf,
    pub mode: Mode,
    pub require_xdp: bool,
    pub allow: Vec<IpNet>,
    pub default_syn_rate: u32,
    pub default_syn_burst: u32,
    pub default_pkt_rate: u32,
    pub default_pkt_burst: u32,
    pub max_bans: u32,
    pub max_sources: u32,
}

impl Default for XdpConfig {
    fn default() -> Self {
        let sizes = MapSizes::default();
        Self {
            enabled: true,
            interface: "lo".into(),
            ports: Vec::new(),
            pin_root: DEFAULT_PIN_ROOT.into(),
            mode: Mode::Enforce,
            require_xdp: false,
            allow: Vec::new(),
            default_syn_rate: DEFAULT_BUDGET.syn_per_sec,
            default_syn_burst: DEFAULT_BUDGET.syn_burst,
            default_pkt_rate: DEFAULT_BUDGET.pkt_per_sec,
            default_pkt_burst: DEFAULT_BUDGET.pkt_burst,
            max_bans: sizes.bans,
            max_sources: sizes.state,
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KeysConfig {
    /// The embedded key store (SQLite, WAL mode).
    pub store: PathBuf,
    /// How often the running gateway picks up keys changed in the store.
    #[serde(with = "humantime_serde_compat")]
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

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ForwardingConfig {
    pub client_id_header: String,
    pub client_tier_header: String,
    /// Peers whose `X-Forwarded-For` is trusted (appended to, not replaced).
    pub trusted_proxies: Vec<IpNet>,
}

impl Default for ForwardingConfig {
    fn default() -> Self {
        Self {
            client_id_header: "x-client-id".into(),
            client_tier_header: "x-client-tier".into(),
            trusted_proxies: Vec::new(),
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Reading a request's headers; also how long an idle HTTP/1.1
    /// keep-alive connection is kept, and the TLS handshake limit.
    #[serde(with = "humantime_serde_compat")]
    pub request_timeout: Duration,
    /// Waiting for the upstream's response headers.
    #[serde(with = "humantime_serde_compat")]
    pub upstream_timeout: Duration,
    #[serde(with = "humantime_serde_compat")]
    pub connect_timeout: Duration,
    pub max_header_bytes: usize,
    pub max_connections: usize,
    /// Worker threads, each with its own listener socket (SO_REUSEPORT),
    /// event loop and upstream connections; 0 = one per CPU.
    pub workers: usize,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            request_timeout: Duration::from_secs(30),
            upstream_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(5),
            max_header_bytes: 64 * 1024,
            max_connections: 10_000,
            workers: 0,
        }
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
    #[serde(with = "humantime_serde_compat")]
    pub ttl: Duration,
    /// Lifetime of tokens the gateway hands upstreams (`upstream_identity = "jwt"`).
    #[serde(with = "humantime_serde_compat")]
    pub upstream_ttl: Duration,
}

impl Default for TokensConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            issuer: None,
            audience: "gateway".into(),
            ttl: Duration::from_secs(300),
            upstream_ttl: Duration::from_secs(60),
        }
    }
}

impl TokensConfig {
    /// How long a retired signing key must stay published.
    pub fn max_ttl_seconds(&self) -> i64 {
        self.ttl.max(self.upstream_ttl).as_secs() as i64
    }
}

impl IssuerConfig {
    /// The gateway's own issuer: its EdDSA keys, its audience.
    pub fn own(issuer: &str, audience: &str) -> Self {
        Self {
            issuer: issuer.to_owned(),
            audiences: vec![audience.to_owned()],
            pem: None,
            jwks_url: None,
            discovery_url: None,
            algorithms: vec!["EdDSA".into()],
            leeway: crate::jwt::default_leeway(),
            client_claim: "client_id".into(),
            tier_claim: default_tier_claim(),
            refresh: default_key_refresh(),
            min_refresh_interval: default_min_refresh(),
        }
    }
}

impl From<&IssuerConfig> for crate::jwt::IssuerSettings {
    fn from(config: &IssuerConfig) -> Self {
        config.clone().into()
    }
}

/// The verifier's view of an issuer: config depends on jwt, never the reverse.
impl From<IssuerConfig> for crate::jwt::IssuerSettings {
    fn from(config: IssuerConfig) -> Self {
        Self {
            issuer: config.issuer,
            audiences: config.audiences,
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

/// The admin listener: `/metrics`, `/healthz`, the management API.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    pub enabled: bool,
    /// Keep it private: `/metrics` and `/healthz` need no credential.
    pub address: SocketAddr,
    /// One JSON line per admin action; relative paths are under `state_dir`.
    pub audit_log: PathBuf,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            address: SocketAddr::from(([127, 0, 0, 1], 9901)),
            audit_log: "audit.log".into(),
        }
    }
}

/// When a source is banned for what its requests do (see [`crate::guard`]).
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GuardConfig {
    /// `enforce`, `monitor` (log and count would-be bans) or `off`.
    pub mode: GuardMode,
    /// Requests refused with 429 a source may still send before its
    /// window frees up; one more bans it until then.
    pub excess: u32,
    /// Refused credentials a source may present within
    /// `auth_failure_window`; one more bans it for `auth_failure_ban`.
    pub auth_failures: u32,
    #[serde(with = "humantime_serde_compat")]
    pub auth_failure_window: Duration,
    #[serde(with = "humantime_serde_compat")]
    pub auth_failure_ban: Duration,
    /// Every ban lasts at least this; repeat offences double it up to `max_ban`.
    #[serde(with = "humantime_serde_compat")]
    pub min_ban: Duration,
    #[serde(with = "humantime_serde_compat")]
    pub max_ban: Duration,
    /// A source's tier budget returns to the default this long after the
    /// last authenticated request from it.
    #[serde(with = "humantime_serde_compat")]
    pub budget_idle: Duration,
}

impl Default for GuardConfig {
    fn default() -> Self {
        Self {
            mode: GuardMode::Enforce,
            excess: 20,
            auth_failures: 20,
            auth_failure_window: Duration::from_secs(10),
            auth_failure_ban: Duration::from_secs(60),
            min_ban: Duration::from_secs(1),
            max_ban: Duration::from_secs(3600),
            budget_idle: Duration::from_secs(300),
        }
    }
}

fn default_state_dir() -> PathBuf {
    "gateway-state".into()
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    pub address: SocketAddr,
    /// TLS (HTTP/2 and HTTP/1.1 by ALPN); plain HTTP when absent.
    pub tls: Option<TlsConfig>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// PEM certificate chain; with `key`. Both absent: a self-signed
    /// certificate is generated in `state_dir` on first start and kept.
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// Require client certificates signed by this CA (mTLS).
    pub client_ca: Option<PathBuf>,
    /// Names for the self-signed certificate (default: localhost and the
    /// listener's address).
    pub names: Vec<String>,
}

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Balance {
    #[default]
    RoundRobin,
    LeastConnections,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    pub name: String,
    /// `host:port` of each server (plain HTTP).
    pub servers: Vec<SocketAddr>,
    #[serde(default)]
    pub balance: Balance,
    /// Active health checks; without them only passive ejection applies.
    pub health_check: Option<HealthCheckConfig>,
    /// When to shed load by tier (see [`crate::proxy::overload`]); no
    /// signal configured means no shedding.
    #[serde(default)]
    pub overload: OverloadConfig,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OverloadConfig {
    /// Requests in flight to the pool at which gold is refused too.
    pub max_in_flight: Option<usize>,
    /// p99 upstream latency over this in an interval sheds one more tier.
    #[serde(with = "humantime_serde_compat::option")]
    pub p99_latency: Option<Duration>,
    /// Fraction of 5xx answers (0 to 1) over which one more tier is shed.
    pub error_rate: Option<f64>,
    /// Fewer requests than this in an interval count as no signal.
    pub min_requests: u64,
    /// How often the latency and error signals are judged.
    #[serde(with = "humantime_serde_compat")]
    pub interval: Duration,
}

impl Default for OverloadConfig {
    fn default() -> Self {
        Self {
            max_in_flight: None,
            p99_latency: None,
            error_rate: None,
            min_requests: 20,
            interval: Duration::from_secs(1),
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthCheckConfig {
    /// Path probed with GET; any 2xx or 3xx is healthy.
    pub path: String,
    #[serde(default = "default_check_interval", with = "humantime_serde_compat")]
    pub interval: Duration,
    #[serde(default = "default_check_timeout", with = "humantime_serde_compat")]
    pub timeout: Duration,
    /// Consecutive failures that take a server out.
    #[serde(default = "default_threshold")]
    pub unhealthy_threshold: u32,
    /// Consecutive successes that bring it back.
    #[serde(default = "default_threshold")]
    pub healthy_threshold: u32,
}

fn default_check_interval() -> Duration {
    Duration::from_secs(5)
}

fn default_check_timeout() -> Duration {
    Duration::from_secs(2)
}

fn default_threshold() -> u32 {
    2
}

/// Which credentials a route accepts.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum AuthPolicy {
    #[default]
    ApiKey,
    /// A JWT from a configured issuer (`Authorization: Bearer <jwt>`).
    Jwt,
    /// Either an API key or a JWT.
    Both,
    /// Authentication disabled on this route.
    None,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RouteConfig {
    /// Matches any host when absent.
    pub host: Option<String>,
    pub path_prefix: String,
    pub upstream: String,
    #[serde(default)]
    pub auth: AuthPolicy,
    #[serde(default)]
    pub required_scopes: Vec<String>,
    /// Keep the client's credential on the forwarded request.
    #[serde(default)]
    pub forward_credential: bool,
    /// How the upstream learns who the client is.
    #[serde(default)]
    pub upstream_identity: UpstreamIdentity,
    #[serde(default)]
    pub key_sources: KeySources,
    /// Apply the client's tier limit (authenticated routes only).
    #[serde(default = "default_true")]
    pub rate_limit: bool,
    #[serde(default)]
    pub limit_by: LimitBy,
    /// How many requests one request on this route counts as.
    #[serde(default = "default_cost")]
    pub cost: u32,
}

fn default_true() -> bool {
    true
}

fn default_cost() -> u32 {
    1
}

/// Where API keys are looked for, in precedence order: headers, query, cookie.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct KeySources {
    pub headers: Vec<String>,
    pub query: Option<String>,
    pub cookie: Option<String>,
}

impl Default for KeySources {
    fn default() -> Self {
        Self {
            headers: vec!["authorization".into(), "api-key".into(), "x-api-key".into()],
            query: Some("api_key".into()),
            cookie: Some("api_key".into()),
        }
    }
}

/// A client tier and its request limit.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TierConfig {
    pub name: String,
    /// Requests allowed per `window`.
    pub requests: u32,
    #[serde(default = "default_tier_window", with = "humantime_serde_compat")]
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
    pub fn quota(&self) -> crate::limits::Quota {
        crate::limits::Quota::new(
            &self.name,
            self.requests,
            self.window,
            self.burst.unwrap_or(self.requests),
        )
    }
}

/// How a route tells its upstream who the client is.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum UpstreamIdentity {
    /// `X-Client-Id` / `X-Client-Tier` headers.
    #[default]
    Headers,
    /// `Authorization: Bearer` with a short-lived JWT the gateway signs
    /// (audience: the upstream's name), so upstreams accept tokens only.
    Jwt,
}

/// Whose requests a route's limit counts together.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum LimitBy {
    /// The authenticated client, wherever it connects from.
    #[default]
    Client,
    /// The source address.
    Source,
    /// The client at one source address.
    Both,
}

impl Config {
    /// Parses and validates `text` (from `origin`, for messages).
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        let deserializer = toml::Deserializer::parse(text)
            .map_err(|e| ConfigError::invalid("(file)", e.to_string()))?;
        let mut config: Config = serde_path_to_error::deserialize(deserializer).map_err(|e| {
            let path = e.path().to_string();
            ConfigError::invalid(path, e.into_inner().message().to_owned())
        })?;
        if config.tiers.is_empty() {
            config.tiers = [("bronze", 10), ("silver", 100), ("gold", 1000)]
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
                .collect();
        }
        config.validate()?;
        if config.admin.audit_log.is_relative() {
            config.admin.audit_log = config.state_dir.join(&config.admin.audit_log);
        }
        Ok(config)
    }

    pub fn load(path: Option<&std::path::Path>) -> Result<Self, ConfigError> {
        match path {
            None => Self::parse(EMBEDDED_DEFAULT),
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.to_owned(),
                    source,
                })?;
                Self::parse(&text)
            }
        }
    }

    fn validate(&self) -> Result<(), ConfigError> {
        if self.listeners.is_empty() {
            return Err(ConfigError::invalid(
                "listeners",
                "at least one listener is needed",
            ));
        }
        for (index, upstream) in self.upstreams.iter().enumerate() {
            if upstream.servers.is_empty() {
                return Err(ConfigError::invalid(
                    format!("upstreams[{index}].servers"),
                    format!("upstream {:?} has no servers", upstream.name),
                ));
            }
            if self.upstreams[..index]
                .iter()
                .any(|u| u.name == upstream.name)
            {
                return Err(ConfigError::invalid(
                    format!("upstreams[{index}].name"),
                    format!("upstream {:?} is defined twice", upstream.name),
                ));
            }
        }
        for (index, route) in self.routes.iter().enumerate() {
            if !route.path_prefix.starts_with('/') {
                return Err(ConfigError::invalid(
                    format!("routes[{index}].path_prefix"),
                    "must start with '/'",
                ));
            }
            if !self.upstreams.iter().any(|u| u.name == route.upstream) {
                return Err(ConfigError::invalid(
                    format!("routes[{index}].upstream"),
                    format!("no upstream named {:?}", route.upstream),
                ));
            }
        }
        for (index, issuer) in self.issuers.iter().enumerate() {
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
                crate::jwt::parse_algorithm(name).map_err(|message| {
                    ConfigError::invalid(format!("issuers[{index}].algorithms[{a}]"), message)
                })?;
            }
        }
        for (index, route) in self.routes.iter().enumerate() {
            if matches!(route.auth, AuthPolicy::Jwt | AuthPolicy::Both)
                && self.issuers.is_empty()
                && !self.tokens.enabled
            {
                return Err(ConfigError::invalid(
                    format!("routes[{index}].auth"),
                    "accepts JWTs but no [[issuers]] are configured and [tokens] is disabled",
                ));
            }
            if route.upstream_identity == UpstreamIdentity::Jwt && !self.tokens.enabled {
                return Err(ConfigError::invalid(
                    format!("routes[{index}].upstream_identity"),
                    "\"jwt\" needs the gateway's own tokens ([tokens] enabled = true)",
                ));
            }
        }
        for (name, value) in [
            (
                "forwarding.client_id_header",
                &self.forwarding.client_id_header,
            ),
            (
                "forwarding.client_tier_header",
                &self.forwarding.client_tier_header,
            ),
        ] {
            if http::HeaderName::from_bytes(value.as_bytes()).is_err() {
                return Err(ConfigError::invalid(name, "not a valid header name"));
            }
        }
        Ok(())
    }

    /// The kernel-path settings this config implies.
    pub fn xdp_settings(&self) -> XdpSettings {
        let xdp = &self.xdp;
        let ports = if xdp.ports.is_empty() {
            self.listeners.iter().map(|l| l.address.port()).collect()
        } else {
            xdp.ports.clone()
        };
        XdpSettings {
            interface: xdp.interface.clone(),
            ports,
            pin_root: xdp.pin_root.clone(),
            mode: xdp.mode,
            require_xdp: xdp.require_xdp,
            allow: xdp.allow.clone(),
            default_budget: self.default_budget(),
            sizes: MapSizes {
                bans: xdp.max_bans,
                state: xdp.max_sources,
                ..MapSizes::default()
            },
        }
    }
}

impl Config {
    fn default_budget(&self) -> gateway_common::Budget {
        let xdp = &self.xdp;
        gateway_common::Budget {
            syn_per_sec: xdp.default_syn_rate,
            syn_burst: xdp.default_syn_burst,
            pkt_per_sec: xdp.default_pkt_rate,
            pkt_burst: xdp.default_pkt_burst,
            tier: 0,
        }
    }

    pub fn guard_settings(&self) -> GuardSettings {
        let guard = &self.guard;
        let base = self.default_budget();
        let tier_budgets = self
            .tiers
            .iter()
            .zip(1u32..)
            .map(|(tier, position)| {
                // Unset: the default budget times the tier's position.
                let scaled = |set: Option<u32>, default: u32| {
                    set.unwrap_or(default.saturating_mul(position))
                };
                gateway_common::Budget {
                    syn_per_sec: scaled(tier.syn_rate, base.syn_per_sec),
                    syn_burst: scaled(tier.syn_burst, base.syn_burst),
                    pkt_per_sec: scaled(tier.pkt_rate, base.pkt_per_sec),
                    pkt_burst: scaled(tier.pkt_burst, base.pkt_burst),
                    tier: position,
                }
            })
            .collect();
        GuardSettings {
            mode: guard.mode,
            excess: guard.excess,
            auth_failures: guard.auth_failures,
            auth_failure_window: guard.auth_failure_window,
            auth_failure_ban: guard.auth_failure_ban,
            min_ban: guard.min_ban,
            max_ban: guard.max_ban.max(guard.min_ban),
            budget_idle: guard.budget_idle,
            allow: self.xdp.allow.clone(),
            tier_budgets,
        }
    }
}

/// Durations written as strings such as `"30s"` or `"500ms"`.
mod humantime_serde_compat {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Duration, D::Error> {
        let text = String::deserialize(deserializer)?;
        humantime::parse_duration(&text).map_err(|e| {
            serde::de::Error::custom(format!("{text:?} is not a duration like \"30s\": {e}"))
        })
    }

    /// The same, for optional durations.
    pub mod option {
        use std::time::Duration;

        use serde::Deserializer;

        pub fn deserialize<'de, D: Deserializer<'de>>(
            deserializer: D,
        ) -> Result<Option<Duration>, D::Error> {
            super::deserialize(deserializer).map(Some)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_documented_example_is_valid() {
        let config = Config::parse(include_str!("../../examples/gateway.toml")).unwrap();
        assert_eq!(config.listeners.len(), 2);
        assert_eq!(config.routes[0].auth, AuthPolicy::Both);
        assert!(config.upstreams[0].health_check.is_some());
    }

    #[test]
    fn embedded_default_is_valid() {
        let config = Config::parse(EMBEDDED_DEFAULT).unwrap();
        assert!(!config.listeners.is_empty());
        assert_eq!(config.tiers.len(), 3);
    }

    fn error(text: &str) -> String {
        Config::parse(text).unwrap_err().to_string()
    }

    #[test]
    fn unknown_key_is_an_error_with_its_path() {
        let message =
            error("[[listeners]]\naddress = \"127.0.0.1:1\"\n[limits]\nrequest_timeuot = \"1s\"\n");
        assert!(message.starts_with("limits"), "{message}");
        assert!(message.contains("request_timeuot"), "{message}");
    }

    #[test]
    fn bad_values_name_their_key_path() {
        let message = error("[[listeners]]\naddress = \"not an address\"\n");
        assert!(message.starts_with("listeners[0].address"), "{message}");
        let message = error(
            "[[listeners]]\naddress = \"127.0.0.1:1\"\n[limits]\nupstream_timeout = \"soon\"\n",
        );
        assert!(message.starts_with("limits.upstream_timeout"), "{message}");
    }

    #[test]
    fn hmac_algorithms_are_refused_with_their_path() {
        let message = error(
            "[[listeners]]\naddress = \"127.0.0.1:1\"\n[[issuers]]\nissuer = \"i\"\njwks_url = \"http://x\"\nalgorithms = [\"RS256\", \"HS256\"]\n",
        );
        assert!(message.starts_with("issuers[0].algorithms[1]"), "{message}");
    }

    #[test]
    fn routes_must_name_a_defined_upstream() {
        let message = error(
            "[[listeners]]\naddress = \"127.0.0.1:1\"\n[[routes]]\npath_prefix = \"/\"\nupstream = \"nope\"\n",
        );
        assert!(message.starts_with("routes[0].upstream"), "{message}");
    }
}
