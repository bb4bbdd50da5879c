//! Before the gateway runs: its config in a temp dir, keys in its store,
//! and how `gateway run` is started.
use std::{
    fs::File,
    net::SocketAddr,
    os::{fd::AsRawFd, unix::process::CommandExt},
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    sync::Arc,
};

use super::{ensure_bpffs, gateway_bin, Gateway};
use crate::{
    cmd::checked,
    fs::TempDir,
    netns::{NetNs, SERVER_IF},
    unique,
};

/// The config every test gateway starts from: a state dir and key store
/// in `dir` (refreshed every 100 ms), an admin listener and one plain HTTP
/// listener on 127.0.0.1:0. Nothing in the repository, no fixed ports.
fn base_config(dir: &Path) -> String {
    format!(
        "state_dir = \"{}\"\n\n[admin]\naddress = \"127.0.0.1:0\"\n\n\
         [[listeners]]\naddress = \"127.0.0.1:0\"\n\n\
         [keys]\nstore = \"{}\"\nrefresh = \"100ms\"\n\n",
        dir.join("state").display(),
        dir.join("keys.db").display()
    )
}

/// Writes the base config alone to `dir/gateway.toml`; its path.
pub fn minimal_config(dir: &TempDir) -> PathBuf {
    dir.write("gateway.toml", &base_config(&dir.path))
}

/// `gateway keys create ... --json` on the store of `config`: (id, key).
pub(super) fn create_client(config: &Path, tier: &str, extra: &[&str]) -> (String, String) {
    let output = checked(
        Command::new(gateway_bin())
            .args(["keys", "create", "--name", "test", "--tier", tier])
            .args(["--json", "--config"])
            .arg(config)
            .args(extra),
    );
    let value: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    (
        value["id"].as_str().unwrap().to_owned(),
        value["api_key"].as_str().unwrap().to_owned(),
    )
}

/// How `gateway run` is started (again, on [`Gateway::restart`]).
#[derive(Clone, Debug)]
pub(super) struct Launch {
    /// The namespace to run in; `None`: the test's own (loopback).
    pub(super) netns: Option<PathBuf>,
    /// XDP on [`SERVER_IF`] protecting these ports (`--require-xdp`);
    /// `None`: `--no-xdp`.
    pub(super) xdp_ports: Option<String>,
    pub(super) pin_root: PathBuf,
    /// XDP on this interface instead of [`SERVER_IF`].
    pub(super) interface: Option<String>,
    args: Vec<String>,
    /// Pipe stderr (the gateway's log) to [`Gateway::stderr_text`].
    pub(super) capture_stderr: bool,
    /// A command that runs the gateway (`setpriv ... --`); empty: none.
    wrapper: Vec<String>,
    /// `PR_SET_MDWE` before exec, as systemd's `MemoryDenyWriteExecute=`.
    deny_write_execute: bool,
}

impl Launch {
    fn command(&self, config: &Path) -> Command {
        let mut command = match self.wrapper.split_first() {
            Some((program, args)) => {
                let mut command = Command::new(program);
                command.args(args).arg(gateway_bin());
                command
            }
            None => Command::new(gateway_bin()),
        };
        command.arg("run");
        match &self.xdp_ports {
            Some(ports) => command
                .arg("--interface")
                .arg(self.interface.as_deref().unwrap_or(SERVER_IF))
                .args(["--ports", ports, "--require-xdp"])
                .arg("--pin-root")
                .arg(&self.pin_root),
            None => command.arg("--no-xdp"),
        };
        command
            .arg("--config")
            .arg(config)
            .args(&self.args)
            .stdout(Stdio::piped())
            .stderr(if self.capture_stderr {
                Stdio::piped()
            } else {
                Stdio::inherit()
            });
        command
    }

    pub(super) fn spawn(&self, config: &Path) -> Child {
        let mut command = self.command(config);
        if self.deny_write_execute {
            // SAFETY: prctl is async-signal-safe; no pointers.
            unsafe {
                command.pre_exec(|| {
                    let flags = libc::PR_MDWE_REFUSE_EXEC_GAIN as libc::c_ulong;
                    if libc::prctl(libc::PR_SET_MDWE, flags, 0, 0, 0) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
        let Some(path) = &self.netns else {
            return command.spawn().unwrap();
        };
        let netns = File::open(path).unwrap();
        let fd = netns.as_raw_fd();
        // SAFETY: setns is async-signal-safe; the fd stays open until spawn returns.
        unsafe {
            command.pre_exec(move || {
                if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        command.spawn().unwrap()
    }
}

/// A gateway not started yet: its config is written and its key store can
/// take keys, which the gateway then loads at start.
pub struct GatewayBuilder {
    launch: Launch,
    /// The config file (`gateway.toml` in the temp dir).
    pub config: PathBuf,
    /// The gateway's `state_dir` (self-signed certificate, audit log, ...).
    pub state_dir: PathBuf,
    dir: TempDir,
}

impl GatewayBuilder {
    /// `body` appended to the base config; loopback, `--no-xdp`.
    pub(super) fn new(body: &str) -> Self {
        let dir = TempDir::new("gateway");
        let config = dir.write("gateway.toml", &(base_config(&dir.path) + body));
        Self {
            launch: Launch {
                netns: None,
                xdp_ports: None,
                pin_root: PathBuf::from("/sys/fs/bpf").join(unique("gwtest")),
                interface: None,
                args: Vec::new(),
                capture_stderr: false,
                wrapper: Vec::new(),
                deny_write_execute: false,
            },
            config,
            state_dir: dir.path.join("state"),
            dir,
        }
    }

    /// Runs the gateway inside `ns` (see [`Topology`]); needs root.
    pub fn in_namespace(mut self, ns: &NetNs) -> Self {
        self.launch.netns = Some(ns.path());
        self
    }

    /// Attaches XDP to [`SERVER_IF`] protecting `ports` (comma-separated),
    /// required (`--require-xdp`), pinned under a fresh pin root in
    /// /sys/fs/bpf. Without this the gateway runs with `--no-xdp`.
    pub fn xdp(mut self, ports: &str) -> Self {
        self.launch.xdp_ports = Some(ports.to_owned());
        self
    }

    /// Pins under `root` instead of a fresh one (a restart after a crash).
    pub fn pin_root(mut self, root: PathBuf) -> Self {
        self.launch.pin_root = root;
        self
    }

    /// Attaches XDP to `interface` instead of [`SERVER_IF`].
    pub fn interface(mut self, interface: &str) -> Self {
        self.launch.interface = Some(interface.to_owned());
        self
    }

    /// More `gateway run` arguments (`--mode monitor`, `--allow ..`).
    pub fn args(mut self, extra: &[&str]) -> Self {
        self.launch.args.extend(extra.iter().map(|a| a.to_string()));
        self
    }

    /// Keeps the gateway's log (stderr) for [`Gateway::stderr_text`]; it
    /// is still echoed to the test's stderr.
    pub fn capture_stderr(mut self) -> Self {
        self.launch.capture_stderr = true;
        self
    }

    /// Runs the gateway through `wrapper` (a program and its arguments
    /// ending in `--`, e.g. `setpriv` dropping to a user and capabilities).
    pub fn wrapper(mut self, wrapper: &[String]) -> Self {
        self.launch.wrapper = wrapper.to_vec();
        self
    }

    /// No memory may become writable and executable for the gateway and
    /// what it runs (`PR_SET_MDWE`, inherited across fork and exec), as
    /// systemd's `MemoryDenyWriteExecute=yes` sets it.
    pub fn deny_write_execute(mut self) -> Self {
        self.launch.deny_write_execute = true;
        self
    }

    /// Keeps clients and keys in the shared store at `url` (`[store]
    /// url`) instead of the base config's SQLite file (the two exclude
    /// each other).
    pub fn shared_store(self, url: &str) -> Self {
        let text = std::fs::read_to_string(&self.config).unwrap();
        let sqlite = format!("store = \"{}\"\n", self.dir.path.join("keys.db").display());
        assert!(
            text.contains(&sqlite),
            "the base config names its SQLite store"
        );
        let text = text.replacen(&sqlite, "", 1);
        std::fs::write(&self.config, format!("{text}\n[store]\nurl = \"{url}\"\n")).unwrap();
        self
    }

    /// A new client of `tier` in the store; returns its key.
    pub fn create_key(&self, tier: &str) -> String {
        create_client(&self.config, tier, &[]).1
    }

    /// [`GatewayBuilder::create_key`] with more `keys create` arguments.
    pub fn create_key_with(&self, tier: &str, extra: &[&str]) -> String {
        create_client(&self.config, tier, extra).1
    }

    /// Like [`GatewayBuilder::create_key_with`]: the client id and the key.
    pub fn create_client(&self, tier: &str, extra: &[&str]) -> (String, String) {
        create_client(&self.config, tier, extra)
    }

    /// `gateway <args>` with `env` set (not checked: tests look at failures).
    pub fn cli(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        cli(args, env)
    }

    /// Starts the gateway and waits for its `ready:` line.
    pub fn start(self) -> Gateway {
        if self.launch.netns.is_some() || self.launch.xdp_ports.is_some() {
            ensure_bpffs();
        }
        let mut gateway = Gateway {
            child: None,
            pin_root: self.launch.pin_root.clone(),
            launch: self.launch,
            addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            listeners: Vec::new(),
            admin: None,
            ready_line: String::new(),
            state_dir: self.state_dir,
            config: self.config,
            lines: Arc::default(),
            stderr_lines: Arc::default(),
            _dir: self.dir,
        };
        gateway.spawn();
        gateway
    }
}

pub(super) fn cli(args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(gateway_bin())
        .args(args)
        .envs(env.iter().copied())
        .output()
        .unwrap()
}
