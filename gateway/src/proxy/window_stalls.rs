//! HTTP/2 responses held up by a client that grants them no window.
//!
//! hyper (1.12) asks a response body for its next frame as soon as h2 has
//! taken the last, then holds that frame until the stream has window (and
//! send buffer) for it; only then does it ask again. So the time from a
//! frame handed over to the next asked for covers each wait for the
//! client's window. A client that opens
//! streams with a window of 0 and never widens it writes nothing to the
//! socket, so the socket-level check ([`super::activity::Activity::blocked_writes`])
//! never sees it, and its streams keep the connection busy (never idle) and
//! each one's upstream connection taken, for ever. Each HTTP/2 response
//! body notes here when it handed hyper a frame and when hyper came back
//! for the next; the serve loop drops a connection one of whose responses
//! has waited for `request_timeout`.
//!
//! Stamps are the serve loop's last tick time, not a clock read per frame:
//! a stamp can be up to one tick older than the frame, so the loop counts a
//! tick more before it calls a stream stalled.
use std::sync::{
    atomic::{AtomicU64, Ordering::Relaxed},
    Mutex, MutexGuard,
};

/// The waits of one connection's HTTP/2 responses.
#[derive(Default)]
pub(super) struct WindowStalls {
    /// Per response slot: the tick time (ms) its last frame was handed
    /// at while hyper has not come back for the next; 0 if it has.
    slots: Mutex<Slots>,
    /// The serve loop's last tick time (ms), never 0.
    now_ms: AtomicU64,
}

#[derive(Default)]
struct Slots {
    waiting_since: Vec<u64>,
    free: Vec<usize>,
}

impl WindowStalls {
    pub(super) fn new(now_ms: u64) -> Self {
        Self {
            slots: Mutex::default(),
            now_ms: now_ms.max(1).into(),
        }
    }

    fn slots(&self) -> MutexGuard<'_, Slots> {
        self.slots.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A slot for a new response, not waiting.
    pub(super) fn claim(&self) -> usize {
        let mut slots = self.slots();
        match slots.free.pop() {
            Some(slot) => slot,
            None => {
                slots.waiting_since.push(0);
                slots.waiting_since.len() - 1
            }
        }
    }

    /// The response in `slot` is done with.
    pub(super) fn release(&self, slot: usize) {
        let mut slots = self.slots();
        if let Some(since) = slots.waiting_since.get_mut(slot) {
            *since = 0;
            slots.free.push(slot);
        }
    }

    /// The response in `slot` handed a frame (`true`: it waits for hyper
    /// to come back) or was asked for its next (`false`).
    pub(super) fn set_waiting(&self, slot: usize, waiting: bool) {
        let stamp = if waiting {
            self.now_ms.load(Relaxed)
        } else {
            0
        };
        if let Some(since) = self.slots().waiting_since.get_mut(slot) {
            *since = stamp;
        }
    }

    /// At a tick of the serve loop, `now_ms`: whether a response has
    /// waited for its next frame to be taken for `timeout_ms`, counted
    /// from stamps up to `tick_ms` old.
    pub(super) fn tick(&self, now_ms: u64, timeout_ms: u64, tick_ms: u64) -> bool {
        self.now_ms.store(now_ms.max(1), Relaxed);
        let slots = self.slots();
        let oldest = slots.waiting_since.iter().filter(|&&s| s != 0).min();
        oldest.is_some_and(|&since| now_ms.saturating_sub(since) >= timeout_ms + tick_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_response_waiting_past_the_timeout_and_a_tick_is_stalled() {
        let stalls = WindowStalls::new(1_000);
        let (a, b) = (stalls.claim(), stalls.claim());
        stalls.set_waiting(a, true);
        assert!(!stalls.tick(1_000 + 1_499, 1_000, 500));
        assert!(stalls.tick(2_500, 1_000, 500));
        // Taken again: no longer waiting; `b` starts waiting at 2,500 (the
        // last tick's time).
        stalls.set_waiting(a, false);
        stalls.set_waiting(b, true);
        assert!(!stalls.tick(2_500 + 1_499, 1_000, 500));
        assert!(stalls.tick(2_500 + 1_500, 1_000, 500));
        // Released slots stop counting and are reused.
        stalls.release(b);
        assert!(!stalls.tick(10_000, 1_000, 500));
        assert_eq!(stalls.claim(), b);
    }
}
