//! A configuration reload's verifier: built from the new issuers, but an
//! unchanged remote issuer is the same one (its fetched keys and refresh
//! task carry over, so its tokens never fail while keys are fetched
//! again), and the gateway's own issuer stays. Verified tokens of the
//! issuers that carry over stay cached (when the tiers a token maps to are
//! the same); a changed or removed issuer's are dropped.
use std::sync::Arc;

use super::{IssuerSettings, JwtError, JwtVerifier};
use crate::jwt::cache::TokenCache;

impl JwtVerifier {
    /// The verifier for `issuers` and `tiers`, reusing what it can of
    /// `self`; PEM keys are read again. Call [`JwtVerifier::spawn_refresh`]
    /// on the result (it starts only the new issuers' refresh).
    pub fn reconfigured<S: Into<IssuerSettings>>(
        &self,
        issuers: impl IntoIterator<Item = S>,
        tiers: Vec<String>,
    ) -> Result<Self, JwtError> {
        let fresh = JwtVerifier::new(issuers, tiers)?;
        let own = self.issuers.iter().filter(|issuer| issuer.own).cloned();
        let configured = fresh.issuers.into_iter().map(|new| {
            let same = self
                .issuers
                .iter()
                .find(|old| !old.own && old.keys.is_remote() && old.settings == new.settings);
            same.cloned().unwrap_or(new)
        });
        let issuers = own.chain(configured).collect::<Vec<Arc<_>>>();
        // A cached token's tier was picked among the tiers of its time.
        let cache = match fresh.tiers == self.tiers {
            true => self
                .cache
                .retained(|cached| issuers.iter().any(|new| Arc::ptr_eq(new, &cached.issuer))),
            false => TokenCache::new(super::CACHE_CAPACITY),
        };
        Ok(Self {
            issuers,
            tiers: fresh.tiers,
            cache,
        })
    }
}
