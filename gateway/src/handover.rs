//! Handing the listening sockets to the next gateway, so a restart or an
//! upgrade refuses no connection.
//!
//! A running gateway offers its listening sockets on a unix socket in its
//! state dir ([`SOCKET`]). A new `gateway run` on the same state dir asks
//! for them first: it gets the very same sockets (`SCM_RIGHTS`), so both
//! processes accept from one queue while they overlap and a connection the
//! kernel queued is never lost. The old one, on SIGTERM, just stops
//! accepting. Binding fresh `SO_REUSEPORT` sockets instead would not do:
//! closing a reuseport socket resets the connections still in its backlog.
//!
//! The kernel path goes along: when the new gateway uses the same XDP pin
//! root, the old one hands it off before answering (see
//! `xdp::KernelPath::hand_off`), so the new one can adopt the pinned maps
//! and swap its program into the pinned link while the old one drains.
//!
//! The protocol: the new process sends one JSON line ([`Request`]); the old
//! one answers with one JSON line ([`Answer`]) and then one byte per socket,
//! each carrying that socket's descriptor.
use std::{
    io::{self, BufRead, BufReader, Read, Write},
    mem,
    net::{SocketAddr, TcpListener},
    os::{
        fd::{AsRawFd, FromRawFd, OwnedFd, RawFd},
        unix::{fs::MetadataExt, fs::PermissionsExt, net::UnixStream},
    },
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use serde::{Deserialize, Serialize};

/// The offer's file name in the state dir.
pub const SOCKET: &str = "listeners.sock";

/// How long either side waits for the other.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(5);

/// Longest JSON line either side accepts.
const MAX_LINE: u64 = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum HandoverError {
    #[error("asking the running gateway at {path} for its listening sockets: {source}")]
    Exchange { path: PathBuf, source: io::Error },
    #[error("the running gateway at {path} answered with something unreadable: {message}")]
    Protocol { path: PathBuf, message: String },
    #[error("offering the listening sockets at {path}: {source}")]
    Offer { path: PathBuf, source: io::Error },
}

/// What a listening socket is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Proxy,
    Admin,
}

/// One socket as described in the [`Answer`].
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Described {
    kind: Kind,
    address: SocketAddr,
}

/// What the new gateway asks for.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Request {
    pub pid: u32,
    /// The XDP pin root it will use, if any: the old one hands it off.
    #[serde(default)]
    pub pin_root: Option<PathBuf>,
}

/// What the running gateway answers before the descriptors.
#[derive(Debug, Serialize, Deserialize)]
struct Answer {
    pid: u32,
    sockets: Vec<Described>,
    #[serde(default)]
    pin_root_released: bool,
}

/// A request to hand off the kernel path, for whoever owns it in the
/// running gateway; `done` says whether it was handed off.
pub struct Release {
    pub request: Request,
    pub done: tokio::sync::oneshot::Sender<bool>,
}

/// Listening sockets taken over from a running gateway.
#[derive(Debug, Default)]
pub struct Inherited {
    /// The gateway that handed them over.
    pub from_pid: Option<u32>,
    /// It released the requested XDP pin root for this one to adopt.
    pub pin_root_released: bool,
    sockets: Vec<(Kind, SocketAddr, TcpListener)>,
}

impl Inherited {
    /// Asks the gateway offering at `state_dir` for its sockets; none when
    /// no gateway offers (no socket file, or nobody behind it).
    pub fn take(state_dir: &Path, request: &Request) -> Result<Self, HandoverError> {
        let path = state_dir.join(SOCKET);
        let stream = match UnixStream::connect(&path) {
            Ok(stream) => stream,
            Err(error)
                if matches!(
                    error.kind(),
                    io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
                ) =>
            {
                return Ok(Self::default())
            }
            Err(source) => return Err(HandoverError::Exchange { path, source }),
        };
        exchange(&stream, request).map_err(|error| match error {
            Failure::Io(source) => HandoverError::Exchange {
                path: path.clone(),
                source,
            },
            Failure::Protocol(message) => HandoverError::Protocol {
                path: path.clone(),
                message,
            },
        })
    }

    /// The inherited sockets of kind `kind` bound to `address` (a
    /// configured port 0 never matches: it asks for a fresh port).
    pub fn claim(&mut self, kind: Kind, address: SocketAddr) -> Vec<TcpListener> {
        if address.port() == 0 {
            return Vec::new();
        }
        let (claimed, kept) = mem::take(&mut self.sockets)
            .into_iter()
            .partition(|(k, a, _)| *k == kind && *a == address);
        self.sockets = kept;
        claimed.into_iter().map(|(_, _, socket)| socket).collect()
    }

    /// Inherited sockets nothing in this configuration listens on any more.
    pub fn unclaimed(&self) -> impl Iterator<Item = SocketAddr> + '_ {
        self.sockets.iter().map(|(_, address, _)| *address)
    }
}

enum Failure {
    Io(io::Error),
    Protocol(String),
}

impl From<io::Error> for Failure {
    fn from(error: io::Error) -> Self {
        Failure::Io(error)
    }
}

fn exchange(stream: &UnixStream, request: &Request) -> Result<Inherited, Failure> {
    stream.set_read_timeout(Some(EXCHANGE_TIMEOUT))?;
    stream.set_write_timeout(Some(EXCHANGE_TIMEOUT))?;
    let mut line = serde_json::to_vec(request).map_err(|e| Failure::Protocol(e.to_string()))?;
    line.push(b'\n');
    (&*stream).write_all(&line)?;
    // Byte by byte up to the newline: the descriptors ride on the bytes after it.
    let mut answer = Vec::new();
    let mut byte = [0u8; 1];
    loop {
        if (&*stream).read(&mut byte)? == 0 {
            return Err(Failure::Protocol("closed before answering".into()));
        }
        if byte[0] == b'\n' {
            break;
        }
        if answer.len() as u64 >= MAX_LINE {
            return Err(Failure::Protocol("answer too long".into()));
        }
        answer.push(byte[0]);
    }
    let answer: Answer =
        serde_json::from_slice(&answer).map_err(|e| Failure::Protocol(e.to_string()))?;
    let mut sockets = Vec::with_capacity(answer.sockets.len());
    for described in answer.sockets {
        let fd = receive_fd(stream.as_raw_fd())?
            .ok_or_else(|| Failure::Protocol("a socket came without its descriptor".into()))?;
        let socket = TcpListener::from(fd);
        // The descriptor must be what the answer says it is.
        let actual = socket.local_addr()?;
        if actual != described.address {
            return Err(Failure::Protocol(format!(
                "a socket said to be {} is bound to {actual}",
                described.address
            )));
        }
        sockets.push((described.kind, described.address, socket));
    }
    Ok(Inherited {
        from_pid: Some(answer.pid),
        pin_root_released: answer.pin_root_released,
        sockets,
    })
}

/// The listening sockets this gateway offers to the next one, with the
/// unix socket it offers them on. Dropping it stops offering.
pub struct Offer {
    path: PathBuf,
    /// The socket file's inode: only ours is removed on drop.
    inode: u64,
    listener: tokio::net::UnixListener,
    /// Swapped by a configuration reload (see [`Offered`]).
    sockets: Arc<arc_swap::ArcSwap<Vec<(Kind, SocketAddr, OwnedFd)>>>,
}

/// What an [`Offer`] hands over, as a configuration reload changes it
/// (listeners added or removed). Weak: once the offer is dropped (the
/// gateway stops), its copies close and this changes nothing.
pub struct Offered(std::sync::Weak<arc_swap::ArcSwap<Vec<(Kind, SocketAddr, OwnedFd)>>>);

impl Offered {
    /// Stops offering the proxy sockets bound to `removed` (their copies
    /// close, so nothing keeps a removed listener's port open) and offers
    /// copies of `added`.
    pub fn update(&self, removed: &[SocketAddr], added: &[&TcpListener]) -> io::Result<()> {
        let Some(offered) = self.0.upgrade() else {
            return Ok(());
        };
        let mut next = Vec::new();
        for (kind, address, fd) in offered.load().iter() {
            if *kind != Kind::Proxy || !removed.contains(address) {
                next.push((*kind, *address, fd.try_clone()?));
            }
        }
        for socket in added {
            let copy = OwnedFd::from(socket.try_clone()?);
            next.push((Kind::Proxy, socket.local_addr()?, copy));
        }
        offered.store(Arc::new(next));
        Ok(())
    }
}

impl Offer {
    /// Offers copies of `sockets` at `state_dir`/[`SOCKET`], replacing an
    /// earlier gateway's offer atomically (bind aside, then rename).
    pub fn bind(
        state_dir: &Path,
        sockets: Vec<(Kind, &TcpListener)>,
    ) -> Result<Self, HandoverError> {
        let path = state_dir.join(SOCKET);
        let failed = |source| HandoverError::Offer {
            path: path.clone(),
            source,
        };
        let mut copies = Vec::with_capacity(sockets.len());
        for (kind, socket) in sockets {
            let address = socket.local_addr().map_err(failed)?;
            copies.push((
                kind,
                address,
                OwnedFd::from(socket.try_clone().map_err(failed)?),
            ));
        }
        std::fs::create_dir_all(state_dir).map_err(failed)?;
        let aside = state_dir.join(format!("{SOCKET}.{}", std::process::id()));
        let _ = std::fs::remove_file(&aside);
        let listener = std::os::unix::net::UnixListener::bind(&aside).map_err(failed)?;
        // The sockets are this user's alone, like the rest of the state dir.
        std::fs::set_permissions(
            &aside,
            std::fs::Permissions::from_mode(crate::private_files::MODE),
        )
        .map_err(failed)?;
        let inode = std::fs::metadata(&aside).map_err(failed)?.ino();
        std::fs::rename(&aside, &path).map_err(failed)?;
        listener.set_nonblocking(true).map_err(failed)?;
        let listener = tokio::net::UnixListener::from_std(listener).map_err(failed)?;
        Ok(Self {
            path,
            inode,
            listener,
            sockets: Arc::new(arc_swap::ArcSwap::from_pointee(copies)),
        })
    }

    /// What it offers, for a reload to change.
    pub fn offered(&self) -> Offered {
        Offered(Arc::downgrade(&self.sockets))
    }

    /// Answers every gateway that asks, until dropped (or aborted); asks
    /// `release` to hand off the kernel path first when one wants it.
    pub async fn serve(self, release: Option<tokio::sync::mpsc::Sender<Release>>) {
        loop {
            let stream = match self.listener.accept().await {
                Ok((stream, _)) => stream,
                Err(error) => {
                    tracing::warn!(%error, "accepting a listener hand-over request failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            // Besides the file's mode: only this user (or root) gets the sockets.
            // SAFETY: geteuid has no preconditions.
            let euid = unsafe { libc::geteuid() };
            match stream.peer_cred() {
                Ok(cred) if cred.uid() == euid || cred.uid() == 0 => {}
                Ok(cred) => {
                    tracing::warn!(
                        uid = cred.uid(),
                        "refused a listener hand-over to another user"
                    );
                    continue;
                }
                Err(error) => {
                    tracing::warn!(%error, "a listener hand-over request has no credentials");
                    continue;
                }
            }
            let sockets = self.sockets.load_full();
            // Blocking (and bounded): off the control runtime's thread.
            let read = tokio::task::spawn_blocking(move || {
                let stream = stream.into_std()?;
                stream.set_nonblocking(false)?;
                let request = read_request(&stream)?;
                Ok::<_, io::Error>((stream, request))
            })
            .await
            .unwrap_or_else(|error| Err(io::Error::other(error)));
            let (stream, request) = match read {
                Ok(read) => read,
                Err(error) => {
                    tracing::warn!(%error, "a listener hand-over request was unreadable");
                    continue;
                }
            };
            let released = match (&release, request.pin_root.is_some()) {
                (Some(release), true) => {
                    let (done, answer) = tokio::sync::oneshot::channel();
                    let asked = release.send(Release {
                        request: request.clone(),
                        done,
                    });
                    asked.await.is_ok() && answer.await.unwrap_or(false)
                }
                _ => false,
            };
            let answered = tokio::task::spawn_blocking(move || {
                answer(&stream, &sockets, released).map(|()| request.pid)
            })
            .await
            .unwrap_or_else(|error| Err(io::Error::other(error)));
            match answered {
                Ok(pid) => tracing::info!(
                    pid,
                    sockets = self.sockets.load().len(),
                    "handed the listening sockets to a new gateway; stop this one \
                     (SIGTERM) to let it take over"
                ),
                Err(error) => tracing::warn!(%error, "a listener hand-over failed"),
            }
        }
    }
}

/// The asking gateway's request (blocking, bounded by [`EXCHANGE_TIMEOUT`]).
fn read_request(stream: &UnixStream) -> io::Result<Request> {
    stream.set_read_timeout(Some(EXCHANGE_TIMEOUT))?;
    stream.set_write_timeout(Some(EXCHANGE_TIMEOUT))?;
    let mut line = String::new();
    BufReader::new(stream.take(MAX_LINE)).read_line(&mut line)?;
    serde_json::from_str(&line).map_err(|error| io::Error::new(io::ErrorKind::InvalidData, error))
}

/// The answer and the descriptors (blocking, bounded).
fn answer(
    stream: &UnixStream,
    sockets: &[(Kind, SocketAddr, OwnedFd)],
    pin_root_released: bool,
) -> io::Result<()> {
    let answer = Answer {
        pin_root_released,
        pid: std::process::id(),
        sockets: sockets
            .iter()
            .map(|(kind, address, _)| Described {
                kind: *kind,
                address: *address,
            })
            .collect(),
    };
    let mut line = serde_json::to_vec(&answer)
        .map_err(|error| io::Error::new(io::ErrorKind::InvalidData, error))?;
    line.push(b'\n');
    (&*stream).write_all(&line)?;
    for (_, _, fd) in sockets {
        send_fd(stream.as_raw_fd(), fd.as_raw_fd())?;
    }
    Ok(())
}

impl Drop for Offer {
    fn drop(&mut self) {
        // A newer gateway's offer has replaced ours: leave it.
        let ours = std::fs::metadata(&self.path).is_ok_and(|m| m.ino() == self.inode);
        if ours {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// Room for one descriptor's control message.
const CMSG_ROOM: usize = 64;

/// Sends one byte carrying `fd`.
fn send_fd(socket: RawFd, fd: RawFd) -> io::Result<()> {
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
fn receive_fd(socket: RawFd) -> io::Result<Option<OwnedFd>> {
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

#[cfg(test)]
#[path = "handover_tests.rs"]
mod tests;
