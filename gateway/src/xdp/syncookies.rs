//! The kernel half of spoof-resistant SYN budgets: with `xdp.syn_cookies`,
//! SYNs of a source in cookie mode pass the XDP program uncharged and the
//! kernel must answer every one with a SYN cookie (no SYN queue entry), so
//! the program can charge only handshakes completed with a valid cookie.
//! That is `net.ipv4.tcp_syncookies = 2` in the gateway's network namespace.
use std::{fs, io, path::Path};

/// The namespace-wide switch (per network namespace since Linux 4.12).
pub const SYSCTL: &str = "/proc/sys/net/ipv4/tcp_syncookies";
/// "Always answer SYNs with cookies".
const ALWAYS: &str = "2";

#[derive(Debug, thiserror::Error)]
#[error(
    "xdp.syn_cookies needs net.ipv4.tcp_syncookies = 2 and it could not be set ({path}): {source}"
)]
pub struct SyncookiesError {
    path: String,
    source: io::Error,
}

/// Sets `tcp_syncookies` to 2 unless it already is; returns the value it
/// replaced (for the log), `None` when nothing changed.
pub fn ensure_always(sysctl: &Path) -> Result<Option<String>, SyncookiesError> {
    let error = |source| SyncookiesError {
        path: sysctl.display().to_string(),
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
