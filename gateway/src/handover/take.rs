//! The new gateway's side: take the listening sockets, then borrow the pin
//! root and say when it is ready ([`Predecessor`]).
use std::{
    io::{self, BufReader, Read},
    mem,
    net::{SocketAddr, TcpListener},
    os::{
        fd::{AsFd, AsRawFd},
        unix::net::UnixStream,
    },
    path::{Path, PathBuf},
};

use super::{
    fds::receive_fd,
    read_line,
    trust::{check_path, check_peer, Expect},
    write_line, Answer, HandoverError, Kind, Reply, Request, Step, EXCHANGE_TIMEOUT, MAX_LINE,
    SOCKET,
};

/// Listening sockets taken over from a running gateway.
#[derive(Debug, Default)]
pub struct Inherited {
    /// The gateway that handed them over.
    pub from_pid: Option<u32>,
    /// It released the requested XDP pin root before answering (a gateway
    /// from before the two-phase hand-over).
    pub pin_root_released: bool,
    pub(super) sockets: Vec<(Kind, SocketAddr, TcpListener)>,
    predecessor: Option<Predecessor>,
}

/// The running gateway the sockets came from, still on the line: it lends
/// the pin root on request and hands it off once told this one is ready.
/// Dropped without [`Predecessor::ready`], it takes the pin root back.
#[derive(Debug)]
pub struct Predecessor {
    pub pid: u32,
    path: PathBuf,
    pub(super) stream: UnixStream,
    /// A gateway from before the two-phase hand-over: no steps.
    legacy: bool,
}

/// How [`Predecessor::ready`] ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Confirmed {
    /// It handed over (the lent pin root, if any, is this one's).
    Yes,
    /// It went away before answering (it stopped): this one goes on alone.
    Gone,
}

impl Inherited {
    /// Asks the gateway offering at `state_dir` for its sockets; none when
    /// no gateway offers (no state dir, no socket file, or nobody behind
    /// it). Refuses a state dir, socket or offering process that is not
    /// this user's or root's.
    pub fn take(state_dir: &Path, request: &Request) -> Result<Self, HandoverError> {
        match check_path(state_dir, Expect::Dir) {
            Err(HandoverError::Exchange { source, .. })
                if source.kind() == io::ErrorKind::NotFound =>
            {
                return Ok(Self::default())
            }
            checked => checked?,
        }
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
        check_path(&path, Expect::Socket)?;
        check_peer(&path, stream.as_fd())?;
        exchange(&stream, request)
            .map_err(|error| error.at(&path))
            .map(|mut inherited| {
                inherited.predecessor = inherited.from_pid.map(|pid| Predecessor {
                    pid,
                    path,
                    stream,
                    legacy: inherited.pin_root_released,
                });
                inherited
            })
    }

    /// The gateway these came from, to borrow its pin root and tell it
    /// when this one is ready; once.
    pub fn predecessor(&mut self) -> Option<Predecessor> {
        self.predecessor.take()
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

impl Predecessor {
    /// Asks it to lend the pin root requested (this one is about to start
    /// its kernel path): `true` if it did. A legacy gateway released it
    /// already; one that went away lends nothing and holds nothing.
    pub fn lend(&mut self) -> Result<bool, HandoverError> {
        if self.legacy {
            return Ok(true);
        }
        match self.step(Step::Lend) {
            // It gave up waiting for this one (a refusal says why).
            Ok(Some(Reply {
                ok: false,
                reason: Some(reason),
            })) => Err(HandoverError::Refused {
                pid: self.pid,
                reason,
            }),
            Ok(Some(reply)) => Ok(reply.ok),
            Ok(None) => Ok(false),
            Err(source) => Err(HandoverError::Exchange {
                path: self.path.clone(),
                source,
            }),
        }
    }

    /// Tells it this one serves (`kernel`: with the lent pin root adopted);
    /// refused when it gave up waiting (`limits.handover_timeout`): it took
    /// its pin root back and this one must stop.
    pub fn ready(mut self, kernel: bool) -> Result<Confirmed, HandoverError> {
        if self.legacy {
            return Ok(Confirmed::Yes);
        }
        match self.step(Step::Ready { kernel }) {
            Ok(Some(Reply { ok: true, .. })) => Ok(Confirmed::Yes),
            Ok(Some(Reply { ok: false, reason })) => Err(HandoverError::Refused {
                pid: self.pid,
                reason: reason.unwrap_or_else(|| "no reason given".into()),
            }),
            // It stopped (SIGTERM) before answering: nothing to hand off.
            Ok(None) => Ok(Confirmed::Gone),
            Err(source) => Err(HandoverError::Exchange {
                path: self.path.clone(),
                source,
            }),
        }
    }

    fn step(&mut self, step: Step) -> io::Result<Option<Reply>> {
        self.stream.set_read_timeout(Some(EXCHANGE_TIMEOUT))?;
        self.stream.set_write_timeout(Some(EXCHANGE_TIMEOUT))?;
        // One reply per step: nothing is read ahead of it. A refusal may be
        // waiting already, sent before it closed: read even if writing failed.
        let written = write_line(&self.stream, &step);
        let reply = read_line(&mut BufReader::new(&self.stream));
        let reply = match (written, reply) {
            (Err(error), Ok(None)) => Err(error),
            (_, reply) => reply,
        };
        match reply {
            // It closed: it stopped, or predates the steps.
            Err(error)
                if matches!(
                    error.kind(),
                    io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
                ) =>
            {
                Ok(None)
            }
            reply => reply,
        }
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

impl Failure {
    fn at(self, path: &Path) -> HandoverError {
        match self {
            Failure::Io(source) => HandoverError::Exchange {
                path: path.to_owned(),
                source,
            },
            Failure::Protocol(message) => HandoverError::Protocol {
                path: path.to_owned(),
                message,
            },
        }
    }
}

fn exchange(stream: &UnixStream, request: &Request) -> Result<Inherited, Failure> {
    stream.set_read_timeout(Some(EXCHANGE_TIMEOUT))?;
    stream.set_write_timeout(Some(EXCHANGE_TIMEOUT))?;
    write_line(stream, request)?;
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
        predecessor: None,
    })
}
