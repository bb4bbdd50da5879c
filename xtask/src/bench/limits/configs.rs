//! The configuration text of every process in `bench limits`: the shared
//! upstream, and HAProxy and nginx doing the gateway's work (keys looked up
//! in a map, 401 for unknown ones, limited per client, identity header set,
//! key header removed) for the accuracy and the isolation tiers.
use std::path::Path;

use super::{HAPROXY_MAX, ISO_BURST, ISO_LIMIT, LIMIT, NGINX_BURST, WINDOW_S};
use crate::bench::nginx::{self, Nginx};

/// The shared upstream: one worker answering "ok".
pub(super) fn upstream_config(dir: &Path, port: u16) -> String {
    Nginx::new(dir, "upstream", 1).static_site(port, "ok\\n")
}

/// HAProxy as a peer, as in `bench proxy`: the key's SHA-256 looked up in
/// `sha_map` (401 if absent), the client's rate tracked in a stick table
/// per tier (`http_req_rate` over the window), identity header set, key
/// removed; one frontend per tier (`ports`: accuracy, isolation).
pub(super) fn haproxy_config(upstream: u16, ports: [u16; 2], sha_map: &Path) -> String {
    let stick = |name: &str| {
        format!("backend {name}\n  stick-table type string len 128 size 10k expire 60s store http_req_rate({WINDOW_S}s)\n")
    };
    let frontend = |name: &str, port: u16, max: u32| {
        format!(
            "frontend {name}\n  bind 127.0.0.1:{port}\n  \
             http-request set-var(txn.client) req.hdr(x-api-key),sha2(256),hex,map({map})\n  \
             http-request deny deny_status 401 unless {{ var(txn.client) -m found }}\n  \
             http-request track-sc0 var(txn.client) table st_{name}\n  \
             http-request deny deny_status 429 if {{ sc_http_req_rate(0) gt {max} }}\n  \
             http-request set-header x-client-id %[var(txn.client)]\n  \
             http-request del-header x-api-key\n  default_backend app\n",
            map = sha_map.display()
        )
    };
    format!(
        "global\n  maxconn 4096\n  nbthread 2\ndefaults\n  mode http\n  timeout connect 5s\n  \
         timeout client 30s\n  timeout server 30s\n  http-reuse always\n{}{}{}{}\
         backend app\n  server s1 127.0.0.1:{upstream}\n",
        stick("st_acc"),
        stick("st_iso"),
        frontend("acc", ports[0], HAPROXY_MAX),
        frontend("iso", ports[1], ISO_LIMIT + ISO_BURST),
    )
}

/// nginx as a peer: the raw keys in a `map` (401 for one not in it),
/// `limit_req` zones keyed by the client for the accuracy and the
/// isolation tiers, one listener each (`ports`), errors only from `crit`
/// up (every refusal would log one).
pub(super) fn peer_config(dir: &Path, upstream: u16, ports: [u16; 2], raw_map: &Path) -> String {
    let server = |port: u16, zone: &str, burst: u32| {
        format!(
            "server {{ listen 127.0.0.1:{port}; location / {{ if ($client_id = \"\") {{ return 401; }}\n\
               limit_req zone={zone} burst={burst} nodelay;\n\
               proxy_pass http://app; proxy_http_version 1.1; proxy_set_header Connection \"\";\n\
               proxy_set_header X-Client-Id $client_id; proxy_set_header X-API-Key \"\"; }} }}\n"
        )
    };
    let base = Nginx::new(dir, "nginx", 2);
    let nginx = Nginx {
        error_log: format!("{} crit", base.error_log),
        ..base
    };
    nginx.config(&format!(
        "limit_req_status 429;\n\
         map_hash_max_size 65536;\nmap_hash_bucket_size 256;\n\
         map $http_x_api_key $client_id {{ default \"\"; include {}; }}\n\
         limit_req_zone $client_id zone=acc:1m rate={}r/s;\n\
         limit_req_zone $client_id zone=iso:1m rate={}r/s;\n{}{}{}",
        raw_map.display(),
        LIMIT / WINDOW_S,
        ISO_LIMIT / WINDOW_S,
        nginx::upstream_pool(upstream, 32, None),
        server(ports[0], "acc", NGINX_BURST),
        server(ports[1], "iso", ISO_BURST - 1),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The upstream as it was before it shared `nginx::Nginx`; the peer
    /// with the directives that make its work the gateway's.
    #[test]
    fn nginx_configs() {
        let (dir, upstream, ng_acc, ng_iso) = (Path::new("/tmp/limits"), 1001, 1002, 1003);
        let d = dir.display();
        nginx::assert_same_directives(
            &upstream_config(dir, upstream),
            &format!(
                "worker_processes 1;\npid {d}/upstream.pid;\nerror_log {d}/upstream.err;\n\
                 events {{ worker_connections 4096; }}\n\
                 http {{ access_log off; keepalive_requests 1000000;\n\
                   server {{ listen 127.0.0.1:{upstream}; location / {{ return 200 \"ok\\n\"; }} }} }}\n"
            ),
        );
        // The peer does the gateway's work: keys looked up in the map, 401
        // for others, limited per client, identity set, key removed.
        let map = dir.join("keys.nginx.map");
        let config = peer_config(dir, upstream, [ng_acc, ng_iso], &map);
        for directive in [
            format!(
                "map $http_x_api_key $client_id {{ default \"\"; include {d}/keys.nginx.map; }}"
            ),
            "limit_req_zone $client_id zone=acc:1m rate=1r/s;".into(),
            "limit_req_zone $client_id zone=iso:1m rate=100r/s;".into(),
            "listen 127.0.0.1:1002; location / { if ($client_id = \"\") { return 401; }".into(),
            "limit_req zone=iso burst=99 nodelay;".into(),
            "limit_req zone=acc burst=4 nodelay;".into(),
            "proxy_set_header X-Client-Id $client_id; proxy_set_header X-API-Key \"\";".into(),
        ] {
            assert!(config.contains(&directive), "{directive} not in\n{config}");
        }
        assert_eq!(config.matches("return 401").count(), 2, "{config}");
    }

    /// HAProxy authenticates as the gateway does before it counts: both
    /// frontends look the key up, refuse unknown ones, track the client.
    #[test]
    fn haproxy_config_authenticates_then_limits_per_client() {
        let map = Path::new("/tmp/limits/keys.sha.map");
        let config = haproxy_config(1001, [1002, 1003], map);
        for (name, port, max) in [("acc", 1002, 15), ("iso", 1003, 1100)] {
            let frontend = format!(
                "frontend {name}\n  bind 127.0.0.1:{port}\n  \
                 http-request set-var(txn.client) req.hdr(x-api-key),sha2(256),hex,map(/tmp/limits/keys.sha.map)\n  \
                 http-request deny deny_status 401 unless {{ var(txn.client) -m found }}\n  \
                 http-request track-sc0 var(txn.client) table st_{name}\n  \
                 http-request deny deny_status 429 if {{ sc_http_req_rate(0) gt {max} }}\n  \
                 http-request set-header x-client-id %[var(txn.client)]\n  \
                 http-request del-header x-api-key\n"
            );
            assert!(config.contains(&frontend), "{frontend} not in\n{config}");
            assert!(config.contains(&format!(
                "backend st_{name}\n  stick-table type string len 128"
            )));
        }
        assert!(config.contains("server s1 127.0.0.1:1001"));
    }
}
