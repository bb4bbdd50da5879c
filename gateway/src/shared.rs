//! What every worker's proxy and the admin listener share, built once per
//! process: the key index, JWT verifier, upstream pools, limiter, guard and
//! where its decisions go, metrics, the access-log writer. It holds no
//! request logic, so the admin listener uses it without importing the proxy.
use std::{collections::HashMap, sync::Arc, time::Duration};

use crate::{
    access_log::AccessLogger,
    clock::monotonic_ns,
    config::{Config, LimitBy, TierConfig},
    guard::{PolicyUpdate, SourceGuard},
    jwt::JwtVerifier,
    keys::KeyIndex,
    limits::{LocalLimiter, Quota, RateLimiter},
    metrics::{Metrics, PoolGauge},
    tokens::TokenIssuer,
    upstream::Pool,
    xdp::{PolicyHandle, UserspaceBans},
};

/// Only if a config somehow has no tiers (parsing always adds defaults).
static DEFAULT_QUOTA: std::sync::LazyLock<Quota> =
    std::sync::LazyLock::new(|| Quota::new("default", 10, Duration::from_secs(60), 10));

#[derive(Clone)]
pub struct Shared {
    pub keys: Arc<KeyIndex>,
    pub jwt: Arc<JwtVerifier>,
    /// Bans enforced here, per request: all of them without XDP; with
    /// XDP, those of forwarded client addresses and of clients at an address.
    pub userspace_bans: UserspaceBans,
    /// One pool per upstream, so ejection and health state are the same
    /// for every worker.
    pub pools: Arc<HashMap<String, Arc<Pool>>>,
    pub access_log: AccessLogger,
    /// `limits.max_connections`, across all workers and listeners.
    pub connections: Arc<tokio::sync::Semaphore>,
    /// `limits.max_connections_per_source`, across all workers and listeners.
    pub per_source: Arc<crate::connections::SourceConnections>,
    /// Idle plain HTTP/1.1 connections parked without hyper's state.
    pub parked: Arc<crate::connections::Parked>,
    pub limiter: Arc<dyn RateLimiter>,
    /// Quotas by tier name; the first tier is the default for unknown names.
    pub quotas: Arc<Vec<Quota>>,
    /// Kernel feedback: decides bans and budgets from what requests show.
    pub guard: Arc<SourceGuard>,
    /// Where the guard's decisions go (batched, off the request path).
    pub policy: PolicyHandle,
    pub metrics: Arc<Metrics>,
    /// The gateway's own token issuer, when `[tokens]` is enabled.
    pub tokens: Option<Arc<TokenIssuer>>,
    /// `/oauth2/token`'s own limit, when `[tokens] rate_limit` is on.
    pub token_limit: Option<Arc<TokenLimit>>,
}

/// The token endpoint's limit: its quota, what each bucket counts by, and
/// its own limiter, so minting never spends a client's API quota.
pub struct TokenLimit {
    pub quota: Quota,
    pub by: Vec<LimitBy>,
    pub limiter: LocalLimiter,
}

impl Shared {
    pub fn new(
        config: &Config,
        keys: Arc<KeyIndex>,
        jwt: Arc<JwtVerifier>,
        userspace_bans: UserspaceBans,
        policy: PolicyHandle,
        tokens: Option<Arc<TokenIssuer>>,
    ) -> Self {
        Self {
            keys,
            jwt,
            userspace_bans,
            pools: Arc::new(
                config
                    .upstreams
                    .iter()
                    .map(|u| (u.name.clone(), Arc::new(Pool::new(u))))
                    .collect(),
            ),
            access_log: AccessLogger::stdout(),
            connections: Arc::new(tokio::sync::Semaphore::new(config.limits.max_connections)),
            per_source: Arc::new(crate::connections::SourceConnections::new(
                config.limits.max_connections_per_source,
            )),
            parked: Arc::default(),
            limiter: Arc::new(LocalLimiter::new(1_000_000)),
            quotas: Arc::new(config.tiers.iter().map(TierConfig::quota).collect()),
            guard: Arc::new(SourceGuard::new(config.guard_settings())),
            policy,
            tokens,
            token_limit: config.tokens.limit_quota().map(|quota| {
                Arc::new(TokenLimit {
                    quota,
                    by: config.tokens.limit_by.clone(),
                    limiter: LocalLimiter::new(65_536),
                })
            }),
            metrics: Arc::new(Metrics::new(
                config.routes.iter().map(|route| route.name()).collect(),
                config.tiers.iter().map(|t| t.name.clone()).collect(),
            )),
        }
    }

    /// What a reloaded `config` shares: new routes' and tiers' metric
    /// labels, quotas, guard thresholds and `jwt`; a pool whose upstream is
    /// unchanged is the same pool (its health and load carry over), and
    /// the limiter, keys, bans, connection counts and metrics are kept.
    /// Start the new pools' checks with [`Shared::spawn_health_checks`]
    /// (pools already checked are skipped).
    pub fn reconfigured(&self, config: &Config, jwt: Arc<JwtVerifier>) -> Self {
        // The overload checks judge as many tiers as there were.
        let same_tiers = config.tiers.len() == self.quotas.len();
        let pools = (config.upstreams.iter())
            .map(|upstream| {
                let same = (self.pools.get(&upstream.name))
                    .filter(|pool| same_tiers && pool.configured_as(upstream));
                let pool = same
                    .cloned()
                    .unwrap_or_else(|| Arc::new(Pool::new(upstream)));
                (upstream.name.clone(), pool)
            })
            .collect();
        self.guard.set_settings(config.guard_settings());
        self.metrics.relabel(
            config.routes.iter().map(|route| route.name()).collect(),
            config.tiers.iter().map(|t| t.name.clone()).collect(),
        );
        let token_limit = config.tokens.limit_quota().map(|quota| {
            let same = (self.token_limit.as_ref())
                .filter(|limit| limit.quota == quota && limit.by == config.tokens.limit_by);
            same.cloned().unwrap_or_else(|| {
                Arc::new(TokenLimit {
                    quota,
                    by: config.tokens.limit_by.clone(),
                    limiter: LocalLimiter::new(65_536),
                })
            })
        });
        Self {
            jwt,
            pools: Arc::new(pools),
            quotas: Arc::new(config.tiers.iter().map(TierConfig::quota).collect()),
            token_limit,
            ..self.clone()
        }
    }

    /// A tier's position (0 = lowest) and quota; unknown names get the first.
    pub fn tier(&self, name: &str) -> (usize, &Quota) {
        self.quotas
            .iter()
            .enumerate()
            .find(|(_, q)| q.name == name)
            .or(self.quotas.first().map(|q| (0, q)))
            .unwrap_or((0, &DEFAULT_QUOTA))
    }

    /// Whether `name` is a configured tier's, letter case aside (as
    /// scopes are kept apart from tiers: see `tokens::without_tiers`).
    pub fn is_tier(&self, name: &str) -> bool {
        self.quotas
            .iter()
            .any(|q| q.name.eq_ignore_ascii_case(name))
    }

    /// The quota of the tier at `rank`, as [`Shared::tier`] resolved it.
    pub fn quota(&self, rank: usize) -> &Quota {
        self.quotas.get(rank).unwrap_or(&DEFAULT_QUOTA)
    }

    /// Hands a guard decision to the policy writer, which sends bans the
    /// kernel cannot enforce to [`Shared::userspace_bans`]; a ban may
    /// escalate to its prefix's (see `guard::escalation`).
    pub fn submit(&self, update: Option<PolicyUpdate>) {
        let Some(update) = update else {
            return;
        };
        let escalation = self.guard.escalate(&update, monotonic_ns());
        for update in std::iter::once(update).chain(escalation) {
            if !self.policy.submit(update) {
                tracing::warn!("policy queue full; update dropped");
            }
        }
    }

    /// Returns idle tier budgets to the default, forever; on the control runtime.
    pub async fn sweep_guard(self, every: Duration) {
        let mut ticker = tokio::time::interval(every);
        loop {
            ticker.tick().await;
            for update in self.guard.sweep(monotonic_ns()) {
                self.submit(Some(update));
            }
        }
    }

    /// Starts the pools' active health checks (on the calling runtime),
    /// once per pool.
    pub fn spawn_health_checks(&self) {
        for pool in self.pools.values().filter(|pool| pool.start_checks()) {
            pool.spawn_health_checks();
            pool.spawn_overload_checks(self.quotas.len());
        }
    }

    /// The pools as a metrics scrape sees them.
    pub fn pool_gauges(&self) -> Vec<PoolGauge<'_>> {
        self.pools
            .iter()
            .map(|(name, pool)| PoolGauge {
                name,
                shed_tiers: pool.load.level(),
                latency: &pool.load.latency,
            })
            .collect()
    }
}
