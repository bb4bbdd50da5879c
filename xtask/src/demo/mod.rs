//! `cargo xtask run`'s first run: a demo upstream on the embedded defaults'
//! upstream address (so `/api/` answers instead of 502), and on a fresh
//! key store a demo key and a "try it" block, printed once, whose lines
//! show every part of the product. Only `cargo xtask run` does this: the
//! gateway's embedded defaults and serving path know nothing of it.
mod upstream;

#[cfg(test)]
mod tests;

use std::{
    io::{BufRead, BufReader, ErrorKind, Write},
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
pub use upstream::Upstream;

/// The gateway's embedded defaults, where the upstream address comes from.
const DEFAULTS: &str = include_str!("../../../gateway/src/default.toml");
/// `gateway xdp status`'s default `--pin-root`.
const DEFAULT_PIN_ROOT: &str = "/sys/fs/bpf/gateway";
/// The demo key's tier: the lowest default one (10 requests a minute), so
/// [`LOOP`] requests reach 429 within seconds.
const DEMO_TIER: &str = "bronze";
const LOOP: usize = 12;
/// How long `gateway run` may take to print `ready:` (loading XDP included).
const READY_WITHIN: Duration = Duration::from_secs(120);

/// The first `servers = ["ADDR"]` of the embedded defaults.
pub fn default_upstream() -> Result<SocketAddr> {
    let line = (DEFAULTS.lines())
        .find_map(|l| l.trim().strip_prefix("servers = [\""))
        .context("the embedded defaults name no upstream server")?;
    let addr = line.split('"').next().unwrap_or_default();
    addr.parse()
        .with_context(|| format!("the embedded defaults' upstream {addr:?} is not an address"))
}

/// What the first run set up before the gateway starts.
pub struct Demo {
    /// `None` when the upstream address was taken (said on stderr).
    pub upstream: Option<Upstream>,
    /// The demo key, made only on a fresh store; printed once, never logged.
    pub key: Option<String>,
    /// The demo client's id, to revoke it if the gateway never gets ready
    /// (so the next run, on a store fresh again, shows the block).
    client: Option<String>,
    /// The directory the gateway runs in (its default store and state dir).
    pub dir: PathBuf,
}

/// Starts the demo upstream on the defaults' upstream address (in the
/// calling thread's network namespace) and, if the key store `gateway`
/// uses in `dir` (the embedded defaults') has no client yet, makes a demo
/// key. A taken address is said clearly and the run goes on.
pub fn prepare(gateway: &Path, dir: &Path) -> Result<Demo> {
    let addr = default_upstream()?;
    let upstream = match Upstream::start(addr) {
        Ok(upstream) => Some(upstream),
        Err(e) if e.kind() == ErrorKind::AddrInUse => {
            eprintln!(
                "demo: {addr} is taken, so the demo upstream is not started: the gateway \
                 forwards /api/ to whatever listens there (a 502 if it is not HTTP)"
            );
            None
        }
        Err(e) => return Err(e).with_context(|| format!("demo upstream on {addr}")),
    };
    let (client, key) = demo_key(gateway, dir)?.unzip();
    Ok(Demo {
        upstream,
        key,
        client,
        dir: dir.to_owned(),
    })
}

impl Demo {
    /// Revokes the demo client made for a run that never got ready: its
    /// key was never shown, and the store is fresh for the next run.
    pub fn forget(&self, gateway: &Path) -> Result<()> {
        if let Some(client) = &self.client {
            keys(gateway, &self.dir, &["revoke", client])?;
        }
        Ok(())
    }
}

/// `gateway keys ...` on the embedded defaults' store, in `dir`.
fn keys(gateway: &Path, dir: &Path, args: &[&str]) -> Result<serde_json::Value> {
    let output = Command::new(gateway)
        .arg("keys")
        .args(args)
        .arg("--json")
        .current_dir(dir)
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("cannot run {}", gateway.display()))?;
    if !output.status.success() {
        bail!(
            "gateway keys {} failed with {}",
            args.join(" "),
            output.status
        );
    }
    serde_json::from_slice(&output.stdout).context("gateway keys printed no JSON")
}

/// A new demo client (id, key) if the store has no client yet, else `None`.
fn demo_key(gateway: &Path, dir: &Path) -> Result<Option<(String, String)>> {
    let list = keys(gateway, dir, &["list"])?;
    if list["total"].as_u64() != Some(0) {
        return Ok(None);
    }
    let created = keys(
        gateway,
        dir,
        &["create", "--name", "demo", "--tier", DEMO_TIER],
    )?;
    let field = |name: &str| {
        (created[name].as_str().map(str::to_owned))
            .with_context(|| format!("no {name} in keys create's answer"))
    };
    Ok(Some((field("id")?, field("api_key")?)))
}

/// What `gateway run` said on stdout before `ready:`.
#[derive(Debug, Default)]
pub struct Ready {
    /// The first listener's URL.
    pub listen: Option<String>,
    pub admin: Option<String>,
    /// Where the maps are pinned, with XDP attached.
    pub pin_root: Option<PathBuf>,
    /// The `ready:` line.
    pub line: String,
}

impl Ready {
    /// Takes one stdout line; `true` once it is the `ready:` line.
    pub fn see(&mut self, line: &str) -> bool {
        if let Some(url) = line.strip_prefix("listening: ") {
            self.listen.get_or_insert_with(|| url.to_owned());
        } else if let Some(url) = line.strip_prefix("admin: ") {
            self.admin = Some(url.to_owned());
        } else if line.starts_with("ready:") {
            if let Some((_, root)) = line.split_once("maps pinned at ") {
                self.pin_root = Some(PathBuf::from(root));
            }
            self.line = line.to_owned();
            return true;
        }
        false
    }
}

/// The block printed once the gateway is ready: the "try it" lines with
/// the demo key on a fresh store, else a line saying why there are none.
pub fn announcement(demo: &Demo, ready: &Ready, gateway: &Path) -> String {
    let dir = demo.dir.display();
    let Some(key) = &demo.key else {
        return format!(
            "demo: the key store in {dir} has clients already, so no demo key was made; the \
             \"try it\" block shows on a fresh store only (remove gateway-keys.db* and \
             gateway-state/ there to start afresh)\n"
        );
    };
    let listen = ready.listen.as_deref().unwrap_or("http://127.0.0.1:8080");
    let url = format!("{listen}/api/hello");
    let upstream = match &demo.upstream {
        Some(upstream) => format!("the demo upstream ({})", upstream.addr),
        None => "whatever holds the upstream address (not the demo upstream)".to_owned(),
    };
    let mut out = format!(
        "\n── try it ───────────────────────────────────────────────────────────\n\
         A demo client (tier {DEMO_TIER}: 10 requests a minute) and its API key, shown\n\
         this once (the store keeps only a hash). Paste these lines into one shell:\n\n  \
         KEY={key}\n  \
         curl -si -H \"X-API-Key: $KEY\" {url}\n\n\
         A 200 from {upstream}, showing the identity the gateway\n\
         added. The same {LOOP} times: past the limit the gateway answers 429 itself:\n\n  \
         for i in $(seq {LOOP}); do curl -s -o /dev/null -D - -H \"X-API-Key: $KEY\" {url} \
         | grep -iE '^(HTTP|RateLimit|Retry-After)'; done\n\n"
    );
    match &ready.pin_root {
        Some(root) => {
            let pins = match root.to_str() {
                Some(DEFAULT_PIN_ROOT) => String::new(),
                _ => format!(" --pin-root {}", root.display()),
            };
            out += &format!(
                "The kernel path: XDP's counters by reason, a ban by hand (203.0.113.7 is\n\
                 a documentation address), and the pinned ban map holding it:\n\n  \
                 {gw} xdp status{pins}\n  \
                 {gw} xdp ban 203.0.113.7 --for 60s{pins}\n  \
                 bpftool map dump pinned {bans}\n\n",
                gw = gateway.display(),
                bans = root.join("GW_BANS").display(),
            );
        }
        None => {
            out += &format!(
                "The kernel path is off ({}): run as root for XDP.\n\n",
                ready.line.trim_start_matches("ready: ")
            )
        }
    }
    if let Some(admin) = &ready.admin {
        out += &format!(
            "Prometheus metrics (requests by route, tier and status; 429s; bans; XDP):\n\n  \
             curl -s {admin}/metrics | grep -E '^gateway_(requests|rate_limited)_total'\n\n"
        );
    }
    out += &format!(
        "This shows on a fresh key store only (gateway-keys.db in {dir}).\n\
         ─────────────────────────────────────────────────────────────────────\n"
    );
    out
}

/// `gateway run`, its stdout echoed to ours and read until `ready:`.
pub struct Running {
    pub child: Child,
    pub ready: Ready,
    echo: thread::JoinHandle<()>,
}

impl Running {
    /// Waits for the gateway to exit, and for the last of its output.
    pub fn wait(mut self) -> Result<std::process::ExitStatus> {
        let status = self.child.wait()?;
        let _ = self.echo.join();
        Ok(status)
    }
}

/// Spawns `command` (a `gateway run`) and returns once it is ready; an
/// error if it exits first or takes longer than [`READY_WITHIN`].
pub fn spawn(mut command: Command) -> Result<Running> {
    let mut child = command
        .stdout(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot start {command:?}"))?;
    let stdout = child.stdout.take().context("no stdout pipe")?;
    let (tx, rx) = mpsc::channel();
    let echo = thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            // The access log goes on to the terminal after `ready:`.
            let _ = writeln!(std::io::stdout(), "{line}");
            let _ = tx.send(line);
        }
    });
    let mut ready = Ready::default();
    let deadline = Instant::now() + READY_WITHIN;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(line) if ready.see(&line) => {
                return Ok(Running { child, ready, echo });
            }
            Ok(_) => {}
            Err(_) => {
                let exited = child.try_wait()?;
                if exited.is_none() {
                    let _ = child.kill();
                    let _ = child.wait();
                }
                bail!("gateway run was not ready within {READY_WITHIN:?} (exited: {exited:?})");
            }
        }
    }
}

/// `cargo xtask run`: the gateway with `args` (or on `lo`), and the first
/// run's demo unless the arguments name a configuration of their own.
pub fn run(gateway: &Path, args: &[String]) -> Result<()> {
    let own_config = (args.iter()).any(|a| a == "--config" || a.starts_with("--config="));
    let demo = match own_config {
        true => {
            eprintln!("demo: off (your own --config): no demo upstream, no demo key");
            None
        }
        false => Some(prepare(gateway, &std::env::current_dir()?)?),
    };
    let mut command = Command::new(gateway);
    command.arg("run");
    if args.is_empty() {
        command.args(["--interface", "lo"]);
    } else {
        command.args(args);
    }
    let running = match spawn(command) {
        Ok(running) => running,
        Err(error) => {
            if let Some(demo) = &demo {
                demo.forget(gateway)?;
            }
            return Err(error);
        }
    };
    // Ctrl-C reaches the gateway too (one process group): let it shut down
    // and print its last lines through us rather than die first.
    // SAFETY: setting a signal disposition; no handler runs.
    unsafe { libc::signal(libc::SIGINT, libc::SIG_IGN) };
    if let Some(demo) = &demo {
        print!("{}", announcement(demo, &running.ready, gateway));
    }
    let status = running.wait()?;
    if !status.success() {
        bail!("gateway run exited with {status}");
    }
    Ok(())
}
