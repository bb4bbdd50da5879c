//! Routes: which requests go to which upstream, what credentials they
//! need, how they are limited, and what the upstream is told.
use ipnet::IpNet;
use serde::Deserialize;

use super::{bounds::At, upstreams::UpstreamConfig, ConfigError};

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

impl RouteConfig {
    pub(super) fn check(&self, at: &At) -> Result<(), ConfigError> {
        at.within("cost", self.cost, 1..=1_000_000)
    }

    /// How logs and metrics name a route: `host` (or `*`) + `path_prefix`.
    pub fn name(&self) -> String {
        format!(
            "{}{}",
            self.host.as_deref().unwrap_or("*"),
            self.path_prefix
        )
    }
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

/// What forwarded requests carry about their client.
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

/// Every route has a usable prefix and names a defined upstream.
pub(super) fn validate_targets(
    routes: &[RouteConfig],
    upstreams: &[UpstreamConfig],
) -> Result<(), ConfigError> {
    for (index, route) in routes.iter().enumerate() {
        if !route.path_prefix.starts_with('/') {
            return Err(ConfigError::invalid(
                format!("routes[{index}].path_prefix"),
                "must start with '/'",
            ));
        }
        if !upstreams.iter().any(|u| u.name == route.upstream) {
            return Err(ConfigError::invalid(
                format!("routes[{index}].upstream"),
                format!("no upstream named {:?}", route.upstream),
            ));
        }
    }
    Ok(())
}

/// Routes that use JWTs have someone to verify (`has_issuers`) or sign
/// (`tokens_enabled`) them.
pub(super) fn validate_auth(
    routes: &[RouteConfig],
    has_issuers: bool,
    tokens_enabled: bool,
) -> Result<(), ConfigError> {
    for (index, route) in routes.iter().enumerate() {
        if matches!(route.auth, AuthPolicy::Jwt | AuthPolicy::Both)
            && !has_issuers
            && !tokens_enabled
        {
            return Err(ConfigError::invalid(
                format!("routes[{index}].auth"),
                "accepts JWTs but no [[issuers]] are configured and [tokens] is disabled",
            ));
        }
        if route.upstream_identity == UpstreamIdentity::Jwt && !tokens_enabled {
            return Err(ConfigError::invalid(
                format!("routes[{index}].upstream_identity"),
                "\"jwt\" needs the gateway's own tokens ([tokens] enabled = true)",
            ));
        }
    }
    Ok(())
}

pub(super) fn validate_forwarding(forwarding: &ForwardingConfig) -> Result<(), ConfigError> {
    for (name, value) in [
        ("forwarding.client_id_header", &forwarding.client_id_header),
        (
            "forwarding.client_tier_header",
            &forwarding.client_tier_header,
        ),
    ] {
        if http::HeaderName::from_bytes(value.as_bytes()).is_err() {
            return Err(ConfigError::invalid(name, "not a valid header name"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::tests::error;

    #[test]
    fn routes_must_name_a_defined_upstream() {
        let message = error(
            "[[listeners]]\naddress = \"127.0.0.1:1\"\n[[routes]]\npath_prefix = \"/\"\nupstream = \"nope\"\n",
        );
        assert!(message.starts_with("routes[0].upstream"), "{message}");
    }
}
