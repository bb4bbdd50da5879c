//! Fleet stream entries through `fleet::wire::Entry::parse`, as any client
//! of the shared Redis could write them: never a panic; what it accepts
//! re-encodes to an entry that parses back the same, and converts to a
//! policy update (or expires) on any clocks without overflowing.
#![no_main]

use gateway::fleet::wire::{Clocks, Entry};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(entry) = Entry::parse(data) else {
        return;
    };
    let json = entry.to_json();
    assert_eq!(
        Entry::parse(json.as_bytes()).ok().as_ref(),
        Some(&entry),
        "{json}"
    );
    for clocks in [
        Clocks {
            wall_ms: 0,
            mono_ns: 0,
        },
        Clocks {
            wall_ms: 1_800_000_000_000,
            mono_ns: 5_000_000_000,
        },
        Clocks {
            wall_ms: u64::MAX,
            mono_ns: u64::MAX,
        },
    ] {
        let _ = entry.to_update(clocks);
        let _ = entry.to_marked_update(clocks);
    }
    let _ = (
        entry.slot(),
        entry.removes(),
        entry.allowed_by(&["10.0.0.0/8".parse().unwrap()]),
    );
});
