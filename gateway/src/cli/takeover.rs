//! `gateway run`'s side of a restart: take the listening sockets from the
//! gateway still running on the same state dir, and offer ours to the next
//! one (see [`gateway::handover`]).
use std::{
    future::Future,
    net::{SocketAddr, TcpListener},
    time::Duration,
};

use anyhow::{Context, Result};
use gateway::{
    config::Config,
    handover::{Confirmed, Inherited, KernelAsk, KernelStep, Kind, Offer, Predecessor, Request},
    proxy::workers,
    xdp::KernelPath,
};
use tokio::sync::mpsc;

/// The running gateway's sockets, or none when no gateway offers them,
/// and the gateway itself, still on the line until this one is ready.
pub fn take(config: &Config) -> Result<(Inherited, Option<Predecessor>)> {
    let request = Request {
        pid: std::process::id(),
        pin_root: config.xdp.enabled.then(|| config.xdp.pin_root.clone()),
    };
    let mut inherited = Inherited::take(&config.state_dir, &request)
        .context("taking over from the running gateway")?;
    let predecessor = inherited.predecessor();
    if let Some(pid) = inherited.from_pid {
        tracing::info!(
            pid,
            "took over the listening sockets of the running gateway; both serve until it is \
             stopped (SIGTERM), which then drains"
        );
    }
    Ok((inherited, predecessor))
}

/// Borrows the XDP pin root from the running gateway, just before this
/// one starts its kernel path: whether it lent it. It keeps writing its
/// bans there until this one is [`ready`], and takes it back if this one
/// fails first.
pub fn borrow_pin_root(config: &Config, predecessor: &mut Option<Predecessor>) -> Result<bool> {
    let Some(predecessor) = predecessor.as_mut().filter(|_| config.xdp.enabled) else {
        return Ok(false);
    };
    let root = config.xdp.pin_root.display();
    let lent = predecessor
        .lend()
        .context("borrowing the XDP pin root from the running gateway")?;
    match lent {
        true => tracing::info!(
            pid = predecessor.pid,
            root = %root,
            "the running gateway lent its XDP pin root: adopting its maps and bans"
        ),
        false => tracing::warn!(
            pid = predecessor.pid,
            root = %root,
            "the running gateway kept the XDP pin root (it runs without XDP or on another root)"
        ),
    }
    Ok(lent)
}

/// Tells the running gateway this one serves: it hands off the lent pin
/// root, or refuses when it gave up waiting (`limits.handover_timeout`),
/// having taken it back; this one must then stop. Then offers this one's
/// sockets to the next (not before: a start that fails leaves the running
/// gateway's offer in place).
pub fn ready(
    predecessor: Option<Predecessor>,
    lent: bool,
    kernel: Option<&mut KernelPath>,
    offer: Option<&Offer>,
) -> Result<()> {
    confirm(predecessor, lent, kernel)?;
    if let Some(Err(error)) = offer.map(Offer::publish) {
        tracing::warn!(%error, "a restart will not be able to take over the listening sockets");
    }
    Ok(())
}

fn confirm(
    predecessor: Option<Predecessor>,
    lent: bool,
    kernel: Option<&mut KernelPath>,
) -> Result<()> {
    let Some(predecessor) = predecessor else {
        return Ok(());
    };
    let pid = predecessor.pid;
    let adopted = lent && kernel.as_deref().is_some_and(|k| k.pin_root().is_some());
    let confirmed = predecessor
        .ready(adopted)
        .context("the running gateway keeps serving; this one stops")?;
    if let Some(kernel) = kernel {
        kernel.confirm();
    }
    match (confirmed, adopted) {
        (Confirmed::Yes, true) => tracing::info!(
            pid,
            "the running gateway handed off the XDP pin root: its maps and bans are this one's"
        ),
        (Confirmed::Yes, false) => {}
        (Confirmed::Gone, _) => tracing::warn!(
            pid,
            "the running gateway stopped before confirming the hand-over: this one goes on alone"
        ),
    }
    Ok(())
}

/// `count` sockets for a proxy listener: the inherited ones on `address`,
/// and fresh ones (`SO_REUSEPORT`, the same port) if there are more workers.
pub fn proxy_sockets(
    inherited: &mut Inherited,
    address: SocketAddr,
    count: usize,
) -> std::io::Result<Vec<TcpListener>> {
    let mut sockets = inherited.claim(Kind::Proxy, address);
    for socket in &sockets {
        socket.set_nonblocking(true)?;
    }
    if sockets.len() < count {
        let at = sockets
            .first()
            .map_or(Ok(address), TcpListener::local_addr)?;
        sockets.extend(workers::bind(at, count - sockets.len())?);
    }
    Ok(sockets)
}

/// The admin socket: inherited, or bound afresh.
pub fn admin_socket(
    inherited: &mut Inherited,
    address: SocketAddr,
) -> std::io::Result<TcpListener> {
    let socket = match inherited.claim(Kind::Admin, address).pop() {
        Some(socket) => socket,
        None => TcpListener::bind(address)?,
    };
    socket.set_nonblocking(true)?;
    Ok(socket)
}

/// Closes inherited sockets the configuration no longer listens on.
pub fn close_unclaimed(inherited: Inherited) {
    for address in inherited.unclaimed() {
        tracing::info!(%address, "no longer a listener: closing the inherited socket");
    }
}

/// Offers this gateway's sockets to the next one; a failure only means a
/// restart cannot take them over (it is logged).
pub fn offer(
    config: &Config,
    proxy: &[&TcpListener],
    admin: Option<&TcpListener>,
) -> Option<Offer> {
    let sockets = proxy
        .iter()
        .map(|socket| (Kind::Proxy, *socket))
        .chain(admin.map(|socket| (Kind::Admin, socket)))
        .collect();
    match Offer::bind(&config.state_dir, sockets) {
        Ok(offer) => Some(offer.ready_within(config.limits.handover_timeout)),
        Err(error) => {
            tracing::warn!(%error, "a restart will not be able to take over the listening sockets");
            None
        }
    }
}

/// How often a lent pin root's lock is tried while the new gateway that
/// borrowed it finishes going away.
const TAKE_BACK_RETRY: Duration = Duration::from_millis(200);

/// Waits for `shutdown`, meanwhile lending, handing off and taking back the
/// kernel path as a new gateway on the same pin root goes through its
/// start (see [`Offer::serve`]).
pub async fn until_shutdown(
    shutdown: impl Future<Output = Result<()>>,
    mut asks: mpsc::Receiver<KernelAsk>,
    mut kernel: Option<&mut KernelPath>,
) -> Result<()> {
    tokio::pin!(shutdown);
    let mut retry = tokio::time::interval(TAKE_BACK_RETRY);
    let mut taking_back = false;
    loop {
        tokio::select! {
            result = &mut shutdown => return result,
            Some(ask) = asks.recv() => {
                let done = match (ask.step, kernel.as_deref_mut()) {
                    (KernelStep::Lend { pid, pin_root }, Some(kernel)) => {
                        kernel.pin_root() == Some(pin_root.as_path()) && kernel.lend(pid)
                    }
                    (KernelStep::HandOff, Some(kernel)) => kernel.hand_off(),
                    (KernelStep::TakeBack, Some(kernel)) => {
                        taking_back = !take_back(kernel);
                        !taking_back
                    }
                    (_, None) => false,
                };
                let _ = ask.done.send(done);
            }
            _ = retry.tick(), if taking_back => {
                taking_back = kernel.as_deref_mut().is_some_and(|kernel| !take_back(kernel));
            }
        }
    }
}

/// One try at taking a lent pin root back: whether that is over (done,
/// or failed: logged).
fn take_back(kernel: &mut KernelPath) -> bool {
    match kernel.take_back() {
        Ok(done) => done,
        Err(error) => {
            tracing::warn!(%error, "taking the XDP pin root back failed");
            true
        }
    }
}
