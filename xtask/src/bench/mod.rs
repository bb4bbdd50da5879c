//! `cargo xtask bench ...`: figures printed as ratios against a peer
//! measured in the same run, interleaved, medians reported. Not tests: the
//! machines are shared and noisy, so nothing here asserts a timing.
//!
//! This module only names the benchmarks and runs the one asked for. Each
//! benchmark (`auth`, `fleet`, `flood`, `limits`, `proxy` with `h2` and `conns`, `xdp`) uses the shared
//! modules below and no other benchmark; the shared modules use no
//! benchmark.
mod auth;
mod fleet;
mod flood;
mod limits;
mod proxy;
mod xdp;

mod bpf;
mod http1;
pub(crate) mod keys;
mod nginx;
pub(crate) mod procs;
mod results;
pub(crate) mod scratch;
mod stats;
pub(crate) mod upstream;
pub(crate) mod wrk;

use std::time::Duration;

use anyhow::Result;
use clap::Subcommand;

#[derive(Subcommand)]
pub enum Which {
    /// Per-request cost of API-key verification and of JWT verification,
    /// uncached vs cached.
    Auth,
    /// Fleet mode (root): three gateways on one PostgreSQL and Redis.
    /// Admitted vs exact GCRA for a client at 3x its limit over three nodes
    /// (evenly, 80/10/10), leased limiter and the one-Redis-call-per-request
    /// baseline; added p50/p99 per request against a single node; Redis
    /// commands per second per node; key creation and revocation
    /// propagation between nodes.
    Fleet {
        /// Accuracy rounds; medians are reported.
        #[arg(long, default_value_t = 2)]
        rounds: usize,
        /// Seconds of paced latency load.
        #[arg(long, default_value_t = 10)]
        seconds: u32,
        /// Create-and-revoke rounds for propagation.
        #[arg(long, default_value_t = 30)]
        propagations: usize,
    },
    /// A legitimate client's throughput through the gateway while a banned
    /// source floods it, with the kernel path on and off; then while a
    /// spoofer floods SYNs in the client's own name, SYN cookies on and off
    /// (root).
    Flood {
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// Seconds per measurement.
        #[arg(long, default_value_t = 5)]
        seconds: u32,
        /// Only the spoofed-SYN flood (SYN cookies on vs off).
        #[arg(long)]
        spoofed_only: bool,
    },
    /// Memory per open client connection against HAProxy (set up
    /// as for `proxy`): connections waiting for their request head, then
    /// idle keep-alive after one request.
    Conns {
        /// Connections per proxy (100 to 4,000).
        #[arg(long, default_value_t = 4000)]
        connections: usize,
    },
    /// The limiter against HAProxy stick tables and nginx limit_req: one key
    /// at 3x its limit for a window (allowed vs ideal), and one key's
    /// success and p99 while another floods.
    Limits {
        /// Accuracy rounds (one window each); medians are reported.
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// Seconds of isolation measurement per proxy.
        #[arg(long, default_value_t = 6)]
        seconds: u32,
    },
    /// HTTP/2 over TLS (h2load, many streams per connection) through the
    /// gateway against HAProxy doing the same work as in `proxy`.
    H2 {
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// Seconds per proxy per round.
        #[arg(long, default_value_t = 5)]
        seconds: u32,
    },
    /// The proxy against HAProxy and nginx doing the equivalent work:
    /// API-key authenticated GETs with 10,000 rotating keys, same upstream;
    /// throughput and CPU per request (HTTP and TLS), open-loop latency.
    Proxy {
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// Seconds per proxy per round.
        #[arg(long, default_value_t = 5)]
        seconds: u32,
        /// Pin nothing: proxies (a worker per CPU), load generators and
        /// the upstream share every CPU, as on a small VM (its own section
        /// of bench/RESULTS.md).
        #[arg(long)]
        unpinned: bool,
        /// Instead of the wall-clock workloads: instructions per request
        /// (proxied 200 and 429) of the whole gateway process under
        /// valgrind's callgrind, exact and repeatable.
        #[arg(long)]
        callgrind: bool,
    },
    /// Internal: the open-loop load generator `bench proxy` runs.
    #[command(hide = true)]
    OpenLoop(proxy::OpenLoopArgs),
    /// The XDP program against a drop-everything XDP program: per-packet
    /// cost (BPF_PROG_TEST_RUN) and drop rate of a banned flood on veth.
    Xdp {
        /// Test-run repetitions per measurement.
        #[arg(long, default_value_t = 1_000_000)]
        repeat: u32,
        /// Interleaved rounds; medians are reported.
        #[arg(long, default_value_t = 5)]
        rounds: usize,
        /// Seconds of flood per program per round.
        #[arg(long, default_value_t = 2.0)]
        flood_seconds: f64,
    },
}

pub fn run(which: Which) -> Result<()> {
    match which {
        Which::Auth => auth::run(),
        Which::Fleet {
            rounds,
            seconds,
            propagations,
        } => fleet::run(
            rounds.clamp(1, 20),
            seconds.clamp(1, 120),
            propagations.clamp(1, 1000),
        ),
        Which::Flood {
            rounds,
            seconds,
            spoofed_only,
        } => flood::run(rounds.max(1), seconds.max(1), spoofed_only),
        Which::Conns { connections } => proxy::conns(connections),
        Which::Limits { rounds, seconds } => limits::run(rounds.max(1), seconds.max(1)),
        Which::H2 { rounds, seconds } => proxy::h2(rounds.max(1), seconds.max(1)),
        Which::Proxy {
            unpinned,
            callgrind: true,
            ..
        } => proxy::callgrind(unpinned),
        Which::Proxy {
            rounds,
            seconds,
            unpinned,
            callgrind: false,
        } => proxy::run(rounds.max(1), seconds.max(1), unpinned),
        Which::OpenLoop(args) => proxy::open_loop(args),
        Which::Xdp {
            repeat,
            rounds,
            flood_seconds,
        } => xdp::run(
            repeat,
            rounds.max(1),
            Duration::from_secs_f64(flood_seconds),
        ),
    }
}
