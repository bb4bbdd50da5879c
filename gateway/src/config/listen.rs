//! Where the gateway listens: the proxy listeners with their TLS, the
//! admin listener, and the limits on what a connection may cost.
use std::{net::SocketAddr, path::PathBuf, time::Duration};

use serde::Deserialize;

use super::{
    bounds::{At, DAY, HOUR, MS},
    durations, ConfigError,
};

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerConfig {
    pub address: SocketAddr,
    /// TLS (HTTP/2 and HTTP/1.1 by ALPN); plain HTTP when absent.
    pub tls: Option<TlsConfig>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsConfig {
    /// PEM certificate chain; with `key`. Both absent: a self-signed
    /// certificate is generated in `state_dir` on first start and kept.
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
    /// Require client certificates signed by this CA (mTLS).
    pub client_ca: Option<PathBuf>,
    /// Names for the self-signed certificate (default: localhost and the
    /// listener's address).
    pub names: Vec<String>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Reading a request's headers; also how long an idle HTTP/1.1
    /// keep-alive connection is kept, how long a response may find the
    /// client's socket full before the connection is dropped,
    /// and the TLS handshake limit.
    #[serde(with = "durations")]
    pub request_timeout: Duration,
    /// A plain HTTP/1.1 keep-alive connection idle this long is parked:
    /// hyper's buffers (16 KiB and more) are freed, its socket kept, and
    /// its next request read into a buffer of its size (see
    /// `proxy::park`); 0 = never.
    #[serde(with = "durations")]
    pub park_idle_after: Duration,
    /// Waiting for the upstream's response headers.
    #[serde(with = "durations")]
    pub upstream_timeout: Duration,
    #[serde(with = "durations")]
    pub connect_timeout: Duration,
    /// How long a kept connection to an upstream server may sit idle:
    /// shorter than the upstreams' own keep-alive timeouts, so the gateway
    /// closes first rather than sending on a connection the upstream is
    /// closing.
    #[serde(with = "durations")]
    pub upstream_idle_timeout: Duration,
    pub max_header_bytes: usize,
    pub max_connections: usize,
    /// Largest request body: a `Content-Length` over it is a 413 before
    /// anything is read or forwarded; a streamed body that passes it is
    /// cut off (the upstream request aborted) with a 413.
    pub max_body_bytes: u64,
    /// Open connections from one source address; the next one is closed at
    /// accept. 0 = no per-source cap (only `max_connections`).
    pub max_connections_per_source: usize,
    /// A WebSocket tunnel with no byte either way for this long is closed
    /// on both sides.
    #[serde(with = "durations")]
    pub tunnel_idle_timeout: Duration,
    /// Worker threads, each with its own listener socket (SO_REUSEPORT),
    /// event loop and upstream connections; 0 = one per CPU.
    pub workers: usize,
    /// After SIGTERM/SIGQUIT: how long requests in flight may take to
    /// finish before their connections are cut and the process exits.
    #[serde(with = "durations")]
    pub drain_timeout: Duration,
    /// On a restart: how long a new gateway that took this one's sockets
    /// has to say it serves before this one takes its XDP pin root back
    /// and refuses it.
    #[serde(with = "durations")]
    pub handover_timeout: Duration,
    /// Where tier quotas are kept: this process, or shared by a fleet in
    /// `[redis]` (see `fleet::limits`).
    pub backend: LimitsBackend,
    /// `backend = "redis"`: tokens a node takes from Redis at a time per
    /// client (L in the README's error bound); 0 = what the client may
    /// spend in a second at its rate, at most ⌈burst / nodes⌉
    /// (`fleet::limits::auto_lease`).
    pub lease: u32,
    /// `backend = "redis"`: nodes in the fleet, for the local fallback at
    /// quota / nodes while Redis is unreachable; 0 = counted from the
    /// nodes' heartbeats in Redis.
    pub nodes: u32,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LimitsBackend {
    #[default]
    Local,
    Redis,
    /// One Redis round trip per request, waiting for it: the baseline
    /// `cargo xtask bench fleet` measures the leased `redis` against.
    #[serde(rename = "redis_sync")]
    RedisSync,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            request_timeout: Duration::from_secs(30),
            park_idle_after: Duration::from_secs(1),
            upstream_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(5),
            // Under the 5 s of Node.js, Apache httpd and uvicorn (nginx: 75 s).
            upstream_idle_timeout: Duration::from_secs(4),
            max_header_bytes: 64 * 1024,
            max_connections: 10_000,
            max_body_bytes: 10 * 1024 * 1024,
            max_connections_per_source: 256,
            tunnel_idle_timeout: Duration::from_secs(300),
            workers: 0,
            drain_timeout: Duration::from_secs(30),
            handover_timeout: Duration::from_secs(30),
            backend: LimitsBackend::Local,
            lease: 0,
            nodes: 0,
        }
    }
}

impl LimitsConfig {
    /// hyper's smallest header buffer; Envoy's largest header limit.
    const HEADER_BYTES: std::ops::RangeInclusive<usize> = 8192..=8 << 20;

    pub(super) fn check(&self, at: &At) -> Result<(), ConfigError> {
        // Half the request timeout is the idle check's tick: never zero.
        at.within("request_timeout", self.request_timeout, MS..=DAY)?;
        at.within("upstream_timeout", self.upstream_timeout, MS..=DAY)?;
        at.within("connect_timeout", self.connect_timeout, MS..=HOUR)?;
        // Also the reaper's period: not a busy loop.
        let idle = self.upstream_idle_timeout;
        at.within("upstream_idle_timeout", idle, Duration::from_secs(1)..=HOUR)?;
        at.within(
            "max_header_bytes",
            self.max_header_bytes,
            Self::HEADER_BYTES,
        )?;
        at.within("max_connections", self.max_connections, 1..=10_000_000)?;
        at.within("workers", self.workers, 0..=1024)?;
        at.within("lease", self.lease, 0..=1_000_000)?;
        at.within("nodes", self.nodes, 0..=100_000)?;
        // Zero cuts every connection at once; an hour outlives any sane deploy.
        at.within("drain_timeout", self.drain_timeout, Duration::ZERO..=HOUR)?;
        // A second leaves no new gateway time to load XDP; an hour, any.
        at.within(
            "handover_timeout",
            self.handover_timeout,
            Duration::from_secs(1)..=HOUR,
        )
    }
}

/// The admin listener: `/metrics`, `/healthz`, the management API.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    pub enabled: bool,
    /// Keep it private: `/metrics` and `/healthz` need no credential.
    pub address: SocketAddr,
    /// One JSON line per admin action; relative paths are under `state_dir`.
    pub audit_log: PathBuf,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            address: SocketAddr::from(([127, 0, 0, 1], 9901)),
            audit_log: "audit.log".into(),
        }
    }
}

/// The HTTP limits this module added for issue 12 (sizes and the tunnel
/// timeout must be positive: zero would refuse every body or close every
/// tunnel at once).
pub(super) fn validate_limits(limits: &LimitsConfig) -> Result<(), ConfigError> {
    if limits.max_body_bytes == 0 {
        return Err(ConfigError::invalid(
            "limits.max_body_bytes",
            "must be greater than 0",
        ));
    }
    if limits.tunnel_idle_timeout.is_zero() {
        return Err(ConfigError::invalid(
            "limits.tunnel_idle_timeout",
            "must be greater than 0",
        ));
    }
    Ok(())
}

pub(super) fn validate(listeners: &[ListenerConfig]) -> Result<(), ConfigError> {
    if listeners.is_empty() {
        return Err(ConfigError::invalid(
            "listeners",
            "at least one listener is needed",
        ));
    }
    Ok(())
}
