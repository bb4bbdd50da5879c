//! The per-worker upstream pool's tests (hyper's path): reuse, a bounded
//! take, the keep-alive race.
use http::Method;
use tokio::io::AsyncWriteExt;

use super::*;
use crate::proxy::test_upstream::read_head;

thread_local! {
    /// Busy connections `promote` looked at on this thread.
    pub(super) static LOOKED_AT: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

#[tokio::test(flavor = "current_thread")]
async fn the_gateways_fields_are_inserted_once() {
    let (addr, upstream) = crate::proxy::test_upstream::one_head();
    let response = send_get(addr, Instant::now()).await.unwrap();
    assert_eq!(response.status(), 200);
    crate::proxy::test_upstream::assert_gateway_fields(&upstream.await.unwrap());
}

/// [`get`] sent to `addr` at `now`, with the test client's fields.
async fn send_get(addr: SocketAddr, now: Instant) -> Result<Response<UpstreamBody>, SendError> {
    send(addr, get(addr), Added::for_tests(), timeouts(), now).await
}

fn timeouts() -> Timeouts {
    Timeouts {
        connect: Duration::from_secs(5),
        idle: Duration::from_secs(90),
    }
}

/// A request to `addr` with an empty body that asks for an upgrade: it
/// goes through hyper's client, not [`direct`] (which has its own tests).
fn get(addr: SocketAddr) -> Request<RequestBody> {
    Request::builder()
        .uri("/x")
        .header(http::header::HOST, addr.to_string())
        .header(http::header::UPGRADE, "websocket")
        .body(RequestBody::empty())
        .unwrap()
}

#[tokio::test(flavor = "current_thread")]
async fn a_connection_is_reused_and_one_the_upstream_closed_is_replaced() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (closed, mut on_closed) = tokio::sync::oneshot::channel();
    let upstream = tokio::spawn(async move {
        // The first connection answers two requests, then is closed;
        // the second answers one.
        let mut accepted = 0;
        let mut closed = Some(closed);
        for answers in [2, 1] {
            let (mut stream, _) = listener.accept().await.unwrap();
            accepted += 1;
            for _ in 0..answers {
                assert!(read_head(&mut stream).await.is_some());
                stream
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                    .await
                    .unwrap();
            }
            drop(stream);
            if let Some(closed) = closed.take() {
                let _ = closed.send(());
            }
        }
        accepted
    });
    for i in 0..3 {
        if i == 2 {
            (&mut on_closed).await.unwrap();
            // Time for the connection task to read the close.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let response = send_get(addr, Instant::now()).await.unwrap();
        assert_eq!(response.status(), 200);
        let body = http_body_util::BodyExt::collect(response.into_body()).await;
        assert_eq!(&body.unwrap().to_bytes()[..], b"ok");
    }
    assert_eq!(upstream.await.unwrap(), 2);
}

/// A connection that answered a 204, a 304 or a HEAD carries no other
/// request (a buggy upstream's body sent after such a head would be the
/// next one's answer): each request after one goes on a fresh connection,
/// while a 200's connection is reused.
#[tokio::test(flavor = "current_thread")]
async fn a_connection_that_answered_a_bodiless_response_is_not_reused() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let answers: [&[u8]; 4] = [
        b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok",
        b"HTTP/1.1 204 No Content\r\n\r\n",
        b"HTTP/1.1 304 Not Modified\r\n\r\n",
        b"HTTP/1.1 200 OK\r\ncontent-length: 6\r\n\r\n",
    ];
    // Answers in turn, on whatever connection each request comes; the
    // connection each came on.
    let upstream = tokio::spawn(async move {
        let mut conns: Vec<tokio::net::TcpStream> = Vec::new();
        let mut seen = Vec::new();
        for answer in [answers[0], answers[1], answers[2], answers[3], answers[0]] {
            let (i, _) = loop {
                let ready = conns.iter_mut().enumerate().find_map(|(i, c)| {
                    let mut byte = [0u8; 1];
                    matches!(c.try_read(&mut byte), Ok(1)).then_some((i, byte[0]))
                });
                if let Some(found) = ready {
                    break found;
                }
                tokio::select! {
                    accepted = listener.accept() => conns.push(accepted.unwrap().0),
                    () = tokio::time::sleep(Duration::from_millis(2)) => {}
                }
            };
            assert!(read_head(&mut conns[i]).await.is_some());
            conns[i].write_all(answer).await.unwrap();
            seen.push(i);
        }
        seen
    });
    let methods = [
        Method::GET,
        Method::GET,
        Method::GET,
        Method::HEAD,
        Method::GET,
    ];
    for method in methods {
        let mut req = get(addr);
        *req.method_mut() = method;
        let response = send(addr, req, Added::for_tests(), timeouts(), Instant::now())
            .await
            .unwrap();
        let body = http_body_util::BodyExt::collect(response.into_body()).await;
        assert!(body.unwrap().to_bytes().len() <= 2);
        if KEPT.with_borrow(|kept| !kept.servers.is_empty()) {
            until_ready_or_gone().await;
        }
    }
    // The 200 on connection 0 is followed by the 204 on it; every request
    // after a 204, 304 or HEAD opens its own.
    assert_eq!(upstream.await.unwrap(), [0, 0, 1, 2, 3]);
}

/// hyper calls a bodiless exchange done with its head, possibly before
/// the request's task has judged it: until then the connection is not
/// ready for anyone; an exchange dropped before (the client gone) retires
/// it rather than leave it waiting.
#[tokio::test(flavor = "current_thread")]
async fn a_connection_is_ready_only_once_its_head_is_judged() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepted = tokio::spawn(async move { listener.accept().await.unwrap().0 });
    let sender = connect(addr, timeouts().connect).await.unwrap();
    let _stream = accepted.await.unwrap();
    assert!(sender.is_ready() && !sender.is_closed());
    sender.state.store(AWAITING_HEAD, Relaxed);
    assert!(!sender.is_ready() && !sender.is_closed());
    drop(UntilJudged(sender.state.clone()));
    assert!(sender.is_closed() && !sender.is_ready());
    // Judged first, the guard leaves it as judged.
    sender.state.store(OPEN, Relaxed);
    drop(UntilJudged(sender.state.clone()));
    assert!(sender.is_ready() && !sender.is_closed());
}

/// Waits (bounded) until this thread's kept connection is ready again or
/// dropped.
async fn until_ready_or_gone() {
    for _ in 0..5000 {
        let settled = KEPT.with_borrow_mut(|kept| {
            let Some(server) = kept.servers.first_mut() else {
                return true;
            };
            server.promote(server.busy.len());
            server.busy.is_empty()
        });
        if settled {
            return;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    panic!("the kept connection never settled");
}

/// Waits (bounded) until this thread's kept connection is ready again.
async fn until_ready() {
    for _ in 0..5000 {
        let ready = KEPT.with_borrow(|kept| {
            (kept.servers.first()).is_some_and(|s| s.busy.iter().any(|(c, _)| c.is_ready()))
        });
        if ready {
            return;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    panic!("the kept connection never became ready");
}

/// The keep-alive race: the upstream closes a connection idle for a
/// while just as the next request arrives (read, never answered). A
/// bodiless GET goes again on a fresh connection (it was a 502); a
/// POST does not.
#[tokio::test(flavor = "current_thread")]
async fn a_get_on_a_connection_the_upstream_closes_is_sent_again() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    // Each connection answers one request, then reads one and closes.
    let upstream = tokio::spawn(async move {
        let mut heads = Vec::new();
        for connection in 0..2 {
            let (mut stream, _) = listener.accept().await.unwrap();
            for answered in [true, false] {
                if read_head(&mut stream).await.is_none() {
                    break;
                }
                heads.push(connection);
                if answered {
                    stream
                        .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                        .await
                        .unwrap();
                }
            }
        }
        heads
    });
    let t0 = Instant::now();
    let first = send_get(addr, t0).await.unwrap();
    let body = http_body_util::BodyExt::collect(first.into_body()).await;
    assert_eq!(&body.unwrap().to_bytes()[..], b"ok");
    until_ready().await;
    // Idle a second (as the pool sees it) when the upstream closes it.
    let later = t0 + Duration::from_secs(1);
    let again = send_get(addr, later).await.unwrap();
    assert_eq!(again.status(), 200);
    let body = http_body_util::BodyExt::collect(again.into_body()).await;
    assert_eq!(&body.unwrap().to_bytes()[..], b"ok");
    until_ready().await;
    // A POST is not idempotent: the upstream's close is the answer.
    let mut post = get(addr);
    *post.method_mut() = Method::POST;
    let error = send(
        addr,
        post,
        Added::for_tests(),
        timeouts(),
        later + Duration::from_secs(1),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(&error, SendError::Request(e) if e.is_incomplete_message()),
        "{error:?}"
    );
    // Connection 0 saw the GET twice (answered, then closed under the
    // second, which connection 1 answered), connection 1 the POST.
    assert_eq!(upstream.await.unwrap(), [0, 0, 1, 1]);
}

#[tokio::test(flavor = "current_thread")]
async fn a_refused_connect_is_a_connect_error() {
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let error = send_get(addr, Instant::now()).await.unwrap_err();
    assert!(matches!(error, SendError::Connect(_)), "{error:?}");
}

/// A hung upstream with many requests in flight: each take looks at a
/// bounded number of them (it scanned them all: CPU per request grew
/// with the requests in flight), and a connection that finished behind
/// them is still found.
#[tokio::test(flavor = "current_thread")]
async fn a_take_looks_at_a_bounded_number_of_busy_connections() {
    const IN_FLIGHT: usize = 64;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    // Answers the first connection's first request; the rest hang.
    let upstream = tokio::spawn(async move {
        let mut held = Vec::new();
        for i in 0..IN_FLIGHT {
            let (mut stream, _) = listener.accept().await.unwrap();
            assert!(read_head(&mut stream).await.is_some());
            if i == 0 {
                stream
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok")
                    .await
                    .unwrap();
            }
            held.push(stream);
        }
        held
    });
    let first = send_get(addr, Instant::now()).await.unwrap();
    let body = http_body_util::BodyExt::collect(first.into_body()).await;
    assert_eq!(&body.unwrap().to_bytes()[..], b"ok");
    // IN_FLIGHT hung requests: the first reuses the finished
    // connection, each other one opens its own.
    let hung: Vec<_> = (0..IN_FLIGHT)
        .map(|_| tokio::spawn(send_get(addr, Instant::now())))
        .collect();
    let held = upstream.await.unwrap();
    assert_eq!(held.len(), IN_FLIGHT);
    let busy = KEPT.with_borrow(|kept| kept.servers[0].busy.len());
    assert_eq!(
        busy, IN_FLIGHT,
        "every in-flight request holds its connection"
    );
    LOOKED_AT.with(|n| n.set(0));
    let takes = 20;
    for _ in 0..takes {
        assert!(
            take(addr, Instant::now(), timeouts().idle).is_none(),
            "all busy: nothing to take"
        );
    }
    let looked = LOOKED_AT.with(|n| n.get());
    // Less than a scan of every busy one per take (what it did), and
    // within the stated bound.
    assert!(
        looked < takes * IN_FLIGHT && looked <= takes.saturating_mul(PROMOTE_PER_TAKE),
        "{takes} takes looked at {looked} busy connections"
    );
    for task in hung {
        task.abort();
    }
}
