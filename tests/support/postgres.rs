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
}

impl Postgres {
    /// Starts a server, or `None` (with a visible `SKIPPED` line) when
    /// this is not root (initdb runs as nobody) or PostgreSQL is not
    /// installed, and
    /// [`REQUIRE_PRIVILEGED`] is unset; `cargo xtask setup` installs it.
    pub fn start(test: &str) -> Option<Self> {
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
        let mut postgres = Postgres { child: None, dir };
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
        let child = as_nobody(&format!("{BIN}/postgres"))
            .arg("-D")
            .arg(self.data())
            .args(["-c", "listen_addresses=", "-k"])
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

    fn try_sql(&self, sql: &str) -> Option<String> {
        let output = Command::new(format!("{BIN}/psql"))
            .arg("-h")
            .arg(self.socket_dir())
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
            .stdin(Stdio::null())
            .output()
            .ok()?;
        output
            .status
            .success()
            .then(|| String::from_utf8_lossy(&output.stdout).trim().to_owned())
    }

    /// Stops the server at once, as an outage would (SIGQUIT: immediate
    /// shutdown, every connection dropped), and waits for it.
    pub fn kill(&mut self) {
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
