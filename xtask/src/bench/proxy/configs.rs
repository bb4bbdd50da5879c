//! The configuration text of every process in the proxy bench: the shared
//! nginx upstream, the gateway, and its peers HAProxy and nginx set up for
//! the same work (10,000 keys in a map, 401 for unknown keys, a per-key
//! limit answering 429, identity header set, key header removed, tier,
//! request id and `X-Forwarded-*` forwarded, keep-alive upstream pool, and
//! a TLS listener with an ECDSA P-256 certificate).
use std::path::Path;

use crate::bench::nginx::{self, Nginx};

/// Requests per second each key may make (bursts of as many), in every
/// proxy: far above what 10,000 rotating keys see, so no run reaches it.
pub(super) const PER_KEY_RATE: u32 = 1000;

/// Where a proxy listens: plain HTTP, and TLS if it is measured over TLS.
#[derive(Clone, Copy)]
pub(super) struct Listen {
    pub(super) port: u16,
    pub(super) tls_port: Option<u16>,
}

/// Files the peers read.
pub(super) struct Files<'a> {
    pub(super) dir: &'a Path,
    /// `SHA-256(key) client-id` lines (HAProxy's `sha2(256),hex` is uppercase).
    pub(super) sha_map: &'a Path,
    /// `key client-id;` lines for nginx's `map` (raw keys).
    pub(super) raw_map: &'a Path,
    pub(super) cert: &'a Path,
    pub(super) key: &'a Path,
    /// Certificate and key in one file, as HAProxy's `crt` wants them.
    pub(super) pem: &'a Path,
}

/// The one tier every bench key is in: what each proxy forwards as the
/// client's tier.
pub(super) const TIER: &str = "gold";

/// The shared upstream. Its answer names the identity header it got and
/// the key header it should not have got, so the startup check can see
/// every proxy did both; `/check` names the other fields a proxy forwards
/// but `traceparent` (see [`FORWARDED`]), a longer answer the load never
/// asks for.
pub(super) fn upstream(dir: &Path, port: u16) -> String {
    Nginx::new(dir, "upstream", 1).config(&format!(
        "server {{ listen 127.0.0.1:{port};\n\
         \x20 location / {{ return 200 \"ok id=$http_x_client_id key=$http_x_api_key\\n\"; }}\n\
         \x20 location /check {{ return 200 \"{FORWARDED}\\n\"; }}\n}}\n"
    ))
}

/// The upstream's `/check` answer: the fields the design has a gateway
/// forward besides the client id, which every proxy here sends alike
/// (`tier`, a request id it also gives the client, the client's address
/// and scheme).
pub(super) const FORWARDED: &str = "tier=$http_x_client_tier request=$http_x_request_id \
     for=$http_x_forwarded_for proto=$http_x_forwarded_proto";

/// The gateway: keys from its store, XDP and admin off (this measures the
/// proxy), one tier whose limit is `per_key` requests/s (bursts of as many).
pub(super) fn gateway(
    dir: &Path,
    listen: Listen,
    upstream: u16,
    (rate_limit, per_key): (bool, u32),
    workers: usize,
) -> String {
    let tls = listen.tls_port.map_or(String::new(), |port| {
        format!(
            "[[listeners]]\naddress = \"127.0.0.1:{port}\"\n\
             [listeners.tls]\nnames = [\"localhost\", \"127.0.0.1\"]\n"
        )
    });
    format!(
        "state_dir = \"{dir}/state\"\n\
         [xdp]\nenabled = false\n[admin]\nenabled = false\n\
         [keys]\nstore = \"{dir}/keys.db\"\n\
         [limits]\nworkers = {workers}\n\
         [[tiers]]\nname = \"{TIER}\"\nrequests = {per_minute}\nwindow = \"60s\"\nburst = {per_key}\n\
         [[listeners]]\naddress = \"127.0.0.1:{port}\"\n{tls}\
         [[upstreams]]\nname = \"app\"\nservers = [\"127.0.0.1:{upstream}\"]\n\
         [[routes]]\npath_prefix = \"/\"\nupstream = \"app\"\nauth = \"api_key\"\nrate_limit = {rate_limit}\n",
        dir = dir.display(),
        port = listen.port,
        per_minute = u64::from(per_key) * 60,
    )
}

/// HAProxy: SHA-256 of the key looked up in the map, per-client request
/// rate (at most `per_key` a second) in a stick table, pooled keep-alive
/// connections to the upstream. Its TLS listener offers h2 and HTTP/1.1 by
/// ALPN, as the gateway's does.
pub(super) fn haproxy(
    files: &Files,
    listen: Listen,
    upstream: u16,
    workers: usize,
    per_key: u32,
) -> String {
    let tls = listen.tls_port.map_or(String::new(), |port| {
        format!(
            "  bind 127.0.0.1:{port} ssl crt {} alpn h2,http/1.1\n",
            files.pem.display()
        )
    });
    format!(
        "global\n  maxconn 4096\n  nbthread {workers}\n\
         defaults\n  mode http\n  timeout connect 5s\n  timeout client 30s\n  timeout server 30s\n  http-reuse always\n\
         frontend fe\n  bind 127.0.0.1:{port}\n{tls}\
         \x20 stick-table type string len 32 size 20k expire 60s store http_req_rate(1s)\n\
         \x20 http-request set-var(txn.client) req.hdr(x-api-key),sha2(256),hex,map({map})\n\
         \x20 http-request deny deny_status 401 unless {{ var(txn.client) -m found }}\n\
         \x20 http-request track-sc0 var(txn.client)\n\
         \x20 http-request deny deny_status 429 if {{ sc_http_req_rate(0) gt {per_key} }}\n\
         \x20 http-request set-header x-client-id %[var(txn.client)]\n\
         \x20 http-request del-header x-api-key\n\
         \x20 http-request set-header x-client-tier {TIER}\n\
         \x20 unique-id-format %[uuid]\n\
         \x20 unique-id-header x-request-id\n\
         \x20 http-after-response set-header x-request-id %[unique-id]\n\
         \x20 http-request set-header x-forwarded-for %[src]\n\
         \x20 http-request set-header x-forwarded-proto https if {{ ssl_fc }}\n\
         \x20 http-request set-header x-forwarded-proto http unless {{ ssl_fc }}\n\
         \x20 default_backend be\n\
         backend be\n  server s1 127.0.0.1:{upstream}\n",
        port = listen.port,
        map = files.sha_map.display()
    )
}

/// nginx: the raw keys in a `map` (no SHA-256 without extra modules),
/// `limit_req` per client (at most `per_key` a second), an `upstream` with
/// a keep-alive pool.
pub(super) fn nginx(
    files: &Files,
    listen: Listen,
    upstream: u16,
    workers: usize,
    per_key: u32,
) -> String {
    let tls = listen.tls_port.map_or(String::new(), |port| {
        format!(
            "  listen 127.0.0.1:{port} ssl;\n  ssl_protocols TLSv1.2 TLSv1.3;\n  \
             ssl_certificate {};\n  ssl_certificate_key {};\n",
            files.cert.display(),
            files.key.display()
        )
    });
    Nginx::new(files.dir, "nginx-peer", workers).config(&format!(
        "map_hash_max_size 65536;\nmap_hash_bucket_size 256;\n\
         map $http_x_api_key $client_id {{ default \"\"; include {map}; }}\n\
         limit_req_zone $client_id zone=perkey:10m rate={per_key}r/s;\n\
         limit_req_status 429;\n{pool}\
         server {{\n  listen 127.0.0.1:{port};\n{tls}\
         \x20 location / {{\n\
         \x20   if ($client_id = \"\") {{ return 401; }}\n\
         \x20   limit_req zone=perkey burst={per_key} nodelay;\n\
         \x20   proxy_http_version 1.1;\n\
         \x20   proxy_set_header Connection \"\";\n\
         \x20   proxy_set_header X-Client-Id $client_id;\n\
         \x20   proxy_set_header X-API-Key \"\";\n\
         \x20   proxy_set_header X-Client-Tier {TIER};\n\
         \x20   proxy_set_header X-Request-Id $request_id;\n\
         \x20   add_header X-Request-Id $request_id always;\n\
         \x20   proxy_set_header X-Forwarded-For $remote_addr;\n\
         \x20   proxy_set_header X-Forwarded-Proto $scheme;\n\
         \x20   proxy_pass http://app;\n\
         \x20 }}\n}}\n",
        pool = nginx::upstream_pool(upstream, 64, Some(1_000_000)),
        port = listen.port,
        map = files.raw_map.display()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The nginx configurations this bench wrote before they shared
    /// `nginx::Nginx`, as the same directives (with the forwarded fields
    /// and the upstream's `/check` added since).
    #[test]
    fn nginx_configs_as_before() {
        let dir = Path::new("/tmp/proxy");
        let d = dir.display();
        let port = 1001;
        nginx::assert_same_directives(
            &upstream(dir, port),
            &format!(
                "worker_processes 1;\npid {d}/upstream.pid;\nerror_log {d}/upstream.err;\n\
                 events {{ worker_connections 4096; }}\n\
                 http {{ access_log off; keepalive_requests 1000000;\n\
                   server {{ listen 127.0.0.1:{port};\n\
                     location / {{ return 200 \"ok id=$http_x_client_id key=$http_x_api_key\\n\"; }}\n\
                     location /check {{ return 200 \"tier=$http_x_client_tier request=$http_x_request_id \
                       for=$http_x_forwarded_for proto=$http_x_forwarded_proto\\n\"; }} }} }}\n"
            ),
        );
        let files = Files {
            dir,
            sha_map: &dir.join("keys.sha.map"),
            raw_map: &dir.join("keys.nginx.map"),
            cert: &dir.join("peer.crt"),
            key: &dir.join("peer.key"),
            pem: &dir.join("peer.pem"),
        };
        let (upstream_port, workers) = (1002, 3);
        for tls_port in [Some(1004), None] {
            let listen = Listen {
                port: 1003,
                tls_port,
            };
            let tls = tls_port.map_or(String::new(), |port| {
                format!(
                    "    listen 127.0.0.1:{port} ssl;\n    ssl_protocols TLSv1.2 TLSv1.3;\n    \
                     ssl_certificate {d}/peer.crt;\n    ssl_certificate_key {d}/peer.key;\n"
                )
            });
            nginx::assert_same_directives(
                &nginx(&files, listen, upstream_port, workers, PER_KEY_RATE),
                &format!(
                    "worker_processes {workers};\npid {d}/nginx-peer.pid;\nerror_log {d}/nginx-peer.err;\n\
                     events {{ worker_connections 4096; }}\n\
                     http {{\n  access_log off;\n  keepalive_requests 1000000;\n\
                     \x20 map_hash_max_size 65536;\n  map_hash_bucket_size 256;\n\
                     \x20 map $http_x_api_key $client_id {{ default \"\"; include {d}/keys.nginx.map; }}\n\
                     \x20 limit_req_zone $client_id zone=perkey:10m rate={PER_KEY_RATE}r/s;\n\
                     \x20 limit_req_status 429;\n\
                     \x20 upstream app {{ server 127.0.0.1:{upstream_port}; keepalive 64; keepalive_requests 1000000; }}\n\
                     \x20 server {{\n    listen 127.0.0.1:1003;\n{tls}\
                     \x20   location / {{\n\
                     \x20     if ($client_id = \"\") {{ return 401; }}\n\
                     \x20     limit_req zone=perkey burst={PER_KEY_RATE} nodelay;\n\
                     \x20     proxy_http_version 1.1;\n\
                     \x20     proxy_set_header Connection \"\";\n\
                     \x20     proxy_set_header X-Client-Id $client_id;\n\
                     \x20     proxy_set_header X-API-Key \"\";\n\
                     \x20     proxy_set_header X-Client-Tier gold;\n\
                     \x20     proxy_set_header X-Request-Id $request_id;\n\
                     \x20     add_header X-Request-Id $request_id always;\n\
                     \x20     proxy_set_header X-Forwarded-For $remote_addr;\n\
                     \x20     proxy_set_header X-Forwarded-Proto $scheme;\n\
                     \x20     proxy_pass http://app;\n\
                     \x20   }}\n  }}\n}}\n"
                ),
            );
        }
    }
}
