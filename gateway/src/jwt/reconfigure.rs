//! A configuration reload's verifier: built from the new issuers, but an
//! unchanged remote issuer is the same one (its fetched keys and refresh
//! task carry over, so its tokens never fail while keys are fetched
//! again), and the gateway's own issuer stays.
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
        Ok(Self {
            issuers: own.chain(configured).collect::<Vec<Arc<_>>>(),
            tiers: fresh.tiers,
            cache: TokenCache::new(super::CACHE_CAPACITY),
        })
    }
}
