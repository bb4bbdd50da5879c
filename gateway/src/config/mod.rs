//! The gateway's configuration: one TOML file, or embedded defaults that
//! work on a laptop. Unknown keys are errors; every error names the key path.
//!
//! This module parses and drives validation; each section's types and
//! checks live in its own module and are re-exported here.
mod bounds;
mod durations;
mod fleet;
mod identity;
mod kernel;
mod listen;
mod route_overlaps;
mod routes;
mod store;
mod upstreams;

use std::path::PathBuf;

use serde::Deserialize;

use self::bounds::At;
pub use self::fleet::RedisConfig;
pub use self::identity::{IssuerConfig, KeysConfig, TierConfig, TokensConfig};
pub use self::kernel::{GuardConfig, XdpConfig};
pub use self::listen::{AdminConfig, LimitsBackend, LimitsConfig, ListenerConfig, TlsConfig};
pub use self::routes::{
    AuthPolicy, ForwardingConfig, KeySources, LimitBy, RouteConfig, UpstreamIdentity,
};
pub use self::store::StoreConfig;
pub use self::upstreams::{Balance, HealthCheckConfig, OverloadConfig, UpstreamConfig};
use crate::guard::GuardSettings;
use crate::xdp::XdpSettings;

/// What `gateway run` uses when given no file.
pub const EMBEDDED_DEFAULT: &str = include_str!("../default.toml");

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
    /// The Redis server a fleet of gateways shares.
    #[serde(default)]
    pub redis: RedisConfig,
    /// The clients and keys a fleet of gateways shares (PostgreSQL).
    #[serde(default)]
    pub store: StoreConfig,
    /// Whether the file set `[keys] store` (exclusive with `store.url`).
    #[serde(skip)]
    pub keys_store_set: bool,
}

/// A TOML syntax error as where it is and what is wrong, without toml's
/// quote of the line: that line may hold a store or Redis URL's password,
/// and reload errors are logged and answered.
fn syntax_error(text: &str, error: &toml::de::Error) -> String {
    let message = error.message().trim_end();
    let Some(at) = error.span().map(|span| span.start.min(text.len())) else {
        return message.to_owned();
    };
    let before = text.get(..at).unwrap_or_default();
    let line = before.matches('\n').count() + 1;
    let column = before.rsplit('\n').next().map_or(0, |l| l.chars().count()) + 1;
    format!("TOML parse error at line {line}, column {column}: {message}")
}

fn default_state_dir() -> PathBuf {
    "gateway-state".into()
}

impl Config {
    /// Parses and validates `text` (from `origin`, for messages).
    pub fn parse(text: &str) -> Result<Self, ConfigError> {
        let deserializer = toml::Deserializer::parse(text)
            .map_err(|e| ConfigError::invalid("(file)", syntax_error(text, &e)))?;
        let mut config: Config = serde_path_to_error::deserialize(deserializer).map_err(|e| {
            let path = e.path().to_string();
            ConfigError::invalid(path, e.into_inner().message().to_owned())
        })?;
        if config.tiers.is_empty() {
            config.tiers = identity::default_tiers();
        }
        config.keys_store_set = store::keys_store_set(text);
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

    /// Section by section; the order decides which error a config with
    /// several mistakes reports, so keep it. [`Config::parse`] runs it;
    /// run it again after changing a parsed config (command-line overrides).
    pub fn validate(&self) -> Result<(), ConfigError> {
        listen::validate(&self.listeners)?;
        listen::validate_limits(&self.limits)?;
        upstreams::validate(&self.upstreams)?;
        routes::validate_targets(&self.routes, &self.upstreams)?;
        route_overlaps::validate(&self.routes)?;
        identity::validate_issuers(&self.issuers)?;
        identity::validate_tokens(&self.tokens, &self.issuers)?;
        routes::validate_auth(&self.routes, !self.issuers.is_empty(), &self.tokens)?;
        routes::validate_scopes(&self.routes, &self.tiers)?;
        routes::validate_forwarding(&self.forwarding)?;
        self.redis.validate()?;
        fleet::validate_backend(&self.limits, &self.redis)?;
        self.check_ranges()
    }

    /// Every number and duration within its range (see [`bounds`]), so
    /// no configuration can panic the gateway.
    fn check_ranges(&self) -> Result<(), ConfigError> {
        self.xdp.check(&At::new("xdp"))?;
        self.keys.check(&At::new("keys"))?;
        self.store.check(&At::new("store"), self.keys_store_set)?;
        self.limits.check(&At::new("limits"))?;
        self.guard.check(&At::new("guard"))?;
        self.tokens.check(&At::new("tokens"))?;
        At::each("upstreams", &self.upstreams, UpstreamConfig::check)?;
        At::each("routes", &self.routes, RouteConfig::check)?;
        At::each("tiers", &self.tiers, TierConfig::check)?;
        At::each("issuers", &self.issuers, IssuerConfig::check)
    }

    /// The kernel-path settings this config implies.
    pub fn xdp_settings(&self) -> XdpSettings {
        self.xdp.settings(&self.listeners)
    }

    pub fn guard_settings(&self) -> GuardSettings {
        (self.guard).settings(&self.xdp, &self.forwarding.trusted_proxies, &self.tiers)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The message a config fails with; for the sections' tests too.
    pub(super) fn error(text: &str) -> String {
        Config::parse(text).unwrap_err().to_string()
    }

    #[test]
    fn the_documented_example_is_valid() {
        let config = Config::parse(include_str!("../../../examples/gateway.toml")).unwrap();
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
        for key in ["max_body_bytes = 0", "tunnel_idle_timeout = \"0s\""] {
            let message = error(&format!(
                "[[listeners]]\naddress = \"127.0.0.1:1\"\n[limits]\n{key}\n"
            ));
            let name = key.split(' ').next().unwrap_or_default();
            assert!(message.starts_with(&format!("limits.{name}")), "{message}");
        }
    }
}
