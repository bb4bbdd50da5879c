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
    let mut head = Vec::new();
    let mut byte = [0; 1];
    while !head.ends_with(b"\r\n\r\n") && head.len() < 8192 {
        match stream.read(&mut byte).await {
            Ok(1) => head.push(byte[0]),
            _ => return None,
        }
    }
    let line = head.split(|b| *b == b'\r').next().unwrap_or_default();
    Some(String::from_utf8_lossy(line).into_owned())
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
