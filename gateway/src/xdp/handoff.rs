//! Handing the pin root to a new gateway that starts while this one still
//! serves (a restart; see the `handover` module). This one marks the pins as
//! left by a stopped gateway, releases the pin root's lock and from then on
//! writes no map; the new one adopts the maps (every ban in them) and swaps
//! its program into the pinned link atomically, so the kernel never stops
//! enforcing. Bans this one decides while it drains are enforced by it, in
//! userspace.
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use super::{full::Written, maps::MapsError, PolicySink, UserspaceBans};
use crate::guard::PolicyUpdate;

/// Whether the pin root was handed off; held while a map is written, so
/// no write lands after the hand-off.
#[derive(Clone, Default)]
pub(super) struct HandedOff(Arc<Mutex<bool>>);

impl HandedOff {
    pub(super) fn lock(&self) -> MutexGuard<'_, bool> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The policy writer's sink with XDP attached: `kernel` until the pin
/// root is handed off, `userspace` alone after.
pub(super) struct UntilHandedOff<K> {
    pub(super) kernel: K,
    pub(super) userspace: UserspaceBans,
    pub(super) handed_off: HandedOff,
}

impl<K: PolicySink> PolicySink for UntilHandedOff<K> {
    fn apply(&mut self, update: &PolicyUpdate) -> Result<Written, MapsError> {
        match *self.handed_off.lock() {
            false => self.kernel.apply(update),
            true => self.userspace.apply(update),
        }
    }

    fn commit(&mut self) -> Result<(), MapsError> {
        match *self.handed_off.lock() {
            false => self.kernel.commit(),
            true => self.userspace.commit(),
        }
    }

    fn remove_expired_bans(&mut self, now_ns: u64) -> Result<usize, MapsError> {
        match *self.handed_off.lock() {
            false => self.kernel.remove_expired_bans(now_ns),
            true => self.userspace.remove_expired_bans(now_ns),
        }
    }
}
