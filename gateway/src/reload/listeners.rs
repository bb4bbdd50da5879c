//! Listeners as a reload sees them: binding one (at start and when a
//! reload adds it), and matching a new configuration's listeners to the
//! running ones.
use std::{net::SocketAddr, path::Path, sync::Arc};

use tokio_rustls::TlsAcceptor;

use crate::{
    config::ListenerConfig,
    proxy::{
        tls::{self, TlsError},
        workers::{self, TlsSlot},
    },
};

#[derive(Debug, thiserror::Error)]
pub enum ListenerError {
    #[error("TLS for listener {address}: {source}")]
    Tls {
        address: SocketAddr,
        source: TlsError,
    },
    #[error("cannot listen on {address}: {source}")]
    Bind {
        address: SocketAddr,
        source: std::io::Error,
    },
}

/// A listener bound with one socket per worker.
pub struct Bound {
    pub listener: workers::Listener,
    /// Where it listens (the port picked for port 0).
    pub address: SocketAddr,
    pub url: String,
}

/// A listener being served.
pub struct Active {
    /// What the workers know it by.
    pub id: usize,
    pub config: ListenerConfig,
    pub address: SocketAddr,
    /// Its certificate, which every reload reads again.
    pub tls: Option<TlsSlot>,
}

impl Active {
    /// Tracks `bound` as listener `id`; returns what the workers serve.
    pub fn new(id: usize, config: &ListenerConfig, bound: Bound) -> (Self, workers::Listener) {
        let active = Self {
            id,
            config: config.clone(),
            address: bound.address,
            tls: bound.listener.tls.clone(),
        };
        (active, bound.listener)
    }
}

/// The acceptor for `listener`'s TLS, if it has TLS (a self-signed
/// certificate in `state_dir` when it names no files).
pub fn acceptor(
    listener: &ListenerConfig,
    state_dir: &Path,
) -> Result<Option<TlsAcceptor>, ListenerError> {
    let Some(tls) = &listener.tls else {
        return Ok(None);
    };
    let mut names = tls.names.clone();
    if names.is_empty() {
        names = vec!["localhost".into(), listener.address.ip().to_string()];
    }
    let acceptor = tls::acceptor(tls, state_dir, &names).map_err(|source| ListenerError::Tls {
        address: listener.address,
        source,
    })?;
    Ok(Some(acceptor))
}

/// Binds `listener` with one socket per worker (SO_REUSEPORT).
pub fn bind(
    listener: &ListenerConfig,
    state_dir: &Path,
    workers: usize,
) -> Result<Bound, ListenerError> {
    // The certificate first: a bad one binds nothing.
    let tls = acceptor(listener, state_dir)?;
    let sockets = workers::bind(listener.address, workers).map_err(bind_error(listener))?;
    wrap(listener, tls, sockets)
}

fn bind_error(listener: &ListenerConfig) -> impl Fn(std::io::Error) -> ListenerError + '_ {
    |source| ListenerError::Bind {
        address: listener.address,
        source,
    }
}

/// `listener` served by `tls` on `sockets` it has (bound, or inherited
/// from the gateway it restarts).
pub fn wrap(
    listener: &ListenerConfig,
    tls: Option<TlsAcceptor>,
    sockets: Vec<std::net::TcpListener>,
) -> Result<Bound, ListenerError> {
    let bind_error = bind_error(listener);
    let address = match sockets.first() {
        Some(first) => first.local_addr().map_err(bind_error)?,
        None => listener.address,
    };
    let scheme = if tls.is_some() { "https" } else { "http" };
    Ok(Bound {
        listener: workers::Listener {
            sockets,
            tls: tls.map(|acceptor| Arc::new(arc_swap::ArcSwap::from_pointee(acceptor))),
        },
        address,
        url: format!("{scheme}://{address}"),
    })
}

/// A new configuration's listeners against the running ones.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// (running index, new index): the same listener.
    pub kept: Vec<(usize, usize)>,
    /// New indices to bind.
    pub added: Vec<usize>,
    /// Running indices to stop.
    pub removed: Vec<usize>,
}

/// Matches each new listener to a running one with the same configured
/// address, else one listening where it names (an address with port 0
/// may be written with the port it got); the rest are added or removed.
pub fn plan(running: &[Active], next: &[ListenerConfig]) -> Plan {
    let mut free = vec![true; running.len()];
    let mut plan = Plan::default();
    for (index, listener) in next.iter().enumerate() {
        let configured = |i: &usize| free[*i] && running[*i].config.address == listener.address;
        let bound = |i: &usize| free[*i] && running[*i].address == listener.address;
        let found = (0..running.len())
            .find(configured)
            .or_else(|| (0..running.len()).find(bound));
        match found {
            Some(old) => {
                free[old] = false;
                plan.kept.push((old, index));
            }
            None => plan.added.push(index),
        }
    }
    plan.removed = (0..running.len()).filter(|i| free[*i]).collect();
    plan
}

#[cfg(test)]
mod tests {
    use super::*;

    fn active(id: usize, configured: &str, bound: &str) -> Active {
        Active {
            id,
            config: listener(configured),
            address: bound.parse().unwrap(),
            tls: None,
        }
    }

    fn listener(address: &str) -> ListenerConfig {
        ListenerConfig {
            address: address.parse().unwrap(),
            tls: None,
        }
    }

    #[test]
    fn listeners_match_by_configured_then_bound_address() {
        let running = [
            active(0, "127.0.0.1:0", "127.0.0.1:4000"),
            active(1, "127.0.0.1:0", "127.0.0.1:4001"),
            active(2, "127.0.0.1:8080", "127.0.0.1:8080"),
        ];
        // The second port-0 listener written with its port; the third gone; one new.
        let next = [
            listener("127.0.0.1:4001"),
            listener("127.0.0.1:0"),
            listener("127.0.0.1:9090"),
        ];
        let plan = plan(&running, &next);
        assert_eq!(
            plan,
            Plan {
                kept: vec![(1, 0), (0, 1)],
                added: vec![2],
                removed: vec![2],
            }
        );
    }
}
