//! Request paths through `proxy::path::normalize`: never a panic, and what
//! it accepts is a fixed point with no dot-segment and no empty segment
//! left (routing and the upstream see exactly this). Its Java reading
//! (`without_parameters`) is the segments' names before any `;`, in order,
//! those left empty dropped. The same bytes as a request's host
//! (`host::check`): a host it serves is matched by the name nginx reads
//! (before the first `:`, one trailing dot dropped), with no `@` or empty
//! label.
#![no_main]

use gateway::{
    host,
    proxy::path::{normalize, without_parameters},
};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if host::check(data).is_ok() {
        let text = std::str::from_utf8(data).expect("a served host is ASCII");
        let name = host::name(text);
        if !text.starts_with('[') {
            let nginx = text.split(':').next().unwrap_or_default();
            assert_eq!(name, nginx.strip_suffix('.').unwrap_or(nginx), "{text:?}");
        }
        assert!(!name.contains('@') && !name.contains(".."), "{text:?}");
    }
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
        let names = (normal.split('/'))
            .map(|segment| segment.split(';').next().unwrap_or_default())
            .filter(|name| !name.is_empty());
        let bare_names = bare.split('/').filter(|name| !name.is_empty());
        assert!(names.eq(bare_names), "{normal:?} -> {bare:?}");
        assert!(
            bare.starts_with('/') && !bare.contains("//"),
            "{normal:?} -> {bare:?}"
        );
        assert!(!bare.contains(';'), "{normal:?} -> {bare:?}");
    }
});
