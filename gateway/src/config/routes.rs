//! Routes: which requests go to which upstream, what credentials they
//! need, how they are limited, and what the upstream is told.
use ipnet::IpNet;
use serde::Deserialize;

use super::{
    bounds::At,
    identity::{TierConfig, TokensConfig},
    upstreams::UpstreamConfig,
    ConfigError,
};
use crate::{host, path};

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
    /// Keep the client's credential on the forwarded request. Unset: kept
    /// on `auth = "none"` routes (the credential is the upstream's own
    /// business, e.g. an identity provider's Basic auth), stripped on
    /// routes the gateway authenticates.
    #[serde(default)]
    pub forward_credential: Option<bool>,
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
    /// Forward the path without the matched prefix (`/api/x` → `/x`);
    /// Kong's `strip_path`. The same as `rewrite_prefix = "/"`.
    #[serde(default)]
    pub strip_prefix: bool,
    /// Forward the path with the matched prefix replaced (`/api/x` →
    /// `/v2/x` for `"/v2/"`); Envoy's `prefix_rewrite`.
    #[serde(default)]
    pub rewrite_prefix: Option<String>,
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

/// Every route has a usable prefix (and rewrite) and names a defined upstream.
pub(super) fn validate_targets(
    routes: &[RouteConfig],
    upstreams: &[UpstreamConfig],
) -> Result<(), ConfigError> {
    for (index, route) in routes.iter().enumerate() {
        if let Some(host) = &route.host {
            validate_host(&format!("routes[{index}].host"), host)?;
        }
        validate_prefix(&format!("routes[{index}].path_prefix"), &route.path_prefix)?;
        if let Some(rewrite) = &route.rewrite_prefix {
            validate_prefix(&format!("routes[{index}].rewrite_prefix"), rewrite)?;
            if route.strip_prefix {
                return Err(ConfigError::invalid(
                    format!("routes[{index}].strip_prefix"),
                    "set strip_prefix or rewrite_prefix, not both (strip_prefix is rewrite_prefix = \"/\")",
                ));
            }
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

/// A route's host is one the proxy serves ([`host::check`]), without the
/// port it is matched without.
fn validate_host(key: &str, name: &str) -> Result<(), ConfigError> {
    if name.is_empty() || host::check(name.as_bytes()).is_err() {
        return Err(ConfigError::invalid(
            key,
            "is not a host name (letters, digits, '-', '.', '_' and '~', no empty label; \
             or a bracketed IPv6 address)",
        ));
    }
    if host::name(name) != name.strip_suffix('.').unwrap_or(name) {
        return Err(ConfigError::invalid(
            key,
            "has a port: a route's host matches requests on every port",
        ));
    }
    Ok(())
}

/// A prefix is matched against, or put into, normalised paths: it must be
/// one itself, or it would never match (or would forward a path the
/// gateway refuses from clients).
fn validate_prefix(key: &str, prefix: &str) -> Result<(), ConfigError> {
    if !prefix.starts_with('/') {
        return Err(ConfigError::invalid(key, "must start with '/'"));
    }
    match path::normalize(prefix) {
        // Such a prefix would route only paths refused for it (see
        // `path::without_parameters`).
        Ok(_) if prefix.contains(';') => Err(ConfigError::invalid(
            key,
            "holds a ';': Java servers read it as path parameters",
        )),
        Ok(normal) if normal == prefix => Ok(()),
        Ok(normal) => Err(ConfigError::invalid(
            key,
            format!("is not a normalised path (write {normal:?})"),
        )),
        Err(error) => Err(ConfigError::invalid(key, error.to_string())),
    }
}

/// Routes that use JWTs have someone to verify (`has_issuers`) or sign
/// (`tokens_enabled`) them.
pub(super) fn validate_auth(
    routes: &[RouteConfig],
    has_issuers: bool,
    tokens: &TokensConfig,
) -> Result<(), ConfigError> {
    let (tokens_enabled, audience) = (tokens.enabled, tokens.audience.as_str());
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
        // An upstream's tokens have its name for audience, and the same
        // issuer and keys as the gateway's own: named as the gateway's
        // audience, they would be its credentials, replayable by the
        // upstream (or whoever reads its traffic) on any JWT route.
        // `*` (any audience) would take every upstream's for its own.
        if route.upstream_identity == UpstreamIdentity::Jwt
            && (route.upstream == audience || audience == "*")
        {
            return Err(ConfigError::invalid(
                format!("routes[{index}].upstream"),
                format!(
                    "{:?} is taken by tokens.audience ({audience:?}): the tokens this upstream \
                     is handed would pass as the gateway's own; rename the upstream or set \
                     another audience",
                    route.upstream
                ),
            ));
        }
    }
    Ok(())
}

/// A required scope never names a tier (letter case aside): tokens carry
/// their client's tier in `scope`, so a route asking for scope `gold`
/// would pass whoever a token or a stored client calls gold, which the
/// gateway keeps out of scopes (`tokens::without_tiers`, client checks).
pub(super) fn validate_scopes(
    routes: &[RouteConfig],
    tiers: &[TierConfig],
) -> Result<(), ConfigError> {
    for (index, route) in routes.iter().enumerate() {
        let tier = (route.required_scopes.iter())
            .find(|scope| tiers.iter().any(|t| t.name.eq_ignore_ascii_case(scope)));
        if let Some(scope) = tier {
            return Err(ConfigError::invalid(
                format!("routes[{index}].required_scopes"),
                format!(
                    "{scope:?} is the name of a tier: tokens carry their client's tier in \
                     their scope claim, so it cannot be told from a scope; name scopes apart \
                     from tiers"
                ),
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
        let folded = fold_header_name(value);
        if RESERVED_HEADERS.contains(&folded.as_str()) {
            let why = format!("{value:?} frames, routes or traces the request, or the gateway sets or strips it itself: choose another name");
            return Err(ConfigError::invalid(name, why));
        }
    }
    let (id, tier) = (&forwarding.client_id_header, &forwarding.client_tier_header);
    if fold_header_name(id) == fold_header_name(tier) {
        return Err(ConfigError::invalid(
            "forwarding.client_tier_header",
            format!("{tier:?} is client_id_header's name too: the two need their own"),
        ));
    }
    Ok(())
}

/// Names the identity headers may not take (lowercase, `_` as `-`): the
/// upstream would read the gateway's identity as framing (a second length
/// beside the gateway's own is request smuggling), routing, a credential,
/// or a field the gateway writes itself.
const RESERVED_HEADERS: [&str; 23] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "proxy-authorization",
    "te",
    "trailer",
    "transfer-encoding",
    "http2-settings",
    "upgrade",
    "host",
    "content-length",
    "expect",
    "authorization",
    "cookie",
    "x-request-id",
    "traceparent",
    "tracestate",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
    "x-forwarded-port",
    "forwarded",
    "x-real-ip",
];

/// A header name as upstreams that fold `_` into `-` (CGI, WSGI, PHP) and
/// case read it.
fn fold_header_name(name: &str) -> String {
    name.to_ascii_lowercase().replace('_', "-")
}

#[cfg(test)]
mod tests {
    use super::super::tests::error;

    #[test]
    fn identity_headers_may_not_take_a_name_that_frames_or_is_the_gateways() {
        let forwarding = |keys: &str| {
            error(&format!(
                "[[listeners]]\naddress = \"127.0.0.1:1\"\n[forwarding]\n{keys}\n"
            ))
        };
        for (keys, field) in [
            (
                "client_tier_header = \"Transfer-Encoding\"",
                "forwarding.client_tier_header",
            ),
            (
                "client_id_header = \"content_length\"",
                "forwarding.client_id_header",
            ),
            (
                "client_id_header = \"x-forwarded-for\"",
                "forwarding.client_id_header",
            ),
            ("client_id_header = \"host\"", "forwarding.client_id_header"),
            (
                "client_id_header = \"x-who\"\nclient_tier_header = \"X_Who\"",
                "forwarding.client_tier_header",
            ),
        ] {
            let message = forwarding(keys);
            assert!(message.starts_with(field), "{keys}: {message}");
        }
        let fine = "[[listeners]]\naddress = \"127.0.0.1:1\"\n[forwarding]\nclient_id_header = \"x-consumer\"\n";
        assert!(crate::config::Config::parse(fine).is_ok());
    }

    /// An upstream handed the gateway's tokens must not be named as their
    /// audience: they would pass as the gateway's own credentials.
    #[test]
    fn an_upstream_handed_tokens_is_not_named_as_the_tokens_audience() {
        let config = |upstream: &str, identity: &str| {
            format!(
                "[[listeners]]\naddress = \"127.0.0.1:1\"\n[tokens]\naudience = \"api\"\n\
                 [[upstreams]]\nname = \"{upstream}\"\nservers = [\"127.0.0.1:2\"]\n\
                 [[routes]]\npath_prefix = \"/\"\nupstream = \"{upstream}\"\nauth = \"both\"\n\
                 upstream_identity = \"{identity}\"\n"
            )
        };
        let message = error(&config("api", "jwt"));
        assert!(
            message.starts_with("routes[0].upstream: \"api\" is taken by tokens.audience"),
            "{message}"
        );
        let any = config("orders", "jwt").replace("audience = \"api\"", "audience = \"*\"");
        let message = error(&any);
        assert!(message.contains("tokens.audience (\"*\")"), "{message}");
        assert!(crate::config::Config::parse(&config("api", "headers")).is_ok());
        assert!(crate::config::Config::parse(&config("orders", "jwt")).is_ok());
    }

    #[test]
    fn routes_must_name_a_defined_upstream() {
        let message = error(
            "[[listeners]]\naddress = \"127.0.0.1:1\"\n[[routes]]\npath_prefix = \"/\"\nupstream = \"nope\"\n",
        );
        assert!(message.starts_with("routes[0].upstream"), "{message}");
    }

    fn route_error(keys: &str) -> String {
        error(&format!(
            "[[listeners]]\naddress = \"127.0.0.1:1\"\n[[upstreams]]\nname = \"app\"\n\
             servers = [\"127.0.0.1:2\"]\n[[routes]]\nupstream = \"app\"\n{keys}"
        ))
    }

    #[test]
    fn prefixes_and_rewrites_must_be_normalised_paths() {
        let cases = [
            (
                "path_prefix = \"api/\"",
                "routes[0].path_prefix: must start with '/'",
            ),
            (
                "path_prefix = \"/a//b/\"",
                "routes[0].path_prefix: is not a normalised path (write \"/a/b/\")",
            ),
            (
                "path_prefix = \"/%61pi/\"",
                "routes[0].path_prefix: is not a normalised path (write \"/api/\")",
            ),
            (
                "path_prefix = \"/a%2Fb/\"",
                "routes[0].path_prefix: the path holds an encoded slash",
            ),
            (
                "path_prefix = \"/../\"",
                "routes[0].path_prefix: the path's dot-segments",
            ),
            (
                "path_prefix = \"/a;v=1/\"",
                "routes[0].path_prefix: holds a ';'",
            ),
            (
                "path_prefix = \"/api/\"\nrewrite_prefix = \"v2\"",
                "routes[0].rewrite_prefix: must start with '/'",
            ),
            (
                "path_prefix = \"/api/\"\nrewrite_prefix = \"/v2/./x\"",
                "routes[0].rewrite_prefix: is not a normalised path",
            ),
            (
                "path_prefix = \"/api/\"\nrewrite_prefix = \"/v2\"\nstrip_prefix = true",
                "routes[0].strip_prefix: set strip_prefix or rewrite_prefix",
            ),
        ];
        for (keys, want) in cases {
            let message = route_error(keys);
            assert!(message.starts_with(want), "{keys}: {message}");
        }
    }

    #[test]
    fn route_hosts_must_be_plain_names_without_a_port() {
        for (host, want) in [
            ("", "is not a host name"),
            ("*.example.com", "is not a host name"),
            ("user@admin.example", "is not a host name"),
            ("admin..example", "is not a host name"),
            ("admin.example:8443", "has a port"),
            ("[::1]:80", "has a port"),
        ] {
            let message = route_error(&format!("path_prefix = \"/\"\nhost = {host:?}"));
            let want = format!("routes[0].host: {want}");
            assert!(message.starts_with(&want), "{host}: {message}");
        }
        for host in ["admin.example", "Admin.Example.", "[::1]", "10.0.0.1"] {
            let config = format!(
                "[[listeners]]\naddress = \"127.0.0.1:1\"\n[[upstreams]]\nname = \"app\"\n\
                 servers = [\"127.0.0.1:2\"]\n[[routes]]\nupstream = \"app\"\npath_prefix = \"/\"\nhost = {host:?}"
            );
            assert!(crate::config::Config::parse(&config).is_ok(), "{host}");
        }
    }
}
