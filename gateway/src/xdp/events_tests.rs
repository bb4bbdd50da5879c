use std::{
    io::Write,
    sync::{Arc, Mutex},
};

use gateway_common::{ban_reason, events as kernel};

use super::*;

/// The messages exactly as `gateway-ebpf/src/events.rs` formats them
/// (aya-log renders `{:i}` of 16 bytes as an IPv6 address).
const BAN: &str = "source=::ffff:10.77.0.2 reason=2 expires_in_ms=59000 monitor=0";
const BAN_V6: &str = "source=fd77::2 reason=4294967295 expires_in_ms=1 monitor=1";

#[test]
fn a_ban_record_becomes_its_event_with_a_canonical_address_and_named_reason() {
    let event = KernelEvent::from_record(kernel::BAN_FIRST_DROP, BAN).unwrap();
    assert_eq!(
        event,
        KernelEvent::BanFirstDrop {
            source: "10.77.0.2".parse().unwrap(),
            reason: ban_reason::name(ban_reason::AUTH_FAILURES),
            expires_in_ms: 59_000,
            monitor: false,
        }
    );
    assert_eq!(event.level(), tracing::Level::INFO);
    let v6 = KernelEvent::from_record(kernel::BAN_FIRST_DROP, BAN_V6).unwrap();
    assert_eq!(
        v6,
        KernelEvent::BanFirstDrop {
            source: "fd77::2".parse().unwrap(),
            reason: "unknown",
            expires_in_ms: 1,
            monitor: true,
        }
    );
}

#[test]
fn map_full_and_parse_records_map_to_their_events_and_levels() {
    let full = KernelEvent::from_record(kernel::MAP_FULL, "map=GW_STATE error=-7").unwrap();
    assert_eq!(
        full,
        KernelEvent::MapFull {
            map: "GW_STATE".into(),
            error: -7
        }
    );
    assert_eq!(full.level(), tracing::Level::WARN);
    for why in [kernel::gave_up::TRUNCATED, kernel::gave_up::IPV6_EXT_CHAIN] {
        let gave_up =
            KernelEvent::from_record(kernel::PARSE_GAVE_UP, &format!("why={why}")).unwrap();
        assert_eq!(gave_up, KernelEvent::ParseGaveUp { why: why.into() });
        assert_eq!(gave_up.level(), tracing::Level::DEBUG);
    }
}

#[test]
fn records_of_other_shapes_are_not_events() {
    for (target, message) in [
        ("something_else", BAN),
        (kernel::BAN_FIRST_DROP, "source=10.77.0.2"),
        (
            kernel::BAN_FIRST_DROP,
            "source=nonsense reason=0 expires_in_ms=1 monitor=0",
        ),
        (kernel::MAP_FULL, "map=GW_STATE error=x"),
        (kernel::PARSE_GAVE_UP, "free text"),
        (kernel::PARSE_GAVE_UP, ""),
    ] {
        assert_eq!(KernelEvent::from_record(target, message), None, "{message}");
    }
}

#[test]
fn events_stream_as_one_json_object_with_their_kind() {
    let record = EventRecord {
        time: 7,
        event: KernelEvent::from_record(kernel::BAN_FIRST_DROP, BAN).unwrap(),
    };
    assert_eq!(
        serde_json::to_value(&record).unwrap(),
        serde_json::json!({
            "time": 7,
            "event": "ban_first_drop",
            "source": "10.77.0.2",
            "reason": "auth_failures",
            "expires_in_ms": 59000,
            "monitor": false,
        })
    );
    let gave_up = serde_json::to_value(KernelEvent::ParseGaveUp {
        why: "truncated".into(),
    });
    assert_eq!(
        gave_up.unwrap(),
        serde_json::json!({ "event": "parse_gave_up", "why": "truncated" })
    );
}

/// A log sink the test can read.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// What the forwarder logs for one record (with every level enabled).
fn logged(target: &str, message: &str, hub: &EventHub) -> String {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .finish();
    let forwarder = Forwarder::new(hub.clone());
    tracing::subscriber::with_default(subscriber, || {
        log::Log::log(
            &forwarder,
            &log::Record::builder()
                .target(target)
                .level(log::Level::Info)
                .args(format_args!("{message}"))
                .build(),
        );
    });
    let text = captured.0.lock().unwrap().clone();
    String::from_utf8(text).unwrap()
}

#[test]
fn the_forwarder_logs_each_event_at_its_level_under_one_target_and_publishes_it() {
    let hub = EventHub::default();
    let (_, mut live) = hub.follow();
    let line = logged(kernel::BAN_FIRST_DROP, BAN, &hub);
    assert!(line.contains(" INFO gateway::xdp::events:"), "{line}");
    assert!(line.contains("event=\"ban_first_drop\""), "{line}");
    assert!(line.contains("source=10.77.0.2"), "{line}");
    assert!(line.contains("reason=\"auth_failures\""), "{line}");
    assert!(line.contains("dropped"), "{line}");
    let published = live.try_recv().unwrap();
    assert_eq!(
        published.event,
        KernelEvent::from_record(kernel::BAN_FIRST_DROP, BAN).unwrap()
    );

    let line = logged(kernel::MAP_FULL, "map=GW_STATE error=-12", &hub);
    assert!(line.contains(" WARN gateway::xdp::events:"), "{line}");
    assert!(line.contains("map=\"GW_STATE\" error=-12"), "{line}");
    let line = logged(kernel::PARSE_GAVE_UP, "why=truncated", &hub);
    assert!(line.contains("DEBUG gateway::xdp::events:"), "{line}");
    assert!(line.contains("why=\"truncated\""), "{line}");
    assert_eq!(live.len(), 2);

    // Anything else is logged at debug and not streamed.
    let line = logged("other", "hello", &hub);
    assert!(line.contains("DEBUG gateway::xdp::events:"), "{line}");
    assert!(line.contains("unrecognised"), "{line}");
    assert_eq!(live.len(), 2);
}

#[test]
fn a_new_follower_gets_the_last_events_then_live_ones_each_once() {
    let hub = EventHub::default();
    let gave_up = |n: usize| KernelEvent::ParseGaveUp { why: n.to_string() };
    for n in 0..REPLAY + 5 {
        hub.publish(gave_up(n));
    }
    let (recent, mut live) = hub.follow();
    assert_eq!(recent.len(), REPLAY);
    assert_eq!(recent[0].event, gave_up(5));
    assert_eq!(recent[REPLAY - 1].event, gave_up(REPLAY + 4));
    assert!(live.try_recv().is_err());
    hub.publish(gave_up(1000));
    assert_eq!(live.try_recv().unwrap().event, gave_up(1000));
}
