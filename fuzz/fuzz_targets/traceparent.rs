//! `traceparent` values through `proxy::trace::parse`: never a panic; what
//! it accepts is lowercase hex with non-zero ids and a version other than
//! `ff`, and its first 55 bytes are exactly those fields re-encoded.
#![no_main]

use gateway::proxy::trace::parse;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some(parent) = parse(data) else {
        return;
    };
    assert_ne!(parent.version, 0xff, "version ff accepted");
    assert!(parent.trace_id.iter().any(|&b| b != 0), "zero trace id");
    assert!(parent.parent_id.iter().any(|&b| b != 0), "zero parent id");
    let hex = |bytes: &[u8]| -> String { bytes.iter().map(|b| format!("{b:02x}")).collect() };
    let fields = format!(
        "{}-{}-{}-{}",
        hex(&[parent.version]),
        hex(&parent.trace_id),
        hex(&parent.parent_id),
        hex(&[parent.flags])
    );
    assert_eq!(&data[..55], fields.as_bytes(), "not what was parsed");
    assert!(
        data.len() == 55 || (parent.version != 0 && data[55] == b'-'),
        "trailing bytes accepted"
    );
});
