//! The unit's sandbox, reproduced without systemd: the file-system view
//! it builds (a mount namespace: `/` read-only but the state dir, an empty
//! `/sys/fs/bpf` with only the pin root bound in, no home directories) and
//! an `strace` of what the gateway then does, held against the unit's
//! `SystemCallFilter=`, `RestrictAddressFamilies=`, `PrivateDevices=` and
//! `RestrictNamespaces=`.
use std::{
    collections::{BTreeMap, BTreeSet},
    path::Path,
    process::Command,
};

/// Where the service sees its pin root (`BindPaths=`).
pub const SERVICE_PIN_ROOT: &str = "/sys/fs/bpf/gateway";

/// Run by `unshare -m` as root: builds the unit's file-system view, then
/// execs the rest of its arguments with the host pin root's path replaced
/// by [`SERVICE_PIN_ROOT`]. `$1`: the host pin root; `$2`: the state dir.
const VIEW: &str = r#"set -eu
host_pins=$1; state=$2; shift 2
# ReadWritePaths / StateDirectory: stays writable when / turns read-only.
mount --bind "$state" "$state"
# TemporaryFileSystem=/sys/fs/bpf:mode=0755 + BindPaths=/sys/fs/bpf/gateway
stage="$state/.pins"; mkdir -p "$stage"; mount --bind "$host_pins" "$stage"
mount -t tmpfs -o mode=0755 tmpfs /sys/fs/bpf
mkdir /sys/fs/bpf/gateway
mount --move "$stage" /sys/fs/bpf/gateway
# ProtectSystem=strict
mount -o remount,bind,ro /
# ProtectHome=yes
for home in /home /root /run/user; do
  if [ -d "$home" ]; then mount -t tmpfs -o mode=0000 tmpfs "$home"; fi
done
for arg; do
  shift
  if [ "$arg" = "$host_pins" ]; then arg=/sys/fs/bpf/gateway; fi
  set -- "$@" "$arg"
done
# UMask=0077
umask 0077
exec "$@"
"#;

/// The wrapper (ending where the next program starts) that runs it in the
/// unit's file-system view, traced by strace into `log`.
pub fn wrapper(host_pins: &Path, state: &Path, log: &Path) -> Vec<String> {
    [
        "unshare",
        "--mount",
        "--propagation",
        "private",
        "--",
        "sh",
        "-c",
        VIEW,
        "sh",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([host_pins, state].map(|p| p.display().to_string()))
    .chain(["strace", "-f", "-qq", "-o"].map(str::to_owned))
    .chain([log.display().to_string(), "--".to_owned()])
    .collect()
}

/// Run by `unshare -m`: a fresh bpffs at `/sys/fs/bpf` mounted as systemd
/// mounts it (0700 root) holding the pin root (the user's), then the rest
/// of its arguments with the host pin root replaced by that one. `$1`: the
/// host pin root.
const SYSTEMD_BPFFS: &str = r#"set -eu
host_pins=$1; shift
mount -t bpf -o mode=0700 bpf /sys/fs/bpf
install -d -o 65534 -g 65534 -m 0700 /sys/fs/bpf/gateway
for arg; do
  shift
  if [ "$arg" = "$host_pins" ]; then arg=/sys/fs/bpf/gateway; fi
  set -- "$@" "$arg"
done
exec "$@"
"#;

/// The wrapper for [`SYSTEMD_BPFFS`].
pub fn systemd_bpffs(host_pins: &Path) -> Vec<String> {
    ["unshare", "--mount", "--propagation", "private", "--"]
        .iter()
        .chain(&["sh", "-c", SYSTEMD_BPFFS, "sh"])
        .map(|s| s.to_string())
        .chain([host_pins.display().to_string()])
        .collect()
}

/// `systemd-analyze syscall-filter`'s groups, `@name` → members (system
/// calls and groups); `None` without systemd.
pub fn syscall_groups() -> Option<BTreeMap<String, Vec<String>>> {
    let output = Command::new("systemd-analyze")
        .arg("syscall-filter")
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&output.stdout);
    let mut groups: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut current = None;
    for line in text.lines() {
        let word = line.trim();
        if word.is_empty() || word.starts_with('#') {
            continue;
        }
        if !line.starts_with(' ') {
            current = Some(word.to_owned());
            groups.entry(word.to_owned()).or_default();
        } else if let Some(group) = &current {
            groups.get_mut(group).unwrap().push(word.to_owned());
        }
    }
    Some(groups)
}

/// The system calls `filter` (a `SystemCallFilter=` allow list) allows.
pub fn allowed(filter: &[String], groups: &BTreeMap<String, Vec<String>>) -> BTreeSet<String> {
    let mut allowed = BTreeSet::new();
    let mut pending: Vec<String> = filter.to_vec();
    let mut seen = BTreeSet::new();
    while let Some(entry) = pending.pop() {
        if !seen.insert(entry.clone()) {
            continue;
        }
        match groups.get(&entry) {
            Some(members) => pending.extend(members.iter().cloned()),
            None => {
                assert!(!entry.starts_with('@'), "unknown syscall group {entry}");
                allowed.insert(entry);
            }
        }
    }
    allowed
}

/// What an `strace -f` log shows the traced gateway doing, from the exec of
/// `binary` on (what systemd and setpriv do before is not the gateway's).
pub struct Trace {
    calls: Vec<(String, String)>,
}

impl Trace {
    pub fn parse(log: &str, binary: &Path) -> Self {
        let exec = format!("execve(\"{}\"", binary.display());
        let calls = log
            .lines()
            .skip_while(|line| !line.contains(&exec))
            .filter_map(|line| {
                // "PID name(args) = ..." or "PID name(args <unfinished ...>"
                let (_, rest) = line.split_once(' ')?;
                let rest = rest.trim_start();
                let open = rest.find('(')?;
                let name = &rest[..open];
                name.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
                    .then(|| (name.to_owned(), rest[open + 1..].to_owned()))
            })
            .collect::<Vec<_>>();
        assert!(
            !calls.is_empty(),
            "no exec of {} in the trace",
            binary.display()
        );
        Self { calls }
    }

    pub fn syscalls(&self) -> BTreeSet<String> {
        self.calls.iter().map(|(name, _)| name.clone()).collect()
    }

    /// First arguments of `socket` and `socketpair` (`AF_INET`, ...).
    pub fn socket_families(&self) -> BTreeSet<String> {
        self.calls
            .iter()
            .filter(|(name, _)| name == "socket" || name == "socketpair")
            .filter_map(|(_, args)| args.split(',').next().map(str::to_owned))
            .collect()
    }

    /// Every path opened (`open`, `openat`).
    pub fn opened(&self) -> BTreeSet<String> {
        self.calls
            .iter()
            .filter(|(name, _)| name.starts_with("open"))
            .filter_map(|(_, args)| args.split('"').nth(1))
            .map(str::to_owned)
            .collect()
    }

    /// Every `/dev/...` path opened.
    pub fn device_opens(&self) -> BTreeSet<String> {
        self.opened()
            .into_iter()
            .filter(|path| path.starts_with("/dev/"))
            .collect()
    }

    /// Calls that make or enter namespaces (what `RestrictNamespaces=`
    /// forbids): `setns`, `unshare`, and clones with `CLONE_NEW*`.
    pub fn namespace_calls(&self) -> Vec<String> {
        self.calls
            .iter()
            .filter(|(name, args)| {
                name == "setns"
                    || name == "unshare"
                    || (name.starts_with("clone") && args.contains("CLONE_NEW"))
            })
            .map(|(name, args)| format!("{name}({args}"))
            .collect()
    }
}
