//! Request paths through `proxy::path::normalize`: never a panic, and what
//! it accepts is a fixed point with no dot-segment and no empty segment
//! left (routing and the upstream see exactly this). Its Java reading
//! (`without_parameters`) keeps every segment, none with a `;` left, each
//! the start of the segment it came from.
#![no_main]

use gateway::proxy::path::{normalize, without_parameters};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(path) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(normal) = normalize(path) {
        let normal: &str = normal.as_ref();
        assert!(normal.starts_with('/'), "not origin-form: {normal:?}");
        let again = normalize(normal).ok();
        assert_eq!(again.as_deref(), Some(normal), "not idempotent");
        assert!(
            !normal.split('/').any(|s| s == "." || s == ".."),
            "dot-segment left: {normal:?}"
        );
        assert!(!normal.contains("//"), "empty segment left: {normal:?}");
        assert!(!normal.contains('\\'), "backslash left: {normal:?}");
        let bare = without_parameters(normal);
        let (segments, bare_segments) = (normal.split('/'), bare.split('/'));
        assert_eq!(segments.clone().count(), bare_segments.clone().count());
        for (segment, bare_segment) in segments.zip(bare_segments) {
            assert!(segment.starts_with(bare_segment), "{normal:?} -> {bare:?}");
            assert!(!bare_segment.contains(';'), "{normal:?} -> {bare:?}");
        }
    }
});
