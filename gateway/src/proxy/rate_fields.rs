//! The rate-limit fields on every response of a limited route, built
//! from the tier's shared text and the decision with as little per-response
//! work as a response allows: they are most of the limiter's cost.
use http::{header, HeaderMap, HeaderName, HeaderValue};

use super::tier_reply::TierReply;
use crate::limits::Decision;

/// `value` of a response field that differs on every response (the
/// request id, the remaining quota), marked so that HTTP/2 sends it as a
/// never-indexed literal. Indexing such values evicted the stable fields
/// (the rate-limit policy, the server, the content type) from the HPACK
/// dynamic table and had the encoder compare each new value with every
/// older one of the same name: a third of the encoder's work. HTTP/1
/// ignores the mark. Marked as the value is made: a lookup of each field
/// afterwards cost ~400 instructions an HTTP/2 response.
pub fn per_response(mut value: HeaderValue) -> HeaderValue {
    value.set_sensitive(true);
    value
}

/// The rate-limit headers every response of a limited route carries: the
/// IETF draft's `RateLimit-Policy` and `RateLimit`, and the widespread
/// `X-RateLimit-*`; `Retry-After` on refusals.
pub fn set_rate_limit(headers: &mut HeaderMap, tier: &TierReply, decision: &Decision) {
    let seconds = |d: std::time::Duration| d.as_secs() + u64::from(d.subsec_nanos() > 0);
    let reset = seconds(decision.reset);
    headers.reserve(6);
    if let Some(policy) = &tier.policy {
        headers.insert(RATELIMIT_POLICY, policy.clone());
    }
    let ratelimit = tier.ratelimit(decision.remaining, reset, || {
        ratelimit_value(&tier.prefix, decision.remaining, reset)
    });
    if let Some(value) = ratelimit {
        headers.insert(RATELIMIT, per_response(value));
    }
    headers.insert(X_RATELIMIT_LIMIT, tier.limit.clone());
    headers.insert(
        X_RATELIMIT_REMAINING,
        per_response(small_number(u64::from(decision.remaining))),
    );
    headers.insert(X_RATELIMIT_RESET, small_number(reset));
    if !decision.allowed {
        headers.insert(
            header::RETRY_AFTER,
            small_number(seconds(decision.retry_after).max(1)),
        );
    }
}

/// `"name";r=R;t=T`, made in a buffer on the stack: one copy into the
/// value.
fn ratelimit_value(prefix: &[u8], remaining: u32, reset: u64) -> Option<HeaderValue> {
    let mut buffer = [0u8; 256];
    let mut len = 0;
    let (mut remaining_text, mut reset_text) = (itoa::Buffer::new(), itoa::Buffer::new());
    let remaining = remaining_text.format(remaining);
    let reset = reset_text.format(reset);
    for part in [prefix, remaining.as_bytes(), b";t=", reset.as_bytes()] {
        if let Some(slot) = buffer.get_mut(len..len + part.len()) {
            slot.copy_from_slice(part);
        }
        len += part.len();
    }
    match buffer.get(..len) {
        Some(text) => HeaderValue::from_bytes(text).ok(),
        None => {
            let mut text = prefix.to_vec();
            text.extend_from_slice(format!("{remaining};t={reset}").as_bytes());
            HeaderValue::from_bytes(&text).ok()
        }
    }
}

const RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");
const X_RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
const X_RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
const X_RATELIMIT_RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");

/// Values below this are built once, as static text (a clone copies a
/// pointer, no reference count), not formatted per response: remaining
/// counts and seconds to reset or retry are almost always small.
const SMALL: u64 = 1024;

/// `n` as a header value.
fn small_number(n: u64) -> HeaderValue {
    static TABLE: std::sync::LazyLock<Vec<HeaderValue>> = std::sync::LazyLock::new(|| {
        let text = |n: u64| -> &'static str { Box::leak(n.to_string().into_boxed_str()) };
        (0..SMALL)
            .map(|n| HeaderValue::from_static(text(n)))
            .collect()
    });
    match TABLE.get(n as usize) {
        Some(value) => value.clone(),
        None => HeaderValue::from(n),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// HTTP/2 never indexes the values that change per response, and
    /// indexes the stable ones.
    #[test]
    fn per_response_rate_limit_values_are_never_indexed() {
        let quota = crate::limits::Quota::new("gold", 10, std::time::Duration::from_secs(60), 10);
        let decision = Decision {
            allowed: false,
            remaining: 0,
            reset: std::time::Duration::from_millis(1500),
            retry_after: std::time::Duration::from_secs(6),
        };
        let mut h = HeaderMap::new();
        set_rate_limit(&mut h, &TierReply::new(&quota), &decision);
        for (name, value) in &h {
            let per_response = *name == RATELIMIT || *name == X_RATELIMIT_REMAINING;
            assert_eq!(value.is_sensitive(), per_response, "{name}");
        }
        assert_eq!(h.len(), 6);
    }
}
