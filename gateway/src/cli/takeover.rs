//! `gateway run`'s side of a restart: take the listening sockets from the
//! gateway still running on the same state dir, and offer ours to the next
//! one (see [`gateway::handover`]).
use std::{
    future::Future,
    net::{SocketAddr, TcpListener},
};

use anyhow::{Context, Result};
use gateway::{
    config::Config,
    handover::{Inherited, Kind, Offer, Release, Request},
    proxy::workers,
    xdp::KernelPath,
};
use tokio::sync::mpsc;

/// The running gateway's sockets, or none when no gateway offers them.
pub fn take(config: &Config) -> Result<Inherited> {
    let request = Request {
        pid: std::process::id(),
        pin_root: config.xdp.enabled.then(|| config.xdp.pin_root.clone()),
    };
    let inherited = Inherited::take(&config.state_dir, &request)
        .context("taking over from the running gateway")?;
    let Some(pid) = inherited.from_pid else {
        return Ok(inherited);
    };
    tracing::info!(
        pid,
        "took over the listening sockets of the running gateway; both serve until it is \
         stopped (SIGTERM), which then drains"
    );
    match (&request.pin_root, inherited.pin_root_released) {
        (Some(root), true) => tracing::info!(
            pid,
            root = %root.display(),
            "the running gateway handed off the XDP pin root: adopting its maps and bans"
        ),
        (Some(root), false) => tracing::warn!(
            pid,
            root = %root.display(),
            "the running gateway kept the XDP pin root (it runs without XDP or on another root)"
        ),
        (None, _) => {}
    }
    Ok(inherited)
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
        Ok(offer) => Some(offer),
        Err(error) => {
            tracing::warn!(%error, "a restart will not be able to take over the listening sockets");
            None
        }
    }
}

/// Waits for `shutdown`, meanwhile handing the kernel path off to a new
/// gateway on the same pin root that asks for it (see [`Offer::serve`]).
pub async fn until_shutdown(
    shutdown: impl Future<Output = Result<()>>,
    mut releases: mpsc::Receiver<Release>,
    mut kernel: Option<&mut KernelPath>,
) -> Result<()> {
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            result = &mut shutdown => return result,
            Some(release) = releases.recv() => {
                let ours = kernel.as_deref().and_then(KernelPath::pin_root)
                    == release.request.pin_root.as_deref();
                let handed = ours && kernel.as_deref_mut().is_some_and(KernelPath::hand_off);
                if !handed {
                    tracing::info!(
                        pid = release.request.pid,
                        "a new gateway asked for an XDP pin root this one does not hold"
                    );
                }
                let _ = release.done.send(handed);
            }
        }
    }
}
