//! Path confusion: dot-segments raw and encoded, `//`, encoded slash, backslash, absolute-form, segment boundaries.
//!
//! One gateway in front of three recording upstreams: `/public/` (`auth =
//! "none"`), `/api/` (API key) and `/api/admin/` (API key with scope
//! `admin`, which the test key lacks). Requests go out raw (HTTP/1.1 by
//! hand, HTTP/2 by curl with `--path-as-is` or by hand-made frames), since
//! ordinary clients normalise paths themselves. Each case asserts the
//! status and exactly what each upstream received: the normalised path on
//! the route that authorised it, or nothing.
#![allow(clippy::unwrap_used, reason = "tests: a panic is the failure report")]

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    process::Command,
    time::{Duration, Instant},
};

use gateway_tests::{
    gateway::Gateway,
    http::{request, FakeUpstream},
};

/// Which recording upstream a case expects to reach.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum To {
    Public,
    Api,
    Admin,
}

struct Setup {
    gateway: Gateway,
    public: FakeUpstream,
    api: FakeUpstream,
    admin: FakeUpstream,
    /// A gold key with scope `read` (not `admin`).
    key: String,
}

fn setup() -> Setup {
    let (public, api, admin) = (
        FakeUpstream::start(None),
        FakeUpstream::start(None),
        FakeUpstream::start(None),
    );
    let config = format!(
        r#"
[[upstreams]]
name = "public"
servers = ["{public}"]

[[upstreams]]
name = "api"
servers = ["{api}"]

[[upstreams]]
name = "admin"
servers = ["{admin}"]

[[routes]]
path_prefix = "/public/"
upstream = "public"
auth = "none"

[[routes]]
path_prefix = "/api/"
upstream = "api"
auth = "api_key"

[[routes]]
path_prefix = "/api/admin/"
upstream = "admin"
auth = "api_key"
required_scopes = ["admin"]
"#,
        public = public.addr,
        api = api.addr,
        admin = admin.addr,
    );
    let builder = Gateway::builder(&config);
    let key = builder.create_key_with("gold", &["--scopes", "read"]);
    Setup {
        gateway: builder.start(),
        public,
        api,
        admin,
        key,
    }
}

impl Setup {
    fn counts(&self) -> [usize; 3] {
        [&self.public, &self.api, &self.admin].map(|u| u.requests().len())
    }

    /// Runs `send` (which returns the status the client got) and asserts
    /// the status and that exactly `forwarded` reached an upstream: one
    /// request with that target on that upstream, or nothing anywhere.
    fn check(
        &self,
        case: &str,
        send: impl FnOnce() -> u16,
        status: u16,
        forwarded: Option<(To, &str)>,
    ) {
        let before = self.counts();
        let got = send();
        assert_eq!(got, status, "{case}: status");
        let after = self.counts();
        for (index, (to, upstream)) in [
            (To::Public, &self.public),
            (To::Api, &self.api),
            (To::Admin, &self.admin),
        ]
        .into_iter()
        .enumerate()
        {
            let new: Vec<String> = upstream.requests()[before[index]..after[index]]
                .iter()
                .map(|seen| seen.target.clone())
                .collect();
            match forwarded {
                Some((want, target)) if want == to => {
                    assert_eq!(new, [target], "{case}: what {to:?} received")
                }
                _ => assert!(new.is_empty(), "{case}: {to:?} received {new:?}"),
            }
        }
    }

    fn get(&self, target: &str, headers: &[(&str, &str)]) -> u16 {
        request(self.gateway.addr, "GET", target, headers).status
    }
}

/// Dot-segments, raw and encoded, resolve before routing: what climbs out
/// of `/public/` into `/api/` needs `/api/`'s key, and the upstream gets
/// the normalised path.
#[test]
fn dot_segments_are_resolved_before_routing() {
    let s = setup();
    let auth = format!("Bearer {}", s.key);
    let with_key = [("authorization", auth.as_str())];
    for target in [
        "/public/../api/item",
        "/public/%2e%2e/api/item",
        "/public/%2E%2E/api/item",
        "/public/.%2e/api/item",
        "/public/%2E./api/item",
        "/public/./../api/./item",
    ] {
        s.check(target, || s.get(target, &[]), 401, None);
        let case = format!("{target} with a key");
        let to = Some((To::Api, "/api/item"));
        s.check(&case, || s.get(target, &with_key), 200, to);
    }
    // The query goes on unchanged, less the credential.
    let target = format!("/public/%2e%2e/api/item?x=1&api_key={}", s.key);
    let to = Some((To::Api, "/api/item?x=1"));
    s.check("query key", || s.get(&target, &[]), 200, to);
    // The gateway's own endpoints are matched on the normalised path too.
    let target = "/public/../.well-known/%6Awks.json";
    s.check("own endpoint", || s.get(target, &[]), 200, None);
    // The access log shows the normalised path, never the query.
    let line = s
        .gateway
        .wait_for_log(|l| l["path"] == "/api/item" && l["status"] == 200);
    assert_eq!(line["route"], "*/api/");
    assert!(!s.gateway.log_text().contains("%2e%2e"));
    assert!(!s.gateway.log_text().contains(&s.key));
}

/// Percent-encoded unreserved characters are decoded before routing,
/// prefixes match whole segments, and `//` runs merge.
#[test]
fn encodings_slashes_and_segment_boundaries_route_like_their_normal_form() {
    let s = setup();
    let auth = format!("Bearer {}", s.key);
    let with_key = [("authorization", auth.as_str())];
    // /api/admin/ needs scope admin: the encoded spelling is no way round it.
    for target in [
        "/api/%61dmin/",
        "/api/%61%64%6D%69%6E/users",
        "/api/admin/x",
    ] {
        s.check(target, || s.get(target, &with_key), 403, None);
    }
    // /apix is not under /api/.
    s.check("/apix", || s.get("/apix", &with_key), 404, None);
    s.check("/apix/item", || s.get("/apix/item", &with_key), 404, None);
    // But /api itself is /api/'s.
    s.check("/api", || s.get("/api", &[]), 401, None);
    let to = Some((To::Api, "/api"));
    s.check("/api with a key", || s.get("/api", &with_key), 200, to);
    let to = Some((To::Api, "/api/item"));
    s.check("//api//item", || s.get("//api//item", &with_key), 200, to);
    let to = Some((To::Public, "/public/a%3A%20b"));
    s.check("hex case", || s.get("/public/a%3a%20b", &[]), 200, to);
}

/// What is not origin-form after normalisation is refused with 400
/// `invalid_path` and reaches no upstream.
#[test]
fn what_is_not_origin_form_is_refused() {
    let s = setup();
    let auth = format!("Bearer {}", s.key);
    let with_key = [("authorization", auth.as_str())];
    for target in [
        "/api%2Fitem",
        "/api%2fitem",
        "/public/..%2Fapi/item",
        "/public/..%2fapi/item",
        "/public\\..\\api",
        "/public/%5C..%5Capi",
        "/public/%00",
        "/public/%zz",
        "/public/%4",
        "/..",
        "/public/../..",
        "/public/..;/api/item",
    ] {
        s.check(target, || s.get(target, &[]), 400, None);
        s.check(target, || s.get(target, &with_key), 400, None);
    }
    let reply = request(s.gateway.addr, "GET", "/public/..%2Fapi/item", &[]);
    assert_eq!(reply.json()["error"], "invalid_path");
    // Refused by the gateway's path policy, not by the HTTP parser.
    for detail in [
        "encoded_slash",
        "backslash",
        "control_byte",
        "malformed_encoding",
    ] {
        s.gateway
            .wait_for_log(|l| l["error"] == "invalid_path" && l["detail"] == detail);
    }
    for detail in ["escapes_root", "dot_segment_parameters"] {
        s.gateway.wait_for_log(|l| l["detail"] == detail);
    }
}

/// Absolute-form targets route on their authority and normalised path;
/// a `Host` that differs from the authority, or a second `Host`, is a 400.
#[test]
fn absolute_form_and_host_headers() {
    let s = setup();
    let addr = s.gateway.addr;
    // The helper's own Host header is `addr`, the same as these authorities.
    let target = format!("http://{addr}/public/../api/item");
    s.check("absolute-form", || s.get(&target, &[]), 401, None);
    let target = format!("http://{addr}/public/x");
    let to = Some((To::Public, "/public/x"));
    s.check("absolute-form public", || s.get(&target, &[]), 200, to);
    let target = "http://other.example/public/x";
    s.check("authority ≠ Host", || s.get(target, &[]), 400, None);
    let host = [("host", "other.example")];
    s.check("two Host headers", || s.get("/public/x", &host), 400, None);
    let host = [("host", &*addr.to_string())];
    s.check(
        "the same Host twice",
        || s.get("/public/x", &host),
        400,
        None,
    );
    let reply = request(addr, "GET", "/public/x", &[("host", "other.example")]);
    assert_eq!(reply.json()["error"], "invalid_host");
}

/// The same attacks over HTTP/2 (h2c, prior knowledge): curl sends
/// `:path` as given with `--path-as-is`.
#[test]
fn dot_segments_over_http2() {
    let s = setup();
    let auth = format!("authorization: Bearer {}", s.key);
    let addr = s.gateway.addr;
    for target in [
        "/public/../api/item",
        "/public/%2e%2e/api/item",
        "/public/%2E%2E/api/item",
        "/public/.%2e/api/item",
    ] {
        s.check(target, || curl_h2(addr, target, &[]), 401, None);
        let to = Some((To::Api, "/api/item"));
        s.check(target, || curl_h2(addr, target, &[&auth]), 200, to);
    }
    let to = Some((To::Api, "/api/item"));
    s.check(
        "//api//item",
        || curl_h2(addr, "//api//item", &[&auth]),
        200,
        to,
    );
    let to = None;
    s.check(
        "/api/%61dmin/",
        || curl_h2(addr, "/api/%61dmin/", &[&auth]),
        403,
        to,
    );
    for target in [
        "/api%2Fitem",
        "/public/..%2Fapi/item",
        "/public/%5C..%5Capi",
        "/..",
    ] {
        s.check(target, || curl_h2(addr, target, &[&auth]), 400, None);
    }
}

/// Over HTTP/2 the host is `:authority`; a `host` header that differs, or
/// two, is a 400 (hand-made frames: curl turns `Host` into `:authority`).
#[test]
fn authority_and_host_over_http2() {
    let s = setup();
    let addr = s.gateway.addr.to_string();
    let authority = [(":authority", addr.as_str())];
    let same = [(":authority", addr.as_str()), ("host", addr.as_str())];
    let other = [(":authority", addr.as_str()), ("host", "other.example")];
    let twice = [
        (":authority", addr.as_str()),
        ("host", addr.as_str()),
        ("host", addr.as_str()),
    ];
    let send = |extra: &[(&str, &str)]| h2_get(s.gateway.addr, "/public/x", extra);
    let to = Some((To::Public, "/public/x"));
    s.check(":authority", || send(&authority), 200, to);
    let to = Some((To::Public, "/public/x"));
    s.check(":authority = host", || send(&same), 200, to);
    s.check(":authority ≠ host", || send(&other), 400, None);
    s.check("two host headers", || send(&twice), 400, None);
    let line = s.gateway.wait_for_log(|l| l["detail"] == "host_mismatch");
    assert_eq!(line["status"], 400);
}

/// `strip_prefix` and `rewrite_prefix` apply to the normalised path, after
/// routing; the query goes on.
#[test]
fn prefixes_are_stripped_and_rewritten_after_normalisation() {
    let upstream = FakeUpstream::start(None);
    let gateway = Gateway::builder(&format!(
        "[[upstreams]]\nname = \"app\"\nservers = [\"{}\"]\n\n\
         [[routes]]\npath_prefix = \"/strip/\"\nupstream = \"app\"\nauth = \"none\"\nstrip_prefix = true\n\n\
         [[routes]]\npath_prefix = \"/v1/\"\nupstream = \"app\"\nauth = \"none\"\nrewrite_prefix = \"/v2/\"\n",
        upstream.addr
    ))
    .start();
    for (target, want) in [
        ("/strip/a/b?q=1", "/a/b?q=1"),
        ("/strip/", "/"),
        ("/strip", "/"),
        ("/strip/./x/../y", "/y"),
        ("/v1/x?q=%2e", "/v2/x?q=%2e"),
        ("/strip/../v1/%61", "/v2/a"),
        ("/v1", "/v2"),
    ] {
        let before = upstream.requests().len();
        assert_eq!(gateway.get(target, &[]).status, 200, "{target}");
        let seen: Vec<String> = upstream.requests()[before..]
            .iter()
            .map(|seen| seen.target.clone())
            .collect();
        assert_eq!(seen, [want], "{target}");
    }
}

/// A GET by curl over h2c with prior knowledge, the path sent as given;
/// returns the status (0 if curl got none).
fn curl_h2(addr: SocketAddr, target: &str, headers: &[&str]) -> u16 {
    let mut command = Command::new("curl");
    command.args([
        "--http2-prior-knowledge",
        "--path-as-is",
        "--silent",
        "--max-time",
        "15",
        "--output",
        "/dev/null",
        "--write-out",
        "%{http_code}",
    ]);
    for header in headers {
        command.args(["--header", header]);
    }
    let output = command
        .arg(format!("http://{addr}{target}"))
        .output()
        .unwrap();
    String::from_utf8_lossy(&output.stdout)
        .trim()
        .parse()
        .unwrap_or(0)
}

/// A GET on one h2c stream made by hand: `:method`, `:scheme` and `:path`,
/// then `extra` as given (HPACK literals, no Huffman). Returns the status
/// if the response's first header is an indexed `:status` (as hyper sends
/// 200, 400 and 404), else 0.
fn h2_get(addr: SocketAddr, path: &str, extra: &[(&str, &str)]) -> u16 {
    let mut block = Vec::new();
    for (name, value) in [(":method", "GET"), (":scheme", "http"), (":path", path)]
        .iter()
        .chain(extra)
    {
        // Literal header field without indexing, new name (RFC 7541 §6.2.2).
        block.push(0);
        for text in [name, value] {
            assert!(text.len() < 127, "one-byte HPACK lengths only");
            block.push(text.len() as u8);
            block.extend_from_slice(text.as_bytes());
        }
    }
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    stream
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .unwrap();
    stream.write_all(&frame(0x4, 0, 0, &[])).unwrap();
    // HEADERS on stream 1, END_STREAM | END_HEADERS.
    stream.write_all(&frame(0x1, 0x5, 1, &block)).unwrap();
    let mut received = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        let mut chunk = [0u8; 4096];
        match stream.read(&mut chunk) {
            Ok(0) => break,
            Ok(n) => received.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(_) => break,
        }
        if let Some(status) = response_status(&received) {
            return status;
        }
    }
    0
}

/// One HTTP/2 frame: 24-bit length, type, flags, stream id, payload.
fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut bytes = (payload.len() as u32).to_be_bytes()[1..].to_vec();
    bytes.extend_from_slice(&[kind, flags]);
    bytes.extend_from_slice(&stream.to_be_bytes());
    bytes.extend_from_slice(payload);
    bytes
}

/// The status of the first HEADERS frame on stream 1 among whole frames
/// received so far, from HPACK's static table (RFC 7541 Appendix A).
fn response_status(mut bytes: &[u8]) -> Option<u16> {
    while bytes.len() >= 9 {
        let length = u32::from_be_bytes([0, bytes[0], bytes[1], bytes[2]]) as usize;
        let (kind, stream) = (
            bytes[3],
            u32::from_be_bytes(bytes[5..9].try_into().unwrap()),
        );
        let payload = bytes.get(9..9 + length)?;
        if kind == 0x1 && stream & 0x7fff_ffff == 1 {
            return Some(match payload.first() {
                Some(0x88) => 200,
                Some(0x8c) => 400,
                Some(0x8d) => 404,
                _ => 0,
            });
        }
        bytes = &bytes[9 + length..];
    }
    None
}

/// `admin.example.` is the fully qualified spelling of `admin.example`
/// (DNS resolves both alike, nginx drops the dot before matching
/// `server_name`): it is the protected host's route, not the open any-host
/// one, and nothing reaches the upstream without a key.
#[test]
fn a_trailing_dot_does_not_take_a_request_off_its_hosts_protected_route() {
    let app = FakeUpstream::start(None);
    let config = gateway_tests::http::protected_host_and_open_routes(app.addr);
    let gateway = Gateway::builder(&config).start();
    for host in [
        "admin.example",
        "ADMIN.example:80",
        "admin.example.",
        "Admin.Example.:80",
    ] {
        let head = format!("GET /users HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\n\r\n");
        let (statuses, text) = crate::http::raw(gateway.addr, head.as_bytes());
        assert_eq!(statuses, [401], "{host}: {text}");
    }
    assert_eq!(app.requests().len(), 0, "{:?}", app.requests());
    // Another host still takes the open route.
    let head = "GET /users HTTP/1.1\r\nhost: www.example.\r\nconnection: close\r\n\r\n";
    assert_eq!(crate::http::raw(gateway.addr, head.as_bytes()).0, [200]);
    assert_eq!(app.requests().len(), 1);
}

/// A gateway with `/private/` needing an API key and `/` open, to `app`.
fn private_and_open(app: &FakeUpstream) -> Gateway {
    let config = format!(
        "{}\n[[routes]]\npath_prefix = \"/private/\"\nupstream = \"app\"\nauth = \"api_key\"\n\n\
         [[routes]]\npath_prefix = \"/\"\nupstream = \"app\"\nauth = \"none\"\n",
        gateway_tests::http::tiers_and_app(app.addr)
    );
    Gateway::builder(&config).start()
}

/// `app` got one request, for `target`.
fn assert_only_target(app: &FakeUpstream, target: &str) {
    let seen = app.requests();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0].target, target);
}

/// An any-host route with a longer prefix (`/public/`, open) beside a
/// host's own `/` (needs a key) took `/public/...` on that host off its
/// protected route (found by an attack); host-first routing closes that
/// and opens the mirror (an open host's `/` taking an any-host protected
/// prefix). Which applies cannot be told, so `check-config` (and `run`)
/// refuse the pair, naming both, until the host says it with a route of
/// its own; then that route decides, and other hosts get the open one.
#[test]
fn an_any_host_prefix_a_hosts_route_takes_over_must_be_said_for_that_host() {
    let app = FakeUpstream::start(None);
    let public = "\n[[routes]]\npath_prefix = \"/public/\"\nupstream = \"app\"\nauth = \"none\"\n";
    let ambiguous = gateway_tests::http::protected_host_and_open_routes(app.addr) + public;
    let dir = gateway_tests::fs::TempDir::new("routes");
    let file = dir.write(
        "ambiguous.toml",
        &format!("[[listeners]]\naddress = \"127.0.0.1:1\"\n{ambiguous}"),
    );
    let output = Command::new(gateway_tests::gateway::gateway_bin())
        .arg("check-config")
        .arg(&file)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "accepted: {stderr}");
    assert!(
        stderr.contains("routes[2].path_prefix") && stderr.contains("\"admin.example\""),
        "{stderr}"
    );
    let said = ambiguous
        + "\n[[routes]]\nhost = \"admin.example\"\npath_prefix = \"/public/\"\n\
           upstream = \"app\"\nauth = \"api_key\"\n";
    let gateway = Gateway::builder(&said).start();
    for target in ["/public/admin-panel", "/public", "/public/"] {
        let head =
            format!("GET {target} HTTP/1.1\r\nhost: admin.example\r\nconnection: close\r\n\r\n");
        let (statuses, text) = crate::http::raw(gateway.addr, head.as_bytes());
        assert_eq!(statuses, [401], "{target}: {text}");
    }
    assert_eq!(app.requests().len(), 0, "{:?}", app.requests());
    let head = "GET /public/x HTTP/1.1\r\nhost: www.example\r\nconnection: close\r\n\r\n";
    assert_eq!(crate::http::raw(gateway.addr, head.as_bytes()).0, [200]);
    assert_only_target(&app, "/public/x");
}

/// Express and ASP.NET Core match routes without case by default, so
/// `/PRIVATE/secret` is their `/private/secret`, while the gateway's
/// prefixes compare case for case: a spelling that would take the open
/// route is refused (400 `invalid_path`, detail `path_case`), and one
/// both readings route alike goes as it came (found by an attack).
#[test]
fn a_paths_case_never_takes_it_off_its_protected_prefix() {
    let app = FakeUpstream::start(None);
    let gateway = private_and_open(&app);
    for target in ["/PRIVATE/secret", "/Private", "/priVate/x/y"] {
        let response = request(gateway.addr, "GET", target, &[]);
        assert_eq!(response.status, 400, "{target}");
        assert!(
            response.body.contains("letter case"),
            "{target}: {}",
            response.body
        );
    }
    assert_eq!(
        request(gateway.addr, "GET", "/private/Secret", &[]).status,
        401
    );
    assert_eq!(app.requests().len(), 0, "{:?}", app.requests());
    assert_eq!(request(gateway.addr, "GET", "/Shop/Cart", &[]).status, 200);
    assert_only_target(&app, "/Shop/Cart");
    gateway.wait_for_log(|line| line["status"] == 400 && line["detail"] == "path_case");
}

/// Path parameters (`;x`) on an ordinary segment: Tomcat, Jetty, Spring
/// and Undertow drop them from every segment before matching, so
/// `/private;x/secret` is their `/private/secret`, while other servers
/// read `private;x` as a name of its own. A path the two readings route
/// apart is refused (either could be the one served); one they route
/// alike goes as it came.
#[test]
fn path_parameters_never_take_a_request_off_its_protected_prefix() {
    let app = FakeUpstream::start(None);
    let gateway = private_and_open(&app);
    assert_eq!(
        request(gateway.addr, "GET", "/private/secret", &[]).status,
        401
    );
    for target in [
        "/private;x/secret",
        "/private;jsessionid=1/secret",
        "/%70rivate;/secret",
        "/private;",
        "/;x/private/secret",
        "/;/private/secret",
    ] {
        let response = request(gateway.addr, "GET", target, &[]);
        assert_eq!(response.status, 400, "{target}");
        assert!(
            response.body.contains("segment parameters"),
            "{target}: {}",
            response.body
        );
    }
    assert_eq!(app.requests().len(), 0, "{:?}", app.requests());
    // Parameters that route the same either way stay as they came.
    assert_eq!(
        request(gateway.addr, "GET", "/shop;v=2/cart", &[]).status,
        200
    );
    assert_only_target(&app, "/shop;v=2/cart");
}

/// Hosts an upstream reads as the protected one though the gateway's match
/// would not: nginx takes the name before the first `:`
/// (`admin.example:x`), URL parsers the part after `@`. Each is a 400
/// `invalid_host` that reaches no upstream, over HTTP/1 `Host` and an
/// absolute-form target alike.
#[test]
fn a_host_upstreams_read_as_another_is_refused() {
    let app = FakeUpstream::start(None);
    let config = gateway_tests::http::protected_host_and_open_routes(app.addr);
    let gateway = Gateway::builder(&config).start();
    let hosts: [&[u8]; 7] = [
        b"admin.example:x",
        b"admin.example:80:80",
        b"user@admin.example",
        b"admin..example",
        b"admin.example,www.example",
        b"admin.example%2e",
        b"admin.example\xff",
    ];
    for host in hosts {
        let shown = String::from_utf8_lossy(host);
        let head = [
            b"GET /users HTTP/1.1\r\nhost: ".as_slice(),
            host,
            b"\r\nconnection: close\r\n\r\n",
        ]
        .concat();
        let (statuses, text) = crate::http::raw(gateway.addr, &head);
        assert_eq!(statuses, [400], "{shown}: {text}");
        assert!(text.contains("invalid_host"), "{shown}: {text}");
    }
    for target in [
        "http://user@admin.example/users",
        "http://admin.example:x/users",
    ] {
        let head = format!("GET {target} HTTP/1.1\r\nconnection: close\r\n\r\n");
        let (statuses, text) = crate::http::raw(gateway.addr, head.as_bytes());
        assert!(
            statuses == [400] && !text.contains("\"ok\""),
            "{target}: {text}"
        );
    }
    assert_eq!(app.requests().len(), 0, "{:?}", app.requests());
    // A plain host still takes the open route.
    let head = "GET /users HTTP/1.1\r\nhost: www.example:8080\r\nconnection: close\r\n\r\n";
    assert_eq!(crate::http::raw(gateway.addr, head.as_bytes()).0, [200]);
    assert_eq!(app.requests().len(), 1);
}

/// Spellings URL parsers read as a route's IP host (`10.1`, `0x0a.0.0.1`,
/// `010.0.0.1`, `167772161` are all 10.0.0.1 to WHATWG parsers): the
/// gateway's match would miss the protected route, and the upstream would
/// serve the request as that host. Each is a 400 `invalid_host` that
/// reaches no upstream.
#[test]
fn an_ip_host_spelt_another_way_is_refused() {
    let app = FakeUpstream::start(None);
    let config = gateway_tests::http::protected_host_and_open_routes(app.addr)
        .replace("host = \"admin.example\"", "host = \"10.0.0.1\"");
    let gateway = Gateway::builder(&config).start();
    for host in ["10.1", "0x0a.0.0.1", "010.0.0.1", "167772161", "10.0.1:80"] {
        let head = format!("GET /users HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\n\r\n");
        let (statuses, text) = crate::http::raw(gateway.addr, head.as_bytes());
        assert_eq!(statuses, [400], "{host}: {text}");
        assert!(text.contains("invalid_host"), "{host}: {text}");
    }
    assert_eq!(app.requests().len(), 0, "{:?}", app.requests());
    // The canonical spelling takes the protected route, another address
    // the open one.
    for (host, status) in [("10.0.0.1:80", 401), ("10.0.0.2", 200)] {
        let head = format!("GET /users HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\n\r\n");
        assert_eq!(
            crate::http::raw(gateway.addr, head.as_bytes()).0,
            [status],
            "{host}"
        );
    }
    assert_eq!(app.requests().len(), 1);
}

/// An absolute-form target that spells the default port where `Host`
/// does not, or the other way round, names the same host (RFC 9110
/// §4.2.3): served, and routed by that host. Another host or port is still
/// a 400 `host_mismatch`.
#[test]
fn a_default_port_spelt_in_target_or_host_alone_is_the_same_host() {
    let app = FakeUpstream::start(None);
    let config = gateway_tests::http::protected_host_and_open_routes(app.addr);
    let gateway = Gateway::builder(&config).start();
    for (target, host, status) in [
        // The protected route: no key, so 401.
        ("http://admin.example:80/users", "admin.example", 401),
        ("http://ADMIN.example/users", "admin.example:80", 401),
        ("http://www.example/users", "www.example:80", 200),
        ("http://admin.example:80/users", "www.example", 400),
        ("http://www.example:8080/users", "www.example", 400),
        ("http://www.example:80/users", "admin.example:80", 400),
    ] {
        let head = format!("GET {target} HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\n\r\n");
        let (statuses, text) = crate::http::raw(gateway.addr, head.as_bytes());
        assert_eq!(statuses, [status], "{target} {host}: {text}");
        if status == 400 {
            assert!(text.contains("invalid_host"), "{target} {host}: {text}");
        }
    }
    let seen = app.requests();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0].target, "/users");
}
