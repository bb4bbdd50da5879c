//! Kernel events: the XDP program's aya-log records (a ban's first drop, a
//! full map, a parse given up; see `gateway_common::events`), read from
//! its ring buffer on the control runtime, logged under [`TARGET`] with
//! structured fields, and published to an [`EventHub`] that the admin API
//! streams (`GET /v1/xdp/events`, followed by `gateway xdp events`).
//!
//! Levels: a ban's first drop is `info` (once per ban, what an operator
//! wants to see); a full map is `warn` (policy or state is being lost);
//! a parse given up is `debug`: malformed frames are routine Internet noise
//! that passes anyway and needs no action, so it stays out of the default
//! log but is still streamed to `gateway xdp events` and visible with
//! `RUST_LOG=gateway::xdp::events=debug`.
use std::{
    collections::VecDeque,
    net::{IpAddr, Ipv6Addr},
    sync::{Arc, Mutex},
};

use aya_log::EbpfLogger;
use gateway_common::{ban_reason, events as kernel};
use serde::Serialize;
use tokio::{
    io::{unix::AsyncFd, Interest},
    sync::broadcast,
};

use crate::clock::unix_now;

/// The log target of every kernel event.
pub const TARGET: &str = "gateway::xdp::events";
/// Events a new follower of the stream gets first.
pub const REPLAY: usize = 64;
/// Events buffered for each follower; a slower one is told it missed some.
const FOLLOWER_BACKLOG: usize = 256;

/// One kernel event, as logged and streamed (`"event"` names the kind).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum KernelEvent {
    /// A banned source's first packet judged under its ban (dropped, or
    /// only counted in monitor mode).
    BanFirstDrop {
        source: IpAddr,
        reason: &'static str,
        expires_in_ms: u64,
        monitor: bool,
    },
    /// An insert into a kernel-written map failed.
    MapFull { map: String, error: i64 },
    /// The parser gave up on a packet (it passed).
    ParseGaveUp { why: String },
}

impl KernelEvent {
    /// The event an aya-log record carries, from its target and message;
    /// `None` for anything this gateway's program does not log.
    pub fn from_record(target: &str, message: &str) -> Option<Self> {
        let fields = Fields::parse(message)?;
        match target {
            kernel::BAN_FIRST_DROP => {
                let source: Ipv6Addr = fields.get("source")?.parse().ok()?;
                let reason = match fields.get("reason")?.parse::<u32>().ok()? {
                    kernel::REASON_UNKNOWN => "unknown",
                    code => ban_reason::name(code),
                };
                Some(KernelEvent::BanFirstDrop {
                    source: source.to_canonical(),
                    reason,
                    expires_in_ms: fields.get("expires_in_ms")?.parse().ok()?,
                    monitor: fields.get("monitor")? == "1",
                })
            }
            kernel::MAP_FULL => Some(KernelEvent::MapFull {
                map: fields.get("map")?.to_owned(),
                error: fields.get("error")?.parse().ok()?,
            }),
            kernel::PARSE_GAVE_UP => Some(KernelEvent::ParseGaveUp {
                why: fields.get("why")?.to_owned(),
            }),
            _ => None,
        }
    }

    /// The level the gateway logs it at (see the module doc).
    pub fn level(&self) -> tracing::Level {
        match self {
            KernelEvent::BanFirstDrop { .. } => tracing::Level::INFO,
            KernelEvent::MapFull { .. } => tracing::Level::WARN,
            KernelEvent::ParseGaveUp { .. } => tracing::Level::DEBUG,
        }
    }

    /// Writes it to the gateway's log under [`TARGET`].
    pub fn log(&self) {
        match self {
            KernelEvent::BanFirstDrop {
                source,
                reason,
                expires_in_ms,
                monitor,
            } => tracing::info!(
                target: TARGET,
                event = "ban_first_drop",
                %source,
                reason,
                expires_in_ms,
                monitor,
                "first packet from a banned source {}",
                if *monitor { "(monitor mode: passed)" } else { "dropped" }
            ),
            KernelEvent::MapFull { map, error } => tracing::warn!(
                target: TARGET,
                event = "map_full",
                map,
                error,
                "kernel map full: an insert failed (rate-limited to one a second)"
            ),
            KernelEvent::ParseGaveUp { why } => tracing::debug!(
                target: TARGET,
                event = "parse_gave_up",
                why,
                "the XDP parser gave up on a packet and passed it (rate-limited to one a second)"
            ),
        }
    }
}

/// The `key=value` pairs of a record's message.
struct Fields<'a>(Vec<(&'a str, &'a str)>);

impl<'a> Fields<'a> {
    fn parse(message: &'a str) -> Option<Self> {
        message
            .split_whitespace()
            .map(|pair| pair.split_once('='))
            .collect::<Option<Vec<_>>>()
            .map(Fields)
    }

    fn get(&self, key: &str) -> Option<&'a str> {
        self.0.iter().find(|(k, _)| *k == key).map(|(_, v)| *v)
    }
}

/// A kernel event as streamed: when the gateway read it, and what it was.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct EventRecord {
    /// Unix seconds when the gateway read it from the ring buffer.
    pub time: i64,
    #[serde(flatten)]
    pub event: KernelEvent,
}

/// Where kernel events go for the admin API's followers: a bounded
/// broadcast plus the last [`REPLAY`] events for whoever starts following.
#[derive(Clone)]
pub struct EventHub {
    inner: Arc<HubInner>,
}

struct HubInner {
    live: broadcast::Sender<Arc<EventRecord>>,
    recent: Mutex<VecDeque<Arc<EventRecord>>>,
}

impl Default for EventHub {
    fn default() -> Self {
        let (live, _) = broadcast::channel(FOLLOWER_BACKLOG);
        Self {
            inner: Arc::new(HubInner {
                live,
                recent: Mutex::new(VecDeque::with_capacity(REPLAY)),
            }),
        }
    }
}

impl EventHub {
    pub fn publish(&self, event: KernelEvent) {
        let record = Arc::new(EventRecord {
            time: unix_now(),
            event,
        });
        // Under the lock, so a new follower sees each event exactly once:
        // in its replay or live.
        let mut recent = self.recent();
        if recent.len() == REPLAY {
            recent.pop_front();
        }
        recent.push_back(record.clone());
        // No follower is not an error.
        let _ = self.inner.live.send(record);
    }

    /// The recent events (oldest first) and the live ones after them.
    pub fn follow(&self) -> (Vec<Arc<EventRecord>>, broadcast::Receiver<Arc<EventRecord>>) {
        let recent = self.recent();
        (
            recent.iter().cloned().collect(),
            self.inner.live.subscribe(),
        )
    }

    fn recent(&self) -> std::sync::MutexGuard<'_, VecDeque<Arc<EventRecord>>> {
        self.inner.recent.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// aya-log's sink: each record becomes a logged and published event.
pub struct Forwarder {
    hub: EventHub,
}

impl Forwarder {
    pub fn new(hub: EventHub) -> Self {
        Self { hub }
    }
}

impl log::Log for Forwarder {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        let message = record.args().to_string();
        match KernelEvent::from_record(record.target(), &message) {
            Some(event) => {
                event.log();
                self.hub.publish(event);
            }
            None => tracing::debug!(
                target: TARGET,
                kernel_target = record.target(),
                level = %record.level(),
                message,
                "unrecognised kernel log record"
            ),
        }
    }

    fn flush(&self) {}
}

/// The program's aya-log ring buffer, until [`EventReader::run`] drives it.
pub struct EventReader {
    logger: EbpfLogger<Forwarder>,
}

impl EventReader {
    pub(super) fn new(logger: EbpfLogger<Forwarder>) -> Self {
        Self { logger }
    }

    /// Forwards records as the ring buffer fills (aya-log 0.3 is polled by
    /// its caller: records appear only while this runs).
    pub async fn run(self) {
        // SAFETY: the logger owns its ring buffer's fd: open, and the same
        // fd, for as long as the AsyncFd owns the logger.
        let registered =
            unsafe { AsyncFd::register_with_interest(self.logger, Interest::READABLE) };
        let mut ring = match registered {
            Ok(ring) => ring,
            Err(error) => {
                tracing::warn!(%error, "cannot watch the XDP event ring buffer: no kernel events");
                return;
            }
        };
        loop {
            let mut ready = match ring.readable_mut().await {
                Ok(ready) => ready,
                Err(error) => {
                    tracing::warn!(%error, "the XDP event ring buffer failed: no more kernel events");
                    return;
                }
            };
            ready.get_inner_mut().flush();
            ready.clear_ready();
        }
    }
}

#[cfg(test)]
#[path = "events_tests.rs"]
mod tests;
