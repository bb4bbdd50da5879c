//! A scripted upstream for the upstream exchange tests: each connection
//! it accepts answers its list of replies, one per request head read, in
//! order, then is closed. An empty reply: the head is read, never
//! answered, and the connection closed (the keep-alive race).
use std::net::SocketAddr;

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    task::JoinHandle,
};

/// Reads one request head from `stream`; its request line, or `None` at
/// the connection's end.
pub async fn read_head(stream: &mut TcpStream) -> Option<String> {
    let head = read_whole_head(stream).await?;
    head.split('\r').next().map(str::to_owned)
}

/// Reads one request head from `stream`, whole; `None` at the
/// connection's end.
async fn read_whole_head(stream: &mut TcpStream) -> Option<String> {
    let mut head = Vec::new();
    let mut byte = [0; 1];
    while !head.ends_with(b"\r\n\r\n") && head.len() < 8192 {
        match stream.read(&mut byte).await {
            Ok(1) => head.push(byte[0]),
            _ => return None,
        }
    }
    Some(String::from_utf8_lossy(&head).into_owned())
}

/// Answers one request with a 200 and yields its head, whole.
pub fn one_head() -> (SocketAddr, JoinHandle<String>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    listener.set_nonblocking(true).unwrap();
    let task = tokio::spawn(async move {
        let listener = TcpListener::from_std(listener).unwrap();
        let (mut stream, _) = listener.accept().await.unwrap();
        let head = read_whole_head(&mut stream).await.unwrap_or_default();
        let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
        stream.write_all(ok).await.unwrap();
        head
    });
    (addr, task)
}

/// Asserts the fields of [`super::rewrite::Added::for_tests`] are in
/// `head` once each, after the client's `host`.
pub fn assert_gateway_fields(head: &str) {
    let at = |field: &str| {
        assert_eq!(head.matches(field).count(), 1, "{field:?} once in {head:?}");
        head.find(field).unwrap()
    };
    let host = at("\r\nhost: ");
    for field in [
        "\r\nx-client-id: cl_test\r\n",
        "\r\nx-client-tier: gold\r\n",
        "\r\nx-request-id: test-request\r\n",
        "\r\ntraceparent: 00-",
        "\r\nx-forwarded-for: 192.0.2.1\r\n",
        "\r\nx-forwarded-proto: http\r\n",
    ] {
        assert!(at(field) > host, "{field:?} after the client's in {head:?}");
    }
}

/// Serves `connections` (replies per connection) in turn; yields the
/// (connection, request line) of every request read.
pub fn scripted(
    connections: Vec<Vec<&'static [u8]>>,
) -> (SocketAddr, JoinHandle<Vec<(usize, String)>>) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    listener.set_nonblocking(true).unwrap();
    let task = tokio::spawn(async move {
        let listener = TcpListener::from_std(listener).unwrap();
        let mut seen = Vec::new();
        for (index, replies) in connections.into_iter().enumerate() {
            let (mut stream, _) = listener.accept().await.unwrap();
            for reply in replies {
                let Some(line) = read_head(&mut stream).await else {
                    break;
                };
                seen.push((index, line));
                if reply.is_empty() {
                    break;
                }
                stream.write_all(reply).await.unwrap();
            }
        }
        seen
    });
    (addr, task)
}
