//! The circuit breaker between a node and Redis: plain data, clock passed
//! in. Open (the local fallback limits) after a failed call; while open, a
//! probe at most every [`PROBE_EVERY`]; a probe that succeeds closes it.
use std::time::Duration;

pub const PROBE_EVERY: Duration = Duration::from_millis(250);

#[derive(Debug)]
pub struct Breaker {
    open: bool,
    next_probe_ns: u64,
}

/// What a call's outcome changed, to log and count once per change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transition {
    Unchanged,
    Opened,
    Closed,
}

impl Breaker {
    /// Open until Redis first answers: nothing is shared before that.
    pub fn new() -> Self {
        Self {
            open: true,
            next_probe_ns: 0,
        }
    }

    pub fn is_open(&self) -> bool {
        self.open
    }

    pub fn may_probe(&self, now: u64) -> bool {
        self.open && now >= self.next_probe_ns
    }

    pub fn failed(&mut self, now: u64) -> Transition {
        let every = u64::try_from(PROBE_EVERY.as_nanos()).unwrap_or(u64::MAX);
        self.next_probe_ns = now.saturating_add(every);
        match std::mem::replace(&mut self.open, true) {
            true => Transition::Unchanged,
            false => Transition::Opened,
        }
    }

    pub fn succeeded(&mut self) -> Transition {
        match std::mem::replace(&mut self.open, false) {
            true => Transition::Closed,
            false => Transition::Unchanged,
        }
    }
}

impl Default for Breaker {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_once_probes_spaced_and_closes_on_success() {
        let mut breaker = Breaker::new();
        assert!(breaker.may_probe(0));
        assert_eq!(breaker.succeeded(), Transition::Closed);
        assert!(!breaker.may_probe(0), "closed: no probes");
        assert_eq!(breaker.failed(1_000), Transition::Opened);
        assert_eq!(breaker.failed(2_000), Transition::Unchanged);
        let every = PROBE_EVERY.as_nanos() as u64;
        assert!(!breaker.may_probe(2_000 + every - 1));
        assert!(breaker.may_probe(2_000 + every));
        assert_eq!(breaker.succeeded(), Transition::Closed);
        assert_eq!(breaker.succeeded(), Transition::Unchanged);
    }
}
