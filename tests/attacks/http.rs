//! HTTP framing and header attacks: smuggling, upgrades, spoofed forwarding and identity headers, size limits; over HTTP/1.1 and HTTP/2.
//!
//! HTTP/1.1 requests are written as raw bytes (real clients sanitise what
//! an attacker sends); the recording upstream shows what got through.
#![allow(clippy::unwrap_used, reason = "tests: a panic is the failure report")]

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    time::Duration,
};

use gateway_tests::{
    gateway::Gateway,
    http::{tiers_and_app, FakeUpstream, Seen},
};

/// An open route `/` and an API-key route `/key/` to the recording upstream.
fn config(upstream: &FakeUpstream, limits: &str) -> String {
    format!(
        "{limits}\n{}\n[[routes]]\npath_prefix = \"/key/\"\nupstream = \"app\"\nauth = \"api_key\"\n\n\
         [[routes]]\npath_prefix = \"/\"\nupstream = \"app\"\nauth = \"none\"\n",
        tiers_and_app(upstream.addr)
    )
}

/// Writes `bytes` and reads until the gateway closes (or 10 s pass); the
/// statuses of the responses it sent, and everything it sent.
pub(crate) fn raw(addr: SocketAddr, bytes: &[u8]) -> (Vec<u16>, String) {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    stream.write_all(bytes).unwrap();
    let mut received = Vec::new();
    let mut buf = [0u8; 4096];
    // A reset after the answer (unread bytes at close) ends it too.
    while let Ok(n) = stream.read(&mut buf) {
        if n == 0 {
            break;
        }
        received.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&received).into_owned();
    let statuses = (text.split("\r\n"))
        .filter_map(|line| line.strip_prefix("HTTP/1.1 "))
        .filter_map(|rest| rest.get(..3)?.parse().ok())
        .collect();
    (statuses, text)
}

/// What reached the upstream since `before` requests.
fn new_requests(upstream: &FakeUpstream, before: usize) -> Vec<Seen> {
    upstream.requests().split_off(before)
}

const SMUGGLED: &str = "GET /admin HTTP/1.1\r\nhost: gw\r\n\r\n";

/// `head` (request line and headers, no blank line) with `body`.
fn message(head: &str, body: &str) -> String {
    format!("{head}\r\n\r\n{body}")
}

#[test]
fn smuggling_vectors_are_refused_or_read_one_way_and_never_reach_the_upstream() {
    let upstream = FakeUpstream::start(None);
    let gateway = Gateway::builder(&config(&upstream, "")).start();
    let chunked_smuggle = format!("0\r\n\r\n{SMUGGLED}");
    let smuggle_chunk = format!("{:x}\r\n{SMUGGLED}\r\n0\r\n\r\n", SMUGGLED.len());
    let start = "POST /api/x HTTP/1.1\r\nhost: gw";
    let extension = "x".repeat(20 * 1024);
    // (name, bytes, the status, whether the one request reaches the upstream)
    let cases: Vec<(&str, String, u16, bool)> = vec![
        // CL.TE and TE.CL: Transfer-Encoding wins, Content-Length is dropped
        // and the connection closed after the answer (RFC 9112 §6.3): the
        // smuggled request is never read as one.
        (
            "CL.TE",
            message(
                &format!("{start}\r\ncontent-length: {}\r\ntransfer-encoding: chunked", chunked_smuggle.len()),
                &chunked_smuggle,
            ),
            200,
            true,
        ),
        (
            "TE.CL",
            message(&format!("{start}\r\ntransfer-encoding: chunked\r\ncontent-length: 4"), &smuggle_chunk),
            200,
            true,
        ),
        (
            "duplicate Content-Length",
            message(&format!("{start}\r\ncontent-length: 0\r\ncontent-length: {}", SMUGGLED.len()), SMUGGLED),
            400,
            false,
        ),
        ("Content-Length: +5", message(&format!("{start}\r\ncontent-length: +5"), "hello"), 400, false),
        (
            "TE chunked, identity",
            message(&format!("{start}\r\ntransfer-encoding: chunked, identity"), &chunked_smuggle),
            400,
            false,
        ),
        (
            "TE gzip, chunked",
            message(&format!("{start}\r\ntransfer-encoding: gzip, chunked"), &chunked_smuggle),
            400,
            false,
        ),
        (
            "TE twice",
            message(&format!("{start}\r\ntransfer-encoding: chunked\r\ntransfer-encoding: chunked"), &chunked_smuggle),
            400,
            false,
        ),
        (
            "TE xchunked",
            message(&format!("{start}\r\ncontent-length: 0\r\ntransfer-encoding: xchunked"), &chunked_smuggle),
            400,
            false,
        ),
        (
            "TE obs-fold",
            message(&format!("{start}\r\ncontent-length: 0\r\ntransfer-encoding:\r\n chunked"), &chunked_smuggle),
            400,
            false,
        ),
        (
            "bare LF splitting a header",
            message("GET /api/x HTTP/1.1\r\nhost: gw\r\nx-a: 1\nGET /admin HTTP/1.1\r\nconnection: close", ""),
            400,
            false,
        ),
        ("NUL in a header", message(&format!("{start}\r\nx-a: 1\0\r\ncontent-length: 0"), ""), 400, false),
        (
            "chunk-size overflow",
            message(&format!("{start}\r\ntransfer-encoding: chunked"), &format!("ffffffffffffffffff\r\n{SMUGGLED}\r\n0\r\n\r\n")),
            400,
            false,
        ),
        (
            "chunk extension abuse",
            message(&format!("{start}\r\ntransfer-encoding: chunked"), &format!("1;{extension}\r\nA\r\n0\r\n\r\n")),
            400,
            false,
        ),
    ];
    // Every case runs; the failures are reported together.
    let mut wrong = Vec::new();
    for (name, bytes, status, forwarded) in cases {
        let before = upstream.requests().len();
        let (statuses, text) = raw(gateway.addr, bytes.as_bytes());
        let seen = new_requests(&upstream, before);
        let targets: Vec<(&str, &str)> = (seen.iter())
            .map(|s| (s.method.as_str(), s.target.as_str()))
            .collect();
        let expected: &[(&str, &str)] = if forwarded {
            &[("POST", "/api/x")]
        } else {
            &[]
        };
        if statuses != [status] || targets != expected {
            let head = text.lines().next().unwrap_or_default();
            wrong.push(format!(
                "{name}: answered {statuses:?} ({head}), upstream saw {targets:?}"
            ));
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
    // A bare LF line ending alone is read as CRLF: one well-formed request.
    let before = upstream.requests().len();
    let (statuses, _) = raw(
        gateway.addr,
        b"GET /api/lf HTTP/1.1\nhost: gw\nconnection: close\n\n",
    );
    assert_eq!(statuses, vec![200]);
    let seen = new_requests(&upstream, before);
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert_eq!(seen[0].target, "/api/lf");
}

/// A reverse proxy opens no tunnels: `CONNECT` is a 405 with `Allow`
/// (with an origin- or absolute-form target it was forwarded, as a
/// `CONNECT /api/x`), and what a client sends after it (tunnel bytes, or
/// a request riding on them) is never served.
#[test]
fn connect_is_refused_and_nothing_reaches_the_upstream() {
    let upstream = FakeUpstream::start(None);
    let gateway = Gateway::builder(&config(&upstream, "")).start();
    for (target, host) in [
        ("gw:443", "gw:443"),
        ("[::1]:8080", "[::1]:8080"),
        ("/api/x", "gw"),
        ("http://gw/api/x", "gw"),
    ] {
        let head = format!("CONNECT {target} HTTP/1.1\r\nhost: {host}");
        let (statuses, text) = raw(gateway.addr, message(&head, SMUGGLED).as_bytes());
        assert_eq!(statuses, vec![405], "{target}: {text}");
        let lower = text.to_ascii_lowercase();
        assert!(
            lower.contains("\r\nallow: get, head, post"),
            "{target}: {text}"
        );
        assert!(lower.contains("\r\nconnection: close"), "{target}: {text}");
    }
    let seen = upstream.requests();
    assert!(seen.is_empty(), "the upstream saw {seen:?}");
}

#[test]
fn h2c_and_other_upgrades_are_never_forwarded() {
    let upstream = FakeUpstream::start(None);
    let gateway = Gateway::builder(&config(&upstream, "")).start();
    for upgrade in ["h2c", "H2C", "websocket, h2c", "tls/1.3", "foo"] {
        let before = upstream.requests().len();
        let request = format!(
            "GET /api/x HTTP/1.1\r\nhost: gw\r\nconnection: Upgrade, HTTP2-Settings, close\r\n\
             upgrade: {upgrade}\r\nhttp2-settings: AAMAAABkAAQAAP__\r\n\r\n"
        );
        let (statuses, text) = raw(gateway.addr, request.as_bytes());
        // Served as plain HTTP/1.1: no 101, the upstream's answer.
        assert_eq!(statuses, vec![200], "{upgrade}: {text}");
        let seen = new_requests(&upstream, before);
        assert_eq!(seen.len(), 1, "{upgrade}: {seen:?}");
        for name in ["upgrade", "http2-settings"] {
            assert_eq!(
                seen[0].header(name),
                None,
                "{upgrade}: {name} reached the upstream"
            );
        }
        let connection = seen[0]
            .header("connection")
            .unwrap_or_default()
            .to_ascii_lowercase();
        assert!(
            !connection.contains("upgrade"),
            "{upgrade}: connection: {connection}"
        );
    }
}

#[test]
fn spoofed_forwarding_and_identity_spellings_never_reach_the_upstream() {
    let upstream = FakeUpstream::start(None);
    let builder = Gateway::builder(&config(&upstream, ""));
    let (client_id, key) = builder.create_client("gold", &[]);
    let gateway = builder.start();
    let request = format!(
        "GET /key/x HTTP/1.1\r\nhost: gw\r\nconnection: close\r\nx-api-key: {key}\r\n\
         forwarded: for=1.2.3.4;host=evil;proto=https\r\nx-forwarded-host: evil.example\r\n\
         x-forwarded-port: 443\r\nx-real-ip: 1.2.3.4\r\nx-forwarded-for: 1.2.3.4\r\n\
         x_client_id: cl_spoofed\r\nx-client_id: cl_spoofed\r\nX_Client_Tier: platinum\r\n\
         x-client-id: cl_spoofed\r\nx_forwarded_for: 6.6.6.6\r\nX_Forwarded_Proto: https\r\n\
         x-forwarded-proto: https\r\nx_real_ip: 6.6.6.6\r\nx-request-id: req-7\r\n\
         x_request_id: spoofed\r\nx-client.id: cl_spoofed\r\nx.client~tier: platinum\r\n\
         x-forwarded.for: 6.6.6.6\r\nx!real!ip: 6.6.6.6\r\nx-request.id: spoofed\r\n\r\n"
    );
    let (statuses, text) = raw(gateway.addr, request.as_bytes());
    assert_eq!(statuses, vec![200], "{text}");
    let seen = upstream.requests();
    assert_eq!(seen.len(), 1);
    let headers = &seen[0].headers;
    for name in [
        "forwarded",
        "x-forwarded-host",
        "x-forwarded-port",
        "x-real-ip",
        "x_client_id",
        "x-client_id",
        "x_client_tier",
        "x_forwarded_for",
        "x_forwarded_proto",
        "x_real_ip",
        "x_request_id",
        // lighttpd's CGI reads any byte besides letters and digits as `_`.
        "x-client.id",
        "x.client~tier",
        "x-forwarded.for",
        "x!real!ip",
        "x-request.id",
    ] {
        assert_eq!(
            headers.get(name),
            None,
            "{name} reached the upstream: {headers:?}"
        );
    }
    // The gateway's own, once each (repeated lines would show joined).
    assert_eq!(seen[0].header("x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(seen[0].header("x-forwarded-proto"), Some("http"));
    // A sane client request id is the request's id: passed on once, no
    // `_` spelling beside it.
    assert_eq!(seen[0].header("x-request-id"), Some("req-7"));
    assert_eq!(seen[0].header("x-client-id"), Some(client_id.as_str()));
    assert_eq!(seen[0].header("x-client-tier"), Some("gold"));
}

/// The gateway answers `Expect: 100-continue` itself and sends the body
/// with the head: the upstream is asked to expect nothing (one that
/// refused the expectation and kept the connection would read the body
/// as a request).
#[test]
fn an_expectation_is_met_by_the_gateway_and_not_passed_on() {
    let upstream = FakeUpstream::start(None);
    let gateway = Gateway::builder(&config(&upstream, "")).start();
    let (statuses, text) = raw(
        gateway.addr,
        b"POST /api/x HTTP/1.1\r\nhost: gw\r\nconnection: close\r\n\
          expect: 100-continue\r\ncontent-length: 5\r\n\r\nhello",
    );
    assert_eq!(statuses.last(), Some(&200), "{text}");
    // A body too big to read ahead streams through hyper's client: the
    // same.
    let big = "x".repeat(64 << 10);
    let head = format!(
        "POST /api/big HTTP/1.1\r\nhost: gw\r\nconnection: close\r\n\
         expect: 100-continue\r\ncontent-length: {}\r\n\r\n{big}",
        big.len()
    );
    let (statuses, text) = raw(gateway.addr, head.as_bytes());
    assert_eq!(statuses.last(), Some(&200), "{text}");
    let seen = upstream.requests();
    assert_eq!(seen.len(), 2);
    for (seen, (target, length)) in seen.iter().zip([("/api/x", "5"), ("/api/big", "65536")]) {
        assert_eq!(
            (seen.method.as_str(), seen.target.as_str()),
            ("POST", target)
        );
        assert_eq!(seen.header("expect"), None, "{target}: {:?}", seen.headers);
        assert_eq!(seen.header("content-length"), Some(length), "{target}");
    }
}

#[test]
fn trusted_proxies_keep_their_forwarding_headers() {
    let upstream = FakeUpstream::start(None);
    let body = config(
        &upstream,
        "[forwarding]\ntrusted_proxies = [\"127.0.0.0/8\"]\n",
    );
    let gateway = Gateway::builder(&body).start();
    let request = "GET /api/x HTTP/1.1\r\nhost: gw\r\nconnection: close\r\n\
         forwarded: for=192.0.2.7\r\nx-forwarded-host: api.example\r\nx-real-ip: 192.0.2.7\r\n\
         x-forwarded-for: 203.0.113.9\r\nx-forwarded-for: 192.0.2.7\r\nx-forwarded-proto: https\r\n\
         x_forwarded_for: 6.6.6.6\r\nx_real_ip: 6.6.6.6\r\n\r\n";
    let (statuses, _) = raw(gateway.addr, request.as_bytes());
    assert_eq!(statuses, vec![200]);
    let seen = upstream.requests();
    assert_eq!(seen[0].header("forwarded"), Some("for=192.0.2.7"));
    assert_eq!(seen[0].header("x-forwarded-host"), Some("api.example"));
    assert_eq!(seen[0].header("x-real-ip"), Some("192.0.2.7"));
    // Every line of the proxy's list, then the proxy; its own protocol,
    // once; `_` spellings from no one.
    let chain = seen[0].header("x-forwarded-for");
    assert_eq!(chain, Some("203.0.113.9, 192.0.2.7, 127.0.0.1"));
    assert_eq!(seen[0].header("x-forwarded-proto"), Some("https"));
    for name in ["x_forwarded_for", "x_real_ip"] {
        assert_eq!(seen[0].header(name), None, "{name} reached the upstream");
    }
}
