//! The access-log writer: one JSON line per request on stdout (the proxy
//! builds the line). Each thread that logs has a buffer of its own, and a
//! request task writes its line straight into it: no lock another worker
//! takes, no syscall, no thread wake-up, and no line of its own to
//! allocate and copy. One thread collects every buffer every few
//! milliseconds (swapping it for an empty one, so a worker waits on it
//! only for that swap) and writes them out, so under load many lines
//! share one `write` and an idle log is at most one interval behind.
//! Lines of one thread keep their order; lines of different worker
//! threads are interleaved by interval, not by the microsecond.
use std::{
    cell::RefCell,
    io::Write,
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc, Mutex, MutexGuard,
    },
    time::Duration,
};

/// How often the writer thread drains the buffers.
const INTERVAL: Duration = Duration::from_millis(20);
/// Bytes one thread's buffer holds before its new lines are dropped (and
/// counted) rather than growing without bound behind a blocked stdout.
const MAX_BUFFERED: usize = 16 << 20;
/// A thread's buffer starts this large (it grows to what one interval of
/// its lines takes, and stays).
const INITIAL: usize = 1 << 16;

/// One thread's lines waiting for the writer.
type Shard = Mutex<Vec<u8>>;

struct Inner {
    /// Which logger a thread's shard belongs to (loggers are few: one per
    /// process, more in tests).
    id: u64,
    /// Every shard, in the order their threads first logged.
    shards: Mutex<Vec<Arc<Shard>>>,
    dropped: AtomicU64,
}

thread_local! {
    /// This thread's shard of each logger it wrote to.
    static SHARDS: RefCell<Vec<(u64, Arc<Shard>)>> = const { RefCell::new(Vec::new()) };
}

#[derive(Clone)]
pub struct AccessLogger {
    inner: Arc<Inner>,
}

fn lock(shard: &Shard) -> MutexGuard<'_, Vec<u8>> {
    shard
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl AccessLogger {
    /// A logger whose lines nobody writes out (see [`Self::drain`]).
    fn new() -> Self {
        static IDS: AtomicU64 = AtomicU64::new(0);
        Self {
            inner: Arc::new(Inner {
                id: IDS.fetch_add(1, Ordering::Relaxed),
                shards: Mutex::new(Vec::new()),
                dropped: AtomicU64::new(0),
            }),
        }
    }

    pub fn stdout() -> Self {
        let logger = Self::new();
        let writer = logger.clone();
        std::thread::Builder::new()
            .name("access-log".into())
            .spawn(move || writer.write_forever())
            .map_err(|error| tracing::error!(%error, "cannot start the access-log thread"))
            .ok();
        logger
    }

    /// Appends the line `write` writes (without its newline) straight into
    /// this thread's buffer.
    pub fn log_with(&self, write: impl FnOnce(&mut Vec<u8>)) {
        SHARDS.with(|shards| {
            let mut shards = shards.borrow_mut();
            let id = self.inner.id;
            let index = match shards.iter().position(|(of, _)| *of == id) {
                Some(index) => index,
                None => {
                    // A logger only the thread-local still holds is gone.
                    shards.retain(|(_, shard)| Arc::strong_count(shard) > 1);
                    let shard = Arc::new(Mutex::new(Vec::with_capacity(INITIAL)));
                    (self.inner.shards.lock())
                        .unwrap_or_else(|poisoned| poisoned.into_inner())
                        .push(shard.clone());
                    shards.push((id, shard));
                    shards.len() - 1
                }
            };
            let mut buffer = lock(&shards[index].1);
            let start = buffer.len();
            write(&mut buffer);
            if buffer.len() >= MAX_BUFFERED {
                buffer.truncate(start);
                drop(buffer);
                self.inner.dropped.fetch_add(1, Ordering::Relaxed);
                return;
            }
            buffer.push(b'\n');
        });
    }

    /// Appends one line (without its newline).
    pub fn log(&self, line: &[u8]) {
        self.log_with(|out| out.extend_from_slice(line));
    }

    /// Every thread's lines so far, into `out` (each buffer swapped for
    /// `spare`'s allocation, so neither side reallocates in steady state).
    fn drain(&self, out: &mut impl Write, spare: &mut Vec<u8>) {
        let shards = (self.inner.shards.lock()).unwrap_or_else(|poisoned| poisoned.into_inner());
        for shard in shards.iter() {
            std::mem::swap(&mut *lock(shard), spare);
            if !spare.is_empty() {
                let _ = out.write_all(spare);
                spare.clear();
            }
        }
    }

    fn write_forever(&self) {
        if let Err(error) = below_the_workers() {
            tracing::debug!(%error, "access-log thread keeps the workers' priority");
        }
        let mut spare = Vec::with_capacity(INITIAL);
        let mut reported = 0;
        loop {
            #[allow(
                clippy::disallowed_methods,
                reason = "a dedicated thread, not a tokio worker"
            )]
            std::thread::sleep(INTERVAL);
            {
                let mut out = std::io::stdout().lock();
                self.drain(&mut out, &mut spare);
                let _ = out.flush();
            }
            let dropped = self.inner.dropped.load(Ordering::Relaxed);
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

/// The calling thread's nice value, raised by this much: its wake-ups
/// (every [`INTERVAL`]) should not preempt a worker answering a request
/// on the same CPU (issue 14's tail: pinned with one worker, the writer
/// was most of the time that worker waited runnable). Still enough
/// weight to keep up with stdout under full load.
const NICER: libc::c_int = 10;

fn below_the_workers() -> std::io::Result<()> {
    // SAFETY: plain syscalls on the calling thread (Linux keeps the nice
    // value per thread; `who = 0` is the caller) and its own errno.
    unsafe {
        // -1 is a nice value as well as the error return: errno tells.
        *libc::__errno_location() = 0;
        let current = libc::getpriority(libc::PRIO_PROCESS, 0);
        if current == -1 && *libc::__errno_location() != 0 {
            return Err(std::io::Error::last_os_error());
        }
        if libc::setpriority(libc::PRIO_PROCESS, 0, current.saturating_add(NICER)) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The writer's thread alone gets the higher nice value (Linux keeps
    /// it per thread): the thread that started it, a worker's stand-in,
    /// keeps its own.
    #[test]
    fn the_writer_thread_alone_runs_nicer() {
        // SAFETY: reads the calling thread's nice value.
        let nice = || unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) };
        let before = nice();
        let writer = std::thread::spawn(move || {
            below_the_workers().unwrap();
            nice()
        });
        assert_eq!(writer.join().unwrap(), (before + NICER).min(19));
        assert_eq!(nice(), before);
    }

    /// Each thread's lines arrive whole and in order; none is lost or
    /// shared between buffers.
    #[test]
    fn every_threads_lines_arrive_in_order() {
        let logger = AccessLogger::new();
        let threads: Vec<_> = (0..3)
            .map(|t| {
                let logger = logger.clone();
                std::thread::spawn(move || {
                    for i in 0..100 {
                        logger.log(format!("t{t} {i}").as_bytes());
                    }
                })
            })
            .collect();
        for thread in threads {
            thread.join().unwrap();
        }
        let (mut out, mut spare) = (Vec::new(), Vec::new());
        logger.drain(&mut out, &mut spare);
        let text = String::from_utf8(out).unwrap();
        for t in 0..3 {
            let mine: Vec<&str> = text
                .lines()
                .filter(|l| l.starts_with(&format!("t{t} ")))
                .collect();
            let expected: Vec<String> = (0..100).map(|i| format!("t{t} {i}")).collect();
            assert_eq!(mine, expected);
        }
        assert_eq!(text.lines().count(), 300);
        // Drained: the next round starts empty.
        let mut again = Vec::new();
        logger.drain(&mut again, &mut spare);
        assert!(again.is_empty());
    }
}
