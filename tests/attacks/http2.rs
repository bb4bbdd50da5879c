//! HTTP/2's own smuggling class, with hand-written frames (clients refuse
//! to send these): a `content-length` that disagrees with the DATA frames,
//! upper-case names, connection-specific headers; the body limit; and
//! `CONNECT`, plain and extended (RFC 8441), which opens no tunnel.
//! HPACK blocks use only "literal without indexing, new name" (0x00, name
//! length, name, value length, value; no Huffman).
#![allow(clippy::unwrap_used, reason = "tests: a panic is the failure report")]

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    time::{Duration, Instant},
};

use gateway_tests::{
    gateway::Gateway,
    http::{tiers_and_app, FakeUpstream},
};

pub(super) const DATA: u8 = 0x0;
pub(super) const HEADERS: u8 = 0x1;
pub(super) const RST_STREAM: u8 = 0x3;
pub(super) const WINDOW_UPDATE: u8 = 0x8;
pub(super) const GOAWAY: u8 = 0x7;
pub(super) const END_STREAM: u8 = 0x1;
pub(super) const END_HEADERS: u8 = 0x4;

pub(super) fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = u32::try_from(payload.len()).unwrap().to_be_bytes();
    let mut bytes = vec![len[1], len[2], len[3], kind, flags];
    bytes.extend_from_slice(&stream.to_be_bytes());
    bytes.extend_from_slice(payload);
    bytes
}

/// An HPACK block of literal fields, each "without indexing, new name".
pub(super) fn hpack(fields: &[(&str, &str)]) -> Vec<u8> {
    let mut block = Vec::new();
    for (name, value) in fields {
        block.push(0x00);
        block.push(u8::try_from(name.len()).unwrap());
        block.extend_from_slice(name.as_bytes());
        block.push(u8::try_from(value.len()).unwrap());
        block.extend_from_slice(value.as_bytes());
    }
    block
}

/// How the server answered stream 1.
#[derive(Debug, PartialEq, Eq)]
enum Answer {
    /// A HEADERS frame whose first HPACK byte is this (0x88: `:status
    /// 200`, 0x8c: 400, from the static table; other statuses are literals).
    Headers(u8),
    Reset(u32),
    GoAway(u32),
    Nothing,
}

/// Opens an h2c connection (prior knowledge), sends `frames` on stream 1
/// after the preface, and returns the server's first answer on it.
fn exchange(addr: SocketAddr, frames: &[Vec<u8>]) -> Answer {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    let mut bytes = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    bytes.extend(frame(0x4, 0, 0, &[]));
    for frame in frames {
        bytes.extend_from_slice(frame);
    }
    stream.write_all(&bytes).unwrap();
    let mut received = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut buf = [0u8; 4096];
    while Instant::now() < deadline {
        match stream.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => received.extend_from_slice(&buf[..n]),
            Err(_) => {} // read timeout: look at what came so far
        }
        let mut rest = received.as_slice();
        while rest.len() >= 9 {
            let len = usize::from(rest[0]) << 16 | usize::from(rest[1]) << 8 | usize::from(rest[2]);
            if rest.len() < 9 + len {
                break;
            }
            let (kind, id) = (
                rest[3],
                u32::from_be_bytes(rest[5..9].try_into().unwrap()) & 0x7fff_ffff,
            );
            let payload = &rest[9..9 + len];
            let code = || u32::from_be_bytes(payload[..4].try_into().unwrap());
            match (kind, id) {
                (HEADERS, 1) => return Answer::Headers(payload.first().copied().unwrap_or(0)),
                (RST_STREAM, 1) => return Answer::Reset(code()),
                (GOAWAY, 0) => {
                    return Answer::GoAway(u32::from_be_bytes(payload[4..8].try_into().unwrap()))
                }
                _ => {}
            }
            rest = &rest[9 + len..];
        }
    }
    Answer::Nothing
}

fn request_head(extra: &[(&str, &str)]) -> Vec<(String, String)> {
    [
        (":method", "POST"),
        (":scheme", "http"),
        (":path", "/api/h2"),
        (":authority", "gw"),
    ]
    .iter()
    .chain(extra)
    .map(|(n, v)| ((*n).to_owned(), (*v).to_owned()))
    .collect()
}

fn headers(extra: &[(&str, &str)], flags: u8) -> Vec<u8> {
    let fields = request_head(extra);
    let pairs: Vec<(&str, &str)> = fields
        .iter()
        .map(|(n, v)| (n.as_str(), v.as_str()))
        .collect();
    frame(HEADERS, END_HEADERS | flags, 1, &hpack(&pairs))
}

#[test]
fn malformed_http2_requests_are_refused_and_never_reach_the_upstream() {
    let upstream = FakeUpstream::start(None);
    let gateway = Gateway::builder(&format!(
        "[limits]\nmax_body_bytes = 1024\n\n{}\n[[routes]]\npath_prefix = \"/\"\nupstream = \"app\"\nauth = \"none\"\n",
        tiers_and_app(upstream.addr)
    ))
    .start();
    // The control: a well-formed request with `te: trailers` is served.
    let ok = exchange(gateway.addr, &[headers(&[("te", "trailers")], END_STREAM)]);
    assert_eq!(ok, Answer::Headers(0x88), "a well-formed request");
    assert_eq!(upstream.requests().len(), 1);

    let cases: Vec<(&str, Vec<Vec<u8>>)> = vec![
        (
            "upper-case name",
            vec![headers(&[("X-Upper", "1")], END_STREAM)],
        ),
        (
            "connection",
            vec![headers(&[("connection", "keep-alive")], END_STREAM)],
        ),
        (
            "transfer-encoding",
            vec![headers(&[("transfer-encoding", "chunked")], END_STREAM)],
        ),
        (
            "keep-alive",
            vec![headers(&[("keep-alive", "timeout=5")], END_STREAM)],
        ),
        ("upgrade", vec![headers(&[("upgrade", "h2c")], END_STREAM)]),
        ("te: gzip", vec![headers(&[("te", "gzip")], END_STREAM)]),
        (
            "content-length over DATA",
            vec![
                headers(&[("content-length", "10")], 0),
                frame(DATA, END_STREAM, 1, b"abc"),
            ],
        ),
        (
            "content-length under DATA",
            vec![
                headers(&[("content-length", "2")], 0),
                frame(
                    DATA,
                    END_STREAM,
                    1,
                    b"abc\r\n\r\nGET /admin HTTP/1.1\r\n\r\n",
                ),
            ],
        ),
    ];
    let mut wrong = Vec::new();
    for (name, frames) in &cases {
        let answer = exchange(gateway.addr, frames);
        // A stream (or connection) error, or the gateway's 400; never 200.
        let refused = matches!(
            answer,
            Answer::Reset(_) | Answer::GoAway(_) | Answer::Headers(0x8c)
        );
        if !refused {
            wrong.push(format!("{name}: {answer:?}"));
        }
    }
    let seen: Vec<String> = upstream
        .requests()
        .iter()
        .skip(1)
        .map(|s| s.target.clone())
        .collect();
    assert!(
        wrong.is_empty() && seen.is_empty(),
        "{wrong:#?}; the upstream saw {seen:?}"
    );

    // A declared body over max_body_bytes: 413 (a literal status, so read
    // from the access log), before any DATA.
    let answer = exchange(gateway.addr, &[headers(&[("content-length", "2048")], 0)]);
    assert!(matches!(answer, Answer::Headers(_)), "{answer:?}");
    gateway.wait_for_log(|line| line["status"] == 413 && line["path"] == "/api/h2");
    assert_eq!(upstream.requests().len(), 1, "only the control request");
}

/// HTTP/2 `CONNECT` (`:authority` only) is a 405 like HTTP/1.1's; an
/// extended CONNECT (`:protocol`, RFC 8441: the gateway never offers
/// `SETTINGS_ENABLE_CONNECT_PROTOCOL`) is refused too. Neither reaches
/// the upstream.
#[test]
fn http2_connect_is_refused_and_never_reaches_the_upstream() {
    let upstream = FakeUpstream::start(None);
    let gateway = Gateway::builder(&format!(
        "{}\n[[routes]]\npath_prefix = \"/\"\nupstream = \"app\"\nauth = \"none\"\n",
        tiers_and_app(upstream.addr)
    ))
    .start();
    let connect = hpack(&[(":method", "CONNECT"), (":authority", "gw:443")]);
    let answer = exchange(
        gateway.addr,
        &[frame(HEADERS, END_HEADERS | END_STREAM, 1, &connect)],
    );
    // 405 is no static-table status: a literal, so read from the log.
    assert!(matches!(answer, Answer::Headers(_)), "{answer:?}");
    gateway.wait_for_log(|line| line["status"] == 405 && line["error"] == "method_not_allowed");
    let extended = hpack(&[
        (":method", "CONNECT"),
        (":protocol", "websocket"),
        (":scheme", "http"),
        (":path", "/chat"),
        (":authority", "gw"),
    ]);
    let answer = exchange(
        gateway.addr,
        &[frame(HEADERS, END_HEADERS | END_STREAM, 1, &extended)],
    );
    assert_ne!(answer, Answer::Headers(0x88), "extended CONNECT was served");
    assert_ne!(answer, Answer::Nothing, "extended CONNECT got no answer");
    let seen = upstream.requests();
    assert!(seen.is_empty(), "the upstream saw {seen:?}");
}

/// An `:authority` upstreams read as the protected host though the gateway
/// would not match it (userinfo, a port that is not one) is refused like
/// such a `Host`: never the open any-host route, never the upstream.
#[test]
fn http2_authority_read_as_another_host_is_refused() {
    let upstream = FakeUpstream::start(None);
    let config = gateway_tests::http::protected_host_and_open_routes(upstream.addr);
    let gateway = Gateway::builder(&config).start();
    let get = |authority: &str| {
        let head = hpack(&[
            (":method", "GET"),
            (":scheme", "http"),
            (":path", "/users"),
            (":authority", authority),
        ]);
        exchange(
            gateway.addr,
            &[frame(HEADERS, END_HEADERS | END_STREAM, 1, &head)],
        )
    };
    // The control: another host takes the open route (200 is 0x88).
    assert_eq!(get("www.example"), Answer::Headers(0x88));
    for authority in ["user@admin.example", "admin.example:x"] {
        let answer = get(authority);
        // A stream error from the HTTP/2 layer, or the gateway's 400.
        assert!(
            matches!(
                answer,
                Answer::Reset(_) | Answer::GoAway(_) | Answer::Headers(0x8c)
            ),
            "{authority}: {answer:?}"
        );
    }
    assert_eq!(upstream.requests().len(), 1, "{:?}", upstream.requests());
}
