//! What a tier's rate-limit answers share, built once per worker rather
//! than per request: the 429 body and the headers its policy alone
//! decides. The over-limit path is the one a flooding client drives, so
//! it should cost less than any other: no JSON building, no formatting.
use std::sync::Arc;

use bytes::Bytes;
use http::HeaderValue;

use super::error;
use crate::limits::Quota;

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

/// Every tier's [`TierReply`], found by quota.
#[derive(Debug, Default)]
pub struct TierReplies(Vec<Arc<TierReply>>);

impl TierReplies {
    pub fn new(quotas: &[Quota]) -> Self {
        Self(quotas.iter().map(|q| Arc::new(TierReply::new(q))).collect())
    }

    /// The reply parts for `quota`: a tier's are shared; any other quota's
    /// (the token endpoint's) are built on the spot.
    pub fn get(&self, quota: &Quota) -> Arc<TierReply> {
        match self.0.iter().find(|reply| reply.quota == *quota) {
            Some(reply) => reply.clone(),
            None => Arc::new(TierReply::new(quota)),
        }
    }
}
