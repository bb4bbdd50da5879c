//! A one-shot timer on CLOCK_MONOTONIC with nanosecond resolution (a
//! timerfd awaited through tokio's reactor), for the open-loop generator:
//! tokio's own timer rounds up to the millisecond, which would show as
//! latency in a generator that measures from each request's due time.
use std::{
    fs::File,
    io::Read as _,
    os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd},
};

use anyhow::{Context, Result};
use tokio::io::unix::AsyncFd;

pub(super) const NS: u64 = 1_000_000_000;

/// CLOCK_MONOTONIC in nanoseconds: the clock the timerfd runs on.
pub(super) fn now_ns() -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid out pointer; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    now.tv_sec as u64 * NS + now.tv_nsec as u64
}

/// A one-shot timerfd on CLOCK_MONOTONIC, awaited through tokio's reactor.
pub(super) struct Timer(AsyncFd<File>);

impl Timer {
    pub(super) fn new() -> Result<Self> {
        let flags = libc::TFD_NONBLOCK | libc::TFD_CLOEXEC;
        // SAFETY: no pointer arguments; the result is checked below.
        let fd = unsafe { libc::timerfd_create(libc::CLOCK_MONOTONIC, flags) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error()).context("timerfd_create");
        }
        // SAFETY: `fd` is a fresh descriptor that nothing else owns.
        let file = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
        // SAFETY: the File owns the descriptor and keeps it open, unchanged,
        // for as long as the AsyncFd holds it.
        let registered = unsafe { AsyncFd::register(file) };
        Ok(Self(registered.map_err(std::io::Error::from)?))
    }

    /// Returns at `due_ns` (CLOCK_MONOTONIC), at once if that has passed.
    pub(super) async fn wait_until(&self, due_ns: u64) -> Result<()> {
        if now_ns() >= due_ns {
            return Ok(());
        }
        let zero = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        let spec = libc::itimerspec {
            it_interval: zero,
            it_value: libc::timespec {
                tv_sec: (due_ns / NS) as _,
                tv_nsec: (due_ns % NS) as _,
            },
        };
        // SAFETY: a timerfd we own, a valid itimerspec, no old value wanted.
        let set = unsafe {
            libc::timerfd_settime(
                self.0.as_raw_fd(),
                libc::TFD_TIMER_ABSTIME,
                &spec,
                std::ptr::null_mut(),
            )
        };
        if set != 0 {
            return Err(std::io::Error::last_os_error()).context("timerfd_settime");
        }
        loop {
            let mut guard = self.0.readable().await?;
            let mut expirations = [0u8; 8];
            if let Ok(read) = guard.try_io(|fd| fd.get_ref().read(&mut expirations)) {
                read?;
                return Ok(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timer_waits_until_due() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let due = now_ns() + NS / 100;
        runtime.block_on(async { Timer::new().unwrap().wait_until(due).await.unwrap() });
        assert!(now_ns() >= due);
    }
}
