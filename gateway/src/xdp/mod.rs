//! The kernel path: loads the embedded XDP program, pins its maps, program
//! and link under the pin root, attaches it (native, then skb, then a
//! userspace-only fallback). On shutdown the program stays attached with
//! its maps, so bans hold while no gateway runs; the next gateway adopts
//! them ([`adopt`], [`loaded`]). `detach_on_exit` removes everything.
//!
//! Policy flows one way: request tasks submit the guard's [`PolicyUpdate`]s through a
//! [`PolicyHandle`]; one [`PolicyWriter`] applies them in batches to the
//! kernel maps and [`UserspaceBans`] (only the latter when XDP is
//! unavailable): bans the kernel cannot enforce (a forwarded client
//! address, one client at an address) always go to userspace.
//!
//! The program's rare events (aya-log) are read by an [`EventReader`] the
//! caller drives on its runtime; see [`events`].
mod adopt;
mod bans;
pub mod bpffs;
mod bpfsys;
pub mod events;
pub mod full;
mod handoff;
mod loaded;
pub mod maps;
pub mod policy;
mod reconfigure;
pub mod syncookies;

use std::{
    io,
    path::{Path, PathBuf},
};

use aya::{
    programs::{links::LinkError, ProgramError},
    EbpfError,
};
use gateway_common::{attach_mode, mode, Budget};
use ipnet::IpNet;

pub use adopt::remove_pins;
pub use bpfsys::LinkState;
pub use events::{EventHub, EventReader};
pub use full::{FullCounters, WhenFull, Written};
pub use loaded::process_alive;
pub use maps::{Counters, MapsError, PinnedMaps};
pub use policy::{PolicyHandle, PolicySink, PolicyWriter, Split, UserspaceBans};
pub use reconfigure::{KernelWrites, ReconfigureError};

use crate::guard::PolicyUpdate;
use loaded::Loaded;

/// The XDP object built by `cargo xtask build`, embedded at compile time.
static OBJECT: &[u8] = aya::include_bytes_aligned!(env!("GATEWAY_XDP_OBJECT_PATH"));

/// Default pin root, as `bpftool map dump pinned /sys/fs/bpf/gateway/<MAP>` expects.
pub const DEFAULT_PIN_ROOT: &str = "/sys/fs/bpf/gateway";

/// Enforce (drop) or monitor (count what would be dropped, pass all).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    #[default]
    Enforce,
    Monitor,
}

/// What the kernel does with UDP to a protected port (`xdp.udp`). Never
/// charged to its source either way; a ban still drops it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UdpPolicy {
    #[default]
    Pass,
    Drop,
}

impl UdpPolicy {
    fn as_kernel(self) -> u32 {
        match self {
            UdpPolicy::Pass => gateway_common::udp::PASS,
            UdpPolicy::Drop => gateway_common::udp::DROP,
        }
    }

    pub fn from_kernel(value: u32) -> Self {
        if value == gateway_common::udp::DROP {
            UdpPolicy::Drop
        } else {
            UdpPolicy::Pass
        }
    }
}

impl From<EbpfError> for XdpError {
    fn from(error: EbpfError) -> Self {
        XdpError::Load(Box::new(error))
    }
}

impl From<ProgramError> for XdpError {
    fn from(error: ProgramError) -> Self {
        XdpError::Program(Box::new(error))
    }
}

impl Mode {
    fn as_kernel(self) -> u32 {
        match self {
            Mode::Enforce => mode::ENFORCE,
            Mode::Monitor => mode::MONITOR,
        }
    }

    pub fn from_kernel(value: u32) -> Self {
        if value == mode::MONITOR {
            Mode::Monitor
        } else {
            Mode::Enforce
        }
    }
}

/// Map sizes: each map is bounded, and LRU maps evict their oldest entries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MapSizes {
    pub bans: u32,
    pub budgets: u32,
    pub state: u32,
    pub allow: u32,
    pub prefix_bans: u32,
    pub prefix_budgets: u32,
}

impl Default for MapSizes {
    fn default() -> Self {
        Self {
            bans: gateway_common::DEFAULT_BANS_ENTRIES,
            budgets: gateway_common::DEFAULT_BUDGETS_ENTRIES,
            state: gateway_common::DEFAULT_STATE_ENTRIES,
            allow: gateway_common::DEFAULT_ALLOW_ENTRIES,
            prefix_bans: gateway_common::DEFAULT_PREFIX_BANS_ENTRIES,
            prefix_budgets: gateway_common::DEFAULT_PREFIX_BUDGETS_ENTRIES,
        }
    }
}

/// Everything the kernel path needs to start.
#[derive(Clone, Debug)]
pub struct XdpSettings {
    pub interface: String,
    pub ports: Vec<u16>,
    pub pin_root: PathBuf,
    pub mode: Mode,
    /// Fail instead of falling back to userspace-only enforcement.
    pub require_xdp: bool,
    pub allow: Vec<IpNet>,
    /// Budget for sources the gateway has not sized by tier.
    pub default_budget: Budget,
    pub sizes: MapSizes,
    /// Detach and unpin on a clean stop instead of leaving the program
    /// attached for the next gateway.
    pub detach_on_exit: bool,
    /// What a full ban map does with one more ban.
    pub bans_full: WhenFull,
    /// UDP to a protected port: passed or dropped, never metered.
    pub udp: UdpPolicy,
    /// Spoof-resistant SYN budgets (see [`syncookies`]).
    pub syn_cookies: syncookies::SynCookies,
    /// Protected SYNs/s (all sources) past which every source is in
    /// SYN-cookie mode; 0 = per source only.
    pub syn_flood_rate: u32,
}

/// Default budget for unknown sources: generous enough for a browser or a
/// busy API client, far below what a flood sends.
pub const DEFAULT_BUDGET: Budget = Budget {
    syn_per_sec: 200,
    syn_burst: 400,
    pkt_per_sec: 20_000,
    pkt_burst: 40_000,
    tier: 0,
};

#[derive(Debug, thiserror::Error)]
pub enum XdpError {
    #[error(transparent)]
    Bpffs(#[from] bpffs::BpffsError),
    #[error("pin root {root} belongs to a running gateway (pid {pid}); stop it or choose another pin root")]
    PinRootInUse { root: PathBuf, pid: u32 },
    #[error("cannot read the pinned {path}: {source}")]
    Adopt { path: PathBuf, source: io::Error },
    #[error("the pinned XDP link: {0}")]
    Link(Box<LinkError>),
    #[error("cannot remove stale pin {path}: {source}")]
    RemoveStale { path: PathBuf, source: io::Error },
    #[error(
        "loading the XDP program failed (it needs root, or CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN): {0}"
    )]
    Load(Box<EbpfError>),
    #[error("the embedded XDP object has no {0}: the gateway and gateway-ebpf were built from different sources")]
    MissingObject(String),
    #[error("XDP program: {0}")]
    Program(Box<ProgramError>),
    /// The kernel refused for want of a capability, named.
    #[error("{action} {hint}: {detail}")]
    Capability {
        action: &'static str,
        hint: String,
        detail: String,
    },
    #[error("cannot pin {path}: {source}")]
    Pin {
        path: PathBuf,
        source: aya::pin::PinError,
    },
    #[error(transparent)]
    Maps(#[from] MapsError),
    #[error(transparent)]
    Syncookies(#[from] syncookies::SyncookiesError),
    #[error("cannot attach XDP to {interface}: native mode: {native}; skb mode: {skb}")]
    Attach {
        interface: String,
        native: Box<ProgramError>,
        skb: Box<ProgramError>,
    },
}

/// How the gateway is enforcing bans right now.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Enforcement {
    /// The XDP program is attached.
    Kernel { attach: Attachment },
    /// No XDP: bans are checked by the gateway when it accepts a connection.
    UserspaceOnly { reason: String },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attachment {
    Native,
    Skb,
}

impl Attachment {
    pub fn name(self) -> &'static str {
        match self {
            Attachment::Native => attach_mode::name(attach_mode::NATIVE),
            Attachment::Skb => attach_mode::name(attach_mode::SKB),
        }
    }
}

/// The running kernel path. Dropping it leaves the program attached for the
/// next gateway (or, with `detach_on_exit`, detaches it and removes its pins).
pub struct KernelPath {
    loaded: Option<Loaded>,
    enforcement: Enforcement,
    userspace_bans: UserspaceBans,
    events: EventHub,
    bans_full: WhenFull,
    handed_off: handoff::HandedOff,
    /// Tells [`KernelWrites::until_handed_off`] (the admin listener stops
    /// accepting then).
    handed_off_notice: tokio::sync::watch::Sender<bool>,
}

impl KernelPath {
    /// Loads, pins and attaches; falls back to userspace-only enforcement
    /// (one warning) unless `settings.require_xdp`.
    pub fn start(settings: &XdpSettings) -> Result<Self, XdpError> {
        let events = EventHub::default();
        match Loaded::start(settings, &events) {
            Ok((loaded, attach)) => Ok(Self {
                loaded: Some(loaded),
                enforcement: Enforcement::Kernel { attach },
                userspace_bans: UserspaceBans::default(),
                events,
                bans_full: settings.bans_full,
                handed_off: Default::default(),
                handed_off_notice: tokio::sync::watch::Sender::new(false),
            }),
            Err(error) if !settings.require_xdp => {
                tracing::warn!(
                    %error,
                    "XDP unavailable: enforcing bans in userspace only; banned and over-budget \
                     traffic will reach the gateway (use --require-xdp to fail instead)"
                );
                Ok(Self {
                    loaded: None,
                    enforcement: Enforcement::UserspaceOnly {
                        reason: error.to_string(),
                    },
                    userspace_bans: UserspaceBans::default(),
                    events,
                    bans_full: settings.bans_full,
                    handed_off: Default::default(),
                    handed_off_notice: tokio::sync::watch::Sender::new(false),
                })
            }
            Err(error) => Err(error),
        }
    }

    pub fn enforcement(&self) -> &Enforcement {
        &self.enforcement
    }

    /// The ban table the proxy checks at accept and per request: every
    /// ban without XDP, else those the kernel cannot enforce.
    pub fn userspace_bans(&self) -> UserspaceBans {
        self.userspace_bans.clone()
    }

    /// The sink the policy writer should own: the pinned maps beside the
    /// userspace ban table, or the userspace ban table alone.
    pub fn policy_sink(&self) -> Result<Box<dyn PolicySink>, XdpError> {
        match &self.loaded {
            Some(loaded) => Ok(Box::new(handoff::UntilHandedOff {
                kernel: Split {
                    kernel: PinnedMaps::open(&loaded.pin_root)?.when_full(self.bans_full),
                    userspace: self.userspace_bans.clone(),
                },
                userspace: self.userspace_bans.clone(),
                handed_off: self.handed_off.clone(),
            })),
            None => Ok(Box::new(self.userspace_bans.clone())),
        }
    }

    /// Lends the pin root to the gateway `pid` starting on it while this
    /// one serves (see [`handoff`]): this one keeps writing its policy
    /// there until [`KernelPath::hand_off`] or [`KernelPath::take_back`].
    /// `false` when this gateway holds no pin root or lending failed.
    pub fn lend(&mut self, pid: u32) -> bool {
        let Some(loaded) = self.loaded.as_mut() else {
            return false;
        };
        let _writes = self.handed_off.lock();
        match loaded.lend(pid) {
            Ok(()) => true,
            Err(error) => {
                tracing::warn!(%error, "lending the XDP pin root failed: this one keeps it");
                false
            }
        }
    }

    /// Hands the lent pin root off for good: no map is written from now
    /// on. `false` when nothing was lent.
    pub fn hand_off(&mut self) -> bool {
        let Some(loaded) = self.loaded.as_mut().filter(|l| l.lent.is_some()) else {
            return false;
        };
        let mut handed_off = self.handed_off.lock();
        if !*handed_off {
            loaded.release();
            *handed_off = true;
            self.handed_off_notice.send_replace(true);
        }
        true
    }

    /// What a reload writes the kernel's settings with, while XDP is
    /// attached: refused once the pin root is handed off.
    pub fn writes(&self) -> Option<KernelWrites> {
        self.loaded.as_ref().map(|loaded| {
            KernelWrites::new(
                loaded.pin_root.clone(),
                self.handed_off.clone(),
                self.handed_off_notice.subscribe(),
            )
        })
    }

    /// Takes a lent pin root back (the borrower went away or ran out of
    /// time); `Ok(false)` while the borrower still holds it: try again.
    pub fn take_back(&mut self) -> Result<bool, XdpError> {
        match self.loaded.as_mut() {
            Some(loaded) => loaded.take_back(),
            None => Ok(true),
        }
    }

    /// This one started on a pin root the running gateway lent: until
    /// [`KernelPath::confirm`], stopping leaves the pins for it to take back.
    pub fn on_loan(&mut self) {
        if let Some(loaded) = self.loaded.as_mut() {
            loaded.on_loan = true;
        }
    }

    /// The lender handed the pin root off: it is this one's.
    pub fn confirm(&mut self) {
        if let Some(loaded) = self.loaded.as_mut() {
            loaded.on_loan = false;
        }
    }

    pub fn pin_root(&self) -> Option<&Path> {
        self.loaded.as_ref().map(|loaded| loaded.pin_root.as_path())
    }

    /// The kernel events' hub, while the program is loaded.
    pub fn events(&self) -> Option<EventHub> {
        self.loaded.as_ref().map(|_| self.events.clone())
    }

    /// The reader of the program's event ring buffer, once: spawn its
    /// [`EventReader::run`] on the control runtime, or no event is seen.
    pub fn take_event_reader(&mut self) -> Option<EventReader> {
        self.loaded.as_mut().and_then(|loaded| loaded.events.take())
    }
}

impl PolicySink for Box<dyn PolicySink> {
    fn apply(&mut self, update: &PolicyUpdate) -> Result<Written, MapsError> {
        (**self).apply(update)
    }
    fn commit(&mut self) -> Result<(), MapsError> {
        (**self).commit()
    }
    fn remove_expired_bans(&mut self, now_ns: u64) -> Result<usize, MapsError> {
        (**self).remove_expired_bans(now_ns)
    }
}

/// The XDP link pinned under `root`, if any (its `ifindex` is 0 once the
/// interface is gone).
pub fn pinned_link(root: &Path) -> io::Result<Option<LinkState>> {
    match bpfsys::obj_get(&root.join(gateway_common::LINK_PIN)) {
        Ok(fd) => bpfsys::link_state(std::os::fd::AsFd::as_fd(&fd)),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(error) => Err(error),
    }
}
