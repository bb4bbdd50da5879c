//! Making sure the pin root lives on a BPF filesystem.
//!
//! Many hosts (ours included) do not mount bpffs at `/sys/fs/bpf`; pins made
//! on any other filesystem fail. We mount it when it is absent rather than
//! make every operator learn that.
use std::{
    ffi::CString,
    io,
    os::{
        fd::{AsRawFd, OwnedFd},
        unix::ffi::OsStrExt,
    },
    path::{Path, PathBuf},
};

const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
const STANDARD_MOUNT: &str = "/sys/fs/bpf";

#[derive(Debug, thiserror::Error)]
pub enum BpffsError {
    #[error("cannot inspect {path}: {source}")]
    Stat { path: PathBuf, source: io::Error },
    #[error(
        "cannot reach the pin root {pin_root}: {path} is not searchable by this user \
         ({source}); systemd mounts /sys/fs/bpf 0700 root: run as packaging/gateway.service \
         does (TemporaryFileSystem=/sys/fs/bpf, BindPaths= the pin root), or pick a pin \
         root this user can reach"
    )]
    Unreachable {
        pin_root: PathBuf,
        path: PathBuf,
        source: io::Error,
    },
    #[error(
        "{path} is not on a BPF filesystem and mounting one there failed ({source}); \
         mount it yourself (`mount -t bpf bpf {path}`) or run with CAP_SYS_ADMIN"
    )]
    Mount { path: PathBuf, source: io::Error },
    #[error("cannot create pin directory {path}: {source}{hint}")]
    CreateDir {
        path: PathBuf,
        source: io::Error,
        hint: &'static str,
    },
    #[error("pin root {path} is held by another gateway (starting or running); stop it or choose another pin root")]
    Locked { path: PathBuf },
    #[error("cannot lock pin root {path}: {source}{hint}")]
    Lock {
        path: PathBuf,
        source: io::Error,
        hint: &'static str,
    },
}

/// Takes the pin root for this process: an exclusive `flock` on its
/// directory, held as long as the returned descriptor. The owner pid in
/// `GW_CONFIG` is only written once a start is well under way; the lock
/// also covers that window, so two gateways starting at once (or `gateway
/// xdp detach` during a start) cannot both act on the same pins.
pub fn lock(pin_root: &Path) -> Result<OwnedFd, BpffsError> {
    let failed = |source| BpffsError::Lock {
        path: pin_root.to_owned(),
        hint: not_ours(&source),
        source,
    };
    let dir = std::fs::File::open(pin_root).map_err(failed)?;
    // SAFETY: flock on a descriptor we own; no pointers.
    if unsafe { libc::flock(dir.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        let error = io::Error::last_os_error();
        if error.raw_os_error() == Some(libc::EWOULDBLOCK) {
            return Err(BpffsError::Locked {
                path: pin_root.to_owned(),
            });
        }
        return Err(failed(error));
    }
    Ok(dir.into())
}

/// Is `path` (which must exist) on bpffs?
pub fn is_bpffs(path: &Path) -> Result<bool, BpffsError> {
    let c_path = c_string(path);
    // SAFETY: zeroed statfs is a valid out-parameter.
    let mut stat: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `c_path` is NUL-terminated and `stat` is writable.
    if unsafe { libc::statfs(c_path.as_ptr(), &mut stat) } != 0 {
        return Err(BpffsError::Stat {
            path: path.to_owned(),
            source: io::Error::last_os_error(),
        });
    }
    #[allow(
        clippy::unnecessary_cast,
        reason = "f_type's width differs by libc target"
    )]
    Ok(stat.f_type as i64 == BPF_FS_MAGIC)
}

/// Ensures `pin_root` exists on bpffs, mounting bpffs at `/sys/fs/bpf` (for
/// roots below it) or at `pin_root` itself when needed.
pub fn ensure_mounted(pin_root: &Path) -> Result<(), BpffsError> {
    let existing = nearest_existing(pin_root)?;
    if !is_bpffs(existing)? {
        let mount_point = if pin_root.starts_with(STANDARD_MOUNT) {
            PathBuf::from(STANDARD_MOUNT)
        } else {
            pin_root.to_owned()
        };
        create_dir(&mount_point)?;
        mount_bpffs(&mount_point)?;
    }
    create_dir(pin_root)
}

/// The pin root or its nearest existing ancestor. A directory on the way
/// that this user may not search (bpffs mounted 0700 root) is named as
/// such, not mistaken for a missing bpffs.
fn nearest_existing(pin_root: &Path) -> Result<&Path, BpffsError> {
    for path in pin_root.ancestors() {
        match path.try_exists() {
            Ok(true) => return Ok(path),
            Ok(false) => {}
            Err(source) if crate::caps::is_permission(&source) => {
                let parent = path.parent().unwrap_or(path);
                return Err(BpffsError::Unreachable {
                    pin_root: pin_root.to_owned(),
                    path: parent.to_owned(),
                    source,
                });
            }
            Err(_) => {}
        }
    }
    Ok(Path::new("/"))
}

fn create_dir(path: &Path) -> Result<(), BpffsError> {
    std::fs::create_dir_all(path).map_err(|source| BpffsError::CreateDir {
        path: path.to_owned(),
        hint: not_ours(&source),
        source,
    })
}

/// Why a pin root is out of reach for a gateway run as its own user.
fn not_ours(error: &io::Error) -> &'static str {
    if crate::caps::is_permission(error) {
        " (the pin root, and the way to it, must be this user's: \
         packaging/gateway.service makes it in ExecStartPre and binds it in)"
    } else {
        ""
    }
}

fn mount_bpffs(path: &Path) -> Result<(), BpffsError> {
    let target = c_string(path);
    let fstype = c"bpf";
    let options = c"mode=0700";
    // SAFETY: all pointers are NUL-terminated strings that outlive the call.
    let rc = unsafe {
        libc::mount(
            fstype.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            0,
            options.as_ptr().cast(),
        )
    };
    if rc != 0 {
        return Err(BpffsError::Mount {
            path: path.to_owned(),
            source: io::Error::last_os_error(),
        });
    }
    tracing::info!(path = %path.display(), "mounted bpffs");
    Ok(())
}

fn c_string(path: &Path) -> CString {
    // Paths from the OS cannot contain NUL; a user-typed one with NUL is
    // turned into a path that cannot exist, so the syscall reports it.
    CString::new(path.as_os_str().as_bytes()).unwrap_or_else(|_| c"/\u{1}nul-in-path".into())
}
