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
//! for the next; at the serve loop's tick a stream that has waited for
//! `request_timeout` is reset alone, as nginx does: its task (hyper's,
//! spawned by [`super::activity::StreamExec`]) is aborted, which drops the
//! stream unfinished, and h2 sends RST_STREAM(CANCEL). The connection's
//! other streams go on. A stalled stream with no task to abort drops the
//! whole connection, and so does a stall past [`MAX_RESETS`]: a client
//! cycling stalled streams would otherwise hold upstream connections on
//! one connection for ever, where each drop costs it a reconnect.
//!
//! Stamps are the serve loop's last tick time, not a clock read per frame:
//! a stamp can be up to one tick older than the frame, so the loop counts a
//! tick more before it calls a stream stalled.
use std::sync::{
    atomic::{AtomicU64, Ordering::Relaxed},
    Mutex, MutexGuard,
};

use tokio::task::AbortHandle;

/// Streams one connection may have reset for stalling before a stall
/// drops it whole.
pub(super) const MAX_RESETS: u32 = 16;

/// The waits of one connection's HTTP/2 responses.
#[derive(Default)]
pub(super) struct WindowStalls {
    slots: Mutex<Slots>,
    /// The serve loop's last tick time (ms), never 0.
    now_ms: AtomicU64,
}

#[derive(Default)]
struct Slots {
    streams: Vec<Stream>,
    free: Vec<usize>,
    /// The slot claimed by the request hyper accepted last, whose task
    /// hyper spawns next (see [`WindowStalls::adopt`]).
    next: Option<usize>,
    /// Streams reset for stalling so far.
    resets: u32,
}

/// One HTTP/2 request's slot.
#[derive(Default)]
struct Stream {
    /// The tick time (ms) its response's last frame was handed at while
    /// hyper has not come back for the next; 0 if it has.
    waiting_since: u64,
    /// Its task, to reset the stream alone.
    task: Option<AbortHandle>,
    /// Its task was aborted: the slot goes as the task's future drops.
    aborted: bool,
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

    /// A slot for a new request, not waiting; the task spawned next is
    /// its own ([`WindowStalls::adopt`]).
    pub(super) fn claim(&self) -> usize {
        let mut slots = self.slots();
        let slot = match slots.free.pop() {
            Some(slot) => slot,
            None => {
                slots.streams.push(Stream::default());
                slots.streams.len() - 1
            }
        };
        slots.next = Some(slot);
        slot
    }

    /// `task` serves the request that claimed a slot last. hyper accepts
    /// a stream, calls the service (which claims) and spawns the stream's
    /// task in one go on the connection's task, so the two meet here. hyper
    /// spawns one other kind of task, an HTTP/2 `CONNECT` tunnel's, from a
    /// stream's task; the gateway answers `CONNECT` itself (405), so none
    /// is spawned to take a claim.
    pub(super) fn adopt(&self, task: AbortHandle) {
        let mut slots = self.slots();
        if let Some(slot) = slots.next.take() {
            if let Some(stream) = slots.streams.get_mut(slot) {
                stream.task = Some(task);
            }
        }
    }

    /// The request in `slot` is done with.
    pub(super) fn release(&self, slot: usize) {
        let mut slots = self.slots();
        if let Some(stream) = slots.streams.get_mut(slot) {
            *stream = Stream::default();
            slots.free.push(slot);
        }
        if slots.next == Some(slot) {
            slots.next = None;
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
        if let Some(stream) = self.slots().streams.get_mut(slot) {
            stream.waiting_since = stamp;
        }
    }

    /// At a tick of the serve loop, `now_ms`: resets every stream whose
    /// response has waited for its next frame to be taken for
    /// `timeout_ms`, counted from stamps up to `tick_ms` old. `true`: the
    /// connection is to be dropped, a stalled stream having no task to
    /// abort, or the connection past [`MAX_RESETS`].
    pub(super) fn tick(&self, now_ms: u64, timeout_ms: u64, tick_ms: u64) -> bool {
        self.now_ms.store(now_ms.max(1), Relaxed);
        let limit = timeout_ms.saturating_add(tick_ms);
        let mut to_abort = Vec::new();
        let mut drop_connection = false;
        {
            let mut slots = self.slots();
            let mut resets = slots.resets;
            for stream in &mut slots.streams {
                let stalled = stream.waiting_since != 0
                    && now_ms.saturating_sub(stream.waiting_since) >= limit;
                if !stalled || stream.aborted {
                    continue;
                }
                match &stream.task {
                    Some(task) => {
                        to_abort.push(task.clone());
                        stream.aborted = true;
                        resets += 1;
                    }
                    None => drop_connection = true,
                }
            }
            slots.resets = resets;
            drop_connection |= resets > MAX_RESETS;
        }
        // Outside the lock: tokio only schedules the cancellation, but a
        // task's drop takes this lock (its slot's release).
        to_abort.iter().for_each(AbortHandle::abort);
        drop_connection
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

    /// A stalled stream with a task is reset alone: its task aborted, the
    /// connection kept, others untouched; a task spawned with no claim
    /// before it is nobody's.
    #[tokio::test]
    async fn a_stalled_stream_is_reset_alone() {
        let stalls = WindowStalls::new(1_000);
        let spawn = || {
            let slot = stalls.claim();
            let task = tokio::spawn(std::future::pending::<()>());
            stalls.adopt(task.abort_handle());
            (slot, task)
        };
        let ((a, task_a), (b, task_b)) = (spawn(), spawn());
        stalls.set_waiting(a, true);
        stalls.set_waiting(b, false);
        assert!(!stalls.tick(2_499, 1_000, 500));
        assert!(!task_a.is_finished());
        assert!(!stalls.tick(2_500, 1_000, 500), "reset, not dropped");
        assert!(task_a.await.unwrap_err().is_cancelled());
        assert!(!task_b.is_finished(), "another stream goes on");
        assert!(!stalls.tick(10_000, 1_000, 500), "aborted once");
        task_b.abort();

        stalls.release(a);
        stalls.release(b);
        let unclaimed = tokio::spawn(std::future::pending::<()>());
        stalls.adopt(unclaimed.abort_handle());
        let c = stalls.claim();
        stalls.set_waiting(c, true);
        assert!(
            stalls.tick(20_000, 1_000, 500),
            "no task of its own: dropped"
        );
        assert!(!unclaimed.is_finished());
        unclaimed.abort();
    }

    /// A connection cycling stalled streams is dropped past [`MAX_RESETS`].
    #[tokio::test]
    async fn a_connection_past_its_resets_is_dropped() {
        let stalls = WindowStalls::new(1_000);
        let mut tasks = Vec::new();
        for round in 0..=u64::from(MAX_RESETS) {
            let slot = stalls.claim();
            let task = tokio::spawn(std::future::pending::<()>());
            stalls.adopt(task.abort_handle());
            stalls.set_waiting(slot, true);
            let now = stalls.now_ms.load(Relaxed) + 1_500;
            let dropped = stalls.tick(now, 1_000, 500);
            assert_eq!(dropped, round == u64::from(MAX_RESETS), "round {round}");
            stalls.release(slot);
            tasks.push(task);
        }
        for task in tasks {
            assert!(task.await.unwrap_err().is_cancelled());
        }
    }
}
