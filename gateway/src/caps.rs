//! Naming the capability a refused operation lacked. A gateway run as its
//! own user (`packaging/gateway.service`) with one capability too few gets
//! only `EPERM` or `EACCES` (or a verifier log) from the kernel; these say
//! which capability is missing from this process's effective set.
use std::{io, net::SocketAddr};

/// A capability by its bit (`linux/capability.h`) and name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Cap {
    bit: u32,
    pub name: &'static str,
}

pub const NET_BIND_SERVICE: Cap = Cap {
    bit: 10,
    name: "CAP_NET_BIND_SERVICE",
};
pub const NET_ADMIN: Cap = Cap {
    bit: 12,
    name: "CAP_NET_ADMIN",
};
pub const PERFMON: Cap = Cap {
    bit: 38,
    name: "CAP_PERFMON",
};
pub const BPF: Cap = Cap {
    bit: 39,
    name: "CAP_BPF",
};

/// Which of `needed` this process lacks (effective set); none when the
/// set cannot be read, so a hint is never made up.
pub fn missing(needed: &[Cap]) -> Vec<Cap> {
    let Some(effective) = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| effective_set(&status))
    else {
        return Vec::new();
    };
    lacking(effective, needed)
}

/// `CapEff` of a `/proc/PID/status` text.
fn effective_set(status: &str) -> Option<u64> {
    let hex = status
        .lines()
        .find_map(|line| line.strip_prefix("CapEff:"))?;
    u64::from_str_radix(hex.trim(), 16).ok()
}

fn lacking(effective: u64, needed: &[Cap]) -> Vec<Cap> {
    needed
        .iter()
        .filter(|cap| effective & (1u64 << cap.bit) == 0)
        .copied()
        .collect()
}

/// "CAP_A and CAP_B".
pub fn names(caps: &[Cap]) -> String {
    caps.iter()
        .map(|c| c.name)
        .collect::<Vec<_>>()
        .join(" and ")
}

/// A refusal's explanation, when `error` is a permission error and this
/// process lacks some of `needed`: "needs CAP_X, which this process lacks".
pub fn hint(error: &io::Error, needed: &[Cap]) -> Option<String> {
    if !is_permission(error) {
        return None;
    }
    let missing = missing(needed);
    (!missing.is_empty()).then(|| needs(&missing))
}

/// "needs CAP_X, which this process lacks (...)".
pub fn needs(missing: &[Cap]) -> String {
    format!(
        "needs {}, which this process lacks (run as root, or grant it as \
         packaging/gateway.service does)",
        names(missing)
    )
}

pub fn is_permission(error: &io::Error) -> bool {
    matches!(error.raw_os_error(), Some(libc::EPERM) | Some(libc::EACCES))
}

/// Why a listener could not bind, when the answer is a capability: ports
/// below 1024 need `CAP_NET_BIND_SERVICE` (unless the namespace's
/// `net.ipv4.ip_unprivileged_port_start` says otherwise).
pub fn bind_hint(address: SocketAddr, error: &io::Error) -> Option<String> {
    if address.port() >= 1024 {
        return None;
    }
    hint(error, &[NET_BIND_SERVICE]).map(|hint| format!("port {} {hint}", address.port()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_effective_set_and_names_what_is_missing() {
        let status = "Name:\tgateway\nCapInh:\t0000000000000000\nCapEff:\t0000008000001000\n";
        let effective = effective_set(status).unwrap();
        assert_eq!(effective, (1 << 39) | (1 << 12));
        let missing = lacking(effective, &[BPF, PERFMON, NET_ADMIN, NET_BIND_SERVICE]);
        assert_eq!(names(&missing), "CAP_PERFMON and CAP_NET_BIND_SERVICE");
        assert_eq!(effective_set("Name:\tx\n"), None);
    }

    #[test]
    fn only_permission_errors_get_a_hint() {
        let refused = io::Error::from_raw_os_error(libc::EADDRINUSE);
        assert_eq!(bind_hint("0.0.0.0:80".parse().unwrap(), &refused), None);
        let denied = io::Error::from_raw_os_error(libc::EACCES);
        assert_eq!(bind_hint("0.0.0.0:8080".parse().unwrap(), &denied), None);
        assert!(is_permission(&denied));
    }
}
