//! `cargo xtask bench proxy --callgrind`: instructions per request of the
//! whole release gateway process (every thread) under `valgrind
//! --tool=callgrind`, for the proxied 200 and the 429 path, and of HAProxy
//! doing the same work by the same method in the same run, as ratios
//! (the `proxy-cpu` section of bench/RESULTS.md); and the gateway's
//! proxied 200 once more with the route's limiter off, the limiter's cost
//! without the wall clock's noise. Exact and repeatable
//! where wall-clock figures on a shared machine are not: what a change to
//! the request path is judged by (issue 14).
//!
//! Per path and proxy: one worker (HAProxy: `nbthread 1`), the limiter on;
//! a raw keep-alive upstream answering every request head with a fixed
//! 200 that has nginx's header fields ([`ANSWER`](crate::bench::upstream::ANSWER));
//! one client sending sequential keep-alive requests with the same
//! keys (HAProxy: their SHA-256 in its map, its `bench proxy`
//! configuration). Instrumentation is switched on (`callgrind_control -i
//! on`) after [`WARM_UP`] requests and off after [`MEASURED`] more, so
//! start-up, warm-up and shutdown are not counted. valgrind hides SHA-NI:
//! SHA-256 runs its software path here, in both.
use std::{
    fmt::Write as _,
    io::{BufReader, Read as _, Write as _},
    net::TcpStream,
    path::Path,
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{ensure, Context, Result};

use super::{
    configs::{self, Files, Listen},
    report,
};
use crate::bench::{
    keys,
    procs::{free_port, Running},
    results,
    upstream::{read_head, Upstream},
};

/// Requests before instrumentation starts (connections, pools, caches warm).
const WARM_UP: usize = 300;
/// Requests counted.
const MEASURED: usize = 2_000;
/// Keys the proxied path rotates through.
const KEYS: usize = 1_000;

/// A path measured: the gateway's tier, how many keys rotate, the status
/// every measured request must get, and HAProxy's per-key limit for it.
struct Case {
    path: &'static str,
    /// Scratch subdirectory and kept profile's name.
    name: &'static str,
    tier: &'static str,
    keys: usize,
    status: u16,
    haproxy_per_key: u32,
    /// The route's limiter (and so its rate-limit response fields) on.
    rate_limit: bool,
}

/// The proxied path: a limit no request comes near, keys rotating. The
/// 429 path: one key; the gateway's tier allows one request an hour
/// (spent in the warm-up), HAProxy's `sc_http_req_rate(0) gt 0` refuses
/// every request (the rate counts the request being tracked), so both
/// refuse every measured one after the same lookup and count.
const CASES: [Case; 2] = [
    Case {
        path: "proxied 200",
        name: "ok",
        tier: "requests = 100000000\nwindow = \"1s\"\nburst = 100000000",
        keys: KEYS,
        status: 200,
        haproxy_per_key: configs::PER_KEY_RATE,
        rate_limit: true,
    },
    Case {
        path: "429",
        name: "limited",
        tier: "requests = 1\nwindow = \"1h\"\nburst = 1",
        keys: 1,
        status: 429,
        haproxy_per_key: 0,
        rate_limit: true,
    },
];

/// Where the proxied path is in [`CASES`] (and its figure in `run`'s rows).
const PROXIED: usize = 0;

/// The proxied path with the route's limiter off (the gateway only): what
/// the limiter costs, exactly, beside `bench proxy`'s wall-clock ratio.
const UNLIMITED: Case = Case {
    name: "unlimited",
    path: "proxied 200, limiter off",
    rate_limit: false,
    ..CASES[PROXIED]
};

/// What moved the figures (the section's history).
const HISTORY: &str = "History (proxied 200 / 429, gateway instructions per request): 631fb6a 83,666 / \
    38,391; `fmt`-free addresses, shared request id, borrowed credential: 75,776 / 35,831; the worker's \
    own upstream connections instead of hyper-util's pooled client: -11,078 on the 200; limiter keys \
    hashed once: 60,210 / 34,923; HAProxy then (a one-off script) 40,266 / 39,980. cgpeer (HAProxy \
    measured in the same run from here): 59,364 / 34,725 -> 57,877-58,457 / 34,179-34,330 (three runs of one build) by keeping an origin-form \
    target as is (-400), a vectorised JSON escape check and the peer's text once in the access log \
    (-370), a byte-wise request id (-200), the JWT and OAuth2 futures boxed (about -340), no cookie \
    rebuild or X-Forwarded-For lookup when there is nothing to keep (about -180). Then jemalloc as \
    the global allocator (same parking build: 60,449 / 35,100 with glibc's malloc, 58,172 / 32,783 \
    with jemalloc), parking idle connections (about +900: the boxed service future, the body that \
    holds the request's count), the key index's one-line slots and the merged hardening \
    (CONNECT, 101, retry): 57,248 / 31,896. The guard off no longer counts 429s towards bans \
    (56,648 / 30,655), and the `production` profile (fat LTO, one codegen unit): 51,462 / 28,803. A request read whole goes to the upstream in its own \
    task (`proxy/direct.rs`) instead of through hyper's client and its connection task: 44,887 / \
    29,013; a parsed response's header map with room for the gateway's fields: 44,179; the peer's \
    text once per connection: 43,827 / 28,938. The gateway's own upstream fields written as the head \
    is encoded instead of inserted into the header map: 41,529; the request counters on foldhash: \
    41,237 / 28,621. The upstream here then answered with nginx's header fields instead of a bare \
    length (HAProxy 42,649 -> 45,648 on that answer; the gateway 46,011), and hop-by-hop stripping \
    without a name list (nginx's `Connection: keep-alive`): 45,311 / 28,639; the upstream's \
    address text memoised for the log: 45,060; credential headers removed only where present: \
    44,882; tracestate in the identity pass: 44,694; hyper's upstream exchange boxed (2.6 KB less \
    future per request): 44,355 / 28,465. The release build profile-guided (`xtask/src/pgo/`: \
    an instrumented build trained on HTTP/1.1, TLS, h2, JWT, 401 and 429 traffic, the real build \
    laid out by its profile; same source): 44,347 / 28,476 -> 36,015 / 22,776. Then (PGO builds, \
    this bench's upstream) the phases' one clock read, a response's `Connection` consumed by the \
    parser (-723 on a build without PGO) and the upstream's `Upgrade` read on a 101 only (-126 \
    likewise): 35,286 / 22,740. (Responses leaving in one `send` instead of `writev` cut kernel \
    time, which callgrind does not count.) The send buffer sized to what it joins, HTTP/1 \
    half-close (hyper keeps one read buffer instead of reserving a fresh 8 KiB per request), the \
    connection task's shutdown watch and ticker polled only when they fired, and one header-read \
    sleep per connection (-1,011 / -617 on a build without PGO): 34,252 / 22,088. An upstream \
    connection's response field names remembered by position (-280 on the 200 on a build without \
    PGO): 34,126 / 22,081. A path checked in one pass over its bytes, and a route's host compared \
    without a lower-cased copy of the request's (-600 / -600 on a build without PGO): 33,786 / \
    21,696. Each route's pool found once per gateway instead of by name, and the report memo on \
    foldhash (-545 / -559 on a build without PGO); a request's future 5,144 -> 3,192 bytes, \
    its phases written as `async move` blocks that keep their arguments once (-969 / -685 \
    likewise): 32,626 / 20,614. The upstream exchange pinned where it is built instead of moved \
    into its timeout, and a request's future built in its box (-644 / -98 on a build without \
    PGO): 31,885 / 20,566. The access log's strings checked for escapes eight bytes at a time \
    and an API key's scheme matched where it starts (-373 / -463 on a build without PGO), then \
    hardening that costs per request (the route phase's check for `;` path parameters, the \
    response head's re-parse gate, the client socket's write count for the send timeout: +268 \
    / +131 likewise): 31,212 / 19,633 (44de566). Since then, on builds without PGO: a request's \
    host checked for spellings upstreams read apart (`host::check`, +150 on the 200) and a \
    tier's last `RateLimit` value shared while it holds (-399 / -299): 39,446 / 25,340 \
    (9b5e11c) -> 39,266 / 25,263 (be548b5); an IP host held to its canonical spelling by std's \
    parser (mostly; HTTP/2 window-stall bookkeeping besides): 39,699 / 25,630 (cb7aa45); the \
    same check in one pass (-254 / -284): 39,445 / 25,346 (ae165a8); the PGO build of 8183c07: \
    31,271 / 19,698 (HAProxy 45,676 / 41,874). Since 37a584f HAProxy also forwards the client's \
    tier, X-Forwarded-For and -Proto (about +6,300 per request, a one-off count with wrk) and a \
    UUID request id, also on its answer (about +6,600; a counter-based `unique-id-format` costs \
    about 5,200), as the gateway does. The PGO build of 22a0d7c: 31,602 / 19,846. Then \
    hardening (the route phase's letter-case check, an upstream's HEAD/204/304 connection \
    rested before reuse, HTTP/2 stream resets, transfer codings checked; +477 / +41). The \
    table: the PGO build of eed1e97.";

/// Both paths for both proxies, printed as they are measured, then as a
/// table; recorded in bench/RESULTS.md unless `record` is false (a
/// `GATEWAY_BIN` given to compare with).
pub(super) fn run(gateway_bin: &Path, dir: &Path, record: bool) -> Result<()> {
    ensure!(
        Command::new("valgrind").arg("--version").output().is_ok(),
        "valgrind is not installed (apt-get install valgrind)"
    );
    let upstream = Upstream::start()?;
    let mut rows = Vec::new();
    for case in &CASES {
        let case_dir = dir.join(case.name);
        std::fs::create_dir_all(&case_dir)?;
        let gateway = measure_gateway(gateway_bin, &case_dir, upstream.port, case)?;
        let haproxy = measure_haproxy(&case_dir, upstream.port, case, &gateway.keys)?;
        rows.push((case.path, gateway.per_request, haproxy));
    }
    let table = table(&rows);
    println!("{table}");
    let unlimited_dir = dir.join(UNLIMITED.name);
    std::fs::create_dir_all(&unlimited_dir)?;
    let unlimited = measure_gateway(gateway_bin, &unlimited_dir, upstream.port, &UNLIMITED)?;
    let limiter = limiter_line(rows[PROXIED].1, unlimited.per_request);
    println!("{limiter}");
    let markdown = format!(
        "## CPU per request, exact (callgrind; issue 14)\n\n\
         `cargo xtask bench proxy --callgrind`: instructions per request of the whole release gateway \
         process (every thread: worker, access-log writer, runtime) and of HAProxy {haproxy} (\
         `nbthread 1`, `-db`) under `valgrind --tool=callgrind`, in one run: instrumentation switched on \
         (`callgrind_control -i on`) after {warm_up} warm-up requests and off after {measured} sequential \
         keep-alive requests from one client, divided by {measured}; start-up and shutdown not counted. \
         Same client, same raw keep-alive upstream (a fixed 200 with nginx's header fields, `Connection: keep-alive` among them), same keys: proxied 200 with {keys} \
         rotating keys (HAProxy: their `sha2(256),hex` in its map, the `bench proxy` configuration), 429 \
         with one key (the gateway's tier allows one request an hour, spent in the warm-up; HAProxy's \
         stick table refuses above 0 requests/s). Gateway: one worker, guard and admin off, limiter and \
         access log on. valgrind hides SHA-NI, so SHA-256 runs its software path in both. What counts with \
         wall time moves totals between runs of one binary by up to about ±500 (the guard's \
         once-a-second report memo, the access-log writer's 20 ms ticks): judge a change by the \
         functions it touches (`callgrind_annotate` on target/bench-callgrind/*.out).\n\n{table}\n{limiter}\n\n{HISTORY}\n",
        haproxy = haproxy_version(),
        warm_up = grouped(WARM_UP as u64),
        measured = grouped(MEASURED as u64),
        keys = grouped(KEYS as u64),
    );
    super::record_if(record, "proxy-cpu", &markdown)
}

/// The limiter's cost in instructions: the proxied path with it on and off.
fn limiter_line(with: u64, without: u64) -> String {
    let ratio = without as f64 / with.max(1) as f64;
    format!(
        "limiter overhead, exact: the proxied 200 costs {} instructions per request with the route's \
         limiter (its check and its five rate-limit response fields), {} without ({ratio:.2}x). These \
         count user space only: the kernel's work per request, about half the CPU time under `bench \
         proxy`, is nearly the same either way (the answer without the fields is ~150 bytes \
         shorter), so throughput (`bench proxy`'s limiter ratio, target >= {:.2}) loses less than \
         this.",
        grouped(with),
        grouped(without),
        report::LIMITER_TARGET,
    )
}

/// path, gateway, HAProxy (instructions per request), as markdown.
fn table(rows: &[(&str, u64, u64)]) -> String {
    let mut out = String::from(
        "| path | gateway instr/req | HAProxy instr/req | gateway/HAProxy |\n|---|---|---|---|\n",
    );
    for (path, gateway, haproxy) in rows {
        let ratio = *gateway as f64 / (*haproxy).max(1) as f64;
        let _ = writeln!(
            out,
            "| {path} | {} | {} | {ratio:.2}x |",
            grouped(*gateway),
            grouped(*haproxy)
        );
    }
    out
}

/// HAProxy's version number, from the first line of `haproxy -v`.
fn haproxy_version() -> String {
    let line = results::first_line("haproxy", &["-v"]);
    let words: Vec<&str> = line.split_whitespace().collect();
    (words.iter().position(|w| *w == "version"))
        .and_then(|i| words.get(i + 1))
        .map_or(line.clone(), |v| (*v).to_owned())
}

/// `59508` as `59,508`.
fn grouped(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

/// The gateway's figure for a case, and the keys it made for it.
struct Measured {
    per_request: u64,
    /// `(key, client id)`: the same keys go into HAProxy's map.
    keys: Vec<(String, String)>,
}

fn measure_gateway(gateway_bin: &Path, dir: &Path, upstream: u16, case: &Case) -> Result<Measured> {
    let port = free_port()?;
    let config = dir.join("gateway.toml");
    std::fs::write(
        &config,
        format!(
            "state_dir = \"{dir}/state\"\n\
             [xdp]\nenabled = false\n[admin]\nenabled = false\n[guard]\nmode = \"off\"\n\
             [keys]\nstore = \"{dir}/keys.db\"\n\
             [limits]\nworkers = 1\n\
             [[tiers]]\nname = \"gold\"\n{tier}\n\
             [[listeners]]\naddress = \"127.0.0.1:{port}\"\n\
             [[upstreams]]\nname = \"app\"\nservers = [\"127.0.0.1:{upstream}\"]\n\
             [[routes]]\npath_prefix = \"/\"\nupstream = \"app\"\nauth = \"api_key\"\n\
             rate_limit = {rate_limit}\n",
            dir = dir.display(),
            tier = case.tier,
            rate_limit = case.rate_limit,
        ),
    )?;
    let keys: Vec<(String, String)> =
        keys::create(gateway_bin, &config, "callgrind", "gold", case.keys)?
            .into_iter()
            .map(|key| (key.api_key, key.id))
            .collect();
    let out = dir.join("gateway.callgrind.out");
    let mut command = under_callgrind(&out, gateway_bin.as_os_str());
    command.args(["run", "--config"]).arg(&config);
    let instructions = measure(command, &out, port, &keys, case.status)?;
    keep_profile(&out, case.name)?;
    let per_request = report("gateway", case, instructions);
    Ok(Measured { per_request, keys })
}

/// HAProxy with `bench proxy`'s configuration (one thread, no TLS
/// listener), the case's keys in its map.
fn measure_haproxy(
    dir: &Path,
    upstream: u16,
    case: &Case,
    keys: &[(String, String)],
) -> Result<u64> {
    let files = Files {
        dir,
        sha_map: &dir.join("keys.sha.map"),
        raw_map: &dir.join("keys.nginx.map"),
        cert: &dir.join("unused.crt"),
        key: &dir.join("unused.key"),
        pem: &dir.join("unused.pem"),
    };
    keys::write_maps(files.sha_map, files.raw_map, keys)?;
    let listen = Listen {
        port: free_port()?,
        tls_port: None,
    };
    let config = dir.join("haproxy.cfg");
    let text = configs::haproxy(&files, listen, upstream, 1, case.haproxy_per_key);
    std::fs::write(&config, text)?;
    let out = dir.join("haproxy.callgrind.out");
    let mut command = under_callgrind(&out, "haproxy".as_ref());
    command.arg("-f").arg(&config).arg("-db");
    let instructions = measure(command, &out, listen.port, keys, case.status)?;
    keep_profile(&out, &format!("haproxy-{}", case.name))?;
    Ok(report("haproxy", case, instructions))
}

/// `program` under callgrind, instrumentation off until switched on,
/// its stderr discarded.
fn under_callgrind(out: &Path, program: &std::ffi::OsStr) -> Command {
    let mut command = Command::new("valgrind");
    command
        .args(["--tool=callgrind", "--instr-atstart=no"])
        .arg(format!("--callgrind-out-file={}", out.display()))
        .arg(program)
        .stderr(Stdio::null());
    command
}

/// Prints and returns a proxy's instructions per request.
fn report(proxy: &str, case: &Case, instructions: u64) -> u64 {
    let per_request = instructions / MEASURED as u64;
    println!(
        "callgrind, {proxy}, {}: {per_request} instructions per request ({instructions} over {MEASURED} requests)",
        case.path
    );
    per_request
}

/// Instructions of the whole process `command` starts (listening on
/// `port`) over [`MEASURED`] requests that must each be answered
/// `status`; its callgrind output is `out`, read after it stops.
fn measure(
    command: Command,
    out: &Path,
    port: u16,
    keys: &[(String, String)],
    status: u16,
) -> Result<u64> {
    let process = Running::listening_within(command, port, Duration::from_secs(120))?;
    let pid = process.pid().to_string();
    let mut client = Client::connect(port)?;
    // The 429 path's key gets its one allowed request in the warm-up.
    for i in 0..WARM_UP {
        client.get(&keys[i % keys.len()].0)?;
    }
    control(&pid, "on")?;
    for i in 0..MEASURED {
        let got = client.get(&keys[i % keys.len()].0)?;
        ensure!(
            got == status,
            "request {i}: status {got}, expected {status}"
        );
    }
    control(&pid, "off")?;
    drop(client);
    process.stop_within(Duration::from_secs(120))?;
    let text = std::fs::read_to_string(out).context("reading callgrind's output")?;
    totals(&text)
}

/// Copies the profile to `target/bench-callgrind/<name>.out`, where it
/// outlives the scratch directory, for `callgrind_annotate` to break down.
fn keep_profile(out: &Path, name: &str) -> Result<()> {
    let kept = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/bench-callgrind");
    std::fs::create_dir_all(&kept)?;
    let to = kept.join(format!("{name}.out"));
    std::fs::copy(out, &to).with_context(|| format!("keeping the profile as {}", to.display()))?;
    println!("callgrind profile kept: {}", to.display());
    Ok(())
}

/// `callgrind_control -i on|off` for the process `pid`.
fn control(pid: &str, switch: &str) -> Result<()> {
    let status = Command::new("callgrind_control")
        .args(["-i", switch, pid])
        .stdout(Stdio::null())
        .status()
        .context("running callgrind_control")?;
    ensure!(status.success(), "callgrind_control -i {switch} failed");
    Ok(())
}

/// The instructions a callgrind output file counts in all: its `totals:`
/// line (the header's `summary:` says 0 when collection started off).
fn totals(output: &str) -> Result<u64> {
    output
        .lines()
        .filter_map(|line| {
            line.strip_prefix("totals:")
                .or(line.strip_prefix("summary:"))
        })
        .filter_map(|n| n.split_whitespace().next()?.parse().ok())
        .max()
        .context("no totals in callgrind's output")
}

/// One sequential keep-alive HTTP/1.1 client connection.
struct Client {
    reader: BufReader<TcpStream>,
}

impl Client {
    fn connect(port: u16) -> Result<Self> {
        let stream = TcpStream::connect(("127.0.0.1", port))?;
        stream.set_read_timeout(Some(Duration::from_secs(30)))?;
        stream.set_nodelay(true)?;
        Ok(Self {
            reader: BufReader::new(stream),
        })
    }

    /// `GET /bench` with `key`; the response's status (its body read).
    fn get(&mut self, key: &str) -> Result<u16> {
        let request = format!("GET /bench HTTP/1.1\r\nhost: 127.0.0.1\r\nx-api-key: {key}\r\n\r\n");
        self.reader.get_mut().write_all(request.as_bytes())?;
        let (status, length) = read_head(&mut self.reader)?;
        let mut body = vec![0; length];
        self.reader.read_exact(&mut body)?;
        Ok(status)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn totals_are_read_from_either_line() {
        assert_eq!(totals("events: Ir\nsummary: 123\n").unwrap(), 123);
        assert_eq!(totals("events: Ir\ntotals: 456 7\n").unwrap(), 456);
        assert_eq!(totals("summary: 0\nfn=x\n1 5\ntotals: 789\n").unwrap(), 789);
        assert!(totals("events: Ir\n").is_err());
    }

    #[test]
    fn table_has_ratios_and_grouped_counts() {
        assert_eq!(grouped(7), "7");
        assert_eq!(grouped(100), "100");
        assert_eq!(grouped(59508), "59,508");
        assert_eq!(grouped(1234567), "1,234,567");
        let table = table(&[("proxied 200", 60_000, 40_000), ("429", 30_000, 40_000)]);
        assert!(
            table.contains("| proxied 200 | 60,000 | 40,000 | 1.50x |"),
            "{table}"
        );
        assert!(
            table.contains("| 429 | 30,000 | 40,000 | 0.75x |"),
            "{table}"
        );
    }
}
