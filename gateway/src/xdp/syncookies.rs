//! The kernel half of spoof-resistant SYN budgets: with `xdp.syn_cookies`,
//! SYNs of a source in cookie mode pass the XDP program uncharged and the
//! kernel must answer every one with a SYN cookie (no SYN queue entry), so
//! the program can charge only handshakes completed with a valid cookie.
//! That is `net.ipv4.tcp_syncookies = 2` in the gateway's network namespace.
use std::{
    fs, io,
    net::{Ipv4Addr, Ipv6Addr, SocketAddr},
    path::Path,
    sync::Arc,
    time::Duration,
};

use gateway_common::syn_cookies;
use tokio::sync::watch;

/// `xdp.syn_cookies`: who answers the SYNs of a source in cookie mode.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum SynCookies {
    /// No cookie mode: SYNs over budget are dropped (spoofable).
    #[default]
    Off,
    /// The kernel's own SYN cookies (every SYN passes XDP to the stack).
    Kernel,
    /// XDP answers with the cookie SYN-ACK itself (`XDP_TX`): the SYN never
    /// reaches the stack. Needs a driver whose XDP_TX transmits (a veth
    /// only if its peer runs NAPI: an XDP program or GRO on).
    Xdp,
}

impl SynCookies {
    pub fn as_kernel(self) -> u32 {
        match self {
            SynCookies::Off => syn_cookies::OFF,
            SynCookies::Kernel => syn_cookies::KERNEL,
            SynCookies::Xdp => syn_cookies::XDP,
        }
    }
}

/// The namespace-wide switch (per network namespace since Linux 4.12).
pub const SYSCTL: &str = "/proc/sys/net/ipv4/tcp_syncookies";
/// "Always answer SYNs with cookies".
const ALWAYS: &str = "2";

#[derive(Debug, thiserror::Error)]
#[error(
    "xdp.syn_cookies needs net.ipv4.tcp_syncookies = 2 and it could not be set ({path}): \
     {source}{hint}"
)]
pub struct SyncookiesError {
    path: String,
    source: io::Error,
    /// "; writing it needs CAP_NET_ADMIN, ..." when that is why.
    hint: String,
}

/// How often [`keep_listeners_accepting`] refreshes: well inside the
/// kernel's 2-minute window.
pub const REFRESH: Duration = Duration::from_secs(30);

/// Where to connect so that each protected port's listener sends a cookie:
/// the gateway's own listener on that port (an unspecified address means
/// loopback), else loopback in both families.
pub fn refresh_targets(ports: &[u16], listeners: &[SocketAddr]) -> Vec<SocketAddr> {
    let mut targets = Vec::new();
    for &port in ports {
        let own: Vec<SocketAddr> = listeners
            .iter()
            .filter(|address| address.port() == port)
            .map(|address| match address {
                SocketAddr::V4(v4) if v4.ip().is_unspecified() => {
                    SocketAddr::from((Ipv4Addr::LOCALHOST, port))
                }
                SocketAddr::V6(v6) if v6.ip().is_unspecified() => {
                    SocketAddr::from((Ipv6Addr::LOCALHOST, port))
                }
                other => *other,
            })
            .collect();
        if own.is_empty() {
            targets.push(SocketAddr::from((Ipv4Addr::LOCALHOST, port)));
            targets.push(SocketAddr::from((Ipv6Addr::LOCALHOST, port)));
        } else {
            targets.extend(own);
        }
    }
    targets
}

/// With `xdp.syn_cookies = "xdp"`, the kernel accepts the final ACK of a
/// cookie XDP sent only if the listener itself sent a cookie in the last
/// two minutes (`tcp_synq_no_recent_overflow`). A connect to it does that
/// (`tcp_syncookies = 2` answers every SYN with one), every [`REFRESH`],
/// for as long as the gateway runs; no packet from outside decides it.
/// `targets` follows reloads ([`CookieTargets::update`]): a listener new
/// among them is connected to at once.
pub async fn keep_listeners_accepting(mut targets: watch::Receiver<Vec<SocketAddr>>) {
    loop {
        let now = targets.borrow_and_update().clone();
        for target in &now {
            // Refused or unreachable (nothing listens there): nothing to keep.
            let _ = tokio::time::timeout(
                Duration::from_secs(1),
                tokio::net::TcpStream::connect(target),
            )
            .await;
        }
        tokio::select! {
            _ = tokio::time::sleep(REFRESH) => {}
            changed = targets.changed() => {
                // No more updates (shutting down): the same ones, as before.
                if changed.is_err() {
                    tokio::time::sleep(REFRESH).await;
                }
            }
        }
    }
}

/// The listeners [`keep_listeners_accepting`] keeps accepting, as a reload
/// changes them (listeners added or removed, protected ports changed).
#[derive(Clone)]
pub struct CookieTargets(Arc<watch::Sender<Vec<SocketAddr>>>);

impl CookieTargets {
    /// Keeps `listeners` on the protected `ports` accepting (see
    /// [`refresh_targets`]), from now on.
    pub fn spawn(ports: &[u16], listeners: &[SocketAddr]) -> Self {
        let (targets, receiver) = watch::channel(refresh_targets(ports, listeners));
        tokio::spawn(keep_listeners_accepting(receiver));
        Self(Arc::new(targets))
    }

    /// The listeners and ports of a reloaded configuration.
    pub fn update(&self, ports: &[u16], listeners: &[SocketAddr]) {
        let targets = refresh_targets(ports, listeners);
        self.0.send_if_modified(|current| {
            let changed = *current != targets;
            *current = targets;
            changed
        });
    }

    /// Where the task connects now.
    pub fn current(&self) -> Vec<SocketAddr> {
        self.0.borrow().clone()
    }
}

/// Sets `tcp_syncookies` to 2 unless it already is; returns the value it
/// replaced (for the log), `None` when nothing changed.
pub fn ensure_always(sysctl: &Path) -> Result<Option<String>, SyncookiesError> {
    let error = |source: io::Error| SyncookiesError {
        path: sysctl.display().to_string(),
        hint: crate::caps::hint(&source, &[crate::caps::NET_ADMIN])
            .map(|hint| format!("; writing it {hint}"))
            .unwrap_or_default(),
        source,
    };
    let before = fs::read_to_string(sysctl).map_err(error)?;
    let before = before.trim();
    if before == ALWAYS {
        return Ok(None);
    }
    fs::write(sysctl, ALWAYS).map_err(error)?;
    Ok(Some(before.to_owned()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refreshes_own_listeners_else_loopback() {
        let listeners: Vec<SocketAddr> = vec![
            "0.0.0.0:80".parse().unwrap(),
            "[::]:80".parse().unwrap(),
            "10.0.0.1:443".parse().unwrap(),
        ];
        let targets = refresh_targets(&[80, 443, 8080], &listeners);
        let expected: Vec<SocketAddr> = [
            "127.0.0.1:80",
            "[::1]:80",
            "10.0.0.1:443",
            "127.0.0.1:8080",
            "[::1]:8080",
        ]
        .iter()
        .map(|a| a.parse().unwrap())
        .collect();
        assert_eq!(targets, expected);
    }

    #[tokio::test]
    async fn a_reload_changes_what_is_kept_accepting_at_once() {
        // Something listening, to see the task's connects arrive.
        let added = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = added.local_addr().unwrap();
        let targets = CookieTargets::spawn(&[address.port()], &[]);
        let loopback = |port: u16| -> Vec<SocketAddr> {
            vec![
                (Ipv4Addr::LOCALHOST, port).into(),
                (Ipv6Addr::LOCALHOST, port).into(),
            ]
        };
        assert_eq!(targets.current(), loopback(address.port()));
        // The first round connects at start (loopback reaches `added`)...
        let first = tokio::time::timeout(Duration::from_secs(10), added.accept()).await;
        assert!(first.is_ok(), "no connect at start");
        // ...and the next only after REFRESH, unless a reload changes the
        // targets: then at once.
        targets.update(&[address.port(), 1], &[address]);
        assert_eq!(targets.current()[0], address);
        assert_eq!(targets.current()[1..], loopback(1));
        let again = tokio::time::timeout(Duration::from_secs(10), added.accept()).await;
        assert!(again.is_ok(), "the reloaded listener was not connected to");
        // Removed: no longer a target.
        targets.update(&[1], &[]);
        assert_eq!(targets.current(), loopback(1));
    }

    #[test]
    fn sets_two_once_and_reports_the_old_value() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("tcp_syncookies");
        fs::write(&file, "1\n").unwrap();
        assert_eq!(ensure_always(&file).unwrap(), Some("1".into()));
        assert_eq!(fs::read_to_string(&file).unwrap(), "2");
        assert_eq!(ensure_always(&file).unwrap(), None);
        assert!(ensure_always(&dir.path().join("missing")).is_err());
    }
}
