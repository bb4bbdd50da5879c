//! Reloading the configuration file into the running gateway (SIGHUP and
//! `POST /v1/reload`, which `gateway reload` calls): routes, upstreams,
//! tiers and limits, issuers, certificates, guard thresholds, the kernel's
//! ports, allow-list and default budget, listeners added or removed.
//!
//! Everything that can fail (the file's validation, with `check-config`'s
//! messages; certificates; issuers' keys; binding new listeners; the
//! kernel's maps) is done before anything changes, so a refused reload
//! leaves the running configuration serving. Then each worker's gateway is
//! swapped (see [`crate::proxy::Current`]): requests in flight finish on
//! the old one, open connections stay open. Limiter, guard, bans, keys,
//! metrics and unchanged upstream pools are kept.
//!
//! Keys read only at start ([`restart`]) keep their running values; the
//! rest is applied and the answer names each of them: a restart applies
//! them.
//!
//! A draining gateway refuses reloads ([`Drain`]): once it has handed its
//! kernel path to a gateway that took over from it, the kernel's maps hold
//! that one's policy, and during a shutdown there is nothing to reload.
pub mod listeners;
mod restart;

use std::{
    path::PathBuf,
    sync::{
        atomic::{AtomicBool, Ordering},
        Mutex, OnceLock,
    },
};

use serde::Serialize;

use self::listeners::{Active, ListenerError};
use crate::{
    config::{Config, ListenerConfig},
    handover::Offered,
    proxy::workers::{self, Workers},
    shared::Shared,
    xdp::{syncookies::CookieTargets, KernelWrites, ReconfigureError},
};

/// The command line's overrides, applied to every configuration read.
pub type Overrides = Box<dyn Fn(&mut Config) + Send + Sync>;

#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error(
        "the gateway was started without --config (the embedded defaults): there is no file to \
         reload; restart it with --config FILE"
    )]
    NoFile,
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Refused(String),
    #[error("the gateway is still starting; reload again once it is ready")]
    Starting,
    #[error("this gateway is draining: {0}")]
    Draining(Drain),
}

/// Why a gateway refuses reloads (and admin writes) while it drains.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Drain {
    #[error(
        "it handed its kernel path to the gateway that took over from it, which now owns the \
         kernel's maps and answers on the same admin address: reload that one"
    )]
    HandedOff,
    #[error("it is shutting down")]
    ShuttingDown,
}

/// What a reload changed.
#[derive(Debug, Serialize)]
pub struct ReloadReport {
    pub file: PathBuf,
    /// Top-level sections whose values changed.
    pub changed: Vec<&'static str>,
    /// Addresses of listeners added and removed.
    pub listeners_added: Vec<String>,
    pub listeners_removed: Vec<String>,
    /// Keys that changed in the file but keep their running value until a
    /// restart.
    pub restart_required: Vec<String>,
}

/// The running configuration and what a reload replaces.
struct Running {
    config: Config,
    /// Successful reloads so far.
    generation: u64,
    shared: Shared,
    listeners: Vec<Active>,
    next_id: usize,
}

pub struct Reloader {
    /// The file `gateway run --config` named; `None`: the embedded defaults.
    file: Option<PathBuf>,
    overrides: Overrides,
    /// Worker threads (each binds its own socket of a new listener).
    worker_count: usize,
    /// The kernel path's maps, when XDP is attached.
    kernel: Option<KernelWrites>,
    /// Set when the gateway starts shutting down.
    shutting_down: AtomicBool,
    workers: OnceLock<Workers>,
    /// The sockets offered to a restart, kept to the listeners in force.
    offered: OnceLock<Offered>,
    /// With `xdp.syn_cookies = "xdp"`: the listeners kept accepting cookies.
    cookie_targets: OnceLock<CookieTargets>,
    running: Mutex<Running>,
}

impl Reloader {
    pub fn new(
        file: Option<PathBuf>,
        overrides: Overrides,
        config: &Config,
        shared: &Shared,
        listeners: Vec<Active>,
        worker_count: usize,
        kernel: Option<KernelWrites>,
    ) -> Self {
        let next_id = listeners.len();
        Self {
            file,
            overrides,
            worker_count,
            kernel,
            shutting_down: AtomicBool::new(false),
            workers: OnceLock::new(),
            offered: OnceLock::new(),
            cookie_targets: OnceLock::new(),
            running: Mutex::new(Running {
                config: config.clone(),
                generation: 0,
                shared: shared.clone(),
                listeners,
                next_id,
            }),
        }
    }

    /// The workers, once started; reloads before that are refused.
    pub fn attach(&self, workers: Workers) {
        let _ = self.workers.set(workers);
    }

    /// Keeps the listening sockets offered to a restart to the listeners
    /// each reload leaves.
    pub fn offer(&self, offered: Offered) {
        let _ = self.offered.set(offered);
    }

    /// Keeps the listeners kept accepting SYN cookies to those each
    /// reload leaves.
    pub fn keep_accepting(&self, targets: CookieTargets) {
        let _ = self.cookie_targets.set(targets);
    }

    /// What the workers share now (the admin API reads quotas and pools).
    pub fn shared(&self) -> Shared {
        self.lock().shared.clone()
    }

    /// How many reloads made the configuration in force.
    pub fn generation(&self) -> u64 {
        self.lock().generation
    }

    /// The configuration in force and how many reloads made it.
    pub fn config(&self) -> (u64, Config) {
        let running = self.lock();
        (running.generation, running.config.clone())
    }

    /// Why this gateway refuses reloads now, if it does.
    pub fn draining(&self) -> Option<Drain> {
        if self.kernel.as_ref().is_some_and(KernelWrites::handed_off) {
            Some(Drain::HandedOff)
        } else if self.shutting_down.load(Ordering::Relaxed) {
            Some(Drain::ShuttingDown)
        } else {
            None
        }
    }

    /// Returns once the kernel path is handed off (never without one).
    pub async fn until_handed_off(&self) {
        match &self.kernel {
            Some(kernel) => kernel.until_handed_off().await,
            None => std::future::pending().await,
        }
    }

    /// Refuses reloads from now on: the gateway is shutting down.
    pub fn shutting_down(&self) {
        self.shutting_down.store(true, Ordering::Relaxed);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Running> {
        self.running.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Re-reads the file and applies it, or refuses it and changes nothing.
    /// One at a time; blocks (files, sockets, the kernel's maps).
    pub fn reload(&self) -> Result<ReloadReport, ReloadError> {
        if let Some(drain) = self.draining() {
            return Err(ReloadError::Draining(drain));
        }
        let file = self.file.clone().ok_or(ReloadError::NoFile)?;
        let workers = self.workers.get().ok_or(ReloadError::Starting)?;
        let mut running = self.lock();
        let invalid = |error: &dyn std::fmt::Display| {
            ReloadError::Invalid(format!(
                "{} is not a valid configuration: {error}",
                file.display()
            ))
        };
        let mut next = Config::load(Some(&file)).map_err(|e| invalid(&e))?;
        (self.overrides)(&mut next);
        next.validate().map_err(|e| invalid(&e))?;
        let mut restart_required = restart::keep_running(&running.config, &mut next);
        let plan = listeners::plan(&running.listeners, &next.listeners);
        // A listener's sockets serve plain HTTP or TLS, not both.
        for &(old, new) in &plan.kept {
            let was = &running.listeners[old].config.tls;
            if was.is_some() != next.listeners[new].tls.is_some() {
                restart_required.push(format!("listeners[{new}].tls"));
                next.listeners[new].tls = was.clone();
            }
        }
        next.validate().map_err(|e| {
            invalid(&format!(
                "{e} (with the running values of {restart_required:?}, which need a restart)"
            ))
        })?;

        // Everything that can fail, before anything changes.
        let refused = |error: ListenerError| ReloadError::Refused(error.to_string());
        let mut acceptors = Vec::new();
        for &(old, new) in &plan.kept {
            let acceptor = listeners::acceptor(&next.listeners[new], &next.state_dir);
            acceptors.push((old, acceptor.map_err(refused)?));
        }
        let mut bound = Vec::new();
        for &new in &plan.added {
            let listener = &next.listeners[new];
            bound.push((
                new,
                listeners::bind(listener, &next.state_dir, self.worker_count).map_err(refused)?,
            ));
        }
        let tiers = next.tiers.iter().map(|t| t.name.clone()).collect();
        let jwt =
            (running.shared.jwt.reconfigured(&next.issuers, tiers)).map_err(|e| invalid(&e))?;
        let kernel = next.xdp_settings();
        // Rewriting the port table is 65,536 map calls: only on a change.
        let kernel_changed =
            format!("{kernel:?}") != format!("{:?}", running.config.xdp_settings());
        if let Some(writes) = self.kernel.as_ref().filter(|_| kernel_changed) {
            // All or nothing; refused if handed off since the check above.
            writes.reconfigure(&kernel).map_err(|error| match error {
                ReconfigureError::HandedOff => ReloadError::Draining(Drain::HandedOff),
                error => ReloadError::Refused(format!("writing the kernel's settings: {error}")),
            })?;
        }

        // Now swap.
        let shared = running.shared.reconfigured(&next, std::sync::Arc::new(jwt));
        shared.jwt.spawn_refresh();
        shared.spawn_health_checks();
        workers.reconfigure(&next, &shared);
        for (old, acceptor) in acceptors {
            if let (Some(slot), Some(acceptor)) = (&running.listeners[old].tls, acceptor) {
                slot.store(std::sync::Arc::new(acceptor));
            }
        }
        let mut report = ReloadReport {
            file,
            changed: changed_sections(&running.config, &next),
            listeners_added: Vec::new(),
            listeners_removed: Vec::new(),
            restart_required,
        };
        let mut kept: Vec<Active> = Vec::new();
        for (index, active) in std::mem::take(&mut running.listeners)
            .into_iter()
            .enumerate()
        {
            match plan.kept.iter().find(|(old, _)| *old == index) {
                Some(&(_, new)) => kept.push(Active {
                    config: next.listeners[new].clone(),
                    ..active
                }),
                None => {
                    workers.remove(active.id);
                    tracing::info!(address = %active.address, "listener removed: no longer accepting");
                    report.listeners_removed.push(active.address.to_string());
                }
            }
        }
        if let Some(offered) = self.offered.get() {
            let removed: Vec<_> = (report.listeners_removed.iter())
                .filter_map(|address| address.parse().ok())
                .collect();
            let added: Vec<_> = bound
                .iter()
                .flat_map(|(_, b)| &b.listener.sockets)
                .collect();
            if let Err(error) = offered.update(&removed, &added) {
                tracing::warn!(%error, "a restart will not be able to take over the reloaded listeners");
            }
        }
        for (new, listener) in bound {
            let id = running.next_id;
            running.next_id += 1;
            println!("listening: {}", listener.url);
            report.listeners_added.push(listener.address.to_string());
            let (active, sockets) = Active::new(id, &next.listeners[new], listener);
            kept.push(active);
            workers.add(id, sockets);
        }
        running.listeners = kept;
        if let Some(targets) = self.cookie_targets.get() {
            let listeners: Vec<_> = running.listeners.iter().map(|l| l.address).collect();
            targets.update(&next.xdp_settings().ports, &listeners);
        }
        running.shared = shared;
        running.config = next;
        running.generation += 1;
        Ok(report)
    }

    /// [`Reloader::reload`], logged: what changed and each key that needs a
    /// restart, or why the file was refused.
    pub fn reload_logged(&self) -> Result<ReloadReport, ReloadError> {
        let started = std::time::Instant::now();
        let result = self.reload();
        let took = started.elapsed();
        match &result {
            Ok(report) => {
                for key in &report.restart_required {
                    tracing::warn!(key = %key, "reload: changed in the file but needs a restart; keeping the running value");
                }
                tracing::info!(
                    changed = ?report.changed,
                    added = ?report.listeners_added,
                    removed = ?report.listeners_removed,
                    ?took,
                    "configuration reloaded"
                );
            }
            Err(error) => {
                tracing::error!(%error, "reload refused; the running configuration keeps serving")
            }
        }
        result
    }
}

/// Top-level sections whose values differ (compared by `Debug`: the
/// config types are plain data without `PartialEq`).
fn changed_sections(old: &Config, new: &Config) -> Vec<&'static str> {
    let mut changed = Vec::new();
    macro_rules! compare {
        ($($section:ident),*) => {$(
            if format!("{:?}", old.$section) != format!("{:?}", new.$section) {
                changed.push(stringify!($section));
            }
        )*};
    }
    compare!(listeners, upstreams, routes, tiers, issuers, limits, forwarding, guard, xdp, tokens);
    changed
}

/// A configuration's listeners, bound at start.
pub struct Started {
    /// For the workers.
    pub listeners: Vec<workers::Listener>,
    /// For the reloader.
    pub active: Vec<Active>,
    /// `http://` or `https://` and the address each got.
    pub urls: Vec<String>,
}

/// `config`'s listeners at start, on the sockets `sockets_for` gives each
/// (inherited from a restart, or bound), as a reload tracks them.
pub fn start_listeners(
    config: &Config,
    mut sockets_for: impl FnMut(&ListenerConfig) -> std::io::Result<Vec<std::net::TcpListener>>,
) -> Result<Started, ListenerError> {
    let mut started = Started {
        listeners: Vec::new(),
        active: Vec::new(),
        urls: Vec::new(),
    };
    for (id, listener) in config.listeners.iter().enumerate() {
        // The certificate first: a bad one takes no socket.
        let tls = listeners::acceptor(listener, &config.state_dir)?;
        let sockets = sockets_for(listener).map_err(|source| ListenerError::Bind {
            address: listener.address,
            source,
        })?;
        let bound = listeners::wrap(listener, tls, sockets)?;
        started.urls.push(bound.url.clone());
        let (active, sockets) = Active::new(id, listener, bound);
        started.active.push(active);
        started.listeners.push(sockets);
    }
    Ok(started)
}
