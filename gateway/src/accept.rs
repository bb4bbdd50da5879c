//! What an accept loop does when `accept` fails. Out of file descriptors
//! (or socket memory), the connection waiting in the backlog stays there,
//! so a loop that goes straight back to `accept` fails again at once: it
//! spun both workers and wrote about 100,000 log lines a second until
//! descriptors came free (an attack: 300 HTTP/2 streams held open, each
//! with its upstream connection, under a 300-descriptor limit). A loop
//! backs off for want of a resource, as nginx does on `EMFILE`, and logs
//! at most one failure a second, with the count of those it did not. A
//! connection refused over a connection cap is logged the same way: a
//! client opening connections as fast as handshakes go wrote a line each.
//! Each loop (a worker's listener, the admin server) keeps its own count,
//! so N workers write up to N lines a second.
use std::{io, time::Duration};

use tokio::time::Instant;

/// How long a loop waits after an accept failed for want of a resource:
/// long enough not to spin, short enough that a freed descriptor is used
/// soon (nginx's `accept_mutex_delay` is 500 ms).
pub const BACKOFF: Duration = Duration::from_millis(100);

/// Failures logged at most this often per loop.
const LOG_EVERY: Duration = Duration::from_secs(1);

/// One accept loop's failures, for its log.
#[derive(Debug, Default)]
pub struct AcceptErrors {
    log: LogThrottle,
}

impl AcceptErrors {
    /// Handles a failed accept of `what` (a listener's name for the log):
    /// logs it unless one was logged within a second, and waits
    /// [`BACKOFF`] if it failed for want of a resource, which another
    /// accept at once cannot find.
    pub async fn failed(&mut self, error: &io::Error, what: &'static str) {
        if let Some(unlogged) = self.log.note(Instant::now()) {
            tracing::warn!(%error, unlogged, "{what}: accept failed");
        }
        // A shutdown meanwhile waits out the backoff: 100 ms at most.
        if out_of_resources(error) {
            tokio::time::sleep(BACKOFF).await;
        }
    }
}

/// One kind of log line, written at most once a second.
#[derive(Debug, Default)]
pub struct LogThrottle {
    last_logged: Option<Instant>,
    unlogged: u64,
}

impl LogThrottle {
    /// An event at `now`: `Some(events not logged since the last)` if this
    /// one is to be logged.
    pub fn note(&mut self, now: Instant) -> Option<u64> {
        let due = self
            .last_logged
            .is_none_or(|at| now.saturating_duration_since(at) >= LOG_EVERY);
        if !due {
            self.unlogged += 1;
            return None;
        }
        self.last_logged = Some(now);
        Some(std::mem::take(&mut self.unlogged))
    }
}

/// Whether `error` says the process or the system is out of something an
/// accept needs (descriptors, socket memory), rather than that one
/// connection went wrong (`ECONNABORTED`: the next one may do).
fn out_of_resources(error: &io::Error) -> bool {
    matches!(
        error.raw_os_error(),
        Some(libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_failure_a_second_is_logged_with_the_count_of_the_rest() {
        let mut errors = LogThrottle::default();
        let t0 = Instant::now();
        assert_eq!(errors.note(t0), Some(0));
        for ms in [1, 10, 999] {
            assert_eq!(errors.note(t0 + Duration::from_millis(ms)), None);
        }
        assert_eq!(errors.note(t0 + Duration::from_millis(1_000)), Some(3));
        assert_eq!(errors.note(t0 + Duration::from_millis(1_001)), None);
        assert_eq!(errors.note(t0 + Duration::from_millis(5_000)), Some(1));
    }

    #[test]
    fn only_a_want_of_resources_backs_off() {
        for errno in [libc::EMFILE, libc::ENFILE, libc::ENOBUFS, libc::ENOMEM] {
            assert!(out_of_resources(&io::Error::from_raw_os_error(errno)));
        }
        for errno in [libc::ECONNABORTED, libc::EPERM, libc::EINTR] {
            assert!(!out_of_resources(&io::Error::from_raw_os_error(errno)));
        }
        assert!(!out_of_resources(&io::ErrorKind::Other.into()));
    }
}
