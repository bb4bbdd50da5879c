//! What a tier's rate-limit answers share, built once per worker rather
//! than per request: the 429 body and the headers its policy alone
//! decides. The over-limit path is the one a flooding client drives, so
//! it should cost less than any other: no JSON building, no formatting.
use std::sync::Arc;

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
        }
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
}
