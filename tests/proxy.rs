//! The proxy, end to end: the real gateway binary on loopback port 0 with a
//! temp config and key store, a real upstream that records what it got,
//! and a real HTTP client. No privileges needed (`--no-xdp`).
#![allow(clippy::unwrap_used, reason = "tests: a panic is the failure report")]

use std::{process::Command, time::Duration};

use gateway_tests::{
    fs::TempDir,
    gateway::{forged_key, gateway_bin, Gateway},
    http::FakeUpstream,
};

/// One upstream behind `/api/` (API key, scope `read` required), an open
/// `/public/` route, and `/keep/` which forwards the credential.
fn config(upstream: &FakeUpstream) -> String {
    format!(
        r#"
[[upstreams]]
name = "app"
servers = ["{addr}"]

[[routes]]
path_prefix = "/api/"
upstream = "app"
auth = "api_key"
required_scopes = ["read"]

[[routes]]
path_prefix = "/api/admin/"
upstream = "app"
auth = "api_key"
required_scopes = ["admin"]

[[routes]]
path_prefix = "/public/"
upstream = "app"
auth = "none"

[[routes]]
path_prefix = "/keep/"
upstream = "app"
forward_credential = true

[[routes]]
path_prefix = "/quiet/"
upstream = "app"
auth = "none"
forward_credential = false
"#,
        addr = upstream.addr
    )
}

fn started(upstream: &FakeUpstream) -> (Gateway, String) {
    let gateway = Gateway::builder(&config(upstream));
    let key = gateway.create_key_with("silver", &["--scopes", "read,write"]);
    (gateway.start(), key)
}

#[test]
fn missing_key_is_401_with_challenge_and_never_reaches_upstream() {
    let upstream = FakeUpstream::start(None);
    let (gateway, _key) = started(&upstream);
    let reply = gateway.get("/api/items", &[]);
    assert_eq!(reply.status, 401);
    assert!(reply
        .header("www-authenticate")
        .unwrap()
        .starts_with("Bearer"));
    assert_eq!(reply.json()["error"], "missing_credential");
    assert_eq!(reply.header("content-type"), Some("application/json"));
    assert!(upstream.requests().is_empty());
}

#[test]
fn every_key_source_authenticates_and_the_key_never_reaches_upstream() {
    let upstream = FakeUpstream::start(None);
    let (gateway, key) = started(&upstream);
    let bearer = format!("Bearer {key}");
    let apk = format!("apk {key}");
    let cookie = format!("theme=dark; api_key={key}");
    let cases: Vec<(String, Vec<(&str, &str)>)> = vec![
        ("/api/a".into(), vec![("authorization", bearer.as_str())]),
        ("/api/a".into(), vec![("authorization", apk.as_str())]),
        ("/api/a".into(), vec![("api-key", key.as_str())]),
        ("/api/a".into(), vec![("api-key", bearer.as_str())]),
        ("/api/a".into(), vec![("x-api-key", key.as_str())]),
        (format!("/api/a?x=1&api_key={key}"), vec![]),
        ("/api/a".into(), vec![("cookie", cookie.as_str())]),
    ];
    for (target, headers) in &cases {
        let reply = gateway.get(target, headers);
        assert_eq!(reply.status, 200, "{target} {headers:?}: {}", reply.body);
        assert_eq!(reply.body, "upstream-ok");
    }
    let seen = upstream.requests();
    assert_eq!(seen.len(), cases.len());
    for request in &seen {
        assert!(request.header("authorization").is_none());
        assert!(request.header("api-key").is_none());
        assert!(request.header("x-api-key").is_none());
        assert!(!request.target.contains("api_key"), "{}", request.target);
        assert!(request.header("x-client-id").unwrap().starts_with("cl_"));
        assert_eq!(request.header("x-client-tier"), Some("silver"));
    }
    assert_eq!(seen[5].target, "/api/a?x=1");
    assert_eq!(seen[6].header("cookie"), Some("theme=dark"));
}

#[test]
fn headers_win_over_query_and_query_over_cookie() {
    let upstream = FakeUpstream::start(None);
    let (gateway, key) = started(&upstream);
    let garbage = "gk_notakeyatall";
    let with_query = format!("/api/a?api_key={key}");
    // A valid header beats an invalid query value...
    let reply = gateway.get(&format!("/api/a?api_key={garbage}"), &[("x-api-key", &key)]);
    assert_eq!(reply.status, 200);
    // ...and an invalid header is used (and refused) even when the query is valid.
    let reply = gateway.get(&with_query, &[("x-api-key", garbage)]);
    assert_eq!(reply.status, 401);
    assert_eq!(reply.json()["error"], "invalid_credential");
    // A wrong secret under a real key id reads like an unknown key to the
    // client; only the access log says which.
    let id = &key[3..15];
    let forged = forged_key(id);
    let reply = gateway.get("/api/a", &[("x-api-key", &forged)]);
    assert_eq!(reply.status, 401);
    assert!(
        reply.json()["message"]
            .as_str()
            .unwrap()
            .contains("invalid_key"),
        "{}",
        reply.body
    );
    gateway.wait_for_log(|l| l["detail"] == "wrong_secret");
    // The query beats the cookie.
    let cookie = format!("api_key={garbage}");
    assert_eq!(gateway.get(&with_query, &[("cookie", &cookie)]).status, 200);
}

#[test]
fn spoofed_identity_and_forwarding_headers_never_reach_upstream() {
    let upstream = FakeUpstream::start(None);
    let (gateway, key) = started(&upstream);
    let reply = gateway.get(
        "/api/a",
        &[
            ("x-api-key", &key),
            ("x-client-id", "cl_admin"),
            ("x-client-tier", "gold"),
            ("x-forwarded-for", "6.6.6.6"),
            ("x-request-id", "req-123"),
            ("connection", "x-hop"),
            ("x-hop", "secret"),
        ],
    );
    assert_eq!(reply.status, 200);
    assert_eq!(reply.header("x-request-id"), Some("req-123"));
    let seen = &upstream.requests()[0];
    assert_ne!(seen.header("x-client-id"), Some("cl_admin"));
    assert_eq!(seen.header("x-client-tier"), Some("silver"));
    assert_eq!(seen.header("x-forwarded-for"), Some("127.0.0.1"));
    assert_eq!(seen.header("x-forwarded-proto"), Some("http"));
    assert_eq!(seen.header("x-request-id"), Some("req-123"));
    assert!(seen.header("x-hop").is_none());

    // Unauthenticated routes get no identity at all, whatever the client says.
    let reply = gateway.get("/public/x", &[("x-client-id", "cl_admin")]);
    assert_eq!(reply.status, 200);
    let generated = reply.header("x-request-id").unwrap();
    assert_eq!(generated.len(), 32);
    let seen = &upstream.requests()[1];
    assert!(seen.header("x-client-id").is_none());
    assert_eq!(seen.header("x-request-id"), Some(generated));
}

#[test]
fn scopes_credentials_kept_on_request_and_unknown_paths() {
    let upstream = FakeUpstream::start(None);
    let (gateway, key) = started(&upstream);
    let reply = gateway.get("/api/admin/users", &[("x-api-key", &key)]);
    assert_eq!(reply.status, 403);
    assert_eq!(reply.json()["error"], "insufficient_scope");
    assert!(upstream.requests().is_empty());

    let bearer = format!("Bearer {key}");
    assert_eq!(
        gateway.get("/keep/x", &[("authorization", &bearer)]).status,
        200
    );
    assert_eq!(
        upstream.requests()[0].header("authorization"),
        Some(bearer.as_str())
    );

    let reply = gateway.get("/nowhere", &[]);
    assert_eq!(reply.status, 404);
    assert_eq!(reply.json()["error"], "no_route");
}

#[test]
fn unauthenticated_routes_forward_credentials_untouched_unless_told_not_to() {
    let upstream = FakeUpstream::start(None);
    let (gateway, key) = started(&upstream);
    // An identity provider behind an `auth = "none"` route sees its
    // clients' Basic credentials, and whatever else they send.
    let basic = "Basic dXNlcjpwYXNz";
    let sent = [("authorization", basic), ("x-api-key", key.as_str())];
    assert_eq!(gateway.get("/public/token", &sent).status, 200);
    let seen = &upstream.requests()[0];
    assert_eq!(seen.header("authorization"), Some(basic));
    assert_eq!(seen.header("x-api-key"), Some(key.as_str()));
    // Told not to, the route strips them like an authenticated one.
    assert_eq!(gateway.get("/quiet/token", &sent).status, 200);
    let seen = &upstream.requests()[1];
    assert_eq!(seen.header("authorization"), None);
    assert_eq!(seen.header("x-api-key"), None);
    // An authenticated route strips every credential place, Basic too.
    let both = [("x-api-key", key.as_str()), ("authorization", basic)];
    assert_eq!(gateway.get("/api/x", &both).status, 200);
    let seen = &upstream.requests()[2];
    assert_eq!(seen.header("authorization"), None);
    assert_eq!(seen.header("x-api-key"), None);
}

#[test]
fn expired_tampered_and_unknown_keys_are_refused() {
    let upstream = FakeUpstream::start(None);
    let gateway = Gateway::builder(&config(&upstream));
    let expiring = gateway.create_key_with("gold", &["--scopes", "read", "--expires-in", "2s"]);
    let gateway = gateway.start();
    assert_eq!(
        gateway.get("/api/a", &[("x-api-key", &expiring)]).status,
        200
    );
    #[allow(
        clippy::disallowed_methods,
        reason = "sync test waiting for wall-clock expiry"
    )]
    std::thread::sleep(Duration::from_millis(2100));
    let reply = gateway.get("/api/a", &[("x-api-key", &expiring)]);
    assert_eq!(reply.status, 401);
    assert!(reply.json()["message"]
        .as_str()
        .unwrap()
        .contains("expired"));

    let mut tampered = expiring.clone().into_bytes();
    let last = tampered.len() - 10;
    tampered[last] = if tampered[last] == b'a' { b'b' } else { b'a' };
    let tampered = String::from_utf8(tampered).unwrap();
    let reply = gateway.get("/api/a", &[("x-api-key", &tampered)]);
    assert_eq!(reply.status, 401);
    assert!(reply.json()["message"]
        .as_str()
        .unwrap()
        .contains("checksum"));
    assert_eq!(upstream.requests().len(), 1);
}

#[test]
fn keys_created_while_running_take_effect_and_logs_hold_no_keys() {
    let upstream = FakeUpstream::start(None);
    let (gateway, key) = started(&upstream);
    let fresh = gateway.create_key_with("bronze", &["--scopes", "read"]);
    let mut status = 0;
    for _ in 0..50 {
        status = gateway.get("/api/a", &[("x-api-key", &fresh)]).status;
        if status == 200 {
            break;
        }
        #[allow(clippy::disallowed_methods, reason = "bounded poll in a sync test")]
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(status, 200, "a key created while running is picked up");
    assert_eq!(
        gateway.get(&format!("/api/a?api_key={key}"), &[]).status,
        200
    );

    let line = gateway.wait_for_log(|l| l["status"] == 200 && l["tier"] == "silver");
    assert_eq!(line["path"], "/api/a");
    assert_eq!(line["route"], "*/api/");
    assert!(line["key_id"].as_str().unwrap().len() == 12);
    assert!(line["client_id"].as_str().unwrap().starts_with("cl_"));
    let text = gateway.log_text();
    assert!(
        !text.contains(&key) && !text.contains(&fresh),
        "a key leaked into the log"
    );
}

/// A client may shut its sending side once its request is out (RFC 9112,
/// 9.6 allows it): the request is still served once, and the answer comes
/// back on the half-closed connection. The upstream is slow, so the FIN
/// arrives while the request is in flight.
#[test]
fn a_client_that_half_closes_after_its_request_still_gets_the_answer() {
    use std::io::{Read, Write};
    let upstream = FakeUpstream::start(Some(Duration::from_millis(300)));
    let (gateway, key) = started(&upstream);
    for (target, body) in [("/api/get", ""), ("/api/post", "twelve bytes")] {
        let mut stream = std::net::TcpStream::connect(gateway.addr).unwrap();
        let method = if body.is_empty() { "GET" } else { "POST" };
        write!(
            stream,
            "{method} {target} HTTP/1.1\r\nhost: x\r\nx-api-key: {key}\r\n\
             content-length: {}\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        stream.shutdown(std::net::Shutdown::Write).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).unwrap();
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.starts_with("HTTP/1.1 200 "), "{target}: {answer}");
        assert!(answer.ends_with("upstream-ok"), "{target}: {answer}");
        let seen: Vec<_> = (upstream.requests().into_iter())
            .filter(|seen| seen.target == target)
            .collect();
        assert_eq!(seen.len(), 1, "{target}: {seen:?}");
        assert_eq!(seen[0].method, method);
        assert_eq!(seen[0].header("x-api-key"), None);
    }
}

#[test]
fn dead_upstream_is_502_then_503_and_slow_upstream_is_504() {
    // A port that was free a moment ago: nothing listens there.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let slow = FakeUpstream::start(Some(Duration::from_secs(3)));
    let gateway = Gateway::builder(&format!(
        r#"
[limits]
upstream_timeout = "500ms"

[[upstreams]]
name = "dead"
servers = ["{dead}"]

[[upstreams]]
name = "slow"
servers = ["{slow}"]

[[routes]]
path_prefix = "/dead/"
upstream = "dead"
auth = "none"

[[routes]]
path_prefix = "/slow/"
upstream = "slow"
auth = "none"
"#,
        slow = slow.addr
    ))
    .start();
    let reply = gateway.get("/dead/x", &[]);
    assert_eq!(reply.status, 502, "{}", reply.body);
    assert_eq!(reply.json()["error"], "upstream_unavailable");
    // Its only server was ejected: no healthy server left.
    let reply = gateway.get("/dead/x", &[]);
    assert_eq!(reply.status, 503);
    assert_eq!(reply.json()["error"], "no_healthy_upstream");
    let reply = gateway.get("/slow/x", &[]);
    assert_eq!(reply.status, 504);
    assert_eq!(reply.json()["error"], "upstream_timeout");
    gateway.wait_for_log(|l| l["status"] == 504 && l["blame"] == "upstream");
}

#[test]
fn check_config_names_the_offending_key_path() {
    let dir = TempDir::new("check");
    let file = dir.path.join("bad.toml");
    std::fs::write(
        &file,
        "[[listeners]]\naddress = \"127.0.0.1:8080\"\n\n[[routes]]\npath_prefix = \"/\"\nupstream = \"app\"\nauht = \"none\"\n",
    )
    .unwrap();
    let output = Command::new(gateway_bin())
        .args(["check-config"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("routes[0]") && stderr.contains("auht"),
        "{stderr}"
    );

    let good = dir.path.join("good.toml");
    std::fs::write(&good, "[[listeners]]\naddress = \"127.0.0.1:8080\"\n").unwrap();
    let output = Command::new(gateway_bin())
        .arg("check-config")
        .arg(&good)
        .output()
        .unwrap();
    assert!(output.status.success());
    assert!(String::from_utf8_lossy(&output.stdout).contains("valid"));
}

#[test]
fn disabled_clients_are_refused_and_can_be_enabled_again() {
    let upstream = FakeUpstream::start(None);
    let gateway = Gateway::builder(&config(&upstream));
    let (client, key) = gateway.create_client("gold", &["--scopes", "read"]);
    let gateway = gateway.start();
    assert_eq!(gateway.get("/api/a", &[("x-api-key", &key)]).status, 200);

    let switch = |verb: &str| {
        let output = Command::new(gateway_bin())
            .args(["keys", verb, &client, "--config"])
            .arg(&gateway.config)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
    };
    let status_within = |want: u16| {
        for _ in 0..50 {
            if gateway.get("/api/a", &[("x-api-key", &key)]).status == want {
                return true;
            }
            #[allow(clippy::disallowed_methods, reason = "bounded poll in a sync test")]
            std::thread::sleep(Duration::from_millis(100));
        }
        false
    };
    switch("disable");
    assert!(status_within(401), "a disabled client is refused");
    let reply = gateway.get("/api/a", &[("x-api-key", &key)]);
    assert!(reply.json()["message"]
        .as_str()
        .unwrap()
        .contains("disabled"));
    switch("enable");
    assert!(status_within(200), "enabled again");
}

#[test]
fn idle_http2_connections_are_closed_after_the_request_timeout() {
    use std::io::{Read, Write};
    let upstream = FakeUpstream::start(None);
    let gateway = Gateway::builder(&format!(
        "[limits]\nrequest_timeout = \"1s\"\n\n[[upstreams]]\nname = \"app\"\nservers = [\"{}\"]\n\n\
         [[routes]]\npath_prefix = \"/\"\nupstream = \"app\"\nauth = \"none\"\n",
        upstream.addr
    ))
    .start();
    // HTTP/2 with prior knowledge: the preface and an empty SETTINGS frame,
    // then nothing.
    let mut stream = std::net::TcpStream::connect(gateway.addr).unwrap();
    stream
        .write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .unwrap();
    stream.write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0]).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut received = Vec::new();
    let closed = stream.read_to_end(&mut received);
    assert!(
        closed.is_ok(),
        "the idle connection was still open after 10 s: {closed:?}"
    );
    // Whole frames, all on the connection (stream 0: no stream was
    // opened): the server's preface SETTINGS first, then a GOAWAY saying
    // the server closes without an error. Its last stream id is 0 (nothing
    // processed) or 2^31-1, the first GOAWAY of a graceful shutdown (RFC
    // 9113, 6.8), which a PING and a final GOAWAY may follow.
    let frames = h2_frames(&received);
    assert_eq!(frames.first().map(|f| f.kind), Some(SETTINGS), "{frames:?}");
    assert!(frames.iter().all(|f| f.stream == 0), "{frames:?}");
    let goaways: Vec<GoAway> = frames
        .iter()
        .filter(|f| f.kind == GOAWAY)
        .map(|f| {
            assert_eq!(f.flags, 0, "GOAWAY defines no flags");
            GoAway::parse(&f.payload)
        })
        .collect();
    assert!(!goaways.is_empty(), "no GOAWAY among {frames:?}");
    for goaway in &goaways {
        assert_eq!(goaway.error, NO_ERROR, "{goaways:?}");
        assert!(
            [0, 0x7fff_ffff].contains(&goaway.last_stream),
            "{goaways:?}"
        );
    }
}

/// HTTP/2 frame types and error codes (RFC 9113, 6 and 7).
const SETTINGS: u8 = 0x4;
const GOAWAY: u8 = 0x7;
const NO_ERROR: u32 = 0x0;

/// One HTTP/2 frame: its 9-byte header (24-bit length, type, flags,
/// reserved bit and 31-bit stream id), then `length` bytes of payload.
#[derive(Debug)]
struct Frame {
    kind: u8,
    flags: u8,
    stream: u32,
    payload: Vec<u8>,
}

/// Splits what a server sent into frames; panics unless the bytes are
/// whole frames, back to back.
fn h2_frames(mut bytes: &[u8]) -> Vec<Frame> {
    let mut frames = Vec::new();
    while !bytes.is_empty() {
        assert!(bytes.len() >= 9, "a truncated frame header: {bytes:?}");
        let (header, rest) = bytes.split_at(9);
        let length = u32::from_be_bytes([0, header[0], header[1], header[2]]) as usize;
        let stream = u32::from_be_bytes([header[5], header[6], header[7], header[8]]) & 0x7fff_ffff;
        assert!(
            rest.len() >= length,
            "a truncated frame: {header:?} with {} bytes",
            rest.len()
        );
        let (payload, rest) = rest.split_at(length);
        frames.push(Frame {
            kind: header[3],
            flags: header[4],
            stream,
            payload: payload.to_vec(),
        });
        bytes = rest;
    }
    frames
}

/// A GOAWAY payload: the last stream the server processed and why it
/// closes (0 = NO_ERROR); debug data, if any, ignored.
#[derive(Debug, PartialEq, Eq)]
struct GoAway {
    last_stream: u32,
    error: u32,
}

impl GoAway {
    fn parse(payload: &[u8]) -> Self {
        assert!(
            payload.len() >= 8,
            "a GOAWAY payload is at least 8 bytes: {payload:?}"
        );
        let word = |at: usize| u32::from_be_bytes(payload[at..at + 4].try_into().unwrap());
        Self {
            last_stream: word(0) & 0x7fff_ffff,
            error: word(4),
        }
    }
}
