//! The kernel path: loads the embedded XDP program, pins its maps under the
//! pin root, attaches it (native, then skb, then a userspace-only fallback),
//! and undoes all of that on shutdown.
//!
//! Policy flows one way: request tasks submit the guard's [`PolicyUpdate`]s through a
//! [`PolicyHandle`]; one [`PolicyWriter`] applies them in batches to the
//! kernel maps and [`UserspaceBans`] (only the latter when XDP is
//! unavailable): bans the kernel cannot enforce (a forwarded client
//! address, one client at an address) always go to userspace.
pub mod bpffs;
pub mod maps;
pub mod policy;
pub mod syncookies;

use std::{
    io,
    net::IpAddr,
    path::{Path, PathBuf},
};

use aya::{
    programs::{xdp::XdpLinkId, ProgramError, Xdp, XdpMode},
    Ebpf, EbpfError, EbpfLoader,
};
use gateway_common::{
    attach_mode, maps as map_names, mode, Ban, Budget, Config, PROGRAM, PROGRAM_PIN,
};
use ipnet::IpNet;

pub use maps::{Counters, MapsError, PinnedMaps};
pub use policy::{PolicyHandle, PolicySink, PolicyWriter, Split, UserspaceBans};

use crate::{clock::monotonic_ns, guard::PolicyUpdate};

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
}

impl Default for MapSizes {
    fn default() -> Self {
        Self {
            bans: gateway_common::DEFAULT_BANS_ENTRIES,
            budgets: gateway_common::DEFAULT_BUDGETS_ENTRIES,
            state: gateway_common::DEFAULT_STATE_ENTRIES,
            allow: gateway_common::DEFAULT_ALLOW_ENTRIES,
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
    #[error("cannot remove stale pin {path}: {source}")]
    RemoveStale { path: PathBuf, source: io::Error },
    #[error("loading the XDP program failed (it needs root, or CAP_BPF and CAP_NET_ADMIN): {0}")]
    Load(Box<EbpfError>),
    #[error("the embedded XDP object has no {0}: the gateway and gateway-ebpf were built from different sources")]
    MissingObject(String),
    #[error("XDP program: {0}")]
    Program(Box<ProgramError>),
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

/// The running kernel path. Dropping it detaches the program and removes
/// its pins.
pub struct KernelPath {
    loaded: Option<Loaded>,
    enforcement: Enforcement,
    userspace_bans: UserspaceBans,
}

impl KernelPath {
    /// Loads, pins and attaches; falls back to userspace-only enforcement
    /// (one warning) unless `settings.require_xdp`.
    pub fn start(settings: &XdpSettings) -> Result<Self, XdpError> {
        match Loaded::start(settings) {
            Ok((loaded, attach)) => Ok(Self {
                loaded: Some(loaded),
                enforcement: Enforcement::Kernel { attach },
                userspace_bans: UserspaceBans::default(),
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
            Some(loaded) => Ok(Box::new(Split {
                kernel: PinnedMaps::open(&loaded.pin_root)?,
                userspace: self.userspace_bans.clone(),
            })),
            None => Ok(Box::new(self.userspace_bans.clone())),
        }
    }

    pub fn pin_root(&self) -> Option<&Path> {
        self.loaded.as_ref().map(|loaded| loaded.pin_root.as_path())
    }
}

impl PolicySink for Box<dyn PolicySink> {
    fn apply(&mut self, update: &PolicyUpdate) -> Result<(), MapsError> {
        (**self).apply(update)
    }
    fn commit(&mut self) -> Result<(), MapsError> {
        (**self).commit()
    }
    fn remove_expired_bans(&mut self, now_ns: u64) -> Result<usize, MapsError> {
        (**self).remove_expired_bans(now_ns)
    }
}

/// A loaded program with its pins; `Drop` removes them.
struct Loaded {
    ebpf: Ebpf,
    pin_root: PathBuf,
    pinned: Vec<PathBuf>,
    link: Option<XdpLinkId>,
}

impl Loaded {
    fn start(settings: &XdpSettings) -> Result<(Self, Attachment), XdpError> {
        let root = &settings.pin_root;
        bpffs::ensure_mounted(root)?;
        let carried_bans = take_over_stale_pins(root)?;
        if settings.syn_cookies != syncookies::SynCookies::Off {
            if let Some(before) = syncookies::ensure_always(Path::new(syncookies::SYSCTL))? {
                tracing::warn!(
                    before,
                    "xdp.syn_cookies: set net.ipv4.tcp_syncookies = 2 in this network namespace \
                     (the kernel answers every SYN with a cookie; see README)"
                );
            }
        }

        let sizes = settings.sizes;
        let ebpf = EbpfLoader::new()
            .map_max_entries(map_names::BANS, sizes.bans)
            .map_max_entries(map_names::BUDGETS, sizes.budgets)
            .map_max_entries(map_names::STATE, sizes.state)
            .map_max_entries(map_names::ALLOW, sizes.allow)
            .load(OBJECT)?;
        let mut loaded = Loaded {
            ebpf,
            pin_root: root.clone(),
            pinned: Vec::new(),
            link: None,
        };
        loaded.pin_maps()?;
        let program = loaded.program()?;
        program.load()?;
        let program_pin = root.join(PROGRAM_PIN);
        program.pin(&program_pin).map_err(|source| XdpError::Pin {
            path: program_pin.clone(),
            source,
        })?;
        loaded.pinned.push(program_pin);

        let mut maps = PinnedMaps::open(root)?;
        maps.protect_ports(&settings.ports)?;
        for net in &settings.allow {
            maps.allow(net)?;
        }
        let mut config = Config {
            mode: settings.mode.as_kernel(),
            default_budget: settings.default_budget,
            owner_pid: std::process::id(),
            syn_cookies: settings.syn_cookies.as_kernel(),
            syn_flood_rate: settings.syn_flood_rate,
            ..Config::default()
        };
        // Policy is in place before the first packet is judged.
        maps.set_config(config)?;
        let now = monotonic_ns();
        for (ip, ban) in carried_bans {
            if ban.banned_until_ns > now {
                maps.restore_ban(ip, ban)?;
            }
        }

        let attach = loaded.attach(&settings.interface)?;
        config.ifindex = interface_index(&settings.interface);
        config.attach_mode = match attach {
            Attachment::Native => attach_mode::NATIVE,
            Attachment::Skb => attach_mode::SKB,
        };
        let name = settings.interface.as_bytes();
        let len = name.len().min(config.ifname.len() - 1);
        config.ifname[..len].copy_from_slice(&name[..len]);
        maps.set_config(config)?;
        Ok((loaded, attach))
    }

    fn program(&mut self) -> Result<&mut Xdp, XdpError> {
        self.ebpf
            .program_mut(PROGRAM)
            .ok_or_else(|| XdpError::MissingObject(format!("program {PROGRAM}")))?
            .try_into()
            .map_err(XdpError::from)
    }

    fn pin_maps(&mut self) -> Result<(), XdpError> {
        for name in map_names::ALL {
            let map = self
                .ebpf
                .map(name)
                .ok_or_else(|| XdpError::MissingObject(format!("map {name}")))?;
            let path = self.pin_root.join(name);
            map.pin(&path).map_err(|source| XdpError::Pin {
                path: path.clone(),
                source,
            })?;
            self.pinned.push(path);
        }
        Ok(())
    }

    /// Native mode first (fastest), then generic skb mode.
    fn attach(&mut self, interface: &str) -> Result<Attachment, XdpError> {
        let program = self.program()?;
        let native = match program.attach(interface, XdpMode::Driver) {
            Ok(link) => {
                self.link = Some(link);
                return Ok(Attachment::Native);
            }
            Err(error) => error,
        };
        match program.attach(interface, XdpMode::Skb) {
            Ok(link) => {
                tracing::info!(interface, %native, "native XDP refused; attached in skb mode");
                self.link = Some(link);
                Ok(Attachment::Skb)
            }
            Err(skb) => Err(XdpError::Attach {
                interface: interface.to_owned(),
                native: Box::new(native),
                skb: Box::new(skb),
            }),
        }
    }
}

impl Drop for Loaded {
    fn drop(&mut self) {
        if let Some(link) = self.link.take() {
            if let Ok(program) = self.program() {
                if let Err(error) = program.detach(link) {
                    tracing::warn!(%error, "detaching XDP failed");
                }
            }
        }
        for path in &self.pinned {
            if let Err(error) = std::fs::remove_file(path) {
                tracing::warn!(path = %path.display(), %error, "removing pin failed");
            }
        }
        // Only succeeds when empty, which is what we want.
        let _ = std::fs::remove_dir(&self.pin_root);
    }
}

/// Pins left by a gateway that did not shut down cleanly: refuse if their
/// owner still runs; otherwise keep their unexpired bans and remove them.
/// (Their program is not attached any more: its link died with its process.)
fn take_over_stale_pins(root: &Path) -> Result<Vec<(IpAddr, Ban)>, XdpError> {
    let mut carried = Vec::new();
    if root.join(map_names::CONFIG).exists() {
        match PinnedMaps::open(root) {
            Ok(old) => {
                let pid = old.config().map(|config| config.owner_pid).unwrap_or(0);
                if pid != 0 && pid != std::process::id() && process_alive(pid) {
                    return Err(XdpError::PinRootInUse {
                        root: root.to_owned(),
                        pid,
                    });
                }
                carried = old.bans().unwrap_or_default();
                tracing::warn!(
                    root = %root.display(),
                    bans = carried.len(),
                    "replacing pins left by a gateway that did not shut down cleanly"
                );
            }
            Err(error) => tracing::warn!(%error, "stale pins are unreadable; replacing them"),
        }
    }
    for name in map_names::ALL.iter().copied().chain([PROGRAM_PIN]) {
        let path = root.join(name);
        match std::fs::remove_file(&path) {
            Ok(()) => {}
            Err(error) if error.kind() == io::ErrorKind::NotFound => {}
            Err(source) => return Err(XdpError::RemoveStale { path, source }),
        }
    }
    Ok(carried)
}

fn process_alive(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    // SAFETY: signal 0 only checks for existence and permission.
    let rc = unsafe { libc::kill(pid, 0) };
    rc == 0 || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

fn interface_index(name: &str) -> u32 {
    let Ok(c_name) = std::ffi::CString::new(name) else {
        return 0;
    };
    // SAFETY: NUL-terminated string valid for the call.
    unsafe { libc::if_nametoindex(c_name.as_ptr()) }
}
