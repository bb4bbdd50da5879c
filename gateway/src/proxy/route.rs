//! Route matching: by host (exact, case-insensitive; absent = any host),
//! then the longest path prefix.
use crate::config::{AuthPolicy, KeySources, LimitBy, RouteConfig, UpstreamIdentity};

#[derive(Clone, Debug)]
pub struct Route {
    /// `host` + `path_prefix`, for logs and metrics.
    pub name: String,
    host: Option<String>,
    prefix: String,
    pub upstream: String,
    pub auth: AuthPolicy,
    pub required_scopes: Vec<String>,
    pub forward_credential: bool,
    pub upstream_identity: UpstreamIdentity,
    pub key_sources: KeySources,
    pub rate_limit: bool,
    pub limit_by: LimitBy,
    pub cost: u32,
    /// Position in the configuration (metrics label by it).
    pub index: usize,
}

pub struct RouteTable {
    /// Longest prefix first, so the first match wins.
    routes: Vec<Route>,
}

impl RouteTable {
    pub fn new(configs: &[RouteConfig]) -> Self {
        let mut routes: Vec<Route> = configs
            .iter()
            .enumerate()
            .map(|(index, c)| Route {
                name: c.name(),
                index,
                host: c.host.as_ref().map(|h| h.to_ascii_lowercase()),
                prefix: c.path_prefix.clone(),
                upstream: c.upstream.clone(),
                auth: c.auth,
                required_scopes: c.required_scopes.clone(),
                forward_credential: c.forward_credential,
                upstream_identity: c.upstream_identity,
                key_sources: c.key_sources.clone(),
                rate_limit: c.rate_limit,
                limit_by: c.limit_by,
                cost: c.cost,
            })
            .collect();
        // Longer prefixes first; host-specific before any-host at equal length.
        routes.sort_by(|a, b| {
            b.prefix
                .len()
                .cmp(&a.prefix.len())
                .then(b.host.is_some().cmp(&a.host.is_some()))
        });
        Self { routes }
    }

    /// `host` may carry a port; it is ignored for matching.
    pub fn find(&self, host: Option<&str>, path: &str) -> Option<&Route> {
        let host = host.map(|h| host_without_port(h).to_ascii_lowercase());
        self.routes.iter().find(|route| {
            path.starts_with(&route.prefix)
                && route
                    .host
                    .as_ref()
                    .is_none_or(|want| host.as_deref() == Some(want.as_str()))
        })
    }
}

/// `example.com:8080` → `example.com`; `[::1]:80` → `[::1]`.
fn host_without_port(host: &str) -> &str {
    if let Some(end) = host.find(']') {
        return &host[..=end];
    }
    match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(host: Option<&str>, prefix: &str, upstream: &str) -> RouteConfig {
        RouteConfig {
            host: host.map(str::to_owned),
            path_prefix: prefix.into(),
            upstream: upstream.into(),
            auth: AuthPolicy::ApiKey,
            required_scopes: Vec::new(),
            forward_credential: false,
            upstream_identity: UpstreamIdentity::Headers,
            key_sources: KeySources::default(),
            rate_limit: true,
            limit_by: LimitBy::Client,
            cost: 1,
        }
    }

    #[test]
    fn longest_prefix_wins_and_host_narrows() {
        let table = RouteTable::new(&[
            route(None, "/", "root"),
            route(None, "/api/", "api"),
            route(None, "/api/admin/", "admin"),
            route(Some("Example.com"), "/api/", "example"),
        ]);
        let find = |host, path| table.find(host, path).map(|r| r.upstream.as_str());
        assert_eq!(find(None, "/api/admin/x"), Some("admin"));
        assert_eq!(find(None, "/api/x"), Some("api"));
        assert_eq!(find(Some("example.com:8080"), "/api/x"), Some("example"));
        assert_eq!(find(Some("other.org"), "/api/x"), Some("api"));
        assert_eq!(find(None, "/other"), Some("root"));
        assert_eq!(host_without_port("[::1]:80"), "[::1]");
        let no_root = RouteTable::new(&[route(None, "/api/", "api")]);
        assert!(no_root.find(None, "/ap").is_none());
    }
}
