//! A throwaway PostgreSQL server for fleet tests: Debian's PostgreSQL 15
//! binaries, `initdb` and `postgres` run as `nobody` (initdb refuses root)
//! in a temp dir it owns, listening only on a unix socket in that dir (no
//! port to collide on, reachable from any network namespace), trust
//! authentication for the one user, nothing fsynced, killed on drop.
use std::{
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use super::{fs::TempDir, REQUIRE_PRIVILEGED};

const BIN: &str = "/usr/lib/postgresql/15/bin";
/// The unprivileged user the server runs as.
const NOBODY: u32 = 65534;
pub const USER: &str = "gateway";

pub struct Postgres {
    child: Option<Child>,
    dir: TempDir,
    /// Also on TCP at this loopback port, with TLS ([`Postgres::start_tls`]).
    tcp: Option<u16>,
}

impl Postgres {
    /// Starts a server, or `None` (with a visible `SKIPPED` line) when
    /// this is not root (initdb runs as nobody) or PostgreSQL is not
    /// installed, and
    /// [`REQUIRE_PRIVILEGED`] is unset; `cargo xtask setup` installs it.
    pub fn start(test: &str) -> Option<Self> {
        Self::start_with(test, None)
    }

    /// [`Postgres::start`] that also listens on a loopback TCP port with
    /// TLS offered there, its certificate (for `localhost`) issued by a
    /// CA made for the test; with the CA's PEM file.
    pub fn start_tls(test: &str) -> Option<(Self, PathBuf)> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .unwrap()
            .port();
        let postgres = Self::start_with(test, Some(port))?;
        let ca = postgres.dir.path().join("ca.pem");
        Some((postgres, ca))
    }

    /// The TCP URL of a [`Postgres::start_tls`] server, with `query`.
    pub fn tcp_url(&self, query: &str) -> String {
        let port = self.tcp.expect("started with start_tls");
        let url = format!("postgres://{USER}@localhost:{port}/postgres");
        match query {
            "" => url,
            query => format!("{url}?{query}"),
        }
    }

    fn start_with(test: &str, tcp: Option<u16>) -> Option<Self> {
        if !super::require_root(test) {
            return None;
        }
        if !Path::new(BIN).join("postgres").is_file() {
            let why = "PostgreSQL 15 is not installed: run cargo xtask setup";
            if std::env::var_os(REQUIRE_PRIVILEGED).is_some_and(|v| !v.is_empty() && v != "0") {
                panic!("{test}: {why}");
            }
            eprintln!("SKIPPED {test} ({why})");
            return None;
        }
        let dir = TempDir::new("postgres");
        let chown = |path: &Path| {
            std::os::unix::fs::chown(path, Some(NOBODY), Some(NOBODY))
                .unwrap_or_else(|e| panic!("chown {}: {e}", path.display()));
        };
        chown(dir.path());
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o711)).unwrap();
        let data = dir.path().join("data");
        let status = as_nobody(&format!("{BIN}/initdb"))
            .arg("-D")
            .arg(&data)
            .args([
                "-U",
                USER,
                "--auth=trust",
                "--no-sync",
                "-E",
                "UTF8",
                "--locale=C",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .status()
            .unwrap_or_else(|e| panic!("cannot run initdb: {e}"));
        assert!(status.success(), "initdb failed: {status}");
        if tcp.is_some() {
            certificates(dir.path());
            for file in ["server.pem", "server.key"] {
                chown(&dir.path().join(file));
            }
        }
        let mut postgres = Postgres {
            child: None,
            dir,
            tcp,
        };
        postgres.restart();
        Some(postgres)
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The directory holding the server's socket.
    pub fn socket_dir(&self) -> &Path {
        self.dir.path()
    }

    /// The URL a gateway's `[store] url` takes (unix socket).
    pub fn url(&self) -> String {
        format!(
            "postgresql://{USER}@localhost/postgres?host={}",
            self.socket_dir().display()
        )
    }

    /// Starts the server again on the same data (after [`Postgres::kill`]).
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "postgres is running");
        let mut command = as_nobody(&format!("{BIN}/postgres"));
        command.arg("-D").arg(self.data());
        match self.tcp {
            None => command.args(["-c", "listen_addresses="]),
            Some(port) => {
                let dir = self.dir.path();
                command
                    .args(["-c", "listen_addresses=127.0.0.1", "-c", "ssl=on", "-p"])
                    .arg(port.to_string())
                    .arg("-c")
                    .arg(format!(
                        "ssl_cert_file={}",
                        dir.join("server.pem").display()
                    ))
                    .arg("-c")
                    .arg(format!("ssl_key_file={}", dir.join("server.key").display()))
            }
        };
        let child = command
            .arg("-k")
            .arg(self.socket_dir())
            .args(["-c", "fsync=off", "-c", "max_connections=60"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start postgres: {e}"));
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.try_sql("SELECT 1").as_deref() != Some("1") {
            assert!(Instant::now() < deadline, "postgres did not start");
            #[allow(clippy::disallowed_methods, reason = "plain thread, not async")]
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Runs `sql` with psql; its unaligned output, trimmed.
    pub fn sql(&self, sql: &str) -> String {
        self.try_sql(sql)
            .unwrap_or_else(|| panic!("psql failed on {sql:?}"))
    }

    /// Runs `sql` with psql in the background (a session holding a lock,
    /// say); the caller waits for it.
    pub fn spawn_sql(&self, sql: &str) -> Child {
        self.psql(sql)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot run psql: {e}"))
    }

    fn try_sql(&self, sql: &str) -> Option<String> {
        let output = self.psql(sql).output().ok()?;
        output
            .status
            .success()
            .then(|| String::from_utf8_lossy(&output.stdout).trim().to_owned())
    }

    fn psql(&self, sql: &str) -> Command {
        let port = self.tcp.unwrap_or(5432).to_string();
        let mut command = Command::new(format!("{BIN}/psql"));
        command
            .arg("-h")
            .arg(self.socket_dir())
            .args(["-p", &port])
            .args([
                "-U",
                USER,
                "-d",
                "postgres",
                "-At",
                "-v",
                "ON_ERROR_STOP=1",
                "-c",
                sql,
            ])
            .stdin(Stdio::null());
        command
    }

    /// Stops the server and every backend (SIGSTOP): connections stay
    /// open and nothing is answered, as a hung database would do.
    pub fn freeze(&self) {
        self.signal_all(libc::SIGSTOP);
    }

    /// Lets a [`Postgres::freeze`]d server go on (SIGCONT).
    pub fn thaw(&self) {
        self.signal_all(libc::SIGCONT);
    }

    /// `signal` to the postmaster first (it forks no backend while
    /// stopped), then to its children.
    fn signal_all(&self, signal: libc::c_int) {
        let Some(pid) = self.child.as_ref().map(Child::id) else {
            return;
        };
        let mut pids = vec![pid];
        for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Ok(child) = entry.file_name().to_string_lossy().parse::<u32>() else {
                continue;
            };
            let stat = std::fs::read_to_string(entry.path().join("stat")).unwrap_or_default();
            // pid (comm) state ppid ...: the fields after the last ')'.
            let ppid = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1)?.parse::<u32>().ok());
            if ppid == Some(pid) {
                pids.push(child);
            }
        }
        for pid in pids {
            if let Ok(pid) = libc::pid_t::try_from(pid) {
                // SAFETY: signalling our own child and its children.
                unsafe { libc::kill(pid, signal) };
            }
        }
    }

    /// Stops the server at once, as an outage would (SIGQUIT: immediate
    /// shutdown, every connection dropped), and waits for it.
    pub fn kill(&mut self) {
        // A frozen server would not hear SIGQUIT, nor leave its backends.
        self.thaw();
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Ok(pid) = libc::pid_t::try_from(child.id()) {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(pid, libc::SIGQUIT) };
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
            #[allow(clippy::disallowed_methods, reason = "plain thread, not async")]
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// A CA (`ca.pem`) and a server certificate it issued for `localhost`
/// and 127.0.0.1 (`server.pem`, `server.key`, mode 0600) in `dir`.
fn certificates(dir: &Path) {
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let mut ca = vec!["req", "-x509", "-days", "1", "-subj", "/CN=test-ca"];
    ca.extend(["-keyout", "ca.key", "-out", "ca.pem"]);
    ca.extend(["-addext", "basicConstraints=critical,CA:TRUE"]);
    ca.extend(["-addext", "keyUsage=critical,keyCertSign"]);
    ca.extend(ec);
    super::cmd::openssl(dir, &ca);
    let mut csr = vec!["req", "-new", "-subj", "/CN=localhost"];
    csr.extend(["-keyout", "server.key", "-out", "server.csr"]);
    csr.extend(ec);
    super::cmd::openssl(dir, &csr);
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    super::cmd::openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "1",
            "-out",
            "server.pem",
            "-extfile",
            "server.ext",
        ],
    );
    std::fs::set_permissions(
        dir.join("server.key"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
}

/// `program` as nobody, without root's groups.
fn as_nobody(program: &str) -> Command {
    let mut command = Command::new("setpriv");
    command
        .arg(format!("--reuid={NOBODY}"))
        .arg(format!("--regid={NOBODY}"))
        .args(["--clear-groups", "--"])
        .arg(program)
        .env_remove("PGDATA")
        .current_dir("/");
    command
}

impl Drop for Postgres {
    fn drop(&mut self) {
        self.kill();
    }
}
