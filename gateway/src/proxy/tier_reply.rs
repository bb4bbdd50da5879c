//! What a tier's rate-limit answers share, built once per worker rather
//! than per request: the 429 body and the headers its policy alone
//! decides. The over-limit path is the one a flooding client drives, so
//! it should cost less than any other: no JSON building, no formatting.
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::HeaderValue;

use super::error;
use crate::{limits::Quota, shared::Shared};

/// One tier's (or the token endpoint's) fixed rate-limit answer parts.
#[derive(Debug)]
pub struct TierReply {
    pub quota: Quota,
    /// `RateLimit-Policy`: `"name";q=requests;w=seconds`.
    /// (None if the name cannot be a header value: the header is left out.)
    pub policy: Option<HeaderValue>,
    /// `X-RateLimit-Limit`.
    pub limit: HeaderValue,
    /// `RateLimit`'s start: `"name";r=`.
    pub prefix: Vec<u8>,
    /// The 429 body.
    pub refused: Bytes,
    /// The last `RateLimit` value made, with the (remaining, reset) it
    /// says: a client well within its quota gets the same one on every
    /// response, and sharing it saves its allocation, copy and check.
    last: Mutex<Option<(u32, u64, HeaderValue)>>,
}

impl TierReply {
    pub fn new(quota: &Quota) -> Self {
        let policy = format!(
            "\"{}\";q={};w={}",
            quota.name,
            quota.requests,
            quota.window.as_secs()
        );
        Self {
            quota: quota.clone(),
            policy: HeaderValue::from_maybe_shared(Bytes::from(policy)).ok(),
            limit: HeaderValue::from(quota.requests),
            prefix: format!("\"{}\";r=", quota.name).into_bytes(),
            refused: error::rate_limited_body(quota),
            last: Mutex::default(),
        }
    }

    /// `RateLimit`'s value for `remaining` requests and `reset` seconds:
    /// the last one made if it says the same, else `make`'s (kept).
    pub fn ratelimit(
        &self,
        remaining: u32,
        reset: u64,
        make: impl FnOnce() -> Option<HeaderValue>,
    ) -> Option<HeaderValue> {
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((r, t, value)) = &*last {
            if (*r, *t) == (remaining, reset) {
                return Some(value.clone());
            }
        }
        let value = make()?;
        *last = Some((remaining, reset, value.clone()));
        Some(value)
    }
}

/// Every tier's [`TierReply`] and the token endpoint's, found by quota:
/// first by the address of the quota it was built from (the worker's
/// gateway holds `shared`, so those stay put), else by value.
#[derive(Debug, Default)]
pub struct TierReplies(Vec<(usize, Arc<TierReply>)>);

impl TierReplies {
    /// The tiers' and the token endpoint's quotas of `shared`.
    pub fn new(shared: &Shared) -> Self {
        let token = shared.token_limit.as_ref().map(|limit| &limit.quota);
        Self::of(shared.quotas.iter().chain(token))
    }

    fn of<'q>(quotas: impl Iterator<Item = &'q Quota>) -> Self {
        let replies = quotas.map(|q| (address(q), Arc::new(TierReply::new(q))));
        Self(replies.collect())
    }

    /// The reply parts for `quota`: the same quota (by address, else by
    /// value) is found among those built; any other quota's are built on
    /// the spot.
    pub fn get(&self, quota: &Quota) -> Arc<TierReply> {
        let same =
            |(at, reply): &&(usize, Arc<TierReply>)| *at == address(quota) || reply.quota == *quota;
        match self.0.iter().find(same) {
            Some((_, reply)) => reply.clone(),
            None => Arc::new(TierReply::new(quota)),
        }
    }
}

fn address(quota: &Quota) -> usize {
    quota as *const Quota as usize
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// A tier's and the token endpoint's 429 parts are built once: every
    /// refusal shares them.
    #[test]
    fn replies_are_built_once_and_shared() {
        let tiers = [
            Quota::new("free", 10, Duration::from_secs(60), 10),
            Quota::new("gold", 100, Duration::from_secs(1), 100),
        ];
        let token = Quota::new("token", 5, Duration::from_secs(60), 5);
        let replies = TierReplies::of(tiers.iter().chain([&token]));
        for quota in tiers.iter().chain([&token]) {
            let (first, again) = (replies.get(quota), replies.get(quota));
            assert!(Arc::ptr_eq(&first, &again));
            assert_eq!(first.quota, *quota);
        }
        // The same quota elsewhere (another copy) finds the same parts.
        let copy = token.clone();
        assert!(Arc::ptr_eq(&replies.get(&copy), &replies.get(&token)));
        assert_eq!(&replies.get(&tiers[1]).limit, "100");
    }

    /// `RateLimit` is made again only when what it says changes.
    #[test]
    fn the_last_ratelimit_value_is_shared_while_it_holds() {
        let reply = TierReply::new(&Quota::new("gold", 100, Duration::from_secs(1), 100));
        let made = std::cell::Cell::new(0);
        let make = |text: &'static str| {
            made.set(made.get() + 1);
            Some(HeaderValue::from_static(text))
        };
        let a = reply.ratelimit(99, 1, || make("\"gold\";r=99;t=1"));
        let b = reply.ratelimit(99, 1, || make("unused"));
        assert_eq!((a.as_ref(), made.get()), (b.as_ref(), 1));
        let c = reply.ratelimit(98, 1, || make("\"gold\";r=98;t=1"));
        assert_eq!(
            (c.unwrap().to_str().unwrap(), made.get()),
            ("\"gold\";r=98;t=1", 2)
        );
        assert_eq!(reply.ratelimit(98, 2, || None), None);
        // A value that could not be made is not kept.
        let d = reply.ratelimit(98, 1, || make("unused"));
        assert_eq!(
            (d.unwrap().to_str().unwrap(), made.get()),
            ("\"gold\";r=98;t=1", 2)
        );
    }
}
