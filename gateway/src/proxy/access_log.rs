//! The access log: one JSON line per request on stdout ([`AccessLog`] is
//! the line, [`request_id`] names the request). Request tasks only
//! append to a shared buffer (an uncontended mutex: no syscall, no thread
//! wake-up); one thread writes the buffer out every few milliseconds, so
//! under load many lines share one `write` and an idle log is at most one
//! interval behind.
use std::{
    io::Write,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex,
    },
    time::Duration,
};

/// How often the writer thread drains the buffer.
const INTERVAL: Duration = Duration::from_millis(20);
/// Bytes buffered before new lines are dropped (and counted) rather than
/// growing without bound behind a blocked stdout.
const MAX_BUFFERED: usize = 16 << 20;

#[derive(Clone)]
pub struct AccessLogger {
    buffer: Arc<Mutex<Vec<u8>>>,
    dropped: Arc<AtomicU64>,
}

impl AccessLogger {
    pub fn stdout() -> Self {
        let logger = Self {
            buffer: Arc::new(Mutex::new(Vec::with_capacity(1 << 16))),
            dropped: Arc::new(AtomicU64::new(0)),
        };
        let writer = logger.clone();
        std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || writer.write_forever())
            .map_err(|error| tracing::error!(%error, "cannot start the access-log thread"))
            .ok();
        logger
    }

    /// Appends one line (without its newline).
    pub fn log(&self, line: &[u8]) {
        let mut buffer = self
            .buffer
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if buffer.len() + line.len() >= MAX_BUFFERED {
            drop(buffer);
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        buffer.extend_from_slice(line);
        buffer.push(b'\n');
    }

    fn write_forever(&self) {
        let mut spare = Vec::with_capacity(1 << 16);
        let mut reported = 0;
        loop {
            #[allow(
                clippy::disallowed_methods,
                reason = "a dedicated thread, not a tokio worker"
            )]
            std::thread::sleep(INTERVAL);
            {
                let mut buffer = self
                    .buffer
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
                std::mem::swap(&mut *buffer, &mut spare);
            }
            if !spare.is_empty() {
                let mut out = std::io::stdout().lock();
                let _ = out.write_all(&spare);
                let _ = out.flush();
                spare.clear();
            }
            let dropped = self.dropped.load(Ordering::Relaxed);
            if dropped != reported {
                tracing::warn!(
                    dropped = dropped - reported,
                    "access-log lines dropped: stdout is not keeping up"
                );
                reported = dropped;
            }
        }
    }
}

/// One access-log line.
#[derive(serde::Serialize, Default)]
pub(super) struct AccessLog {
    pub(super) ts: u64,
    pub(super) request_id: String,
    pub(super) peer: String,
    pub(super) method: String,
    /// Path only: the query may hold a credential.
    pub(super) path: String,
    pub(super) route: Option<String>,
    pub(super) client_id: Option<String>,
    pub(super) key_id: Option<String>,
    /// Issuer of the JWT that authenticated the request.
    pub(super) issuer: Option<String>,
    pub(super) tier: Option<String>,
    pub(super) status: u16,
    pub(super) upstream: Option<String>,
    pub(super) latency_ms: f64,
    pub(super) error: Option<&'static str>,
    /// Why a credential was refused, precisely (the client sees less).
    pub(super) detail: Option<&'static str>,
    pub(super) blame: Option<super::error::Blame>,
    /// For metrics: the route's and tier's positions in the configuration.
    #[serde(skip)]
    pub(super) route_index: Option<usize>,
    #[serde(skip)]
    pub(super) tier_rank: Option<usize>,
    /// The limit phase's answer, for the headers of a later error response.
    #[serde(skip)]
    pub(super) limit: Option<crate::limits::Decision>,
}

/// The client's `X-Request-Id` if it is sane, else a fresh one: a random
/// per-process prefix and a counter, unique without a syscall per request.
pub(super) fn request_id(headers: &http::HeaderMap) -> String {
    if let Some(id) = headers
        .get(&super::forward::X_REQUEST_ID)
        .and_then(|v| v.to_str().ok())
    {
        if !id.is_empty() && id.len() <= 128 && id.bytes().all(|b| b.is_ascii_graphic()) {
            return id.to_owned();
        }
    }
    static PREFIX: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let prefix = *PREFIX.get_or_init(|| {
        let mut bytes = [0u8; 8];
        if getrandom::fill(&mut bytes).is_err() {
            return crate::clock::monotonic_ns() ^ u64::from(std::process::id());
        }
        u64::from_be_bytes(bytes)
    });
    let count = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{prefix:016x}{count:016x}")
}
