//! Passing descriptors over the hand-over socket (`SCM_RIGHTS`), one per
//! byte.
use std::{
    io, mem,
    os::fd::{FromRawFd, OwnedFd, RawFd},
};

/// Room for one descriptor's control message.
const CMSG_ROOM: usize = 64;

/// Sends one byte carrying `fd`.
pub(super) fn send_fd(socket: RawFd, fd: RawFd) -> io::Result<()> {
    let mut byte = [b'F'];
    let mut iov = libc::iovec {
        iov_base: byte.as_mut_ptr().cast(),
        iov_len: 1,
    };
    let mut control = [0u8; CMSG_ROOM];
    // SAFETY: zeroed msghdr is valid; every pointer set below outlives the
    // call, and the control buffer has room for one descriptor (checked).
    unsafe {
        let space = libc::CMSG_SPACE(mem::size_of::<RawFd>() as u32) as usize;
        if space > control.len() {
            return Err(io::Error::other("control buffer too small"));
        }
        let mut message: libc::msghdr = mem::zeroed();
        message.msg_iov = &mut iov;
        message.msg_iovlen = 1;
        message.msg_control = control.as_mut_ptr().cast();
        message.msg_controllen = space as _;
        let header = libc::CMSG_FIRSTHDR(&message);
        if header.is_null() {
            return Err(io::Error::other("no room for the control message"));
        }
        (*header).cmsg_level = libc::SOL_SOCKET;
        (*header).cmsg_type = libc::SCM_RIGHTS;
        (*header).cmsg_len = libc::CMSG_LEN(mem::size_of::<RawFd>() as u32) as _;
        std::ptr::write_unaligned(libc::CMSG_DATA(header).cast::<RawFd>(), fd);
        if libc::sendmsg(socket, &message, libc::MSG_NOSIGNAL) != 1 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Receives one byte and the descriptor it carries (close-on-exec), if any.
pub(super) fn receive_fd(socket: RawFd) -> io::Result<Option<OwnedFd>> {
    let mut byte = [0u8; 1];
    let mut iov = libc::iovec {
        iov_base: byte.as_mut_ptr().cast(),
        iov_len: 1,
    };
    let mut control = [0u8; CMSG_ROOM];
    // SAFETY: as in `send_fd`; descriptors the kernel installed are taken
    // into `OwnedFd`s exactly once.
    unsafe {
        let mut message: libc::msghdr = mem::zeroed();
        message.msg_iov = &mut iov;
        message.msg_iovlen = 1;
        message.msg_control = control.as_mut_ptr().cast();
        message.msg_controllen = control.len() as _;
        let read = libc::recvmsg(socket, &mut message, libc::MSG_CMSG_CLOEXEC);
        if read < 0 {
            return Err(io::Error::last_os_error());
        }
        if read == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        let mut received = None;
        let mut header = libc::CMSG_FIRSTHDR(&message);
        while !header.is_null() {
            if (*header).cmsg_level == libc::SOL_SOCKET && (*header).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(header);
                let count = ((*header).cmsg_len as usize)
                    .saturating_sub(libc::CMSG_LEN(0) as usize)
                    / mem::size_of::<RawFd>();
                for index in 0..count {
                    let fd = std::ptr::read_unaligned(data.cast::<RawFd>().add(index));
                    let owned = OwnedFd::from_raw_fd(fd);
                    // One is expected; any extra is closed here.
                    if received.is_none() {
                        received = Some(owned);
                    }
                }
            }
            header = libc::CMSG_NXTHDR(&message, header);
        }
        if message.msg_flags & libc::MSG_CTRUNC != 0 {
            return Err(io::Error::other(
                "a descriptor was lost (control data truncated)",
            ));
        }
        Ok(received)
    }
}
