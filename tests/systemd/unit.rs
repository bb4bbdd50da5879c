//! `packaging/gateway.service` read as data, and running a command the way
//! the unit would: as [`UID`] with exactly its capabilities.
use std::{
    fs::{self, File},
    os::{fd::AsRawFd, unix::process::CommandExt},
    path::{Path, PathBuf},
    process::{Command, Output, Stdio},
    time::{Duration, Instant},
};

use gateway_tests::{cmd::checked, fs::TempDir, gateway::gateway_bin, http::pause, netns::NetNs};

/// `nobody`: a uid that owns nothing on the host.
pub const UID: u32 = 65534;

/// The unit, compiled in: the test and the file cannot disagree.
const UNIT: &str = include_str!("../../packaging/gateway.service");

pub fn packaged_config_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../packaging/gateway.toml")
}

pub fn packaged_config() -> String {
    fs::read_to_string(packaged_config_path()).unwrap()
}

/// The string value of the first `key = "..."` line in `toml`.
pub fn toml_string(toml: &str, key: &str) -> PathBuf {
    toml.lines()
        .find_map(|line| {
            let (name, rest) = line.split_once('=')?;
            (name.trim() == key).then(|| rest.split('"').nth(1).map(PathBuf::from))?
        })
        .unwrap_or_else(|| panic!("no {key} in the packaged config"))
}

pub struct Unit {
    text: &'static str,
}

impl Unit {
    pub fn packaged() -> Self {
        Self { text: UNIT }
    }

    /// Every value of `key=` lines, split on whitespace (only ExecStart*
    /// lines keep theirs whole).
    pub fn values(&self, key: &str) -> Vec<String> {
        let whole = key.starts_with("Exec");
        self.text
            .lines()
            .filter(|line| !line.starts_with('#'))
            .filter_map(|line| line.split_once('='))
            .filter(|(name, _)| name.trim() == key)
            .flat_map(|(_, value)| {
                if whole {
                    vec![value.trim().to_owned()]
                } else {
                    value.split_whitespace().map(str::to_owned).collect()
                }
            })
            .collect()
    }

    /// The capabilities, sorted; ambient and bounding set must agree.
    pub fn capabilities(&self) -> Vec<String> {
        let mut ambient = self.values("AmbientCapabilities");
        let mut bounding = self.values("CapabilityBoundingSet");
        ambient.sort();
        bounding.sort();
        assert_eq!(
            ambient, bounding,
            "AmbientCapabilities vs CapabilityBoundingSet"
        );
        assert!(!ambient.is_empty());
        ambient
    }

    /// `prlimit` and its arguments (ending in `--`) that set the unit's
    /// `LimitNOFILE=`, as far as this process's hard limit allows (systemd
    /// raises it with CAP_SYS_RESOURCE, which a container's root may lack).
    pub fn prlimit(&self) -> Vec<String> {
        let mut args = vec!["prlimit".to_owned()];
        for value in self.values("LimitNOFILE") {
            let mut limit = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            // SAFETY: getrlimit writes the struct it is given.
            assert_eq!(
                unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) },
                0
            );
            let value = value.parse::<u64>().unwrap().min(limit.rlim_max);
            args.push(format!("--nofile={value}:{value}"));
        }
        args.push("--".to_owned());
        args
    }

    /// `--config`'s argument in ExecStart.
    pub fn config_path(&self) -> PathBuf {
        let exec = &self.values("ExecStart")[0];
        let mut words = exec.split_whitespace();
        words.find(|w| *w == "--config");
        PathBuf::from(words.next().expect("ExecStart has no --config"))
    }

    /// `systemd-analyze verify` on the unit, its ExecStart pointing at the
    /// binary under test (it checks the file is executable). Skips, saying
    /// so, where systemd is not installed.
    pub fn verify_with_systemd_analyze(&self) {
        let dir = TempDir::new("unit");
        let exec = self.values("ExecStart")[0]
            .split_whitespace()
            .next()
            .unwrap()
            .to_owned();
        let text = self
            .text
            .replace(&exec, &gateway_bin().display().to_string());
        let path = dir.write("gateway.service", &text);
        let output = match Command::new("systemd-analyze")
            .arg("verify")
            .arg(&path)
            .output()
        {
            Ok(output) => output,
            Err(error) => {
                skipped(&format!(
                    "systemd-analyze verify (systemd not installed: {error})"
                ));
                return;
            }
        };
        assert!(
            output.status.success() && output.stderr.is_empty(),
            "systemd-analyze verify: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
}

/// `setpriv` and its arguments (ending in `--`) that run the next program
/// as [`UID`] with exactly `caps` (`CAP_...`) in its effective, permitted,
/// inheritable, ambient and bounding sets, and no_new_privs.
pub fn setpriv(caps: &[String]) -> Vec<String> {
    let list: String = caps
        .iter()
        .map(|cap| format!(",+{}", cap.trim_start_matches("CAP_").to_lowercase()))
        .collect();
    [
        "setpriv".to_owned(),
        format!("--reuid={UID}"),
        format!("--regid={UID}"),
        "--clear-groups".to_owned(),
        format!("--inh-caps=-all{list}"),
        format!("--ambient-caps=-all{list}"),
        format!("--bounding-set=-all{list}"),
        "--no-new-privs".to_owned(),
        "--".to_owned(),
    ]
    .to_vec()
}

/// The capability bit mask of `caps`, as `/proc/PID/status` shows it.
pub fn cap_mask(caps: &[String]) -> u64 {
    caps.iter()
        .map(|cap| match cap.as_str() {
            "CAP_NET_BIND_SERVICE" => 10,
            "CAP_NET_ADMIN" => 12,
            "CAP_SYS_ADMIN" => 21,
            "CAP_PERFMON" => 38,
            "CAP_BPF" => 39,
            other => panic!("unknown capability {other}"),
        })
        .fold(0, |mask, bit| mask | 1u64 << bit)
}

/// Hands `dir` and everything in it to [`UID`] (what `StateDirectory=`
/// does for the state dir; the config only needs to be readable).
pub fn give_to_user(dir: &Path) {
    checked(
        Command::new("chown")
            .arg("-R")
            .arg(format!("{UID}:{UID}"))
            .arg(dir),
    );
}

/// A fresh pin root owned by [`UID`], 0700, as the unit's `ExecStartPre`
/// makes it, on a bpffs of its own (mounted 0755 in the temp dir): the
/// host's /sys/fs/bpf may be systemd's, 0700 root, which the unit reaches
/// through `TemporaryFileSystem=` + `BindPaths=` and a plain run as
/// [`UID`] cannot. Removed with its pins and its mount on drop.
pub struct PinRoot {
    pub path: PathBuf,
    mount: PathBuf,
}

impl PinRoot {
    pub fn new() -> Self {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mount = std::env::temp_dir().join(format!("gwsd{}x{n}", std::process::id()));
        checked(
            Command::new("install")
                .args(["-d", "-m", "0755"])
                .arg(&mount),
        );
        checked(
            Command::new("mount")
                .args(["-t", "bpf", "-o", "mode=0755", "bpf"])
                .arg(&mount),
        );
        let path = mount.join("pins");
        checked(
            Command::new("install")
                .args([
                    "-d",
                    "-m",
                    "0700",
                    "-o",
                    &UID.to_string(),
                    "-g",
                    &UID.to_string(),
                ])
                .arg(&path),
        );
        Self { path, mount }
    }
}

impl Drop for PinRoot {
    fn drop(&mut self) {
        if let Ok(entries) = fs::read_dir(&self.path) {
            for entry in entries.flatten() {
                let _ = fs::remove_file(entry.path());
            }
        }
        let _ = fs::remove_dir(&self.path);
        let _ = Command::new("umount").arg(&self.mount).status();
        let _ = fs::remove_dir(&self.mount);
    }
}

/// Runs `command` in `ns` until it exits (killed after `within`); its
/// output, collected through files so a chatty process never blocks.
pub fn run_in(ns: &NetNs, mut command: Command, within: Duration) -> Output {
    let dir = TempDir::new("out");
    let (out, err) = (dir.path.join("stdout"), dir.path.join("stderr"));
    let netns = File::open(ns.path()).unwrap();
    let fd = netns.as_raw_fd();
    command
        .stdin(Stdio::null())
        .stdout(File::create(&out).unwrap())
        .stderr(File::create(&err).unwrap());
    // SAFETY: setns is async-signal-safe; the fd outlives spawn.
    unsafe {
        command.pre_exec(move || {
            if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = command.spawn().unwrap();
    let deadline = Instant::now() + within;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            break child.wait().unwrap();
        }
        pause(Duration::from_millis(50));
    };
    Output {
        status,
        stdout: fs::read(&out).unwrap(),
        stderr: fs::read(&err).unwrap(),
    }
}

/// One `SKIPPED ...` line straight to stderr, past libtest's capture (which
/// takes only `print!`/`eprint!`), as `require_root` reports its skips.
pub fn skipped(what: &str) {
    use std::io::Write;
    let line = format!("SKIPPED systemd::{what}\n");
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
}
