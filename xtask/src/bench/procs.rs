//! Process plumbing for every bench: child processes (the gateway,
//! HAProxy, nginx, upstreams, load generators) started quietly or until
//! they listen, and stopped on drop; ports; the Debian packages; CPU
//! pinning (which CPUs the proxies and the load generators get, a thread
//! pinned to one CPU); and the CPU time and resident memory of a process
//! tree.
use std::{
    io::Read as _,
    net::TcpListener,
    process::{Child, Command, ExitStatus, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use crate::setup;

/// A child process stopped on drop: SIGTERM first (so nginx's master takes
/// its workers down), SIGKILL after a grace period.
pub(crate) struct Running(pub(crate) Child);

impl Running {
    /// Starts `command` with its output discarded.
    pub(crate) fn quiet(command: &mut Command) -> Result<Self> {
        let shown = format!("{command:?}");
        let child = command.stdout(Stdio::null()).stderr(Stdio::null()).spawn();
        Ok(Self(child.with_context(|| format!("starting {shown}"))?))
    }

    /// Starts `command` with its standard output discarded; returns once
    /// something listens on `port`.
    pub(crate) fn listening(mut command: Command, port: u16) -> Result<Self> {
        let shown = format!("{command:?}");
        let process = Self(
            command
                .stdout(Stdio::null())
                .spawn()
                .with_context(|| format!("starting {shown}"))?,
        );
        wait_for_port(port).with_context(|| format!("{shown} did not come up"))?;
        Ok(process)
    }

    /// As [`Running::listening`], for a process slow to start (under
    /// valgrind): waits up to `limit` for `port`.
    pub(crate) fn listening_within(
        mut command: Command,
        port: u16,
        limit: Duration,
    ) -> Result<Self> {
        let shown = format!("{command:?}");
        let mut process = Self(
            command
                .stdout(Stdio::null())
                .spawn()
                .with_context(|| format!("starting {shown}"))?,
        );
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if started.elapsed() > limit || process.0.try_wait()?.is_some() {
                bail!("{shown} did not come up on port {port} within {limit:?}");
            }
            #[allow(clippy::disallowed_methods, reason = "the bench is synchronous")]
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(process)
    }

    pub(crate) fn pid(&self) -> u32 {
        self.0.id()
    }

    /// SIGTERM, then waits up to `limit` for the process to exit (a
    /// process under valgrind, or one writing a PGO profile, writes its
    /// output as it exits: drop's SIGKILL after 2 s would lose it); how it
    /// exited.
    pub(crate) fn stop_within(mut self, limit: Duration) -> Result<ExitStatus> {
        if let Ok(pid) = libc::pid_t::try_from(self.0.id()) {
            // SAFETY: signalling our own child, not yet reaped.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
        let started = Instant::now();
        loop {
            if let Some(status) = self.0.try_wait()? {
                return Ok(status);
            }
            if started.elapsed() > limit {
                bail!("process {} did not stop within {limit:?}", self.0.id());
            }
            #[allow(clippy::disallowed_methods, reason = "the bench is synchronous")]
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        // Already reaped: its pid may belong to someone else by now.
        if matches!(self.0.try_wait(), Ok(Some(_))) {
            return;
        }
        if let Ok(pid) = libc::pid_t::try_from(self.0.id()) {
            // SAFETY: signalling our own child.
            unsafe { libc::kill(pid, libc::SIGTERM) };
            for _ in 0..100 {
                if matches!(self.0.try_wait(), Ok(Some(_))) {
                    return;
                }
                #[allow(clippy::disallowed_methods, reason = "the bench is synchronous")]
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Has `command`'s process get SIGTERM when the thread that spawns it
/// ends, so an xtask killed by a signal (whose drops never run) leaves no
/// server of its own behind. Spawn such a process from a thread that lives
/// as long as it should.
pub(crate) fn dies_with_spawner(command: &mut Command) -> &mut Command {
    use std::os::unix::process::CommandExt as _;
    let spawner = libc::pid_t::try_from(std::process::id()).unwrap_or(0);
    // SAFETY: between fork and exec the closure only makes two syscalls
    // (prctl, getppid), which are async-signal-safe, and allocates nothing
    // unless it fails.
    unsafe {
        command.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) == -1 {
                return Err(std::io::Error::last_os_error());
            }
            // The spawner died before prctl took effect: no signal will come.
            if libc::getppid() != spawner {
                return Err(std::io::Error::other("the spawning process is gone"));
            }
            Ok(())
        })
    }
}

pub(crate) fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

pub(crate) fn wait_for_port(port: u16) -> Result<()> {
    for _ in 0..200 {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        std::thread::yield_now();
        #[allow(clippy::disallowed_methods, reason = "the bench is synchronous")]
        std::thread::sleep(Duration::from_millis(25));
    }
    bail!("nothing listens on 127.0.0.1:{port} after 5 s")
}

/// Runs `command` to its end and returns its standard output (which must
/// be small: it is read at the end), stopping it if it runs over `limit`.
pub(crate) fn output_within(mut command: Command, limit: Duration) -> Result<String> {
    let shown = format!("{command:?}");
    let mut child = Running(
        command
            .stdout(Stdio::piped())
            .spawn()
            .with_context(|| format!("starting {shown}"))?,
    );
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.0.try_wait()? {
            break status;
        }
        if started.elapsed() > limit {
            bail!("{shown} ran over {limit:?}: stopped");
        }
        #[allow(clippy::disallowed_methods, reason = "the bench is synchronous")]
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut out = String::new();
    if let Some(mut stdout) = child.0.stdout.take() {
        stdout.read_to_string(&mut out)?;
    }
    if !status.success() {
        bail!("{shown} failed with {status}");
    }
    Ok(out)
}

/// The peers, the closed-loop load generator, and what makes the peers'
/// certificate and checks their answers.
pub(crate) fn ensure_packages() -> Result<()> {
    setup::require_packages(
        &[
            ("haproxy", "haproxy"),
            ("wrk", "wrk"),
            // bench h2's load generator.
            ("h2load", "nghttp2-client"),
            ("nginx", "nginx-light"),
            ("openssl", "openssl"),
            ("curl", "curl"),
            ("taskset", "util-linux"),
        ],
        "the proxy bench",
        "",
    )
}

/// Which CPUs the proxies get and which the load generators (and the shared
/// upstream) get: disjoint halves of the CPUs this process may use, so a
/// proxy never competes with the load it is measured under; or, unpinned,
/// all of them for everyone, as on a small VM.
pub(crate) struct CpuPlan {
    proxies: Vec<usize>,
    load: Vec<usize>,
    /// Whether commands run under `taskset` on their half.
    pinned: bool,
}

impl CpuPlan {
    pub(crate) fn new() -> Self {
        let allowed = allowed_cpus();
        if allowed.len() < 2 {
            return Self {
                proxies: Vec::new(),
                load: Vec::new(),
                pinned: false,
            };
        }
        let (load, proxies) = allowed.split_at(allowed.len() / 2);
        Self {
            proxies: proxies.to_vec(),
            load: load.to_vec(),
            pinned: true,
        }
    }

    /// Nothing pinned: the proxies (a worker per CPU), the load generators
    /// and the upstream all share every CPU this process may use, so the
    /// proxy competes with its own load as it would on a small VM.
    pub(crate) fn unpinned() -> Self {
        let allowed = allowed_cpus();
        Self {
            proxies: allowed.clone(),
            load: allowed,
            pinned: false,
        }
    }

    /// Worker processes or threads each proxy gets: one per proxy CPU.
    pub(crate) fn workers(&self) -> usize {
        self.proxies.len().max(1)
    }

    /// Threads wrk gets: one per load CPU.
    pub(crate) fn load_threads(&self) -> usize {
        self.load.len().max(1)
    }

    pub(crate) fn proxy_command(&self, program: &str) -> Command {
        command_on(if self.pinned { &self.proxies } else { &[] }, program)
    }

    pub(crate) fn load_command(&self, program: &str) -> Command {
        command_on(if self.pinned { &self.load } else { &[] }, program)
    }

    pub(crate) fn describe(&self) -> String {
        if self.proxies.len() < 2 && !self.pinned {
            return "one CPU: proxies, upstream and load generators share it (not pinned)".into();
        }
        if !self.pinned {
            return format!(
                "not pinned: the proxies ({} worker(s) each), the load generators and the upstream \
                 nginx share CPUs {}, as on a small VM",
                self.workers(),
                list(&self.proxies)
            );
        }
        format!(
            "proxies pinned to CPU {} ({} worker(s) each); load generators and the upstream nginx pinned to CPU {} (taskset)",
            list(&self.proxies),
            self.workers(),
            list(&self.load)
        )
    }
}

fn list(cpus: &[usize]) -> String {
    cpus.iter()
        .map(usize::to_string)
        .collect::<Vec<_>>()
        .join(",")
}

fn command_on(cpus: &[usize], program: &str) -> Command {
    if cpus.is_empty() {
        return Command::new(program);
    }
    let mut command = Command::new("taskset");
    command.args(["-c", &list(cpus), program]);
    command
}

/// Pins the calling thread to `cpu`.
pub(crate) fn pin_thread_to(cpu: usize) -> Result<()> {
    // SAFETY: an all-zero cpu_set_t is a valid empty set; CPU_SET and
    // sched_setaffinity only touch the set we own (pid 0: this thread).
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("pinning a thread to CPU {cpu}"));
        }
    }
    Ok(())
}

/// The CPUs this process may run on.
fn allowed_cpus() -> Vec<usize> {
    // SAFETY: an all-zero cpu_set_t is a valid empty set, which
    // sched_getaffinity (pid 0: this thread) fills; CPU_ISSET only reads it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return Vec::new();
        }
        (0..libc::CPU_SETSIZE as usize)
            .filter(|&cpu| libc::CPU_ISSET(cpu, &set))
            .collect()
    }
}

/// utime + stime, in seconds, of `root` and all its descendants (nginx's
/// master and workers; threads are counted in their process).
pub(crate) fn tree_cpu_seconds(root: u32) -> Result<f64> {
    let mut processes = Vec::new();
    for entry in std::fs::read_dir("/proc").context("reading /proc")? {
        let Some(pid) = entry?.file_name().to_str().and_then(|n| n.parse().ok()) else {
            continue;
        };
        // A process may exit between the listing and the read.
        if let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) {
            if let Some((ppid, ticks)) = parse_stat(&stat) {
                processes.push((pid, ppid, ticks));
            }
        }
    }
    let links: Vec<(u32, u32)> = processes
        .iter()
        .map(|&(pid, ppid, _)| (pid, ppid))
        .collect();
    let tree = tree_of(root, &links)?;
    let ticks: f64 = processes
        .iter()
        .filter(|(pid, ..)| tree.contains(pid))
        .map(|&(.., ticks)| ticks)
        .sum();
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok(ticks / hz)
}

/// `root` and its descendants among `(pid, ppid)` links.
fn tree_of(root: u32, links: &[(u32, u32)]) -> Result<Vec<u32>> {
    if !links.iter().any(|&(pid, _)| pid == root) {
        bail!("process {root} is gone");
    }
    let mut tree = vec![root];
    let mut grew = true;
    while grew {
        grew = false;
        for &(pid, ppid) in links {
            if tree.contains(&ppid) && !tree.contains(&pid) {
                tree.push(pid);
                grew = true;
            }
        }
    }
    Ok(tree)
}

/// Resident memory (VmRSS) of `root` and all its descendants, in bytes.
pub(crate) fn tree_rss_bytes(root: u32) -> Result<u64> {
    let mut links = Vec::new();
    let mut rss = Vec::new();
    for entry in std::fs::read_dir("/proc").context("reading /proc")? {
        let Some(pid) = entry?.file_name().to_str().and_then(|n| n.parse().ok()) else {
            continue;
        };
        // A process may exit between the listing and the read.
        let (Ok(stat), Ok(status)) = (
            std::fs::read_to_string(format!("/proc/{pid}/stat")),
            std::fs::read_to_string(format!("/proc/{pid}/status")),
        ) else {
            continue;
        };
        if let Some((ppid, _)) = parse_stat(&stat) {
            links.push((pid, ppid));
            rss.push((pid, parse_rss_kib(&status).unwrap_or(0)));
        }
    }
    let tree = tree_of(root, &links)?;
    let kib: u64 = rss
        .iter()
        .filter(|(pid, _)| tree.contains(pid))
        .map(|&(_, kib)| kib)
        .sum();
    Ok(kib * 1024)
}

/// The `VmRSS:` line of `/proc/PID/status`, in KiB.
fn parse_rss_kib(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// `(ppid, utime + stime in ticks)` from a `/proc/PID/stat` line.
fn parse_stat(stat: &str) -> Option<(u32, f64)> {
    // Fields after the parenthesised command name: state, ppid, ...; utime
    // and stime are the 14th and 15th fields of the whole line.
    let (_, after) = stat.rsplit_once(')')?;
    let fields: Vec<&str> = after.split_whitespace().collect();
    let number = |i: usize| fields.get(i).and_then(|f| f.parse::<f64>().ok());
    Some((fields.get(1)?.parse().ok()?, number(11)? + number(12)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_tied_to_its_spawner_ends_with_the_spawning_thread() {
        use std::os::unix::process::ExitStatusExt as _;
        // The thread that spawns it ends at once: the child must get SIGTERM,
        // as it would if xtask were killed mid-bench or mid-training.
        let child = std::thread::spawn(|| {
            dies_with_spawner(Command::new("sleep").arg("30"))
                .spawn()
                .unwrap()
        })
        .join()
        .unwrap();
        let mut child = Running(child);
        let started = Instant::now();
        let status = loop {
            if let Some(status) = child.0.try_wait().unwrap() {
                break status;
            }
            assert!(started.elapsed() < Duration::from_secs(10), "still running");
            #[allow(clippy::disallowed_methods, reason = "polling a child in a test")]
            std::thread::sleep(Duration::from_millis(20));
        };
        assert_eq!(status.signal(), Some(libc::SIGTERM), "{status:?}");
    }

    #[test]
    fn parses_proc_stat() {
        let line = "42 (a (b) c) S 7 42 42 0 -1 4194560 100 0 0 0 25 5 0 0 20 0 3 0 1 2 3";
        assert_eq!(parse_stat(line), Some((7, 30.0)));
    }

    /// This process's CPU time (all threads) from the kernel's scheduler
    /// clock, in nanoseconds.
    fn process_cpu_ns() -> u64 {
        let mut now = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `now` is a valid out pointer; the clock always exists.
        let failed = unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut now) };
        assert_eq!(failed, 0, "clock_gettime(CLOCK_PROCESS_CPUTIME_ID)");
        now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64
    }

    /// Burning CPU shows in the count: 100 ms of this process's CPU time
    /// (measured in CPU time, not wall time, so a busy machine only makes
    /// it take longer) is ten ticks of /proc's accounting at the usual
    /// 100 Hz, so the count must grow; how much is not asserted.
    #[test]
    fn counts_cpu_this_process_burns() {
        let pid = std::process::id();
        let before = tree_cpu_seconds(pid).unwrap();
        let start = process_cpu_ns();
        let mut x = 0u64;
        while process_cpu_ns() - start < 100_000_000 {
            for i in 0..10_000u64 {
                x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(i));
            }
        }
        let after = tree_cpu_seconds(pid).unwrap();
        assert!(
            after > before,
            "{before} s then {after} s after burning 100 ms"
        );
    }

    #[test]
    fn this_process_has_resident_memory() {
        assert!(tree_rss_bytes(std::process::id()).unwrap() > 0);
        assert_eq!(parse_rss_kib("Name:\tx\nVmRSS:\t  1234 kB\n"), Some(1234));
        assert!(tree_rss_bytes(u32::MAX).is_err());
    }

    #[test]
    fn a_gone_process_is_an_error() {
        // Above any pid_max (at most 2^22), so no process has it.
        assert!(tree_cpu_seconds(u32::MAX).is_err());
    }
}
