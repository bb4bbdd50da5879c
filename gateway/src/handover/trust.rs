//! Whom a hand-over trusts: listening sockets go to, and come from, only
//! this user or root, through a state dir and a socket file nobody else can
//! write (else another local user could put their own socket there and hand
//! the gateway their listeners, or take ours).
use std::{
    io,
    os::{
        fd::{AsRawFd, BorrowedFd},
        unix::fs::{FileTypeExt, MetadataExt},
    },
    path::Path,
};

use super::HandoverError;

/// This process's effective uid.
pub fn own_uid() -> u32 {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() }
}

/// May a process or file of `uid` hand sockets to this one (or take them)?
pub fn trusted_uid(uid: u32) -> bool {
    uid == own_uid() || uid == 0
}

/// The uid of the process at the other end of a unix stream (as of its
/// `connect` or `listen`).
pub fn peer_uid(socket: BorrowedFd<'_>) -> io::Result<u32> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: `cred` and `len` are valid out-parameters of the right size.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            std::ptr::from_mut(&mut cred).cast(),
            &mut len,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(cred.uid)
}

/// Refuses a peer that is neither this user nor root.
pub fn check_peer(path: &Path, socket: BorrowedFd<'_>) -> Result<(), HandoverError> {
    let uid = peer_uid(socket).map_err(|source| HandoverError::Exchange {
        path: path.to_owned(),
        source,
    })?;
    if trusted_uid(uid) {
        return Ok(());
    }
    Err(HandoverError::Untrusted {
        path: path.to_owned(),
        reason: format!(
            "the process at the other end runs as uid {uid}, not this user (uid {}) or root",
            own_uid()
        ),
    })
}

/// What a path must be.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    Dir,
    Socket,
}

/// Refuses `path` unless it is a directory (followed) or a socket (not
/// followed) owned by this user or root and not writable by group or others.
pub fn check_path(path: &Path, expect: Expect) -> Result<(), HandoverError> {
    let refuse = |reason: String| HandoverError::Untrusted {
        path: path.to_owned(),
        reason,
    };
    let metadata = match expect {
        Expect::Dir => std::fs::metadata(path),
        Expect::Socket => std::fs::symlink_metadata(path),
    }
    .map_err(|source| HandoverError::Exchange {
        path: path.to_owned(),
        source,
    })?;
    let kind_ok = match expect {
        Expect::Dir => metadata.is_dir(),
        Expect::Socket => metadata.file_type().is_socket(),
    };
    if !kind_ok {
        let what = match expect {
            Expect::Dir => "not a directory",
            Expect::Socket => "not a unix socket",
        };
        return Err(refuse(what.into()));
    }
    if !trusted_uid(metadata.uid()) {
        return Err(refuse(format!(
            "owned by uid {}, not this user (uid {}) or root",
            metadata.uid(),
            own_uid()
        )));
    }
    let mode = metadata.mode() & 0o7777;
    if mode & 0o022 != 0 {
        return Err(refuse(format!(
            "writable by group or others (mode {mode:o}): `chmod go-w` it"
        )));
    }
    Ok(())
}
