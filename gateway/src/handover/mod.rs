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
//! The kernel path goes along in two phases, so a new gateway that fails
//! to start never leaves the old one without it: the old one keeps owning
//! and writing the XDP pin root while the new one starts; it lends it when
//! the new one is about to adopt it ([`Step::Lend`]), and hands it off for
//! good only once the new one says it serves ([`Step::Ready`]). A new
//! gateway that goes away first, or is not ready within
//! `limits.handover_timeout`, gets it taken back (see `xdp::KernelPath::lend`).
//!
//! The protocol: the new process sends one JSON line ([`Request`]); the old
//! one answers with one JSON line (`Answer`) and then one byte per socket,
//! each carrying that socket's descriptor. Then the new one sends steps (one
//! JSON line each), the old one answers each with a [`Reply`] line. Both
//! ends trust only this user or root, through a state dir and socket only
//! they can write ([`trust`]).
mod fds;
mod offer;
mod take;
mod trust;

use std::{
    io::{self, BufRead, Read, Write},
    net::SocketAddr,
    os::unix::net::UnixStream,
    path::PathBuf,
    time::Duration,
};

use serde::{Deserialize, Serialize};

pub use offer::{Offer, Offered};
pub use take::{Confirmed, Inherited, Predecessor};

/// The offer's file name in the state dir.
pub const SOCKET: &str = "listeners.sock";

/// How long either side waits for the other's next line.
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
    #[error("refusing the listener hand-over at {path}: {reason}")]
    Untrusted { path: PathBuf, reason: String },
    #[error("the running gateway (pid {pid}) refused the hand-over: {reason}")]
    Refused { pid: u32, reason: String },
}

/// What a listening socket is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Proxy,
    Admin,
}

/// One socket as described in the `Answer`.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Described {
    kind: Kind,
    address: SocketAddr,
}

/// What the new gateway asks for.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Request {
    pub pid: u32,
    /// The XDP pin root it will use, if any: the old one lends it.
    #[serde(default)]
    pub pin_root: Option<PathBuf>,
}

/// What the running gateway answers before the descriptors.
#[derive(Debug, Serialize, Deserialize)]
struct Answer {
    pid: u32,
    sockets: Vec<Described>,
    /// Set by gateways before the two-phase hand-over: they released the
    /// pin root before answering and expect no step.
    #[serde(default)]
    pin_root_released: bool,
}

/// The new gateway's steps after the sockets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "step", rename_all = "snake_case")]
pub enum Step {
    /// It is about to start its kernel path on the requested pin root.
    Lend,
    /// It serves: `kernel` says whether it adopted the lent pin root.
    Ready { kernel: bool },
}

/// The running gateway's answer to a [`Step`].
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Reply {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// What the offering gateway asks of whoever owns its kernel path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KernelStep {
    /// Lend `pin_root` to the gateway `pid` (if it is this one's).
    Lend { pid: u32, pin_root: PathBuf },
    /// The borrower serves with it: hand it off for good.
    HandOff,
    /// The borrower went away or ran out of time: take it back.
    TakeBack,
}

/// A [`KernelStep`] with its answer: whether it was done.
pub struct KernelAsk {
    pub step: KernelStep,
    pub done: tokio::sync::oneshot::Sender<bool>,
}

/// Writes `value` as one JSON line.
fn write_line(stream: &UnixStream, value: &impl Serialize) -> io::Result<()> {
    let mut line = serde_json::to_vec(value).map_err(io::Error::other)?;
    line.push(b'\n');
    (&*stream).write_all(&line)
}

/// Reads one JSON line (`Ok(None)`: the other end closed first).
fn read_line<T: serde::de::DeserializeOwned>(reader: &mut impl BufRead) -> io::Result<Option<T>> {
    let mut line = String::new();
    if reader.by_ref().take(MAX_LINE).read_line(&mut line)? == 0 {
        return Ok(None);
    }
    serde_json::from_str(&line)
        .map(Some)
        .map_err(|error| io::Error::new(io::ErrorKind::InvalidData, error))
}

#[cfg(test)]
mod tests;
#[cfg(test)]
mod trust_tests;
