//! The access-log writer: one JSON line per request on stdout (the proxy
//! builds the line). Request tasks only
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

    /// Appends the line `write` writes (without its newline) straight into
    /// the buffer: no line of its own to allocate and copy.
    pub fn log_with(&self, write: impl FnOnce(&mut Vec<u8>)) {
        let mut buffer = self
            .buffer
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let start = buffer.len();
        write(&mut buffer);
        if buffer.len() >= MAX_BUFFERED {
            buffer.truncate(start);
            drop(buffer);
            self.dropped.fetch_add(1, Ordering::Relaxed);
            return;
        }
        buffer.push(b'\n');
    }

    /// Appends one line (without its newline).
    pub fn log(&self, line: &[u8]) {
        self.log_with(|out| out.extend_from_slice(line));
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
