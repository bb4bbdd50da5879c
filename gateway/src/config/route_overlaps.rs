//! Routes whose order alone would decide who may pass. A host's own routes
//! come before the routes for any host (`proxy::route`), so an any-host
//! route nested under a shorter prefix of a host's routes does not apply
//! on that host. Where the two ask different things of a client (`auth`,
//! `required_scopes`), which one the operator meant cannot be told, and
//! either reading leaves a path open that the other protects (an attack
//! found the one, a review its mirror): the config must say it. Likewise
//! two prefixes of one host that differ only in letter case, which a
//! case-blind upstream reads as one: the proxy would refuse every path
//! under one of them (`path_case`).
use std::collections::BTreeSet;

use super::{routes::RouteConfig, AuthPolicy, ConfigError};
use crate::{host, path};

/// Refuses an any-host route that a host's shorter route takes over on
/// that host while the two differ in `auth` or `required_scopes`, unless
/// the host has a route of its own for that prefix.
pub(super) fn validate(routes: &[RouteConfig]) -> Result<(), ConfigError> {
    case_twins(routes)?;
    let hosts: BTreeSet<String> = (routes.iter())
        .filter_map(|r| r.host.as_deref().map(host::route_host))
        .collect();
    for (any_index, any) in routes.iter().enumerate() {
        if any.host.is_some() {
            continue;
        }
        let prefix = path::route_prefix(&any.path_prefix);
        for host in &hosts {
            let covering = (routes.iter().enumerate())
                .filter(|(_, r)| r.host.as_deref().map(host::route_host).as_ref() == Some(host))
                .filter(|(_, r)| path::is_under(prefix, path::route_prefix(&r.path_prefix)))
                .max_by_key(|(_, r)| path::route_prefix(&r.path_prefix).len());
            let Some((host_index, route)) = covering else {
                continue;
            };
            if path::route_prefix(&route.path_prefix) == prefix || same_access(route, any) {
                continue;
            }
            return Err(ConfigError::invalid(
                format!("routes[{any_index}].path_prefix"),
                format!(
                    "routes[{host_index}] (host {host:?}, path_prefix {:?}, auth {}) takes \
                     this route's paths on that host, as a host's own routes come first, \
                     but this one asks auth {} of clients: add a route with host = {host:?} \
                     and path_prefix = {:?} to say which applies there, or give both the same \
                     auth and required_scopes",
                    route.path_prefix,
                    access(route),
                    access(any),
                    any.path_prefix,
                ),
            ));
        }
    }
    Ok(())
}

/// Refuses two routes that may serve one request (the same host, or one
/// of them for any host) whose prefixes differ only in letter case.
fn case_twins(routes: &[RouteConfig]) -> Result<(), ConfigError> {
    for (index, route) in routes.iter().enumerate() {
        let twin = routes[..index].iter().position(|other| {
            let hosts = (other.host.as_deref().map(host::route_host))
                .zip(route.host.as_deref().map(host::route_host));
            let (a, b) = (
                path::route_prefix(&other.path_prefix),
                path::route_prefix(&route.path_prefix),
            );
            hosts.is_none_or(|(host_a, host_b)| host_a == host_b)
                && a != b
                && a.eq_ignore_ascii_case(b)
        });
        if let Some(twin) = twin {
            return Err(ConfigError::invalid(
                format!("routes[{index}].path_prefix"),
                format!(
                    "differs from routes[{twin}]'s {:?} only in letter case: upstreams that \
                     match paths without case read them as one, so the gateway would refuse \
                     every path under one of them (path_case); keep one spelling",
                    routes[twin].path_prefix
                ),
            ));
        }
    }
    Ok(())
}

fn same_access(a: &RouteConfig, b: &RouteConfig) -> bool {
    a.auth == b.auth && scopes(a) == scopes(b)
}

fn scopes(route: &RouteConfig) -> BTreeSet<&str> {
    route.required_scopes.iter().map(String::as_str).collect()
}

/// `auth` and scopes, for the message.
fn access(route: &RouteConfig) -> String {
    let auth = match route.auth {
        AuthPolicy::ApiKey => "api_key",
        AuthPolicy::Jwt => "jwt",
        AuthPolicy::Both => "both",
        AuthPolicy::None => "none",
    };
    match route.required_scopes.as_slice() {
        [] => auth.to_owned(),
        scopes => format!("{auth} with scopes {scopes:?}"),
    }
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    fn check(routes: &str) -> Result<(), String> {
        let text = format!(
            "[[listeners]]\naddress = \"127.0.0.1:1\"\n[[upstreams]]\nname = \"app\"\n\
             servers = [\"127.0.0.1:2\"]\n{routes}"
        );
        Config::parse(&text).map(|_| ()).map_err(|e| e.to_string())
    }

    fn route(host: Option<&str>, prefix: &str, auth: &str, scopes: &str) -> String {
        let host = host.map_or(String::new(), |h| format!("host = \"{h}\"\n"));
        format!(
            "[[routes]]\n{host}path_prefix = \"{prefix}\"\nupstream = \"app\"\nauth = \"{auth}\"\n\
             required_scopes = [{scopes}]\n"
        )
    }

    #[test]
    fn a_nested_any_host_route_that_asks_otherwise_is_refused() {
        // The attack's: a host protected whole, /public/ open for any host.
        let open_public = route(None, "/public/", "none", "");
        let protected_host = route(Some("admin.example"), "/", "api_key", "");
        let error = check(&(protected_host.clone() + &open_public)).unwrap_err();
        assert!(error.starts_with("routes[1].path_prefix"), "{error}");
        assert!(
            error.contains("admin.example") && error.contains("routes[0]"),
            "{error}"
        );
        // The mirror: a host open whole, /admin/ protected for any host.
        let admin = route(None, "/admin/", "api_key", "\"admin\"");
        let open_host = route(Some("Shop.Example."), "/", "none", "");
        let error = check(&(admin.clone() + &open_host)).unwrap_err();
        assert!(error.starts_with("routes[0].path_prefix"), "{error}");
        assert!(error.contains("api_key with scopes"), "{error}");
        // Scopes alone differing count too.
        let read = route(Some("shop.example"), "/", "api_key", "\"read\"");
        assert!(check(&(read + &admin)).is_err());
    }

    #[test]
    fn prefixes_differing_only_in_case_are_refused_per_host() {
        let lower = route(None, "/api/", "api_key", "");
        let upper = route(None, "/API", "api_key", "");
        let error = check(&(lower.clone() + &upper)).unwrap_err();
        assert!(error.starts_with("routes[1].path_prefix"), "{error}");
        assert!(error.contains("letter case"), "{error}");
        // A host's twin of an any-host prefix too; two hosts' are apart.
        assert!(
            check(&(lower.clone() + &route(Some("a.example"), "/API/", "api_key", ""))).is_err()
        );
        let a = route(Some("a.example"), "/api/", "api_key", "");
        check(&(a + &route(Some("b.example"), "/API/", "api_key", ""))).unwrap();
        check(&(lower.clone() + &route(Some("a.example"), "/api/", "api_key", ""))).unwrap();
    }

    #[test]
    fn overlaps_that_say_which_applies_or_ask_alike_pass() {
        let admin = route(None, "/admin/", "api_key", "\"admin\"");
        let open_host = route(Some("shop.example"), "/", "none", "");
        // The host says what its /admin/ asks.
        let explicit = route(Some("shop.example"), "/admin", "api_key", "\"admin\"");
        check(&(admin.clone() + &open_host + &explicit)).unwrap();
        // Alike: the order decides only the upstream and the limits.
        let alike = route(Some("shop.example"), "/", "api_key", "\"admin\"");
        check(&(admin.clone() + &alike)).unwrap();
        // Not nested: /adminx is not under /admin, nor / under /admin/.
        let other = route(Some("shop.example"), "/adminx/", "none", "");
        check(&(admin.clone() + &other)).unwrap();
        let root = route(None, "/", "none", "");
        let host_admin = route(Some("shop.example"), "/admin/", "api_key", "");
        check(&(root + &host_admin)).unwrap();
        // Equal prefixes: the host's route is its own say.
        let any_root = route(None, "/", "none", "");
        let host_root = route(Some("admin.example"), "/", "api_key", "");
        check(&(host_root + &any_root)).unwrap();
    }
}
