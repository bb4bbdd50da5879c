//! What the reload tests share: the config file they rewrite, the two
//! ways to reload (admin API, SIGHUP) and a kept-alive HTTP/1.1 client.
use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use gateway_tests::{
    gateway::Gateway,
    http::{pause, request_with_body, tiers_and_app, FakeUpstream, Reply},
};

/// The test's part of the config file, rewritten for each reload.
pub struct ConfigFile {
    path: PathBuf,
    /// The harness's base (state dir, admin, first listener, key store).
    base: String,
}

impl ConfigFile {
    pub fn of(gateway: &Gateway, body: &str) -> Self {
        let text = std::fs::read_to_string(&gateway.config).unwrap();
        let base = text.strip_suffix(body).unwrap().to_owned();
        Self {
            path: gateway.config.clone(),
            base,
        }
    }

    pub fn write(&self, body: &str) {
        std::fs::write(&self.path, format!("{}{body}", self.base)).unwrap();
    }
}

/// `POST /v1/reload` with `key`.
pub fn reload(gateway: &Gateway, key: &str) -> Reply {
    let auth = format!("Bearer {key}");
    let headers = [("authorization", auth.as_str())];
    request_with_body(gateway.admin.unwrap(), "POST", "/v1/reload", &headers, "")
}

/// Sends SIGHUP and waits (at most 10 s) until the log shows its outcome:
/// one more "configuration reloaded" or "reload refused" line.
pub fn hangup(gateway: &Gateway) -> String {
    hangup_process(gateway.pid().unwrap(), || gateway.stderr_text())
}

/// [`hangup`] for the process `pid` whose log `log` reads (an old
/// gateway after a restart).
pub fn hangup_process(pid: u32, log: impl Fn() -> String) -> String {
    let is_outcome =
        |l: &&str| l.contains("configuration reloaded") || l.contains("reload refused");
    let outcomes = |text: &str| text.lines().filter(is_outcome).count();
    let before = outcomes(&log());
    let pid = libc::pid_t::try_from(pid).unwrap();
    // SAFETY: signalling our own child.
    unsafe { libc::kill(pid, libc::SIGHUP) };
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let text = log();
        if outcomes(&text) > before {
            let last = text.lines().rev().find(is_outcome);
            return last.unwrap_or_default().to_owned();
        }
        assert!(
            Instant::now() < deadline,
            "no reload outcome logged:\n{text}"
        );
        pause(Duration::from_millis(20));
    }
}

/// The maps a reload writes (protected ports, allow-list, config), as
/// `bpftool` dumps them from the pins under `root`: bytes, to compare.
pub fn policy_maps(root: &Path) -> serde_json::Value {
    let dump = |map: &str| {
        let output = std::process::Command::new("bpftool")
            .args(["-j", "map", "dump", "pinned"])
            .arg(root.join(map))
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "bpftool map dump {map}: {output:?}"
        );
        serde_json::from_slice::<serde_json::Value>(&output.stdout).unwrap()
    };
    serde_json::json!({
        "GW_PORTS": dump("GW_PORTS"),
        "GW_ALLOW": dump("GW_ALLOW"),
        "GW_CONFIG": dump("GW_CONFIG"),
    })
}

/// An HTTP/1.1 connection kept open for many requests.
pub struct KeepAlive {
    reader: BufReader<TcpStream>,
}

impl KeepAlive {
    pub fn open(addr: SocketAddr) -> std::io::Result<Self> {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
        stream.set_read_timeout(Some(Duration::from_secs(15)))?;
        Ok(Self {
            reader: BufReader::new(stream),
        })
    }

    /// One request on the open connection; its status.
    pub fn get(&mut self, target: &str, headers: &[(&str, &str)]) -> std::io::Result<u16> {
        let mut text = format!("GET {target} HTTP/1.1\r\nhost: gateway\r\n");
        for (name, value) in headers {
            text.push_str(&format!("{name}: {value}\r\n"));
        }
        text.push_str("\r\n");
        self.reader.get_mut().write_all(text.as_bytes())?;
        let mut status = 0;
        let mut length = 0;
        let mut line = String::new();
        loop {
            line.clear();
            if self.reader.read_line(&mut line)? == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            let trimmed = line.trim_end();
            if trimmed.is_empty() {
                break;
            }
            if status == 0 {
                status = trimmed
                    .split(' ')
                    .nth(1)
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(0);
            } else if let Some((name, value)) = trimmed.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.trim().parse().unwrap_or(0);
                }
            }
        }
        let mut body = vec![0; length];
        self.reader.read_exact(&mut body)?;
        Ok(status)
    }
}

/// An unlimited API-key route for traffic, plus `extra` (a second route
/// whose prefix the reloads change).
pub fn load_config(upstream: &FakeUpstream, extra: &str) -> String {
    tiers_and_app(upstream.addr)
        + &format!(
            "\n[[routes]]\npath_prefix = \"/api/\"\nupstream = \"app\"\nrate_limit = false\n\n\
             [[routes]]\npath_prefix = \"{extra}\"\nupstream = \"app\"\n"
        )
}
