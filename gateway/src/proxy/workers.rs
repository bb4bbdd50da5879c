//! Thread-per-core serving: each worker thread runs its own single-threaded
//! event loop with its own socket per listener (SO_REUSEPORT: the kernel
//! spreads connections) and its own upstream connections, so a request
//! and its upstream exchange never cross threads. Background work (key and
//! JWKS refresh, health checks, kernel policy) runs elsewhere.
use std::{io, net::SocketAddr, sync::Arc, thread::JoinHandle};

use socket2::{Domain, Socket, Type};
use tokio::sync::watch;
use tokio_rustls::TlsAcceptor;

use super::{drain::OpenConnections, Gateway};
use crate::{config::Config, shared::Shared};

/// One listener as every worker sees it.
pub struct Listener {
    pub sockets: Vec<std::net::TcpListener>,
    pub tls: Option<TlsAcceptor>,
}

/// Binds `count` sockets to `address` with SO_REUSEPORT; with port 0 the
/// first picks the port and the others join it.
pub fn bind(address: SocketAddr, count: usize) -> io::Result<Vec<std::net::TcpListener>> {
    let mut address = address;
    let mut sockets = Vec::with_capacity(count);
    for _ in 0..count.max(1) {
        let socket = Socket::new(Domain::for_address(address), Type::STREAM, None)?;
        socket.set_reuse_address(true)?;
        socket.set_reuse_port(true)?;
        socket.set_nonblocking(true)?;
        socket.set_nodelay(true)?;
        socket.bind(&address.into())?;
        socket.listen(4096)?;
        let listener: std::net::TcpListener = socket.into();
        address = listener.local_addr()?;
        sockets.push(listener);
    }
    Ok(sockets)
}

/// Starts `workers` threads serving `listeners` until `stopped` turns true.
pub fn spawn(
    config: &Config,
    shared: &Shared,
    listeners: Vec<Listener>,
    workers: usize,
    stopped: watch::Receiver<bool>,
) -> io::Result<Vec<JoinHandle<()>>> {
    let mut per_worker: Vec<Vec<(std::net::TcpListener, Option<TlsAcceptor>)>> =
        (0..workers).map(|_| Vec::new()).collect();
    for listener in listeners {
        for (worker, socket) in listener.sockets.into_iter().enumerate() {
            per_worker[worker % workers].push((socket, listener.tls.clone()));
        }
    }
    per_worker
        .into_iter()
        .enumerate()
        .map(|(index, sockets)| {
            let gateway = Arc::new(Gateway::new(config, shared));
            let stopped = stopped.clone();
            std::thread::Builder::new()
                .name(format!("worker-{index}"))
                .spawn(move || run_worker(gateway, sockets, stopped))
        })
        .collect()
}

fn run_worker(
    gateway: Arc<Gateway>,
    sockets: Vec<(std::net::TcpListener, Option<TlsAcceptor>)>,
    stopped: watch::Receiver<bool>,
) {
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            tracing::error!(%error, "cannot start a worker's event loop");
            return;
        }
    };
    let drain_timeout = gateway.limits.drain_timeout;
    runtime.block_on(async move {
        let open = OpenConnections::default();
        let mut serving = Vec::new();
        for (socket, tls) in sockets {
            match tokio::net::TcpListener::from_std(socket) {
                Ok(listener) => {
                    serving.push(tokio::spawn(gateway.clone().serve(
                        listener,
                        tls,
                        stopped.clone(),
                        open.clone(),
                    )));
                }
                Err(error) => tracing::error!(%error, "a worker cannot use its listener socket"),
            }
        }
        for task in serving {
            let _ = task.await;
        }
        // Stopped: the listeners are closed; connections drain.
        let cut = open.drain(drain_timeout).await;
        if cut > 0 {
            tracing::warn!(
                connections = cut,
                ?drain_timeout,
                "limits.drain_timeout passed: cutting the connections still open"
            );
        }
    });
}
