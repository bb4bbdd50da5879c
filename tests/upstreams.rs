//! Upstream behaviour end to end: active health checks take a failing
//! server out of its pool and bring it back; WebSocket upgrades are proxied
//! after authentication, and an open tunnel holds a drain (SIGTERM) until
//! it closes or `limits.drain_timeout` passes. A 101 the client did not
//! ask for is a 502; a kept connection the upstream closes as a request
//! goes out is retried once, for an idempotent bodiless request; a
//! response out of step with its framing never answers another request.
#![allow(clippy::unwrap_used, reason = "tests: a panic is the failure report")]

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    thread,
    time::{Duration, Instant},
};

use gateway_tests::{
    gateway::{signal_and_wait, Gateway},
    http::{request_with_body, tiers_and_app, EchoUpgrade, FakeUpstream, Script, ScriptedUpstream},
};

fn pause(duration: Duration) {
    #[allow(clippy::disallowed_methods, reason = "sync test")]
    thread::sleep(duration);
}

fn probes(upstream: &FakeUpstream) -> usize {
    upstream
        .requests()
        .iter()
        .filter(|r| r.target == "/healthz")
        .count()
}

fn served(upstream: &FakeUpstream) -> usize {
    upstream.requests().len() - probes(upstream)
}

/// Waits until `upstream` has been probed `more` more times.
fn wait_for_probes(upstream: &FakeUpstream, more: usize) {
    let target = probes(upstream) + more;
    let deadline = Instant::now() + Duration::from_secs(10);
    while probes(upstream) < target {
        assert!(Instant::now() < deadline, "health checks stalled");
        pause(Duration::from_millis(20));
    }
}

#[test]
fn health_checks_take_a_failing_server_out_and_bring_it_back() {
    let a = FakeUpstream::start(None);
    let b = FakeUpstream::start(None);
    let gateway = Gateway::builder(&format!(
        r#"
[[upstreams]]
name = "app"
servers = ["{a}", "{b}"]
[upstreams.health_check]
path = "/healthz"
interval = "100ms"
timeout = "500ms"
unhealthy_threshold = 2
healthy_threshold = 2

[[routes]]
path_prefix = "/"
upstream = "app"
auth = "none"
"#,
        a = a.addr,
        b = b.addr
    ))
    .start();
    for _ in 0..4 {
        assert_eq!(gateway.get("/x", &[]).status, 200);
    }
    assert!(served(&a) >= 1 && served(&b) >= 1, "round robin uses both");

    b.set_status(503);
    wait_for_probes(&b, 3);
    let before = served(&b);
    for _ in 0..6 {
        assert_eq!(gateway.get("/x", &[]).status, 200, "only healthy a serves");
    }
    assert_eq!(served(&b), before, "b is out of the pool");

    b.set_status(200);
    wait_for_probes(&b, 3);
    for _ in 0..6 {
        assert_eq!(gateway.get("/x", &[]).status, 200);
    }
    assert!(served(&b) > before, "b is back in the pool");
}

fn upgrade(gateway: SocketAddr, extra: &str) -> (String, TcpStream) {
    let mut stream = TcpStream::connect(gateway).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    write!(
        stream,
        "GET /ws/chat HTTP/1.1\r\nhost: gw\r\nupgrade: websocket\r\nconnection: Upgrade\r\n\
         sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\nsec-websocket-version: 13\r\n{extra}\r\n"
    )
    .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(
            stream.read(&mut byte).unwrap(),
            1,
            "connection closed mid-head"
        );
        head.push(byte[0]);
    }
    (String::from_utf8(head).unwrap(), stream)
}

#[test]
fn websocket_upgrades_are_proxied_after_authentication() {
    let EchoUpgrade {
        addr: echo, head, ..
    } = EchoUpgrade::start();
    let gateway = Gateway::builder(&format!(
        r#"
[[upstreams]]
name = "ws"
servers = ["{echo}"]

[[routes]]
path_prefix = "/ws/"
upstream = "ws"
auth = "api_key"
"#
    ));
    let key = gateway.create_key("gold");
    let gateway = gateway.start();

    let (refused, _) = upgrade(gateway.addr, "");
    assert!(refused.starts_with("HTTP/1.1 401"), "{refused}");

    let (accepted, mut stream) = upgrade(gateway.addr, &format!("x-api-key: {key}\r\n"));
    assert!(accepted.starts_with("HTTP/1.1 101"), "{accepted}");
    assert!(accepted.to_ascii_lowercase().contains("upgrade: websocket"));
    stream.write_all(b"ping through the gateway").unwrap();
    let mut echoed = [0u8; 24];
    stream.read_exact(&mut echoed).unwrap();
    assert_eq!(&echoed, b"ping through the gateway");

    let seen = head.lock().unwrap().clone();
    assert!(seen.contains("upgrade: websocket"), "{seen}");
    assert!(seen.contains("x-client-tier: gold"), "{seen}");
    assert!(
        !seen.contains(&key.to_ascii_lowercase()),
        "the key reached the upstream"
    );
}

/// Bounds every wait of the drain tests.
const WITHIN: Duration = Duration::from_secs(20);

/// A gateway that proxies `/ws/` to an echoing WebSocket upstream without
/// credentials, draining for `drain`, and a tunnel open through it that
/// has echoed once.
fn open_tunnel(drain: &str) -> (Gateway, TcpStream) {
    let EchoUpgrade { addr: server, .. } = EchoUpgrade::start();
    let gateway = Gateway::builder(&format!(
        "[[upstreams]]\nname = \"ws\"\nservers = [\"{server}\"]\n\n\
         [[routes]]\npath_prefix = \"/ws/\"\nupstream = \"ws\"\nauth = \"none\"\n\n\
         [limits]\ndrain_timeout = \"{drain}\"\n"
    ))
    .capture_stderr()
    .start();
    let (accepted, mut stream) = upgrade(gateway.addr, "");
    assert!(accepted.starts_with("HTTP/1.1 101"), "{accepted}");
    stream.set_read_timeout(Some(WITHIN)).unwrap();
    echo(&mut stream, b"before the drain").unwrap();
    (gateway, stream)
}

/// Writes `bytes` into the tunnel and reads them back.
fn echo(stream: &mut TcpStream, bytes: &[u8]) -> std::io::Result<()> {
    stream.write_all(bytes)?;
    let mut echoed = vec![0; bytes.len()];
    stream.read_exact(&mut echoed)?;
    assert_eq!(echoed, bytes);
    Ok(())
}

/// SIGTERM to the gateway; returns once its listener refuses connections
/// (it stopped accepting: the drain has begun).
fn terminate(gateway: &mut Gateway) -> std::process::Child {
    let process = gateway.take_child();
    let pid = libc::pid_t::try_from(process.id()).unwrap();
    // SAFETY: signalling our own child.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let deadline = Instant::now() + WITHIN;
    while TcpStream::connect_timeout(&gateway.addr, Duration::from_secs(1)).is_ok() {
        assert!(Instant::now() < deadline, "the listener still accepts");
        pause(Duration::from_millis(20));
    }
    process
}

#[test]
fn an_open_websocket_tunnel_holds_the_drain_until_it_closes() {
    let (mut gateway, mut stream) = open_tunnel("30s");
    let mut process = terminate(&mut gateway);
    // Draining: the tunnel still carries bytes both ways, and the gateway
    // waits for it.
    for round in 0..3 {
        echo(&mut stream, format!("during the drain {round}").as_bytes())
            .expect("the tunnel is cut during the drain");
        pause(Duration::from_millis(200));
    }
    assert!(
        process.try_wait().unwrap().is_none(),
        "the gateway exited under an open tunnel"
    );
    // The client closes: the tunnel ends, the drain with it.
    drop(stream);
    let status = signal_and_wait(&mut process, 0, WITHIN).expect("the drained gateway exits");
    assert!(status.success(), "exited with {status}");
    let log = gateway.stderr_text();
    assert!(!log.contains("drain_timeout passed"), "{log}");
}

#[test]
fn an_open_websocket_tunnel_is_cut_at_the_drain_deadline() {
    let (mut gateway, mut stream) = open_tunnel("2s");
    let mut process = terminate(&mut gateway);
    echo(&mut stream, b"during the drain").expect("the tunnel is cut during the drain");
    let status =
        signal_and_wait(&mut process, 0, WITHIN).expect("the gateway exits at its deadline");
    assert!(status.success(), "exited with {status}");
    // Cut: the client sees its connection end.
    let mut byte = [0u8; 1];
    assert!(matches!(stream.read(&mut byte), Ok(0) | Err(_)));
    let log = gateway.stderr_text();
    assert!(log.contains("drain_timeout passed"), "{log}");
}

/// One worker (so one pool of upstream connections) and an open route to
/// `upstream`.
fn one_worker(upstream: SocketAddr) -> Gateway {
    Gateway::builder(&format!(
        "[limits]\nworkers = 1\n\n{}\n[[routes]]\npath_prefix = \"/\"\nupstream = \"app\"\nauth = \"none\"\n",
        tiers_and_app(upstream)
    ))
    .start()
}

const OK: &str = "HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";

/// An upstream switching protocols unasked (or to another protocol than
/// the one asked for) is an upstream failure: a 502, never a 101 to the
/// client, and its connection is not used again.
#[test]
fn a_101_the_client_did_not_ask_for_is_a_502() {
    let upstream = ScriptedUpstream::start(|_, _, seen| {
        let to = match seen.header("upgrade") {
            Some(_) => "h2c",
            None => "websocket",
        };
        Script::Answer(format!(
            "HTTP/1.1 101 Switching Protocols\r\nupgrade: {to}\r\nconnection: upgrade\r\n\r\n"
        ))
    });
    let gateway = one_worker(upstream.addr);
    for _ in 0..2 {
        let reply = gateway.get("/plain", &[]);
        assert_eq!(reply.status, 502, "{reply:?}");
        assert_eq!(reply.json()["error"], "upstream_error");
    }
    let (switched, _stream) = upgrade(gateway.addr, "");
    assert!(switched.starts_with("HTTP/1.1 502"), "{switched}");
    let seen = upstream.requests();
    let targets: Vec<(usize, &str)> = (seen.iter())
        .map(|(c, s)| (*c, s.target.as_str()))
        .collect();
    // Each on a connection of its own: none was used after its 101.
    assert_eq!(targets, [(0, "/plain"), (1, "/plain"), (2, "/ws/chat")]);
    assert_eq!(seen[2].1.header("upgrade"), Some("websocket"));
    gateway.wait_for_log(|line| line["status"] == 502 && line["detail"] == "unsolicited_101");
}

/// A transfer coding the gateway does not decode (`gzip` before or
/// instead of `chunked`) would reach the client as coded bytes with
/// nothing saying so (the relay drops `Transfer-Encoding`, hop-by-hop):
/// a 502 that says why, and the connection is not used again.
#[test]
fn a_transfer_coding_other_than_chunked_is_a_502() {
    let upstream = ScriptedUpstream::start(|_, _, seen| match seen.target.as_str() {
        "/gzip-chunked" => Script::Answer(
            "HTTP/1.1 200 OK\r\ntransfer-encoding: gzip, chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"
                .into(),
        ),
        "/gzip" => Script::Answer(
            "HTTP/1.1 200 OK\r\ntransfer-encoding: gzip\r\nconnection: close\r\n\r\nabc".into(),
        ),
        _ => Script::Answer(OK.into()),
    });
    let gateway = one_worker(upstream.addr);
    for target in ["/gzip-chunked", "/gzip"] {
        let reply = gateway.get(target, &[]);
        assert_eq!(reply.status, 502, "{target}: {reply:?}");
        assert_eq!(reply.json()["error"], "upstream_error", "{target}");
        assert!(!reply.body.contains("abc"), "{target}: {}", reply.body);
    }
    assert_eq!(gateway.get("/ok", &[]).status, 200);
    let seen = upstream.requests();
    let connections: Vec<usize> = seen.iter().map(|(c, _)| *c).collect();
    // Each on a connection of its own: none was used after its answer.
    assert_eq!(connections, [0, 1, 2]);
    gateway.wait_for_log(|line| line["status"] == 502 && line["detail"] == "transfer_coding");
}

/// The keep-alive race, made deterministic: the upstream answers two
/// requests per connection, then reads the third and closes without a
/// word (no `Connection: close`), as its idle timer firing would. A GET
/// on that connection after a pause goes again on a fresh one (it was a
/// 502); a POST with a body does not (not idempotent: a 502).
#[test]
fn a_kept_connection_closed_under_a_get_is_retried_once_and_a_post_is_not() {
    let upstream = ScriptedUpstream::start(|_, number, _| match number {
        0 | 1 => Script::Answer(OK.into()),
        _ => Script::Close,
    });
    let gateway = one_worker(upstream.addr);
    for _ in 0..2 {
        assert_eq!(gateway.get("/a", &[]).status, 200);
    }
    // Idle past what the pool calls risky (250 ms).
    pause(Duration::from_millis(400));
    let reply = gateway.get("/b", &[]);
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(reply.body, "ok");
    assert_eq!(gateway.get("/c", &[]).status, 200);
    pause(Duration::from_millis(400));
    let headers = [("content-type", "text/plain")];
    let reply = request_with_body(gateway.addr, "POST", "/d", &headers, "x");
    assert_eq!(reply.status, 502, "{reply:?}");
    let seen: Vec<(usize, String, String)> = (upstream.requests().into_iter())
        .map(|(c, s)| (c, s.method, s.target))
        .collect();
    let expected = [
        (0, "GET", "/a"),
        (0, "GET", "/a"),
        (0, "GET", "/b"),
        (1, "GET", "/b"),
        (1, "GET", "/c"),
        (1, "POST", "/d"),
    ];
    let expected: Vec<(usize, String, String)> = (expected.iter())
        .map(|(c, m, t)| (*c, m.to_string(), t.to_string()))
        .collect();
    assert_eq!(seen, expected);
}

/// Response splitting by an upstream: bytes past what its framing says (a
/// second response written after the first), or framing that reads two
/// ways (`Transfer-Encoding` beside `Content-Length`, two lengths). The
/// client gets the first response or a 502, never the smuggled one, and
/// the connection is not used for another request.
#[test]
fn an_upstream_response_out_of_step_never_answers_another_request() {
    const SMUGGLED: &str = "HTTP/1.1 200 OK\r\ncontent-length: 8\r\n\r\nsmuggled";
    let upstream = ScriptedUpstream::start(|_, _, seen| {
        Script::Answer(match seen.target.as_str() {
            "/split" => format!("{OK}{SMUGGLED}"),
            "/both" => format!(
                "HTTP/1.1 200 OK\r\ncontent-length: 5\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n{SMUGGLED}"
            ),
            "/two" => format!("HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 10\r\n\r\nok{SMUGGLED}"),
            _ => OK.to_string(),
        })
    });
    let gateway = one_worker(upstream.addr);
    let reply = gateway.get("/split", &[]);
    assert_eq!(
        (reply.status, reply.body.as_str()),
        (200, "ok"),
        "{reply:?}"
    );
    for path in ["/next", "/both", "/after-both", "/two", "/last"] {
        let reply = gateway.get(path, &[]);
        match path {
            "/both" | "/two" => {
                assert_eq!(reply.status, 502, "{path}: {reply:?}");
                assert_eq!(reply.json()["error"], "upstream_error");
            }
            _ => assert_eq!(
                (reply.status, reply.body.as_str()),
                (200, "ok"),
                "{path}: {reply:?}"
            ),
        }
    }
    let seen: Vec<(usize, String)> = (upstream.requests().into_iter())
        .map(|(c, s)| (c, s.target))
        .collect();
    let expected = [
        (0, "/split"),
        (1, "/next"),
        (1, "/both"),
        (2, "/after-both"),
        (2, "/two"),
        (3, "/last"),
    ];
    let expected: Vec<(usize, String)> = (expected.iter())
        .map(|(c, t)| (*c, t.to_string()))
        .collect();
    assert_eq!(seen, expected);
}
