//! HTTP test support: a fake upstream that records what it received and a
//! minimal HTTP/1.1 client. Loopback only; every wait is bounded.
use std::{
    collections::BTreeMap,
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    sync::{
        atomic::{AtomicBool, AtomicU16, AtomicUsize, Ordering},
        Arc, Mutex,
    },
    thread,
    time::Duration,
};

/// What the upstream saw: method, target (path and query), headers
/// (lower-case names, values joined by ", ").
#[derive(Clone, Debug)]
pub struct Seen {
    pub method: String,
    pub target: String,
    pub headers: BTreeMap<String, String>,
}

impl Seen {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }
}

/// A plain HTTP/1.1 server on 127.0.0.1:0 that answers 200 "upstream-ok"
/// (after `delay`, if set) and records every request.
pub struct FakeUpstream {
    pub addr: SocketAddr,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    /// What every response carries (default "upstream-ok"); tests may
    /// change it, e.g. to serve a JWKS that rotates.
    pub body: Arc<Mutex<String>>,
    /// The status every response carries (default 200).
    pub status: Arc<AtomicU16>,
    /// Connections accepted and not yet closed by either side.
    open: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
}

impl FakeUpstream {
    pub fn start(delay: Option<Duration>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let body = Arc::new(Mutex::new(String::from("upstream-ok")));
        let status = Arc::new(AtomicU16::new(200));
        let stop = Arc::new(AtomicBool::new(false));
        let open = Arc::new(AtomicUsize::new(0));
        let (log, flag, served) = (seen.clone(), stop.clone(), (body.clone(), status.clone()));
        let counted = open.clone();
        thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let (log, served, open) = (log.clone(), served.clone(), counted.clone());
                        open.fetch_add(1, Ordering::Relaxed);
                        thread::spawn(move || {
                            serve_one(stream, &log, &served.0, &served.1, delay);
                            open.fetch_sub(1, Ordering::Relaxed);
                        });
                    }
                    Err(_) => pause(Duration::from_millis(5)),
                }
            }
        });
        Self {
            addr,
            seen,
            body,
            status,
            open,
            stop,
        }
    }

    /// Connections open now (a kept-alive one counts until either side
    /// closes it).
    pub fn open_connections(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    pub fn set_status(&self, status: u16) {
        self.status.store(status, Ordering::Relaxed);
    }

    pub fn set_body(&self, body: &str) {
        *self.body.lock().unwrap() = body.to_owned();
    }

    pub fn requests(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for FakeUpstream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

pub fn pause(duration: Duration) {
    #[allow(clippy::disallowed_methods, reason = "plain threads, not async")]
    thread::sleep(duration);
}

fn serve_one(
    stream: TcpStream,
    log: &Mutex<Vec<Seen>>,
    served: &Mutex<String>,
    status: &AtomicU16,
    delay: Option<Duration>,
) {
    stream.set_nonblocking(false).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut stream = stream;
    // Keep-alive: the gateway's pool may send several requests on one connection.
    while let Some((head, headers, body_len)) = read_head(&mut reader) {
        let mut body = vec![0; body_len];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        let mut parts = head.split_whitespace();
        let method = parts.next().unwrap_or_default().to_owned();
        let target = parts.next().unwrap_or_default().to_owned();
        log.lock().unwrap().push(Seen {
            method,
            target,
            headers,
        });
        if let Some(delay) = delay {
            pause(delay);
        }
        let body = served.lock().unwrap().clone();
        let response = format!(
            "HTTP/1.1 {} Fake\r\ncontent-length: {}\r\nx-upstream: fake\r\nconnection: keep-alive\r\n\r\n{body}",
            status.load(Ordering::Relaxed),
            body.len()
        );
        if stream.write_all(response.as_bytes()).is_err() {
            return;
        }
    }
}

type Head = (String, BTreeMap<String, String>, usize);

fn read_head(reader: &mut impl BufRead) -> Option<Head> {
    let mut start = String::new();
    if reader.read_line(&mut start).ok()? == 0 {
        return None;
    }
    let mut headers: BTreeMap<String, String> = BTreeMap::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).ok()? == 0 {
            return None;
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            let entry = headers.entry(name.trim().to_ascii_lowercase()).or_default();
            if !entry.is_empty() {
                entry.push_str(", ");
            }
            entry.push_str(value.trim());
        }
    }
    let body_len = headers
        .get("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    Some((start.trim_end().to_owned(), headers, body_len))
}

/// A response as the client saw it.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: BTreeMap<String, String>,
    pub body: String,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", self.body))
    }
}

/// Sends one HTTP/1.1 request (`Connection: close`) and reads the reply.
pub fn request(addr: SocketAddr, method: &str, target: &str, headers: &[(&str, &str)]) -> Reply {
    request_with_body(addr, method, target, headers, "")
}

/// [`request`] with a body (pass its content-type in `headers`).
pub fn request_with_body(
    addr: SocketAddr,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> Reply {
    let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).unwrap();
    exchange(
        stream,
        Duration::from_secs(15),
        addr,
        method,
        target,
        headers,
        body,
    )
    .unwrap()
}

/// A GET from a chosen `source` address; `Err` if the connection cannot be
/// made within `timeout`, a read of the reply waits longer than `timeout`
/// (at least 2 s, which a loaded machine may take; a ban the tests use it
/// against lasts longer), or it breaks (a dropped source). A failed connection is aborted: were it left to close,
/// the kernel would go on retransmitting a dropped request and deliver it
/// once a ban expires, as a request the test never meant.
pub fn get_from(
    source: std::net::IpAddr,
    addr: SocketAddr,
    target: &str,
    headers: &[(&str, &str)],
    timeout: Duration,
) -> std::io::Result<Reply> {
    let socket = socket2::Socket::new(
        socket2::Domain::for_address(addr),
        socket2::Type::STREAM,
        None,
    )?;
    socket.bind(&SocketAddr::new(source, 0).into())?;
    socket.connect_timeout(&addr.into(), timeout)?;
    let reply = exchange(
        socket.try_clone()?.into(),
        timeout.max(Duration::from_secs(2)),
        addr,
        "GET",
        target,
        headers,
        "",
    );
    if reply.is_err() {
        socket.set_linger(Some(Duration::ZERO))?;
    }
    reply
}

fn exchange(
    mut stream: TcpStream,
    reply_within: Duration,
    addr: SocketAddr,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> std::io::Result<Reply> {
    stream.set_read_timeout(Some(reply_within))?;
    let mut text = format!("{method} {target} HTTP/1.1\r\nhost: {addr}\r\nconnection: close\r\n");
    for (name, value) in headers {
        text.push_str(&format!("{name}: {value}\r\n"));
    }
    text.push_str(&format!("content-length: {}\r\n\r\n{body}", body.len()));
    stream.write_all(text.as_bytes())?;
    let mut reader = BufReader::new(stream);
    let (status_line, headers, len) = read_head(&mut reader)
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "no response"))?;
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let mut body = Vec::new();
    if headers.contains_key("content-length") {
        body.resize(len, 0);
        reader.read_exact(&mut body)?;
    } else {
        let _ = reader.read_to_end(&mut body);
    }
    Ok(Reply {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    })
}

/// The base most end-to-end configs share: tiers bronze (3 per minute) and
/// gold (1000 per minute), and the pool `app` at `upstream`; tests add
/// their routes after it.
pub fn tiers_and_app(upstream: SocketAddr) -> String {
    format!(
        "[[tiers]]\nname = \"bronze\"\nrequests = 3\nwindow = \"60s\"\n\n\
         [[tiers]]\nname = \"gold\"\nrequests = 1000\n\n\
         [[upstreams]]\nname = \"app\"\nservers = [\"{upstream}\"]\n"
    )
}

/// [`tiers_and_app`] with two routes to `app`: host `admin.example` needs
/// an API key, any other host none. The setting where a host spelt so
/// that the gateway and an upstream read it apart is an auth bypass.
pub fn protected_host_and_open_routes(upstream: SocketAddr) -> String {
    format!(
        "{}\n[[routes]]\nhost = \"admin.example\"\npath_prefix = \"/\"\nupstream = \"app\"\n\
         auth = \"api_key\"\n\n[[routes]]\npath_prefix = \"/\"\nupstream = \"app\"\nauth = \"none\"\n",
        tiers_and_app(upstream)
    )
}

/// A WebSocket upstream: answers each upgrade (up to 4 connections, one
/// at a time) with 101, records the request head (lower-case), then echoes
/// until the gateway closes or 30 s pass without a byte; `closed` turns
/// true once a tunnel has ended.
pub struct EchoUpgrade {
    pub addr: SocketAddr,
    pub head: Arc<Mutex<String>>,
    pub closed: Arc<AtomicBool>,
}

impl EchoUpgrade {
    pub fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let (head, closed) = (
            Arc::new(Mutex::new(String::new())),
            Arc::new(AtomicBool::new(false)),
        );
        let (seen, ended) = (head.clone(), closed.clone());
        thread::spawn(move || {
            for stream in listener.incoming().take(4) {
                let Ok(mut stream) = stream else { continue };
                let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut text = String::new();
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                    text.push_str(&line.to_ascii_lowercase());
                }
                *seen.lock().unwrap() = text;
                let switched = b"HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\n\r\n";
                if stream.write_all(switched).is_err() {
                    continue;
                }
                let mut buf = [0u8; 64];
                while let Ok(n) = reader.read(&mut buf) {
                    if n == 0 || stream.write_all(&buf[..n]).is_err() {
                        break;
                    }
                }
                ended.store(true, Ordering::SeqCst);
            }
        });
        Self { addr, head, closed }
    }
}

/// What a [`ScriptedUpstream`] does with a request it read.
pub enum Script {
    /// Writes these bytes (a whole response) and keeps the connection.
    Answer(String),
    /// Closes the connection without a byte of answer.
    Close,
}

/// A plain HTTP/1.1 upstream that does with each request what `script`
/// says, given the connection's number and the request's number on it
/// (both from 0) and the request: answers raw bytes, or closes. Records
/// each request with its connection's number. Bodies are not read (the
/// tests send none).
pub struct ScriptedUpstream {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<(usize, Seen)>>>,
    stop: Arc<AtomicBool>,
}

type ScriptFn = dyn Fn(usize, usize, &Seen) -> Script + Send + Sync;

impl ScriptedUpstream {
    pub fn start(script: impl Fn(usize, usize, &Seen) -> Script + Send + Sync + 'static) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let (seen, stop) = (Arc::default(), Arc::new(AtomicBool::new(false)));
        let (log, flag) = (Arc::clone(&seen), stop.clone());
        let script: Arc<ScriptFn> = Arc::new(script);
        thread::spawn(move || {
            let mut connections = 0;
            while !flag.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, _)) => {
                        let (log, script) = (Arc::clone(&log), script.clone());
                        let connection = connections;
                        connections += 1;
                        thread::spawn(move || play(stream, connection, &log, &*script));
                    }
                    Err(_) => pause(Duration::from_millis(5)),
                }
            }
        });
        Self { addr, seen, stop }
    }

    /// Every request so far, with the number of the connection it came on.
    pub fn requests(&self) -> Vec<(usize, Seen)> {
        self.seen.lock().unwrap().clone()
    }
}

impl Drop for ScriptedUpstream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn play(stream: TcpStream, connection: usize, log: &Mutex<Vec<(usize, Seen)>>, script: &ScriptFn) {
    stream.set_nonblocking(false).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut stream = stream;
    let mut number = 0;
    while let Some((head, headers, _)) = read_head(&mut reader) {
        let mut parts = head.split_whitespace();
        let seen = Seen {
            method: parts.next().unwrap_or_default().to_owned(),
            target: parts.next().unwrap_or_default().to_owned(),
            headers,
        };
        let action = script(connection, number, &seen);
        log.lock().unwrap().push((connection, seen));
        number += 1;
        match action {
            Script::Answer(bytes) if stream.write_all(bytes.as_bytes()).is_ok() => {}
            _ => return,
        }
    }
}
