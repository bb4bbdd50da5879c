//! Thread-per-core serving: each worker thread runs its own single-threaded
//! event loop with its own socket per listener (SO_REUSEPORT: the kernel
//! spreads connections) and its own upstream connections, so a request
//! and its upstream exchange never cross threads. Background work (key and
//! JWKS refresh, health checks, kernel policy) runs elsewhere.
//!
//! A configuration reload reaches workers through [`Workers`]: a new
//! gateway for each (see [`Current`]), listeners added (every worker gets
//! its socket) or removed (every worker stops accepting on it; its open
//! connections go on).
use std::{collections::HashMap, io, net::SocketAddr, sync::Arc, thread::JoinHandle};

use socket2::{Domain, Socket, Type};
use tokio::sync::{mpsc, watch};
use tokio_rustls::TlsAcceptor;

use super::{drain::OpenConnections, Current, Gateway};
use crate::{config::Config, shared::Shared};

/// A listener's TLS acceptor, swapped by a reload (new certificates) and
/// loaded per connection.
pub type TlsSlot = Arc<arc_swap::ArcSwap<TlsAcceptor>>;

/// One listener as every worker sees it.
pub struct Listener {
    pub sockets: Vec<std::net::TcpListener>,
    pub tls: Option<TlsSlot>,
}

/// What a reload asks of a worker.
enum Command {
    /// Accept on `socket` as listener `id`.
    Serve {
        id: usize,
        socket: std::net::TcpListener,
        tls: Option<TlsSlot>,
    },
    /// Stop accepting on listener `id`.
    Stop { id: usize },
}

/// The running workers, as a reload changes them.
pub struct Workers {
    currents: Vec<Arc<Current>>,
    commands: Vec<mpsc::UnboundedSender<Command>>,
}

impl Workers {
    /// Every worker serves new connections and requests with a gateway
    /// built from `config` and `shared`.
    pub fn reconfigure(&self, config: &Config, shared: &Shared) {
        for current in &self.currents {
            current.reconfigure(config, shared);
        }
    }

    /// Every worker accepts on its socket of `listener` (bound with one
    /// socket per worker), as listener `id`.
    pub fn add(&self, id: usize, listener: Listener) {
        for (socket, commands) in listener.sockets.into_iter().zip(&self.commands) {
            let tls = listener.tls.clone();
            let _ = commands.send(Command::Serve { id, socket, tls });
        }
    }

    /// Every worker stops accepting on listener `id`; its connections
    /// finish as they would.
    pub fn remove(&self, id: usize) {
        for commands in &self.commands {
            let _ = commands.send(Command::Stop { id });
        }
    }
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

/// Starts `workers` threads serving `listeners` until `stopped` turns
/// true; listener ids are their positions in `listeners`.
pub fn spawn(
    config: &Config,
    shared: &Shared,
    listeners: Vec<Listener>,
    workers: usize,
    stopped: watch::Receiver<bool>,
) -> io::Result<(Vec<JoinHandle<()>>, Workers)> {
    let mut per_worker: Vec<Vec<Command>> = (0..workers).map(|_| Vec::new()).collect();
    for (id, listener) in listeners.into_iter().enumerate() {
        for (worker, socket) in listener.sockets.into_iter().enumerate() {
            let tls = listener.tls.clone();
            per_worker[worker % workers].push(Command::Serve { id, socket, tls });
        }
    }
    let mut running = Workers {
        currents: Vec::new(),
        commands: Vec::new(),
    };
    let handles = per_worker
        .into_iter()
        .enumerate()
        .map(|(index, initial)| {
            let current = Arc::new(Current::new(Gateway::new(config, shared)));
            let (commands, received) = mpsc::unbounded_channel();
            running.currents.push(current.clone());
            running.commands.push(commands);
            let stopped = stopped.clone();
            std::thread::Builder::new()
                .name(format!("worker-{index}"))
                .spawn(move || run_worker(current, initial, received, stopped))
        })
        .collect::<io::Result<_>>()?;
    Ok((handles, running))
}

fn run_worker(
    current: Arc<Current>,
    initial: Vec<Command>,
    mut commands: mpsc::UnboundedReceiver<Command>,
    mut stopped: watch::Receiver<bool>,
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
    runtime.block_on(async move {
        let open = OpenConnections::default();
        let mut serving = HashMap::new();
        for command in initial {
            apply(command, &current, &mut serving, &stopped, &open);
        }
        loop {
            tokio::select! {
                command = commands.recv() => match command {
                    Some(command) => apply(command, &current, &mut serving, &stopped, &open),
                    // No more reloads: serve until stopped.
                    None => {
                        let _ = stopped.changed().await;
                        break;
                    }
                },
                _ = stopped.changed() => break,
            }
        }
        for (_, task) in serving {
            let _ = task.await;
        }
        // Stopped: the listeners are closed; connections drain (for as
        // long as the configuration last reloaded says).
        let drain_timeout = current.load().limits.drain_timeout;
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

/// Starts or stops accepting on one listener (in this worker).
fn apply(
    command: Command,
    current: &Arc<Current>,
    serving: &mut HashMap<usize, tokio::task::JoinHandle<()>>,
    stopped: &watch::Receiver<bool>,
    open: &OpenConnections,
) {
    match command {
        Command::Serve { id, socket, tls } => match tokio::net::TcpListener::from_std(socket) {
            Ok(listener) => {
                let task = (current.clone()).serve(listener, tls, stopped.clone(), open.clone());
                serving.insert(id, tokio::spawn(task));
            }
            Err(error) => tracing::error!(%error, "a worker cannot use its listener socket"),
        },
        // Dropping its socket: new connections are refused, open ones go on.
        Command::Stop { id } => {
            if let Some(task) = serving.remove(&id) {
                task.abort();
            }
        }
    }
}
