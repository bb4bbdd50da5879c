//! Route matching: by host (exact, case-insensitive, a trailing dot
//! ignored; absent = any host),
//! then the longest path prefix, on segment boundaries, of the normalised
//! path ([`super::path`]); and the path a route forwards. A host's own
//! routes come first whatever their prefixes' length: an any-host
//! `/public` must not take `/public/x` off a host whose `/` needs a key
//! (it did, found by an attack). Paths none of a host's routes cover go
//! to the any-host routes.
use std::borrow::Cow;

use crate::{
    config::{AuthPolicy, KeySources, LimitBy, RouteConfig, UpstreamIdentity},
    host, path,
};

#[derive(Clone, Debug)]
pub struct Route {
    /// `host` + `path_prefix`, for logs and metrics.
    pub name: String,
    host: Option<String>,
    /// The path prefix without its trailing '/' (`""` for `/`).
    prefix: String,
    /// What replaces `prefix` upstream (`strip_prefix`: `""`), likewise.
    rewrite: Option<String>,
    pub upstream: String,
    pub auth: AuthPolicy,
    pub required_scopes: Vec<String>,
    pub forward_credential: bool,
    pub upstream_identity: UpstreamIdentity,
    pub key_sources: KeySources,
    /// `key_sources.headers` as header names, parsed once (a lookup by
    /// text parses and hashes the name on every request).
    pub key_headers: Vec<http::HeaderName>,
    pub rate_limit: bool,
    pub limit_by: LimitBy,
    pub cost: u32,
    /// Position in the configuration (metrics label by it).
    pub index: usize,
}

pub struct RouteTable {
    /// Host-specific first, then longest prefix first, so the first match
    /// wins.
    routes: Vec<Route>,
    /// A prefix has an upper-case letter: a path's case may matter even
    /// when the path has none.
    upper_prefixes: bool,
}

impl RouteTable {
    pub fn new(configs: &[RouteConfig]) -> Self {
        let mut routes: Vec<Route> = configs
            .iter()
            .enumerate()
            .map(|(index, c)| Route {
                name: c.name(),
                index,
                host: c.host.as_deref().map(host::route_host),
                prefix: path::route_prefix(&c.path_prefix).to_owned(),
                rewrite: match (&c.rewrite_prefix, c.strip_prefix) {
                    (Some(rewrite), _) => Some(path::route_prefix(rewrite).to_owned()),
                    (None, true) => Some(String::new()),
                    (None, false) => None,
                },
                upstream: c.upstream.clone(),
                auth: c.auth,
                required_scopes: c.required_scopes.clone(),
                forward_credential: (c.forward_credential).unwrap_or(c.auth == AuthPolicy::None),
                upstream_identity: c.upstream_identity,
                key_sources: c.key_sources.clone(),
                key_headers: super::credentials::header_names(&c.key_sources),
                rate_limit: c.rate_limit,
                limit_by: c.limit_by,
                cost: c.cost,
            })
            .collect();
        // Host-specific before any-host; longer prefixes first within each.
        routes.sort_by(|a, b| {
            (b.host.is_some().cmp(&a.host.is_some())).then(b.prefix.len().cmp(&a.prefix.len()))
        });
        let upper_prefixes =
            (routes.iter()).any(|r| r.prefix.bytes().any(|b| b.is_ascii_uppercase()));
        Self {
            routes,
            upper_prefixes,
        }
    }

    /// `host` may carry a port; it is ignored for matching. `path` is
    /// normalised.
    pub fn find(&self, host: Option<&str>, path: &str) -> Option<&Route> {
        self.find_by(host, path, path::is_under)
    }

    /// Whether an upstream that matches paths without regard to case
    /// (Express and ASP.NET Core by default, IIS) would route `path` to
    /// another route than `routed` (its index), whose auth or scopes may
    /// be weaker: `/api/Admin/x` is their `/api/admin/x`. While the path
    /// and every prefix are lower case, it costs one pass over the path's
    /// bytes and no second scan.
    pub fn case_decides(&self, host: Option<&str>, path: &str, routed: usize) -> bool {
        if !self.upper_prefixes && !path.bytes().any(|b| b.is_ascii_uppercase()) {
            return false;
        }
        self.find_by(host, path, is_under_ignoring_case)
            .is_none_or(|route| route.index != routed)
    }

    fn find_by(
        &self,
        host: Option<&str>,
        path: &str,
        under: fn(&str, &str) -> bool,
    ) -> Option<&Route> {
        // Routes keep their hosts in lower case: compared without a
        // lower-cased copy of the request's per request, and not looked
        // at by routes for any host.
        self.routes.iter().find(|route| {
            under(path, &route.prefix)
                && (route.host.as_ref()).is_none_or(|want| {
                    host.is_some_and(|host| host::name(host).eq_ignore_ascii_case(want))
                })
        })
    }
}

impl Route {
    /// The normalised `path` this route matched, as its upstream gets it:
    /// the prefix replaced when `strip_prefix` or `rewrite_prefix` say so
    /// (`/api/x` → `/x` or `/v2/x`), segment for segment, so the result is
    /// normalised too and never empty.
    pub fn upstream_path<'p>(&self, path: &'p str) -> Cow<'p, str> {
        let Some(rewrite) = &self.rewrite else {
            return Cow::Borrowed(path);
        };
        let rest = path.get(self.prefix.len()..).unwrap_or_default();
        match (rewrite.as_str(), rest) {
            ("", "") => Cow::Borrowed("/"),
            ("", rest) => Cow::Borrowed(rest),
            (rewrite, rest) => Cow::Owned(format!("{rewrite}{rest}")),
        }
    }
}

/// As [`path::is_under`], ASCII letters compared without case.
fn is_under_ignoring_case(path: &str, prefix: &str) -> bool {
    let (path, prefix) = (path.as_bytes(), prefix.as_bytes());
    path.get(..prefix.len())
        .is_some_and(|head| head.eq_ignore_ascii_case(prefix))
        && matches!(path.get(prefix.len()), None | Some(b'/'))
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
            forward_credential: None,
            upstream_identity: UpstreamIdentity::Headers,
            key_sources: KeySources::default(),
            rate_limit: true,
            limit_by: LimitBy::Client,
            cost: 1,
            strip_prefix: false,
            rewrite_prefix: None,
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
        // Hosts compare without case, port or the root's dot, and only
        // whole.
        for same in ["EXAMPLE.Com", "example.com.", "Example.com.:8080"] {
            assert_eq!(find(Some(same), "/api/x"), Some("example"), "{same}");
        }
        for near in [
            "example.co",
            "example.com..",
            "xexample.com",
            "example.com:x",
        ] {
            assert_eq!(find(Some(near), "/api/x"), Some("api"), "{near}");
        }
        assert_eq!(find(None, "/other"), Some("root"));
        let no_root = RouteTable::new(&[route(None, "/api/", "api")]);
        assert!(no_root.find(None, "/ap").is_none());
    }

    /// Where a case-blind upstream would route a path elsewhere, and only
    /// there: upper case in the path or in a prefix.
    #[test]
    fn case_decides_where_a_case_blind_reading_routes_elsewhere() {
        let table = RouteTable::new(&[
            route(None, "/", "open"),
            route(None, "/api/admin/", "admin"),
            route(None, "/api/", "api"),
        ]);
        let decides = |path: &str| {
            let routed = table.find(None, path).unwrap().index;
            table.case_decides(None, path, routed)
        };
        for path in ["/api/Admin/users", "/API/admin", "/Api/x", "/api/ADMIN"] {
            assert!(decides(path), "{path}");
        }
        for path in [
            "/api/admin/Users",
            "/api/x/ABC123",
            "/Other",
            "/api/adminX",
            "/api/admin",
        ] {
            assert!(!decides(path), "{path}");
        }
        let upper = RouteTable::new(&[route(None, "/", "open"), route(None, "/Private/", "p")]);
        let routed = upper.find(None, "/private/x").unwrap().index;
        assert!(upper.case_decides(None, "/private/x", routed));
    }

    /// A host's routes win over any-host ones with longer prefixes; what
    /// they do not cover falls through to the any-host routes.
    #[test]
    fn a_hosts_own_routes_come_before_longer_any_host_prefixes() {
        let table = RouteTable::new(&[
            route(None, "/public/", "open"),
            route(None, "/api/admin/", "admin"),
            route(Some("admin.example"), "/", "protected"),
            route(Some("shop.example"), "/api/", "shop"),
            route(None, "/", "root"),
        ]);
        let find = |host, path| table.find(host, path).map(|r| r.upstream.as_str());
        for path in ["/public/x", "/public", "/api/admin/x", "/x"] {
            assert_eq!(
                find(Some("admin.example"), path),
                Some("protected"),
                "{path}"
            );
            assert_eq!(
                find(Some("ADMIN.example.:443"), path),
                Some("protected"),
                "{path}"
            );
        }
        assert_eq!(find(Some("shop.example"), "/api/admin/x"), Some("shop"));
        assert_eq!(find(Some("shop.example"), "/public/x"), Some("open"));
        assert_eq!(find(Some("shop.example"), "/x"), Some("root"));
        assert_eq!(find(Some("other.example"), "/public/x"), Some("open"));
        assert_eq!(find(None, "/api/admin/x"), Some("admin"));
    }

    #[test]
    fn prefixes_match_on_segment_boundaries() {
        for prefix in ["/api", "/api/"] {
            let table = RouteTable::new(&[route(None, prefix, "api")]);
            let find = |path| table.find(None, path).map(|r| r.upstream.as_str());
            for path in ["/api", "/api/", "/api/x", "/api/x/y"] {
                assert_eq!(find(path), Some("api"), "{prefix} {path}");
            }
            for path in ["/apix", "/apix/y", "/ap", "/", "/x/api"] {
                assert_eq!(find(path), None, "{prefix} {path}");
            }
        }
        let table = RouteTable::new(&[
            route(None, "/", "root"),
            route(None, "/api", "api"),
            route(None, "/api/admin/", "admin"),
        ]);
        let find = |path| table.find(None, path).map(|r| r.upstream.as_str());
        assert_eq!(find("/apix"), Some("root"));
        assert_eq!(find("/api/adminx"), Some("api"));
        assert_eq!(find("/api/admin"), Some("admin"));
        assert_eq!(find("/api/admin/x"), Some("admin"));
    }

    #[test]
    fn strip_and_rewrite_apply_to_the_matched_prefix() {
        let with = |prefix: &str, strip: bool, rewrite: Option<&str>| {
            let mut config = route(None, prefix, "app");
            config.strip_prefix = strip;
            config.rewrite_prefix = rewrite.map(str::to_owned);
            RouteTable::new(&[config])
        };
        let cases = [
            (with("/api/", false, None), "/api/x", "/api/x"),
            (with("/api/", true, None), "/api/x/y", "/x/y"),
            (with("/api/", true, None), "/api/", "/"),
            (with("/api/", true, None), "/api", "/"),
            (with("/api", true, None), "/api/x", "/x"),
            (with("/", true, None), "/x", "/x"),
            (with("/api/", false, Some("/v2/")), "/api/x", "/v2/x"),
            (with("/api/", false, Some("/v2")), "/api/", "/v2/"),
            (with("/api/", false, Some("/v2/")), "/api", "/v2"),
            (with("/api/", false, Some("/")), "/api/x", "/x"),
            (with("/", false, Some("/v2/")), "/x", "/v2/x"),
            (with("/", false, Some("/v2/")), "/", "/v2/"),
        ];
        for (table, path, want) in cases {
            let route = table.find(None, path).unwrap();
            assert_eq!(route.upstream_path(path), want, "{} {path}", route.name);
        }
    }
}
