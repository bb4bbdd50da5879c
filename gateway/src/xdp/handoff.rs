//! Handing the pin root to a new gateway that starts while this one still
//! serves (a restart; see the `handover` module), in two phases so a new
//! gateway that fails never leaves this one without its kernel path.
//!
//! Lent ([`Loaded::lend`]): this one records the owner as the new gateway
//! and releases the pin root's lock, so the new one can adopt the maps
//! (every ban in them) and swap its program into the pinned link; this one
//! keeps writing its bans and budgets into the maps meanwhile. Handed off
//! ([`Loaded::release`]) once the new one serves: from then on this one
//! writes no map, and bans it decides while it drains are enforced by it,
//! in userspace. Taken back ([`Loaded::take_back`]) if the new one went
//! away or ran out of time: once its lock is free, this one's maps, program,
//! settings and link are put back as they were.
use std::{
    os::fd::{AsFd, OwnedFd},
    sync::{Arc, Mutex, MutexGuard, PoisonError},
};

use gateway_common::{maps as map_names, Config, PROGRAM_PIN};

use super::{
    adopt,
    bpffs::{self, BpffsError},
    bpfsys,
    full::Written,
    loaded::{Loaded, Previous},
    maps::{MapsError, OwnSettings},
    PinnedMaps, PolicySink, UserspaceBans, XdpError,
};
use crate::guard::PolicyUpdate;

/// What a lender keeps to take its pin root back.
pub(super) struct Lent {
    settings: OwnSettings,
    /// Its own maps, pinned again if the borrower replaced their pins.
    maps: Vec<(&'static str, OwnedFd)>,
}

impl Loaded {
    /// Lends the pin root to the gateway `pid` starting on it.
    pub(super) fn lend(&mut self, pid: u32) -> Result<(), XdpError> {
        if self.released || self.lent.is_some() {
            return Ok(());
        }
        let root = self.pin_root.clone();
        let mut maps = PinnedMaps::open(&root)?;
        let settings = maps.own_settings()?;
        let mut own = Vec::new();
        for name in map_names::ALL {
            let path = root.join(name);
            match bpfsys::obj_get(&path) {
                Ok(fd) => own.push((name, fd)),
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
                Err(source) => return Err(XdpError::Adopt { path, source }),
            }
        }
        // The borrower adopts only pins whose owner is itself (or gone).
        maps.set_config(Config {
            owner_pid: pid,
            ..settings.config
        })?;
        self.lent = Some(Lent {
            settings,
            maps: own,
        });
        self.lock = None;
        tracing::info!(
            root = %root.display(),
            pid,
            "lent the XDP pin root to the new gateway; this one keeps writing its bans there \
             until the new one is ready"
        );
        Ok(())
    }

    /// Takes a lent pin root back; `Ok(false)` while the borrower still
    /// holds its lock (it is still starting or stopping: try again later).
    pub(super) fn take_back(&mut self) -> Result<bool, XdpError> {
        if self.lent.is_none() {
            return Ok(true);
        }
        let root = self.pin_root.clone();
        let lock = match bpffs::lock(&root) {
            Ok(lock) => lock,
            Err(BpffsError::Locked { .. }) => return Ok(false),
            Err(error) => return Err(error.into()),
        };
        let Some(lent) = self.lent.take() else {
            return Ok(true);
        };
        // Held from here: a failure below leaves this one the owner.
        self.lock = Some(lock);
        for (name, fd) in &lent.maps {
            let path = root.join(name);
            let pinned = bpfsys::obj_get(&path).and_then(|pin| bpfsys::object_id(pin.as_fd()));
            let ours = bpfsys::object_id(fd.as_fd()).ok();
            if pinned.ok() != ours {
                tracing::warn!(
                    map = name,
                    "the new gateway replaced this map: pinning ours back"
                );
                adopt::remove_pin(&path)?;
                bpfsys::obj_pin(fd.as_fd(), &path).map_err(|source| XdpError::Adopt {
                    path: path.clone(),
                    source,
                })?;
            }
        }
        let program_pin = root.join(PROGRAM_PIN);
        adopt::remove_pin(&program_pin)?;
        self.program()?
            .pin(&program_pin)
            .map_err(|source| XdpError::Pin {
                path: program_pin.clone(),
                source,
            })?;
        PinnedMaps::open(&root)?.restore(&lent.settings, std::process::id())?;
        let previous = Previous {
            owner_pid: 0,
            attach_mode: lent.settings.config.attach_mode,
        };
        let interface = self.interface.clone();
        self.attach(&interface, Some(previous))?;
        tracing::info!(
            root = %root.display(),
            "took the XDP pin root back: this one's program, maps and settings are in place"
        );
        Ok(true)
    }
}

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
