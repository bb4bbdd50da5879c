//! A throwaway Redis server for fleet tests: Debian's `redis-server` on a
//! unix socket in a temp dir (reachable from any network namespace, no
//! port to collide on), nothing persisted, killed on drop.
use std::{
    io::{Read, Write},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use super::{fs::TempDir, REQUIRE_PRIVILEGED};

pub struct Redis {
    binary: PathBuf,
    child: Child,
    socket: PathBuf,
    _dir: TempDir,
}

impl Redis {
    /// Starts a server, or `None` (with a visible `SKIPPED` line) when
    /// `redis-server` is not installed and [`REQUIRE_PRIVILEGED`] is unset;
    /// `cargo xtask setup` installs it.
    pub fn start(test: &str) -> Option<Self> {
        let Some(binary) = ["/usr/bin/redis-server", "/usr/local/bin/redis-server"]
            .into_iter()
            .map(PathBuf::from)
            .find(|p| p.is_file())
        else {
            if std::env::var_os(REQUIRE_PRIVILEGED).is_some_and(|v| !v.is_empty() && v != "0") {
                panic!("{test} needs redis-server (cargo xtask setup installs it)");
            }
            eprintln!("SKIPPED {test} (redis-server is not installed: run cargo xtask setup)");
            return None;
        };
        let dir = TempDir::new("redis");
        let socket = dir.path().join("redis.sock");
        let child = spawn(&binary, dir.path());
        let redis = Redis {
            binary,
            child,
            socket,
            _dir: dir,
        };
        redis.wait_ready();
        Some(redis)
    }

    /// The URL a gateway's `[redis] url` takes.
    pub fn url(&self) -> String {
        format!("redis+unix://{}", self.socket.display())
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Runs one command (RESP, arguments as bulk strings); the reply's
    /// raw text (e.g. `+OK`, `:3`, `$5\r\nhello`), for asserting on what
    /// Redis holds.
    pub fn command(&self, args: &[&str]) -> String {
        self.try_command(args)
            .unwrap_or_else(|| panic!("redis command {args:?} failed"))
    }

    fn try_command(&self, args: &[&str]) -> Option<String> {
        let mut stream = UnixStream::connect(&self.socket).ok()?;
        stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
        let mut request = format!("*{}\r\n", args.len());
        for arg in args {
            request.push_str(&format!("${}\r\n{arg}\r\n", arg.len()));
        }
        stream.write_all(request.as_bytes()).ok()?;
        stream.shutdown(std::net::Shutdown::Write).ok()?;
        let mut reply = String::new();
        stream.read_to_string(&mut reply).ok()?;
        Some(reply.trim_end().to_owned())
    }

    /// Stops the server (as an outage would); [`Redis::start`]'s socket
    /// path is gone after this.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Freezes the server (SIGSTOP): it keeps its connections and its
    /// data but answers nothing, as a hung Redis would, until
    /// [`Redis::resume`].
    pub fn pause(&self) {
        self.signal(libc::SIGSTOP);
    }

    /// Thaws a [`Redis::pause`]d server: it answers again, with its data.
    pub fn resume(&self) {
        self.signal(libc::SIGCONT);
    }

    fn signal(&self, signal: libc::c_int) {
        let pid = libc::pid_t::try_from(self.child.id()).unwrap();
        // SAFETY: signalling our own child, still running (not waited).
        unsafe { libc::kill(pid, signal) };
    }

    /// A new, empty server on the same socket (after [`Redis::kill`]): an
    /// outage that ends, with what Redis held lost.
    pub fn restart(&mut self) {
        self.kill();
        let dir = self.socket.parent().unwrap().to_owned();
        self.child = spawn(&self.binary, &dir);
        self.wait_ready();
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.try_command(&["PING"]).as_deref() != Some("+PONG") {
            assert!(
                Instant::now() < deadline,
                "redis-server did not answer PING"
            );
            #[allow(clippy::disallowed_methods, reason = "plain thread, not async")]
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// `redis-server` on `dir/redis.sock` only, persisting nothing.
fn spawn(binary: &Path, dir: &Path) -> Child {
    Command::new(binary)
        .args(["--port", "0", "--save", "", "--appendonly", "no"])
        .arg("--unixsocket")
        .arg(dir.join("redis.sock"))
        .args(["--unixsocketperm", "700", "--dir"])
        .arg(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start redis-server: {e}"))
}

impl Drop for Redis {
    fn drop(&mut self) {
        self.kill();
    }
}
