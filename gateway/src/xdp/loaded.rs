//! Loading, pinning and attaching the program, and what stays behind.
//!
//! Everything is pinned under the pin root, the XDP link included, so a
//! gateway that stops leaves its program attached and its bans enforced by
//! the kernel alone. The next gateway on the same pin root adopts the maps
//! (see [`super::adopt`]) and swaps its program into the same link
//! (`bpf_link_update`): there is never a moment with no program attached.
use std::{
    io,
    os::fd::{AsFd, OwnedFd},
    path::{Path, PathBuf},
};

use aya::{
    programs::{
        links::{FdLink, PinnedLink},
        Xdp, XdpMode,
    },
    Ebpf, EbpfLoader,
};
use gateway_common::{attach_mode, maps as map_names, Config, LINK_PIN, PROGRAM, PROGRAM_PIN};

use super::{
    adopt::{self, Adoption},
    bpfsys, Attachment, EventHub, EventReader, PinnedMaps, XdpError, XdpSettings, OBJECT,
};

/// A loaded program with its pins. Dropping it marks the pins as left by
/// a stopped gateway, or removes them all (`detach_on_exit`, or a start
/// that failed before anything was there).
pub(super) struct Loaded {
    ebpf: Ebpf,
    pub(super) pin_root: PathBuf,
    /// The interface it guards (attached again when a lent pin root is
    /// taken back).
    pub(super) interface: String,
    detach_on_exit: bool,
    /// Pins from a previous gateway were found: a failed start keeps them.
    found_pins: bool,
    attached: bool,
    /// Not yet handed to the caller ([`super::KernelPath::take_event_reader`]).
    pub(super) events: Option<EventReader>,
    /// Handed to a new gateway ([`Loaded::release`]): the pins are its.
    pub(super) released: bool,
    /// Lent to a new gateway still starting (see [`super::handoff`]):
    /// what to write back if it is taken back.
    pub(super) lent: Option<super::handoff::Lent>,
    /// Started on a pin root the running gateway lent: until the hand-off
    /// is confirmed, a stop leaves the pins for it to take back.
    pub(super) on_loan: bool,
    /// The pin root's lock ([`super::bpffs::lock`]); declared last, so it
    /// is released after `drop` has left the pins as they should be.
    pub(super) lock: Option<OwnedFd>,
}

impl Loaded {
    pub(super) fn start(
        settings: &XdpSettings,
        events: &EventHub,
    ) -> Result<(Self, Attachment), XdpError> {
        let root = &settings.pin_root;
        super::bpffs::ensure_mounted(root)?;
        let lock = super::bpffs::lock(root).map_err(|locked| {
            // A running owner is named by its pid; one still starting is not yet.
            previous_owner(root)
                .err()
                .unwrap_or(XdpError::Bpffs(locked))
        })?;
        if settings.syn_cookies != super::syncookies::SynCookies::Off {
            let sysctl = Path::new(super::syncookies::SYSCTL);
            if let Some(before) = super::syncookies::ensure_always(sysctl)? {
                tracing::warn!(
                    before,
                    "xdp.syn_cookies: set net.ipv4.tcp_syncookies = 2 in this network namespace \
                     (the kernel answers every SYN with a cookie; see README)"
                );
            }
        }
        let previous = previous_owner(root)?;
        let adoption = Adoption::plan(root, settings.sizes)?;

        let mut loader = EbpfLoader::new();
        for (name, size) in adopt::max_entries(settings.sizes) {
            loader.map_max_entries(name, size);
        }
        adoption.configure(root, &mut loader);
        let ebpf = loader.load(OBJECT).map_err(load_refused)?;
        let mut loaded = Loaded {
            ebpf,
            pin_root: root.clone(),
            interface: settings.interface.clone(),
            detach_on_exit: settings.detach_on_exit,
            found_pins: adoption.found_pins() || previous.is_some(),
            attached: false,
            events: None,
            released: false,
            lent: None,
            on_loan: false,
            lock: Some(lock),
        };
        if adoption.found_pins() {
            tracing::info!(
                root = %root.display(),
                adopted = ?adoption.adopted,
                "adopting the kernel state a previous gateway left pinned"
            );
        }
        adoption.carry(root);

        let program = loaded.program()?;
        program.load().map_err(verifier_refused)?;
        // The ring buffer is the program's, not pinned: a new program
        // starts with its own.
        loaded.events = match aya_log::EbpfLogger::init_with_logger(
            &mut loaded.ebpf,
            super::events::Forwarder::new(events.clone()),
        ) {
            Ok(logger) => Some(EventReader::new(logger)),
            Err(error) => {
                tracing::warn!(%error, "no kernel events: the XDP program's log is unreadable");
                None
            }
        };
        let program = loaded.program()?;
        let program_pin = root.join(PROGRAM_PIN);
        // The previous program stays attached (its link holds it) until the
        // link is switched over below.
        adopt::remove_pin(&program_pin)?;
        program.pin(&program_pin).map_err(|source| XdpError::Pin {
            path: program_pin.clone(),
            source,
        })?;

        let mut maps = PinnedMaps::open(root)?;
        maps.set_protected_ports(&settings.ports)?;
        maps.set_allow_list(&settings.allow)?;
        let mut config = Config {
            mode: settings.mode.as_kernel(),
            default_budget: settings.default_budget,
            owner_pid: std::process::id(),
            udp: settings.udp.as_kernel(),
            syn_cookies: settings.syn_cookies.as_kernel(),
            syn_flood_rate: settings.syn_flood_rate,
            ..Config::default()
        };
        // Policy is in place before the first packet is judged.
        maps.set_config(config)?;

        let attach = loaded.attach(&settings.interface, previous)?;
        loaded.attached = true;
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

    pub(super) fn program(&mut self) -> Result<&mut Xdp, XdpError> {
        self.ebpf
            .program_mut(PROGRAM)
            .ok_or_else(|| XdpError::MissingObject(format!("program {PROGRAM}")))?
            .try_into()
            .map_err(XdpError::from)
    }

    /// Swaps the program into the pinned link when it guards the same
    /// interface; otherwise attaches afresh and pins the new link.
    pub(super) fn attach(
        &mut self,
        interface: &str,
        previous: Option<Previous>,
    ) -> Result<Attachment, XdpError> {
        let link_pin = self.pin_root.join(LINK_PIN);
        if let Some(attach) = self.replace_in_link(&link_pin, interface, previous)? {
            return Ok(attach);
        }
        let attach = self.attach_fresh(interface)?;
        Ok(attach)
    }

    /// `Ok(None)`: no usable pinned link (none, its interface is gone, or
    /// the gateway now guards another interface; a stale one is removed).
    fn replace_in_link(
        &mut self,
        link_pin: &Path,
        interface: &str,
        previous: Option<Previous>,
    ) -> Result<Option<Attachment>, XdpError> {
        let fd = match bpfsys::obj_get(link_pin) {
            Ok(fd) => fd,
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(XdpError::Adopt {
                    path: link_pin.to_owned(),
                    source,
                })
            }
        };
        let state = bpfsys::link_state(fd.as_fd()).ok().flatten();
        drop(fd);
        let wanted = interface_index(interface);
        let same_interface = state.is_some_and(|s| s.ifindex != 0 && s.ifindex == wanted);
        if !same_interface {
            if let Some(state) = state.filter(|s| s.ifindex != 0) {
                tracing::warn!(
                    old_ifindex = state.ifindex,
                    interface,
                    "the pinned program guards another interface: detaching it there"
                );
            }
            self.remove_link(link_pin)?;
            return Ok(None);
        }
        let link = PinnedLink::from_pin(link_pin)
            .map_err(|error| XdpError::Link(Box::new(error)))
            .and_then(|pinned| {
                aya::programs::xdp::XdpLink::try_from(FdLink::from(pinned))
                    .map_err(|error| XdpError::Link(Box::new(error)))
            })?;
        match self.program()?.attach_to_link(link) {
            Ok(_) => {
                let attach = match previous.map(|c| c.attach_mode) {
                    Some(attach_mode::SKB) => Attachment::Skb,
                    _ => Attachment::Native,
                };
                tracing::info!(interface, "replaced the pinned program in its link");
                Ok(Some(attach))
            }
            Err(error) => {
                tracing::warn!(%error, "replacing the program in its pinned link failed: reattaching");
                self.remove_link(link_pin)?;
                Ok(None)
            }
        }
    }

    fn remove_link(&self, link_pin: &Path) -> Result<(), XdpError> {
        bpfsys::remove_pinned_link(link_pin)
            .map(drop)
            .map_err(|source| XdpError::RemoveStale {
                path: link_pin.to_owned(),
                source,
            })
    }

    /// Native mode first (fastest), then generic skb mode; the link is
    /// pinned so the program outlives this process.
    fn attach_fresh(&mut self, interface: &str) -> Result<Attachment, XdpError> {
        let link_pin = self.pin_root.join(LINK_PIN);
        let program = self.program()?;
        let (link, attach) = match program.attach(interface, XdpMode::Driver) {
            Ok(link) => (link, Attachment::Native),
            Err(native) => match program.attach(interface, XdpMode::Skb) {
                Ok(link) => {
                    tracing::info!(interface, %native, "native XDP refused; attached in skb mode");
                    (link, Attachment::Skb)
                }
                Err(skb) => {
                    return Err(XdpError::Attach {
                        interface: interface.to_owned(),
                        native: Box::new(native),
                        skb: Box::new(skb),
                    })
                }
            },
        };
        let link = program.take_link(link)?;
        match FdLink::try_from(link) {
            Ok(fd_link) => {
                fd_link.pin(&link_pin).map_err(|source| XdpError::Pin {
                    path: link_pin.clone(),
                    source,
                })?;
            }
            // Attached through netlink: nothing to pin; the program
            // stays attached until `gateway xdp detach`.
            Err(error) => tracing::warn!(
                %error,
                "this kernel gave no bpf_link: a restart cannot replace the program atomically"
            ),
        }
        Ok(attach)
    }
}

impl Loaded {
    /// Hands a lent pin root over for good: the new gateway owns the pins
    /// now; nothing is written, removed or detached on drop after this.
    pub(super) fn release(&mut self) {
        self.lent = None;
        self.released = true;
        tracing::info!(
            root = %self.pin_root.display(),
            "handed the XDP pin root to the new gateway; bans this one decides from now on \
             are enforced in userspace"
        );
    }

    /// Clears the owner pid: the next gateway adopts without waiting.
    fn mark_stopped(&self) {
        let root = &self.pin_root;
        let stopped = PinnedMaps::open(root).and_then(|mut maps| {
            let config = maps.config()?;
            maps.set_config(Config {
                owner_pid: 0,
                ..config
            })
        });
        match stopped {
            Ok(()) => tracing::info!(
                root = %root.display(),
                "XDP stays attached with its bans; `gateway xdp detach` removes it"
            ),
            Err(error) => tracing::warn!(%error, "marking the pins as stopped failed"),
        }
    }
}

impl Drop for Loaded {
    fn drop(&mut self) {
        // The pins are another gateway's now, or for the lender to take back.
        if self.released || self.lent.is_some() || self.on_loan {
            return;
        }
        let root = self.pin_root.clone();
        if (self.detach_on_exit && self.attached) || (!self.attached && !self.found_pins) {
            match adopt::remove_pins(&root) {
                Ok(_) => {
                    tracing::info!(root = %root.display(), "detached XDP and removed its pins")
                }
                Err(error) => tracing::warn!(%error, "removing the pins failed"),
            }
            return;
        }
        if !root.join(map_names::CONFIG).exists() {
            tracing::info!(root = %root.display(), "the pins were removed while running (`gateway xdp detach --force`)");
            return;
        }
        // The program stays attached through its pinned link; the next
        // gateway sees no owner and takes over.
        self.mark_stopped();
    }
}

/// What a previous gateway left in `GW_CONFIG`, read as bytes so a
/// config that gained fields since still reads (fields are only appended).
#[derive(Clone, Copy, Debug)]
pub(super) struct Previous {
    pub(super) owner_pid: u32,
    pub(super) attach_mode: u32,
}

/// Refuses while the previous owner still runs; warns when it did not
/// stop cleanly.
fn previous_owner(root: &Path) -> Result<Option<Previous>, XdpError> {
    let path = root.join(map_names::CONFIG);
    let read = bpfsys::obj_get(&path).and_then(|fd| {
        let shape = bpfsys::map_shape(fd.as_fd())?;
        bpfsys::lookup(fd.as_fd(), shape, &0u32.to_ne_bytes())
    });
    let bytes = match read {
        Ok(bytes) => bytes,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(error) => {
            tracing::warn!(%error, "the pinned config is unreadable; replacing the pins");
            return Ok(None);
        }
    };
    let field = |offset: usize| {
        bytes
            .get(offset..offset + 4)
            .and_then(|b| <[u8; 4]>::try_from(b).ok())
            .map_or(0, u32::from_ne_bytes)
    };
    let previous = Previous {
        attach_mode: field(std::mem::offset_of!(Config, attach_mode)),
        owner_pid: field(std::mem::offset_of!(Config, owner_pid)),
    };
    let pid = previous.owner_pid;
    if pid != 0 && pid != std::process::id() {
        if process_alive(pid) {
            return Err(XdpError::PinRootInUse {
                root: root.to_owned(),
                pid,
            });
        }
        tracing::warn!(
            root = %root.display(),
            pid,
            "adopting pins left by a gateway that did not shut down cleanly"
        );
    }
    Ok(Some(previous))
}

/// Is `pid` a running process (ours to signal or not)?
pub fn process_alive(pid: u32) -> bool {
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

/// Every map, BTF and program load needs CAP_BPF: without it, say so
/// rather than "failed to create map".
fn load_refused(error: aya::EbpfError) -> XdpError {
    let missing = crate::caps::missing(&[crate::caps::BPF]);
    if missing.is_empty() {
        return XdpError::from(error);
    }
    XdpError::Capability {
        action: "creating the BPF maps",
        hint: crate::caps::needs(&missing),
        detail: error.to_string(),
    }
}

/// An XDP program loads only with CAP_NET_ADMIN (its program type) and
/// CAP_PERFMON (without it the verifier refuses its pointer arithmetic:
/// "prohibited for !root"); name the one missing, with the verifier's
/// reason instead of its whole log.
fn verifier_refused(error: aya::programs::ProgramError) -> XdpError {
    use crate::caps::{BPF, NET_ADMIN, PERFMON};
    let aya::programs::ProgramError::LoadError {
        io_error,
        verifier_log,
    } = &error
    else {
        return XdpError::from(error);
    };
    let Some(hint) = crate::caps::hint(io_error, &[BPF, NET_ADMIN, PERFMON]) else {
        return XdpError::from(error);
    };
    let log = verifier_log.to_string();
    let reason = log
        .lines()
        .map(str::trim)
        .find(|line| line.contains("!root"))
        .map(|line| format!(" (verifier: {line})"))
        .unwrap_or_default();
    XdpError::Capability {
        action: "loading the XDP program",
        hint,
        detail: format!("BPF_PROG_LOAD: {io_error}{reason}"),
    }
}
