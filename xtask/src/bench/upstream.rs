//! A raw keep-alive upstream that answers every request with the same 200
//! carrying nginx's header fields: the callgrind bench's and the PGO
//! training run's, where what is measured (or trained) is the proxy, not
//! the upstream.
use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{TcpListener, TcpStream},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

/// The upstream's port; it serves, a thread per connection, for the
/// process's lifetime.
pub(crate) struct Upstream {
    pub(crate) port: u16,
}

impl Upstream {
    pub(crate) fn start() -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                std::thread::spawn(move || serve(stream));
            }
        });
        Ok(Self { port })
    }
}

/// The header fields nginx answers `bench proxy` with (its `Date` fixed),
/// so a proxy handles here what it handles there: `Connection: keep-alive`
/// to strip among them.
pub(crate) const ANSWER: &[u8] = b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\n\
    Date: Tue, 01 Dec 2026 00:00:00 GMT\r\nContent-Type: text/plain\r\n\
    Content-Length: 2\r\nConnection: keep-alive\r\n\r\nok";

/// One upstream connection, until the proxy closes it: each request's
/// head, its `Content-Length` body skipped, then [`ANSWER`].
fn serve(stream: TcpStream) -> Result<()> {
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(3600) {
        let (_, length) = read_head(&mut reader)?;
        std::io::copy(&mut (&mut reader).take(length as u64), &mut std::io::sink())?;
        writer.write_all(ANSWER)?;
    }
    Ok(())
}

/// A response or request head: the status (0 for a request) and the
/// `Content-Length` (0 when absent).
pub(crate) fn read_head(reader: &mut BufReader<TcpStream>) -> Result<(u16, usize)> {
    let (mut status, mut length) = (0, 0);
    let mut line = String::new();
    for n in 0..200 {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            bail!("connection closed");
        }
        let text = line.trim_end();
        if text.is_empty() {
            return Ok((status, length));
        }
        if n == 0 {
            status = (text.split(' ').nth(1))
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
        } else if let Some((name, value)) = text.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                length = value.trim().parse().context("content-length")?;
            }
        }
    }
    bail!("a head of over 200 lines")
}
