//! hyper's header-read timer for one HTTP/1 connection. hyper makes a
//! sleep for every request head it waits for and drops it once the head
//! is read: a tokio timer registered and deregistered per request (the
//! timer wheel's lock twice, an allocation). Here the heads of one
//! connection share one tokio sleep, moved to each new deadline; a later
//! deadline than the one registered is an atomic update, not a lock.
use std::{
    future::Future,
    pin::Pin,
    sync::{Arc, Mutex, PoisonError},
    task::{Context, Poll},
    time::{Duration, Instant},
};

/// The connection's one sleep, made at the first head hyper waits for.
type Slot = Arc<Mutex<Option<Pin<Box<tokio::time::Sleep>>>>>;

/// Give each HTTP/1 connection its own (`Builder::timer`).
#[derive(Clone, Default)]
pub(super) struct HeadTimer(Slot);

impl hyper::rt::Timer for HeadTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn hyper::rt::Sleep>> {
        self.sleep_until(self.now() + duration)
    }

    fn sleep_until(&self, deadline: Instant) -> Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(Shared {
            slot: self.0.clone(),
            deadline: deadline.into(),
        })
    }

    /// tokio's clock, as hyper-util's `TokioTimer` reads it (a paused
    /// runtime's own, where one is paused).
    fn now(&self) -> Instant {
        tokio::time::Instant::now().into_std()
    }
}

/// One deadline on the connection's sleep.
struct Shared {
    slot: Slot,
    deadline: tokio::time::Instant,
}

impl hyper::rt::Sleep for Shared {}

impl Future for Shared {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let deadline = self.deadline;
        let mut slot = self.slot.lock().unwrap_or_else(PoisonError::into_inner);
        let sleep = slot.get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if sleep.deadline() != deadline {
            sleep.as_mut().reset(deadline);
        }
        sleep.as_mut().poll(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use hyper::rt::Timer as _;

    fn ready(sleep: &mut Pin<Box<dyn hyper::rt::Sleep>>) -> bool {
        let mut cx = Context::from_waker(std::task::Waker::noop());
        sleep.as_mut().poll(&mut cx).is_ready()
    }

    /// Waits for `sleep` for at most 10 s (its deadline is far closer).
    async fn fires(sleep: Pin<Box<dyn hyper::rt::Sleep>>) -> bool {
        tokio::time::timeout(Duration::from_secs(10), sleep)
            .await
            .is_ok()
    }

    #[tokio::test]
    async fn each_deadline_counts_alone_on_the_one_sleep() {
        let timer = HeadTimer::default();
        let mut first = timer.sleep(Duration::from_millis(20));
        assert!(!ready(&mut first));
        drop(first); // as hyper drops it once the head is read
        let mut later = timer.sleep(Duration::from_secs(3600));
        assert!(!ready(&mut later));
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(
            !ready(&mut later),
            "the dropped deadline passed, not this one"
        );
        // An earlier deadline than the sleep's holds too.
        assert!(fires(timer.sleep(Duration::from_millis(20))).await);
        assert!(!ready(&mut later), "an hour is not over");
        // So does a later one after a sleep that fired.
        assert!(fires(timer.sleep(Duration::from_millis(20))).await);
    }
}
