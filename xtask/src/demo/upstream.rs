//! The demo upstream `cargo xtask run` starts: a tiny HTTP/1.1 server that
//! answers every request with JSON showing what the gateway forwarded (the
//! identity headers it set), so a newcomer's first request gets a 200 that
//! explains itself. A demo only: not part of the gateway, one thread per
//! connection, at most [`MAX_CONNECTIONS`] at once.
use std::{
    io::{self, BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    thread,
    time::Duration,
};

/// Connections served at once; more are closed.
const MAX_CONNECTIONS: usize = 64;
/// A request head larger than this closes the connection.
const MAX_HEAD: usize = 16 * 1024;
/// Request bodies are read and dropped, up to this.
const MAX_BODY: u64 = 1024 * 1024;
/// An idle keep-alive connection is closed after this.
const IDLE: Duration = Duration::from_secs(30);
/// The headers echoed back: what the gateway sets (`[forwarding]` defaults).
const ECHOED: [(&str, &str); 5] = [
    ("client_id", "x-client-id"),
    ("client_tier", "x-client-tier"),
    ("request_id", "x-request-id"),
    ("forwarded_for", "x-forwarded-for"),
    ("forwarded_proto", "x-forwarded-proto"),
];

/// The demo upstream, serving on its own thread until the process ends.
pub struct Upstream {
    pub addr: SocketAddr,
}

impl Upstream {
    /// Binds `addr` (in the calling thread's network namespace) and serves.
    pub fn start(addr: SocketAddr) -> io::Result<Self> {
        let listener = TcpListener::bind(addr)?;
        let addr = listener.local_addr()?;
        let open = Arc::new(AtomicUsize::new(0));
        thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                if open.fetch_add(1, Ordering::Relaxed) >= MAX_CONNECTIONS {
                    open.fetch_sub(1, Ordering::Relaxed);
                    continue;
                }
                let open = open.clone();
                thread::spawn(move || {
                    let _ = serve(stream);
                    open.fetch_sub(1, Ordering::Relaxed);
                });
            }
        });
        Ok(Self { addr })
    }
}

/// Answers requests on one connection until it closes or errs.
fn serve(stream: TcpStream) -> io::Result<()> {
    stream.set_read_timeout(Some(IDLE))?;
    let mut writer = stream.try_clone()?;
    let mut reader = BufReader::new(stream);
    loop {
        let Some(request) = read_head(&mut reader)? else {
            return Ok(());
        };
        // Read and drop the body (the gateway re-frames with Content-Length
        // or chunked; the demo answers only to Content-Length).
        let length = request
            .header("content-length")
            .and_then(|v| v.parse().ok());
        if length.is_some_and(|n: u64| n > MAX_BODY) {
            return Ok(());
        }
        io::copy(
            &mut (&mut reader).take(length.unwrap_or(0)),
            &mut io::sink(),
        )?;
        let body = request.json().to_string() + "\n";
        write!(
            writer,
            "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        )?;
        if request
            .header("connection")
            .is_some_and(|v| v.eq_ignore_ascii_case("close"))
        {
            return Ok(());
        }
    }
}

struct Request {
    method: String,
    target: String,
    headers: Vec<(String, String)>,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        (self.headers.iter())
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// What the newcomer sees: the request as it arrived, and who the
    /// gateway said the client is. Never a credential (the gateway strips
    /// them, and only the identity headers are echoed anyway).
    fn json(&self) -> serde_json::Value {
        let mut body = serde_json::json!({
            "hello": "from the demo upstream behind the gateway",
            "method": self.method,
            "path": self.target.split('?').next().unwrap_or_default(),
        });
        for (field, header) in ECHOED {
            if let Some(value) = self.header(header) {
                body[field] = value.into();
            }
        }
        body
    }
}

/// The next request's line and headers; `None` at a clean end of stream.
fn read_head(reader: &mut impl BufRead) -> io::Result<Option<Request>> {
    let mut lines = Vec::new();
    let mut size = 0;
    loop {
        let mut line = String::new();
        let n = reader
            .by_ref()
            .take((MAX_HEAD - size) as u64 + 1)
            .read_line(&mut line)?;
        size += n;
        if n == 0 {
            if lines.is_empty() {
                return Ok(None);
            }
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        if size > MAX_HEAD {
            return Err(io::ErrorKind::InvalidData.into());
        }
        let line = line.trim_end_matches(['\r', '\n']).to_owned();
        if line.is_empty() {
            break;
        }
        lines.push(line);
    }
    let mut parts = lines.first().map(|l| l.split(' ')).into_iter().flatten();
    let (Some(method), Some(target)) = (parts.next(), parts.next()) else {
        return Err(io::ErrorKind::InvalidData.into());
    };
    let headers = (lines.iter().skip(1))
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_owned(), v.trim().to_owned()))
        .collect();
    Ok(Some(Request {
        method: method.to_owned(),
        target: target.to_owned(),
        headers,
    }))
}
