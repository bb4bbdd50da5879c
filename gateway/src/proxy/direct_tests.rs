//! A bodiless request's own exchange against scripted upstreams: what is
//! kept, what is sent again, and framing an attacker-controlled upstream
//! could use to desynchronise a kept connection.
use http::{HeaderMap, Method};
use http_body_util::BodyExt;

use super::*;
use crate::proxy::test_upstream::{self, scripted};

const CONNECT: Duration = Duration::from_secs(5);
const IDLE: Duration = Duration::from_secs(90);
const OK: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";

fn request(method: Method, path: &str) -> Request<RequestBody> {
    let mut req = Request::new(RequestBody::empty());
    *req.method_mut() = method;
    *req.uri_mut() = path.parse().unwrap();
    req.headers_mut()
        .insert(header::HOST, "upstream".parse().unwrap());
    req
}

/// `method path` sent to `addr` with the test fields, as at `now`.
async fn call(
    addr: SocketAddr,
    method: Method,
    path: &str,
    now: Instant,
) -> Result<Response<DirectBody>, DirectError> {
    let req = request(method, path);
    send(addr, &req, &Added::for_tests(), CONNECT, IDLE, now).await
}

async fn get(
    addr: SocketAddr,
    path: &str,
    now: Instant,
) -> Result<Response<DirectBody>, DirectError> {
    call(addr, Method::GET, path, now).await
}

#[tokio::test(flavor = "current_thread")]
async fn the_gateways_fields_are_written_once_after_the_clients() {
    let (addr, upstream) = test_upstream::one_head();
    let response = get(addr, "/f", Instant::now()).await.unwrap();
    assert_eq!(read(response).await.0, "ok");
    test_upstream::assert_gateway_fields(&upstream.await.unwrap());
}

/// The body, and the trailers if any.
async fn read(response: Response<DirectBody>) -> (Bytes, Option<HeaderMap>) {
    let collected = response.into_body().collect().await.unwrap();
    let trailers = collected.trailers().cloned();
    (collected.to_bytes(), trailers)
}

fn kept(addr: SocketAddr) -> usize {
    KEPT.with_borrow(|kept| {
        let server = kept.servers.iter().find(|(a, _)| *a == addr);
        server.map_or(0, |(_, idle)| idle.len())
    })
}

/// Asserts `path` is answered "ok".
async fn ok(addr: SocketAddr, path: &str) {
    let response = get(addr, path, Instant::now()).await.unwrap();
    assert_eq!(read(response).await.0, "ok", "{path}");
}

/// The connection (its number) each request the upstream read came on.
async fn connections(upstream: tokio::task::JoinHandle<Vec<(usize, String)>>) -> Vec<usize> {
    upstream
        .await
        .unwrap()
        .into_iter()
        .map(|(c, _)| c)
        .collect()
}

/// Streamed bodies (not read ahead whole) are hyper's, and so are
/// upgrades: the e2e tests cover the first, the pool's tests the second.
#[test]
fn requests_read_whole_without_an_upgrade_go_this_way() {
    assert!(eligible(&request(Method::GET, "/")));
    let mut post = request(Method::POST, "/");
    *post.body_mut() = RequestBody::whole(b"x");
    assert!(eligible(&post));
    let mut upgrade = request(Method::GET, "/");
    let headers = upgrade.headers_mut();
    headers.insert(header::UPGRADE, "websocket".parse().unwrap());
    assert!(!eligible(&upgrade));
    assert!(!eligible(&request(Method::CONNECT, "/")));
}

/// Two requests on one connection; the upstream then closes it while it
/// is idle, and the third request takes a new one (a stale one taken
/// would have failed: it is not sent again so soon after its last use).
#[tokio::test(flavor = "current_thread")]
async fn a_kept_connection_is_reused_and_one_closed_while_idle_is_not_taken() {
    let (addr, upstream) = scripted(vec![vec![OK, OK], vec![OK]]);
    for path in ["/a", "/b"] {
        let response = get(addr, path, Instant::now()).await.unwrap();
        assert_eq!(read(response).await.0, "ok");
        assert_eq!(kept(addr), 1);
    }
    // The upstream closes after its second answer; let the runtime see it.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let response = get(addr, "/c", Instant::now()).await.unwrap();
    assert_eq!(read(response).await.0, "ok");
    let seen = upstream.await.unwrap();
    let lines: Vec<_> = seen.iter().map(|(c, l)| (*c, l.as_str())).collect();
    assert_eq!(
        lines,
        [
            (0, "GET /a HTTP/1.1"),
            (0, "GET /b HTTP/1.1"),
            (1, "GET /c HTTP/1.1")
        ]
    );
}

/// The keep-alive race: the upstream reads a request on a connection idle
/// a while and closes it unanswered. A GET goes again on a fresh one; a
/// POST does not (the close is its answer), and neither does a GET on a
/// connection used a moment ago.
#[tokio::test(flavor = "current_thread")]
async fn a_get_on_a_connection_the_upstream_closes_is_sent_again_a_post_is_not() {
    let (addr, upstream) = scripted(vec![vec![OK, b""], vec![OK, b""], vec![OK, b""]]);
    let t0 = Instant::now();
    assert_eq!(read(get(addr, "/1", t0).await.unwrap()).await.0, "ok");
    let later = t0 + Duration::from_secs(1);
    assert_eq!(read(get(addr, "/2", later).await.unwrap()).await.0, "ok");
    let post = request(Method::POST, "/3");
    let error = send(
        addr,
        &post,
        &Added::for_tests(),
        CONNECT,
        IDLE,
        later + Duration::from_secs(1),
    )
    .await;
    assert!(
        matches!(error, Err(DirectError::Unanswered)),
        "{:?}",
        error.err()
    );
    ok(addr, "/4").await;
    let soon = get(addr, "/5", Instant::now()).await;
    assert!(
        matches!(soon, Err(DirectError::Unanswered)),
        "{:?}",
        soon.err()
    );
    assert_eq!(connections(upstream).await, [0, 0, 1, 1, 2, 2]);
}

#[tokio::test(flavor = "current_thread")]
async fn a_refused_connect_is_a_connect_error() {
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let error = get(addr, "/", Instant::now()).await;
    assert!(
        matches!(error, Err(DirectError::Connect(_))),
        "{:?}",
        error.err()
    );
}

/// Chunked with an extension and trailers, a 1xx before a 204 that
/// claims a length, a HEAD's length: all read exactly, the connection
/// kept through them (after a bodiless answer's rest); a close-delimited
/// body is read to the end and its connection not kept.
#[tokio::test(flavor = "current_thread")]
async fn every_framing_is_read_exactly_and_kept_only_when_it_can_be() {
    let chunked: &[u8] = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n\
        3;ext=1\r\nabc\r\n2\r\nde\r\n0\r\nx-digest: 7\r\n\r\n";
    let early: &[u8] = b"HTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\n\
        HTTP/1.1 204 No Content\r\ncontent-length: 5\r\n\r\n";
    let head: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\n";
    let close: &[u8] = b"HTTP/1.1 200 OK\r\nconnection: close\r\n\r\nuntil the end";
    let (addr, upstream) = scripted(vec![vec![chunked, early, head, close], vec![OK]]);
    let (body, trailers) = read(get(addr, "/chunked", Instant::now()).await.unwrap()).await;
    assert_eq!(body, "abcde");
    assert_eq!(trailers.unwrap()["x-digest"], "7");
    let response = get(addr, "/early", Instant::now()).await.unwrap();
    assert_eq!(response.status(), 204);
    assert_eq!(read(response).await.0, "");
    rest().await;
    let response = call(addr, Method::HEAD, "/head", Instant::now())
        .await
        .unwrap();
    assert_eq!(response.headers()["content-length"], "10");
    assert_eq!(read(response).await.0, "");
    assert_eq!(kept(addr), 0, "resting");
    rest().await;
    assert_eq!(kept(addr), 1);
    let (body, _) = read(get(addr, "/close", Instant::now()).await.unwrap()).await;
    assert_eq!(body, "until the end");
    assert_eq!(kept(addr), 0);
    ok(addr, "/next").await;
    assert_eq!(connections(upstream).await, [0, 0, 0, 0, 1]);
}

/// What would leave a kept connection out of step with the upstream is
/// refused and the connection dropped: a body left unread, bytes past
/// the body, two lengths, a length beside chunked, an unasked 101.
#[tokio::test(flavor = "current_thread")]
async fn a_connection_out_of_step_is_never_kept() {
    let smuggled: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nokHTTP/1.1 200 OK\r\n\r\n";
    let two_lengths: &[u8] =
        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\ncontent-length: 3\r\n\r\nok!";
    let both: &[u8] =
        b"HTTP/1.1 200 OK\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n";
    let switch: &[u8] = b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\n\r\n";
    let (addr, upstream) = scripted(vec![
        vec![OK],
        vec![smuggled],
        vec![two_lengths],
        vec![both],
        vec![switch],
        vec![OK],
    ]);
    // Bytes after a body-less answer are as out of step as after a body.
    let stray: &[u8] = b"HTTP/1.1 204 No Content\r\n\r\nHTTP/1.1 200 OK\r\n\r\n";
    let (stray_addr, stray_upstream) = scripted(vec![vec![stray]]);
    let response = get(stray_addr, "/stray", Instant::now()).await.unwrap();
    assert_eq!(response.status(), 204);
    assert_eq!(kept(stray_addr), 0);
    assert_eq!(stray_upstream.await.unwrap().len(), 1);
    // Dropped before its body was read.
    drop(get(addr, "/unread", Instant::now()).await.unwrap());
    assert_eq!(kept(addr), 0);
    let (body, _) = read(get(addr, "/smuggled", Instant::now()).await.unwrap()).await;
    assert_eq!(body, "ok");
    assert_eq!(kept(addr), 0);
    for path in ["/two-lengths", "/both", "/switch"] {
        let error = get(addr, path, Instant::now()).await;
        assert!(
            matches!(error, Err(DirectError::Protocol(_))),
            "{path}: {:?}",
            error.err()
        );
        assert_eq!(kept(addr), 0);
    }
    ok(addr, "/last").await;
    assert_eq!(connections(upstream).await, [0, 1, 2, 3, 4, 5]);
}

/// A body cut short by the upstream is an error to the reader, not a
/// short body.
#[tokio::test(flavor = "current_thread")]
async fn a_body_cut_short_is_an_error() {
    let short: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nonly5";
    let (addr, upstream) = scripted(vec![vec![short]]);
    let response = get(addr, "/", Instant::now()).await.unwrap();
    let error = response.into_body().collect().await.err();
    assert!(
        matches!(error, Some(DirectError::Protocol(H1Error::Incomplete))),
        "{error:?}"
    );
    assert_eq!(upstream.await.unwrap().len(), 1);
    assert_eq!(kept(addr), 0);
}

/// The reaper closes connections idle for the idle timeout and stops
/// once none are kept.
#[tokio::test(flavor = "current_thread")]
async fn idle_connections_are_reaped() {
    // The upstream keeps the connection open (it waits for a second
    // request): only the idle timeout can close it.
    let (addr, upstream) = scripted(vec![vec![OK, OK]]);
    let idle = Duration::from_millis(50);
    let req = request(Method::GET, "/");
    let response = send(
        addr,
        &req,
        &Added::for_tests(),
        CONNECT,
        idle,
        Instant::now(),
    )
    .await
    .unwrap();
    assert_eq!(read(response).await.0, "ok");
    assert_eq!(kept(addr), 1);
    for _ in 0..100 {
        if !KEPT.with_borrow(|kept| kept.reaping) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(kept(addr), 0);
    assert!(!KEPT.with_borrow(|kept| kept.reaping));
    assert_eq!(upstream.await.unwrap().len(), 1);
}

/// The request line of the next head on a blocking `stream` ("" once it
/// is closed).
fn request_line(stream: &mut std::net::TcpStream) -> String {
    use std::io::Read;
    let mut head = Vec::new();
    let mut byte = [0; 1];
    while !head.ends_with(b"\r\n\r\n") && stream.read(&mut byte).unwrap_or(0) == 1 {
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).into_owned();
    head.split('\r').next().unwrap_or_default().to_owned()
}

const FORGED: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\nforged";

/// A buggy upstream's part after a bodiless request on `first`: `head`,
/// a whole forged answer `late` after it, the next request (`seen`)
/// answered on a second connection, then `first`'s end ("" once the
/// gateway closed it: nothing more came on it).
#[allow(clippy::disallowed_methods)] // the upstream's own thread
fn forge_then_serve(
    listener: &std::net::TcpListener,
    mut first: std::net::TcpStream,
    head: &[u8],
    late: Duration,
    seen: &mut Vec<String>,
) {
    use std::io::Write;
    first.write_all(head).unwrap();
    std::thread::sleep(late);
    first.write_all(FORGED).unwrap();
    let (mut second, _) = listener.accept().unwrap();
    seen.push(request_line(&mut second));
    second.write_all(OK).unwrap();
    seen.push(request_line(&mut first));
}

/// Past a bodiless answer's rest (and the event loop's turns in it).
async fn rest() {
    tokio::time::sleep(BODILESS_REST * 2).await;
}

/// A buggy upstream answers a HEAD (or a GET with a 204 or 304) and sends
/// a body anyway, a moment after the head, while the worker is busy: its
/// event loop has not seen the bytes come. The next request, another
/// client's, must not get them as its answer: it goes on a fresh
/// connection, and the first is dropped once its rest sees the bytes.
#[tokio::test(flavor = "current_thread")]
// Blocking the worker is the test: its event loop must not see the body.
#[allow(clippy::disallowed_methods)]
async fn a_body_sent_late_after_a_bodiless_response_never_answers_the_next_request() {
    for (method, status) in [
        (Method::HEAD, "200 OK"),
        (Method::GET, "204 No Content"),
        (Method::GET, "304 Not Modified"),
    ] {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let head = format!("HTTP/1.1 {status}\r\ncontent-length: 43\r\n\r\n");
        let upstream = std::thread::spawn(move || {
            let (mut first, _) = listener.accept().unwrap();
            let mut seen = vec![request_line(&mut first)];
            let late = Duration::from_millis(50);
            forge_then_serve(&listener, first, head.as_bytes(), late, &mut seen);
            seen
        });
        let response = call(addr, method.clone(), "/h", Instant::now())
            .await
            .unwrap();
        assert_eq!(read(response).await.0, "", "{status}");
        // The worker busy (its event loop not turning) as the body comes.
        std::thread::sleep(Duration::from_millis(300));
        let response = get(addr, "/private", Instant::now()).await.unwrap();
        assert_eq!(read(response).await.0, "ok", "{status}");
        rest().await;
        assert_eq!(kept(addr), 1, "{status}: the second alone");
        let seen = upstream.join().unwrap();
        assert_eq!(
            seen,
            [
                format!("{method} /h HTTP/1.1"),
                "GET /private HTTP/1.1".into(),
                String::new()
            ],
            "{status}"
        );
    }
}

/// The body written 5 ms after a 204 by an upstream with Nagle's
/// algorithm on (a plain socket's default): the kernel held it until the
/// 204 was acknowledged, and past a connection's first exchanges ACKs are
/// delayed or ride on the next segment out, which was the next client's
/// request, after the pool's check: that client got the forged answer,
/// and each client after it the previous one's (found by an attack on
/// the gateway, 30 of 30 answers wrong). A request right after the 204
/// goes on a fresh connection (the first rests), and the first, its ACK
/// sent at once, sees the body come and is dropped.
#[tokio::test(flavor = "current_thread")]
// The sleep is the upstream's, on its own thread.
#[allow(clippy::disallowed_methods)]
async fn a_body_held_back_until_a_204_is_acknowledged_never_answers_the_next_request() {
    use std::io::Write;
    // Exchanges first: a new connection acknowledges at once for a while.
    const WARM_UP: usize = 5;
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let upstream = std::thread::spawn(move || {
        let (mut first, _) = listener.accept().unwrap();
        let mut seen = Vec::new();
        for _ in 0..WARM_UP {
            seen.push(request_line(&mut first));
            first.write_all(OK).unwrap();
        }
        seen.push(request_line(&mut first));
        let head = b"HTTP/1.1 204 No Content\r\n\r\n";
        forge_then_serve(&listener, first, head, Duration::from_millis(5), &mut seen);
        seen
    });
    for _ in 0..WARM_UP {
        let response = get(addr, "/warm", Instant::now()).await.unwrap();
        assert_eq!(read(response).await.0, "ok");
    }
    let response = get(addr, "/nc", Instant::now()).await.unwrap();
    assert_eq!(read(response).await.0, "");
    let response = get(addr, "/private", Instant::now()).await.unwrap();
    assert_eq!(read(response).await.0, "ok");
    rest().await;
    assert_eq!(kept(addr), 1, "the second alone");
    let seen = upstream.join().unwrap();
    let mut expected = vec!["GET /warm HTTP/1.1"; WARM_UP];
    expected.extend(["GET /nc HTTP/1.1", "GET /private HTTP/1.1", ""]);
    assert_eq!(seen, expected);
}

/// A HEAD answered cleanly leaves its connection kept once rested:
/// closing it instead would let any client make the gateway open an
/// upstream connection per HEAD (each left in `TIME_WAIT`).
#[tokio::test(flavor = "current_thread")]
async fn a_heads_connection_is_kept_after_its_rest() {
    let head: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\n";
    let (addr, upstream) = scripted(vec![vec![head, OK]]);
    let response = call(addr, Method::HEAD, "/h", Instant::now())
        .await
        .unwrap();
    assert_eq!(read(response).await.0, "");
    assert_eq!(kept(addr), 0, "resting");
    rest().await;
    assert_eq!(kept(addr), 1);
    ok(addr, "/next").await;
    assert_eq!(connections(upstream).await, [0, 0]);
}
