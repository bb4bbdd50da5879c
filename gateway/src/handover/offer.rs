//! The running gateway's side: offer the listening sockets, then follow
//! the new gateway until it is ready, lending and handing off the kernel
//! path as it asks ([`Offer::serve`]).
use std::{
    io::{self, BufReader},
    net::{SocketAddr, TcpListener},
    os::{
        fd::{AsRawFd, OwnedFd},
        unix::{fs::MetadataExt, fs::PermissionsExt, net::UnixStream},
    },
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use tokio::sync::{mpsc, oneshot};

use super::{
    fds::send_fd,
    read_line,
    trust::{check_path, trusted_uid, Expect},
    write_line, Answer, Described, HandoverError, KernelAsk, KernelStep, Kind, Reply, Request,
    Step, EXCHANGE_TIMEOUT, MAX_LINE, SOCKET,
};

/// How long a new gateway has to say it is ready unless told otherwise
/// (`limits.handover_timeout`'s default).
pub const READY_WITHIN: Duration = Duration::from_secs(30);

type Copies = Vec<(Kind, SocketAddr, OwnedFd)>;

/// The listening sockets this gateway offers to the next one, with the
/// unix socket it offers them on. Dropping it stops offering.
pub struct Offer {
    path: PathBuf,
    /// Where it is bound until [`Offer::publish`] renames it to `path`.
    aside: PathBuf,
    /// The socket file's inode: only ours is removed on drop.
    inode: u64,
    listener: tokio::net::UnixListener,
    /// Swapped by a configuration reload (see [`Offered`]).
    sockets: Arc<arc_swap::ArcSwap<Copies>>,
    /// How long a new gateway has to say it is ready.
    ready_within: Duration,
}

/// What an [`Offer`] hands over, as a configuration reload changes it
/// (listeners added or removed). Weak: once the offer is dropped (the
/// gateway stops), its copies close and this changes nothing.
pub struct Offered(std::sync::Weak<arc_swap::ArcSwap<Copies>>);

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

/// How a new gateway's start ended, as the offering one saw it.
enum Outcome {
    Ready { kernel: bool },
    Gone(String),
    Late,
}

impl Offer {
    /// Prepares to offer copies of `sockets` at `state_dir`/[`SOCKET`]
    /// (bound aside until [`Offer::publish`]). Refuses a state dir another
    /// user owns or may write to.
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
        check_path(state_dir, Expect::Dir)?;
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
        listener.set_nonblocking(true).map_err(failed)?;
        let listener = tokio::net::UnixListener::from_std(listener).map_err(failed)?;
        Ok(Self {
            path,
            aside,
            inode,
            listener,
            sockets: Arc::new(arc_swap::ArcSwap::from_pointee(copies)),
            ready_within: READY_WITHIN,
        })
    }

    /// Offers from now on, replacing an earlier gateway's offer atomically
    /// (a rename): once this one serves, so a start that fails leaves the
    /// running gateway's offer in place.
    pub fn publish(&self) -> Result<(), HandoverError> {
        std::fs::rename(&self.aside, &self.path).map_err(|source| HandoverError::Offer {
            path: self.path.clone(),
            source,
        })
    }

    /// How long a new gateway has to say it is ready before this one
    /// takes a lent pin root back (`limits.handover_timeout`).
    pub fn ready_within(mut self, within: Duration) -> Self {
        self.ready_within = within;
        self
    }

    /// What it offers, for a reload to change.
    pub fn offered(&self) -> Offered {
        Offered(Arc::downgrade(&self.sockets))
    }

    /// Answers every gateway that asks, one at a time, until dropped (or
    /// aborted); `kernel` lends, hands off and takes back the pin root.
    pub async fn serve(self, kernel: Option<mpsc::Sender<KernelAsk>>) {
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
            match stream.peer_cred() {
                Ok(cred) if trusted_uid(cred.uid()) => {}
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
            let answered = blocking(move || {
                let stream = stream.into_std()?;
                stream.set_nonblocking(false)?;
                stream.set_read_timeout(Some(EXCHANGE_TIMEOUT))?;
                stream.set_write_timeout(Some(EXCHANGE_TIMEOUT))?;
                let mut reader = BufReader::new(stream);
                let request: Request = read_line(&mut reader)?
                    .ok_or_else(|| io::Error::from(io::ErrorKind::UnexpectedEof))?;
                answer(reader.get_ref(), &sockets)?;
                Ok((reader.into_inner(), request))
            })
            .await;
            let (stream, request) = match answered {
                Ok(answered) => answered,
                Err(error) => {
                    tracing::warn!(%error, "a listener hand-over failed");
                    continue;
                }
            };
            tracing::info!(
                pid = request.pid,
                sockets = self.sockets.load().len(),
                "handed the listening sockets to a new gateway; this one keeps its kernel path \
                 until the new one says it is ready"
            );
            self.follow(stream, &request, kernel.as_ref()).await;
        }
    }

    /// Follows the new gateway's steps until it is ready, goes away or
    /// runs out of time; a lent pin root is handed off in the first case
    /// and taken back in the others.
    async fn follow(
        &self,
        stream: UnixStream,
        request: &Request,
        kernel: Option<&mpsc::Sender<KernelAsk>>,
    ) {
        let pid = request.pid;
        let deadline = tokio::time::Instant::now() + self.ready_within;
        let mut session = match Session::new(stream) {
            Ok(session) => session,
            Err(error) => {
                tracing::warn!(%error, pid, "following the new gateway failed");
                return;
            }
        };
        let mut lent = false;
        let outcome = loop {
            let step = match tokio::time::timeout_at(deadline, session.step()).await {
                Err(_) => break Outcome::Late,
                Ok(Ok(Some(step))) => step,
                Ok(Ok(None)) => break Outcome::Gone("it closed the hand-over".into()),
                Ok(Err(error)) => break Outcome::Gone(error.to_string()),
            };
            match step {
                Step::Lend => {
                    let ok = match request.pin_root.clone().zip(kernel) {
                        Some((pin_root, kernel)) => {
                            ask(kernel, KernelStep::Lend { pid, pin_root }).await
                        }
                        None => false,
                    };
                    lent |= ok;
                    session.reply(Reply { ok, reason: None }).await;
                }
                Step::Ready { kernel } => break Outcome::Ready { kernel },
            }
        };
        let kernel = kernel.filter(|_| lent);
        match outcome {
            Outcome::Ready { kernel: adopted } => {
                let handed = match kernel {
                    Some(kernel) if adopted => ask(kernel, KernelStep::HandOff).await,
                    Some(kernel) => {
                        ask(kernel, KernelStep::TakeBack).await;
                        false
                    }
                    None => false,
                };
                let ok = Reply {
                    ok: true,
                    reason: None,
                };
                session.reply(ok).await;
                tracing::info!(
                    pid,
                    kernel_path_handed_off = handed,
                    "the new gateway is ready; stop this one (SIGTERM) to let it take over"
                );
            }
            Outcome::Gone(why) => {
                tracing::warn!(
                    pid,
                    why,
                    "the new gateway went away before it was ready: this one keeps serving, \
                     with its kernel path"
                );
                if let Some(kernel) = kernel {
                    ask(kernel, KernelStep::TakeBack).await;
                }
            }
            Outcome::Late => {
                let reason = format!(
                    "not ready within {:?} (limits.handover_timeout of the running gateway)",
                    self.ready_within
                );
                tracing::warn!(
                    pid,
                    reason,
                    "gave up waiting for the new gateway: this one keeps serving, with its \
                     kernel path"
                );
                if let Some(kernel) = kernel {
                    ask(kernel, KernelStep::TakeBack).await;
                }
                let refused = Reply {
                    ok: false,
                    reason: Some(reason),
                };
                session.reply(refused).await;
            }
        }
    }
}

/// The hand-over after the descriptors, read without blocking a thread
/// (a stop aborts it at once).
struct Session(tokio::io::BufReader<tokio::net::UnixStream>);

impl Session {
    fn new(stream: UnixStream) -> io::Result<Self> {
        stream.set_nonblocking(true)?;
        let stream = tokio::net::UnixStream::from_std(stream)?;
        Ok(Self(tokio::io::BufReader::new(stream)))
    }

    /// The next step; `None` once the new gateway closed.
    async fn step(&mut self) -> io::Result<Option<Step>> {
        use tokio::io::{AsyncBufReadExt, AsyncReadExt};
        let mut line = String::new();
        let mut limited = (&mut self.0).take(MAX_LINE);
        if limited.read_line(&mut line).await? == 0 {
            return Ok(None);
        }
        serde_json::from_str(&line)
            .map(Some)
            .map_err(|error| io::Error::new(io::ErrorKind::InvalidData, error))
    }

    /// A reply (bounded); a failure is only logged: the new gateway sees
    /// the hand-over close.
    async fn reply(&mut self, reply: Reply) {
        use tokio::io::AsyncWriteExt;
        let written = async {
            let mut line = serde_json::to_vec(&reply).map_err(io::Error::other)?;
            line.push(b'\n');
            self.0.get_mut().write_all(&line).await
        };
        match tokio::time::timeout(EXCHANGE_TIMEOUT, written).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::warn!(%error, "answering the new gateway failed"),
            Err(_) => tracing::warn!("answering the new gateway timed out"),
        }
    }
}

/// Runs blocking (bounded) socket work off the control runtime's thread.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    tokio::task::spawn_blocking(work)
        .await
        .unwrap_or_else(|error| Err(io::Error::other(error)))
}

/// Asks the kernel path's owner; `false` if it did not (or is gone).
async fn ask(kernel: &mpsc::Sender<KernelAsk>, step: KernelStep) -> bool {
    let (done, answer) = oneshot::channel();
    kernel.send(KernelAsk { step, done }).await.is_ok() && answer.await.unwrap_or(false)
}

/// The answer and the descriptors (blocking, bounded).
fn answer(stream: &UnixStream, sockets: &Copies) -> io::Result<()> {
    let answer = Answer {
        pin_root_released: false,
        pid: std::process::id(),
        sockets: sockets
            .iter()
            .map(|(kind, address, _)| Described {
                kind: *kind,
                address: *address,
            })
            .collect(),
    };
    write_line(stream, &answer)?;
    for (_, _, fd) in sockets {
        send_fd(stream.as_raw_fd(), fd.as_raw_fd())?;
    }
    Ok(())
}

impl Drop for Offer {
    fn drop(&mut self) {
        // A newer gateway's offer has replaced ours: leave it.
        for path in [&self.path, &self.aside] {
            let ours = std::fs::metadata(path).is_ok_and(|m| m.ino() == self.inode);
            if ours {
                let _ = std::fs::remove_file(path);
            }
        }
    }
}
