//! What a connection may cost: body size, connections per source, idle
//! WebSocket tunnels, and the admin listener's own limits.
#![allow(clippy::unwrap_used, reason = "tests: a panic is the failure report")]

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    sync::{Arc, Mutex},
    thread,
    time::{Duration, Instant},
};

use gateway_tests::{
    gateway::Gateway,
    http::{pause, tiers_and_app, EchoUpgrade, FakeUpstream},
};

use super::http::raw;

fn open_route(upstream: SocketAddr, limits: &str) -> String {
    format!(
        "[limits]\n{limits}\n\n{}\n[[routes]]\npath_prefix = \"/\"\nupstream = \"app\"\nauth = \"none\"\n",
        tiers_and_app(upstream)
    )
}

/// An upstream that records every byte it is sent, per connection, and
/// answers 200 only once a chunked body has ended (`0\r\n\r\n`), so a
/// body cut off on the way is never answered.
fn body_recorder() -> (SocketAddr, Arc<Mutex<Vec<Vec<u8>>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let connections = Arc::new(Mutex::new(Vec::new()));
    let log = connections.clone();
    thread::spawn(move || {
        for stream in listener.incoming().take(16) {
            let Ok(mut stream) = stream else { continue };
            let log = log.clone();
            thread::spawn(move || {
                stream
                    .set_read_timeout(Some(Duration::from_secs(20)))
                    .unwrap();
                let index = {
                    let mut log = log.lock().unwrap();
                    log.push(Vec::new());
                    log.len() - 1
                };
                let mut buf = [0u8; 16 * 1024];
                while let Ok(n) = stream.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    let ended = {
                        let mut log = log.lock().unwrap();
                        log[index].extend_from_slice(&buf[..n]);
                        whole(&log[index])
                    };
                    if ended {
                        let _ = stream.write_all(
                            b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok",
                        );
                        break;
                    }
                }
            });
        }
    });
    (addr, connections)
}

/// Whether `received` is a whole request: its `Content-Length` bytes
/// after the head, or a chunked body through its last chunk.
fn whole(received: &[u8]) -> bool {
    let text = String::from_utf8_lossy(received).to_ascii_lowercase();
    let Some(end) = text.find("\r\n\r\n") else {
        return false;
    };
    let length = (text[..end].lines())
        .find_map(|line| line.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok());
    match length {
        Some(length) => received.len() >= end + 4 + length,
        None => received.ends_with(b"0\r\n\r\n"),
    }
}

#[test]
fn a_content_length_over_the_limit_is_413_before_the_body_is_read() {
    let upstream = FakeUpstream::start(None);
    let gateway = Gateway::builder(&open_route(upstream.addr, "max_body_bytes = 1024")).start();
    // The head alone: the answer cannot wait for the 2 KiB it announces.
    let (statuses, text) = raw(
        gateway.addr,
        b"POST /api/x HTTP/1.1\r\nhost: gw\r\ncontent-length: 2048\r\n\r\n",
    );
    assert_eq!(statuses, vec![413], "{text}");
    assert!(text.contains("body_too_large"), "{text}");
    // Within the limit passes.
    let body = "a".repeat(1024);
    let request = format!(
        "POST /api/ok HTTP/1.1\r\nhost: gw\r\nconnection: close\r\ncontent-length: 1024\r\n\r\n{body}"
    );
    assert_eq!(raw(gateway.addr, request.as_bytes()).0, vec![200]);
    let targets: Vec<String> = upstream.requests().into_iter().map(|s| s.target).collect();
    assert_eq!(targets, ["/api/ok"], "only the request within the limit");
}

/// `size` bytes of body in chunks of `chunk`, then the last chunk.
fn chunked_body(size: usize, chunk: usize) -> Vec<u8> {
    let mut body = Vec::new();
    let mut left = size;
    while left > 0 {
        let n = left.min(chunk);
        body.extend_from_slice(format!("{n:x}\r\n").as_bytes());
        body.extend(std::iter::repeat_n(b'a', n));
        body.extend_from_slice(b"\r\n");
        left -= n;
    }
    body.extend_from_slice(b"0\r\n\r\n");
    body
}

#[test]
fn a_streamed_body_over_the_limit_is_413_and_the_upstream_request_is_aborted() {
    let (upstream, connections) = body_recorder();
    let limit = 64 * 1024;
    let gateway =
        Gateway::builder(&open_route(upstream, &format!("max_body_bytes = {limit}"))).start();
    let head = b"POST /api/up HTTP/1.1\r\nhost: gw\r\nconnection: close\r\ntransfer-encoding: chunked\r\n\r\n";

    let mut request = head.to_vec();
    request.extend(chunked_body(2000, 1000));
    let (statuses, _) = raw(gateway.addr, &request);
    assert_eq!(statuses, vec![200], "within the limit");
    assert_eq!(connections.lock().unwrap().len(), 1);

    // Large: streamed, then cut off where it passes the limit.
    let mut request = head.to_vec();
    request.extend(chunked_body(4 * limit, 4096));
    let (statuses, text) = raw(gateway.addr, &request);
    assert_eq!(
        statuses,
        vec![413],
        "{}",
        text.lines().next().unwrap_or_default()
    );
    // The upstream got the head and part of the body, never its end, and
    // its connection was closed (its reader thread saw EOF or a reset).
    let deadline = Instant::now() + Duration::from_secs(10);
    let seen = loop {
        let seen = connections.lock().unwrap().get(1).cloned();
        if let Some(seen) = seen.filter(|s| !s.is_empty()) {
            break seen;
        }
        assert!(
            Instant::now() < deadline,
            "the upstream saw no second request"
        );
        pause(Duration::from_millis(20));
    };
    let text = String::from_utf8_lossy(&seen);
    assert!(
        text.starts_with("POST /api/up HTTP/1.1\r\n"),
        "{}",
        &text[..80.min(text.len())]
    );
    assert!(
        !seen.ends_with(b"0\r\n\r\n"),
        "the upstream got the whole body"
    );
    assert!(
        seen.len() < 2 * limit,
        "the upstream got {} bytes",
        seen.len()
    );
}

/// Opens a connection and waits until the gateway has it: a request on it
/// is answered, whatever the status (keep-alive).
fn served(addr: SocketAddr) -> Option<TcpStream> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    stream
        .write_all(b"GET /api/x HTTP/1.1\r\nhost: gw\r\n\r\n")
        .ok()?;
    let mut reader = BufReader::new(stream.try_clone().ok()?);
    let mut status = String::new();
    reader.read_line(&mut status).ok()?;
    let mut length = 0;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).ok()? == 0 {
            return None;
        }
        if line == "\r\n" {
            break;
        }
        if let Some(value) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            length = value.trim().parse().ok()?;
        }
    }
    let mut body = vec![0; length];
    reader.read_exact(&mut body).ok()?;
    status.starts_with("HTTP/1.1 ").then_some(stream)
}

/// Waits (bounded) until a new connection is served again.
fn served_within(addr: SocketAddr, within: Duration) -> Option<TcpStream> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(stream) = served(addr) {
            return Some(stream);
        }
        if Instant::now() >= deadline {
            return None;
        }
        pause(Duration::from_millis(50));
    }
}

#[test]
fn one_source_gets_max_connections_per_source_and_more_after_closing_some() {
    let upstream = FakeUpstream::start(None);
    let gateway =
        Gateway::builder(&open_route(upstream.addr, "max_connections_per_source = 3")).start();
    let mut open: Vec<TcpStream> = (0..3).map(|_| served(gateway.addr).unwrap()).collect();
    assert!(
        served(gateway.addr).is_none(),
        "a 4th connection from 127.0.0.1 was served"
    );
    // The three are still served.
    for stream in &mut open {
        stream
            .write_all(b"GET /api/again HTTP/1.1\r\nhost: gw\r\n\r\n")
            .unwrap();
        let mut buf = [0u8; 12];
        stream.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"HTTP/1.1 200");
    }
    drop(open.pop());
    let again = served_within(gateway.addr, Duration::from_secs(10));
    assert!(again.is_some(), "no new connection after one closed");
    let again_paths = (upstream.requests().iter())
        .filter(|s| s.target == "/api/again")
        .count();
    assert_eq!(again_paths, 3);
}

#[test]
fn a_trusted_proxy_is_not_held_to_the_per_source_cap() {
    // Many clients share a load balancer's address: capping it at 3 would
    // lock every one of them out once 3 of its connections were open.
    let upstream = FakeUpstream::start(None);
    let config = open_route(upstream.addr, "max_connections_per_source = 3").replace(
        "[limits]",
        "[forwarding]\ntrusted_proxies = [\"127.0.0.0/8\"]\n\n[limits]",
    );
    let gateway = Gateway::builder(&config).start();
    let open: Vec<TcpStream> = (0..3).map(|_| served(gateway.addr).unwrap()).collect();
    assert!(
        served(gateway.addr).is_some(),
        "a 4th connection from the trusted proxy was closed"
    );
    drop(open);
}

#[test]
fn websocket_tunnels_keep_their_connection_slot_and_close_when_idle() {
    let echo = EchoUpgrade::start();
    let (upstream, upstream_closed) = (echo.addr, echo.closed);
    let gateway = Gateway::builder(&open_route(
        upstream,
        "max_connections_per_source = 1\ntunnel_idle_timeout = \"2s\"",
    ))
    .start();
    let mut tunnel = TcpStream::connect(gateway.addr).unwrap();
    tunnel
        .set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    tunnel
        .write_all(
            b"GET /ws HTTP/1.1\r\nhost: gw\r\nupgrade: websocket\r\nconnection: Upgrade\r\n\
              sec-websocket-key: dGhlIHNhbXBsZSBub25jZQ==\r\nsec-websocket-version: 13\r\n\r\n",
        )
        .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(tunnel.read(&mut byte).unwrap(), 1, "closed mid-head");
        head.push(byte[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    tunnel.write_all(b"ping").unwrap();
    let mut echoed = [0u8; 4];
    tunnel.read_exact(&mut echoed).unwrap();
    assert_eq!(&echoed, b"ping");
    // The tunnel holds this source's one connection slot.
    assert!(
        served(gateway.addr).is_none(),
        "a second connection was served beside the tunnel"
    );
    // Idle for 2 s: both sides are closed.
    let mut rest = Vec::new();
    let ended = tunnel.read_to_end(&mut rest);
    assert!(
        ended.is_ok() && rest.is_empty(),
        "the idle tunnel stayed open: {ended:?}"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while !upstream_closed.load(std::sync::atomic::Ordering::SeqCst) {
        assert!(Instant::now() < deadline, "the upstream side stayed open");
        pause(Duration::from_millis(20));
    }
    // And the slot is free again.
    assert!(served_within(gateway.addr, Duration::from_secs(10)).is_some());
}

fn guarded_admin(limits: &str) -> (Gateway, FakeUpstream) {
    let upstream = FakeUpstream::start(None);
    let body = format!(
        "{}\n[guard]\nauth_failures = 3\nauth_failure_window = \"60s\"\nauth_failure_ban = \"60s\"\n",
        open_route(upstream.addr, limits)
    );
    (Gateway::builder(&body).start(), upstream)
}

#[test]
fn refused_admin_keys_count_towards_the_guards_ban() {
    let (gateway, upstream) = guarded_admin("");
    assert_eq!(gateway.get("/api/before", &[]).status, 200);
    for i in 0..5 {
        let reply = gateway.admin_get(
            "/v1/management/api-clients",
            &[("authorization", &format!("Bearer gk_guess{i:04}_x"))],
        );
        assert_eq!(reply.status, 401);
    }
    // Userspace bans (--no-xdp): the proxy refuses this source now.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let refused = match gateway_tests::http::get_from(
            "127.0.0.1".parse().unwrap(),
            gateway.addr,
            "/api/after",
            &[],
            Duration::from_secs(5),
        ) {
            Ok(reply) => reply.status == 403,
            Err(_) => true,
        };
        if refused {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "admin key guessing was never banned"
        );
        pause(Duration::from_millis(50));
    }
    let targets: Vec<String> = upstream.requests().into_iter().map(|s| s.target).collect();
    assert_eq!(targets, ["/api/before"]);
}

#[test]
fn the_admin_listener_times_out_slow_headers() {
    let (gateway, _upstream) = guarded_admin("request_timeout = \"1s\"");
    let admin = gateway.admin.unwrap();
    // Half a request, then nothing: closed after the header-read timeout.
    let mut slow = TcpStream::connect(admin).unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    slow.write_all(b"GET /healthz HTTP/1.1\r\nhost: admin\r\n")
        .unwrap();
    let mut answer = Vec::new();
    let closed = slow.read_to_end(&mut answer);
    assert!(
        closed.is_ok(),
        "the slow admin connection stayed open: {closed:?}"
    );
    assert!(
        !String::from_utf8_lossy(&answer).contains("200"),
        "answered a half request"
    );
}

#[test]
fn the_admin_listener_caps_connections() {
    let (gateway, _upstream) = guarded_admin("");
    let admin = gateway.admin.unwrap();

    // 64 open connections; the 65th is closed without an answer.
    let mut held = Vec::new();
    for _ in 0..64 {
        let mut stream = TcpStream::connect(admin).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nhost: admin\r\n\r\n")
            .unwrap();
        let mut buf = [0u8; 12];
        stream.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"HTTP/1.1 200");
        held.push(stream);
    }
    let mut extra = TcpStream::connect(admin).unwrap();
    extra
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let _ = extra.write_all(b"GET /healthz HTTP/1.1\r\nhost: admin\r\n\r\n");
    let mut answer = Vec::new();
    let _ = extra.read_to_end(&mut answer);
    assert!(answer.is_empty(), "the 65th admin connection was served");
}

/// Connections that send nothing (hyper waits for a byte to tell HTTP/1
/// from HTTP/2), that open HTTP/2 and idle or send a PING now and then,
/// or that idle after a request are dropped after `request_timeout`: 64
/// of them, no credential needed, locked every admin out.
#[test]
fn idle_admin_connections_do_not_lock_the_admins_out() {
    let (gateway, _upstream) = guarded_admin("request_timeout = \"1s\"");
    let admin = gateway.admin.unwrap();
    let h2 = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\x00\x00\x00\x04\x00\x00\x00\x00\x00";
    let ping = b"\x00\x00\x08\x06\x00\x00\x00\x00\x00pingping";
    let answered = b"GET /healthz HTTP/1.1\r\nhost: admin\r\n\r\n";
    for (what, first, every) in [
        ("silent", &b""[..], &b""[..]),
        ("HTTP/2 then idle", &h2[..], &b""[..]),
        ("HTTP/2 then a PING every 300 ms", &h2[..], &ping[..]),
        ("answered then idle", &answered[..], &b""[..]),
    ] {
        let mut held: Vec<TcpStream> = (0..64)
            .map(|_| {
                let mut stream = TcpStream::connect(admin).unwrap();
                stream.write_all(first).unwrap();
                stream
            })
            .collect();
        for _ in 0..10 {
            pause(Duration::from_millis(300));
            for stream in &mut held {
                let _ = stream.write_all(every);
            }
        }
        let mut probe = TcpStream::connect(admin).unwrap();
        probe
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        probe
            .write_all(b"GET /healthz HTTP/1.1\r\nhost: admin\r\nconnection: close\r\n\r\n")
            .unwrap();
        let mut answer = Vec::new();
        let _ = probe.read_to_end(&mut answer);
        let answer = String::from_utf8_lossy(&answer);
        assert!(answer.starts_with("HTTP/1.1 200"), "{what}: {answer:?}");
        drop(held);
    }
}

#[test]
fn a_slow_first_head_is_served_when_it_ends_and_closed_unanswered_when_it_stalls() {
    let upstream = FakeUpstream::start(None);
    let gateway = Gateway::builder(&open_route(upstream.addr, "request_timeout = \"1s\"")).start();
    // A head in pieces (the blank line split too), within the timeout:
    // served, and the upstream saw the whole request.
    let mut split = TcpStream::connect(gateway.addr).unwrap();
    split
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    for piece in [
        &b"GET /api/sl"[..],
        b"ow HTTP/1.1\r\nHost: a\r\nX-Piece: ",
        b"three\r\nConnection: close\r\n\r",
        b"\n",
    ] {
        split.write_all(piece).unwrap();
        pause(Duration::from_millis(100));
    }
    let mut answer = Vec::new();
    split.read_to_end(&mut answer).unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let seen = upstream.requests();
    assert_eq!(seen.len(), 1, "the upstream saw {} requests", seen.len());
    assert_eq!(seen[0].target, "/api/slow");
    assert_eq!(seen[0].header("x-piece"), Some("three"));
    // Half a head, then nothing: closed after the timeout, unanswered, and
    // nothing reached the upstream.
    let mut stalled = TcpStream::connect(gateway.addr).unwrap();
    stalled
        .set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    stalled
        .write_all(b"GET /api/stalled HTTP/1.1\r\nHost: a\r\n")
        .unwrap();
    let mut answer = Vec::new();
    let closed = stalled.read_to_end(&mut answer);
    assert!(
        closed.is_ok(),
        "the stalled connection stayed open: {closed:?}"
    );
    assert!(answer.is_empty(), "answered a half head: {answer:?}");
    assert_eq!(upstream.requests().len(), 1, "the half head was forwarded");
}

#[test]
fn a_first_head_over_max_header_bytes_is_431_and_not_forwarded() {
    let upstream = FakeUpstream::start(None);
    let gateway = Gateway::builder(&open_route(upstream.addr, "max_header_bytes = 8192")).start();
    let mut big = TcpStream::connect(gateway.addr).unwrap();
    big.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let filler = "a".repeat(9000);
    // No blank line yet: the head is over the limit before it ends.
    big.write_all(format!("GET /api/big HTTP/1.1\r\nHost: a\r\nX-Fill: {filler}\r\n").as_bytes())
        .unwrap();
    let mut answer = Vec::new();
    let _ = big.read_to_end(&mut answer);
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 431"), "{answer}");
    assert!(
        upstream.requests().is_empty(),
        "the oversized head was forwarded"
    );
}

/// A client that asks for a large response and never reads it (its window
/// shut) has its connection dropped once no byte has gone for
/// `request_timeout`, freeing its slot (here its source's only one); one
/// that reads slowly but steadily keeps its connection however long the
/// response takes.
#[test]
fn a_client_that_never_reads_its_response_loses_its_slot_and_a_slow_one_does_not() {
    let upstream = FakeUpstream::start(None);
    let limits = "request_timeout = \"1s\"\nmax_connections_per_source = 1";
    let gateway = Gateway::builder(&open_route(upstream.addr, limits)).start();
    upstream.set_body(&"x".repeat(64 << 20));
    let get = b"GET /big HTTP/1.1\r\nhost: gw\r\n\r\n";
    // A slow reader: 16 KiB every 100 ms for 3 s (3 request timeouts).
    let mut slow = TcpStream::connect(gateway.addr).unwrap();
    slow.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    slow.write_all(get).unwrap();
    let mut chunk = vec![0; 16 << 10];
    let (started, mut got) = (Instant::now(), 0usize);
    while started.elapsed() < Duration::from_secs(3) {
        slow.read_exact(&mut chunk).unwrap();
        got += chunk.len();
        pause(Duration::from_millis(100));
    }
    // Then the rest at speed: all of it comes (cut off, the socket
    // buffers would have run dry well short of 64 MiB).
    while got < 64 << 20 {
        match slow.read(&mut chunk) {
            Ok(0) | Err(_) => panic!("the slow reader was cut off after {got} bytes"),
            Ok(n) => got += n,
        }
    }
    drop(slow);
    // The source's slot comes free once the slow reader is gone.
    let mut stalled = served_within(gateway.addr, Duration::from_secs(5)).unwrap();
    let before = upstream.requests().len();
    stalled.write_all(get).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while upstream.requests().len() == before && Instant::now() < deadline {
        pause(Duration::from_millis(20));
    }
    assert_eq!(upstream.requests().len(), before + 1);
    upstream.set_body("small");
    // The stalled one is dropped within about two timeouts: its slot is
    // free again, and what it had not read is cut off.
    let again = served_within(gateway.addr, Duration::from_secs(6));
    assert!(
        again.is_some(),
        "a client that read nothing still holds the source's only slot"
    );
    stalled
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut taken = 0usize;
    while let Ok(n) = stalled.read(&mut chunk) {
        if n == 0 {
            break;
        }
        taken += n;
    }
    assert!(
        taken < 64 << 20,
        "the whole response went to a client that stalled"
    );
}
