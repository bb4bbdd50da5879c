//! Request paths through `proxy::path::normalize`: never a panic, and what
//! it accepts is a fixed point with no dot-segment and no empty segment
//! left (routing and the upstream see exactly this).
#![no_main]

use gateway::proxy::path::normalize;
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
    }
});
