//! Which future woke a connection's task. The task polls hyper's
//! connection and, beside it, the shutdown signal and a ticker, which fire
//! a few times a minute at most; `select!` polled all three at every
//! wake-up (two per proxied request), and the watch's lock and the
//! timer's poll were about 600 of a proxied GET's 42,000 instructions.
//! A side future polled with its own [`Flagged`] waker is polled again
//! only once that waker fired (or the task's waker changed).
use std::{
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    task::{Wake, Waker},
};

/// What a side future's waker does: notes that it fired, wakes the task.
struct Flag {
    fired: AtomicBool,
    task: Waker,
}

impl Wake for Flag {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        self.fired.store(true, Ordering::Release);
        self.task.wake_by_ref();
    }
}

/// The waker of one side future of a task.
#[derive(Default)]
pub(super) struct Flagged {
    /// The flag and the waker made of it; none until the first poll.
    flag: Option<(Arc<Flag>, Waker)>,
}

impl Flagged {
    /// The waker to poll the side future with now, if it is due a poll:
    /// its waker fired, it was never polled, or the task's waker is not
    /// the one its waker wakes (then a new one is made).
    pub(super) fn due(&mut self, task: &Waker) -> Option<&Waker> {
        match &self.flag {
            // Cleared before the poll: a wake during it is not lost.
            Some((flag, _)) if flag.task.will_wake(task) => {
                if !flag.fired.swap(false, Ordering::AcqRel) {
                    return None;
                }
            }
            _ => {
                let flag = Arc::new(Flag {
                    fired: AtomicBool::new(false),
                    task: task.clone(),
                });
                self.flag = Some((flag.clone(), Waker::from(flag)));
            }
        }
        self.flag.as_ref().map(|(_, waker)| waker)
    }

    /// Makes the next [`Self::due`] poll: for a future that completed (an
    /// interval's next tick is registered only when polled again) or was
    /// replaced.
    pub(super) fn again(&mut self) {
        if let Some((flag, _)) = &self.flag {
            flag.fired.store(true, Ordering::Release);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::task::Context;

    struct Count(std::sync::atomic::AtomicUsize);

    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }

    #[test]
    fn a_side_future_is_due_first_then_only_once_its_waker_fired() {
        let count = Arc::new(Count(0.into()));
        let task = Waker::from(count.clone());
        let mut flagged = Flagged::default();
        let waker = flagged.due(&task).expect("never polled: due").clone();
        assert!(flagged.due(&task).is_none(), "nothing fired");
        waker.wake_by_ref();
        assert_eq!(count.0.load(Ordering::Relaxed), 1, "the task was woken");
        assert!(flagged.due(&task).is_some(), "its waker fired");
        assert!(flagged.due(&task).is_none(), "fired once, due once");
        flagged.again();
        assert!(flagged.due(&task).is_some(), "asked to poll again");
        // Another task waker: a fresh flag, due at once, waking the new one.
        let other = Arc::new(Count(0.into()));
        let other_task = Waker::from(other.clone());
        let waker = flagged.due(&other_task).expect("new task waker").clone();
        Context::from_waker(&waker).waker().wake_by_ref();
        assert_eq!(other.0.load(Ordering::Relaxed), 1);
        assert_eq!(count.0.load(Ordering::Relaxed), 1, "not the old task");
    }
}
