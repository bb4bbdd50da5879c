//! Request counts: one [`Recorder`] per worker gateway (an uncontended lock
//! each: the worker records, a scrape sums). A reload gives every worker a
//! new gateway and so a new recorder; the old one's counts are folded into
//! the totals by name when it is dropped, so recorders do not pile up with
//! reloads and what was counted keeps its names.
use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
};

/// foldhash, not SipHash: the keys are route and tier indices, statuses
/// and the gateway's own reason codes, bounded whatever a client sends,
/// and every request is counted.
use hashbrown::HashMap;

/// What one recorder counted.
#[derive(Debug, Default)]
struct Counts {
    /// (route, tier rank + 1 or 0 for none, status) → requests.
    requests: HashMap<(Option<usize>, usize, u16), u64>,
    /// Refused or missing credentials by reason.
    auth_failures: HashMap<&'static str, u64>,
    /// Requests shed for overload, by tier rank + 1.
    shed: HashMap<usize, u64>,
    /// Requests refused by a ban the gateway enforces, by what is banned.
    banned: HashMap<&'static str, u64>,
}

/// One request's labels, as the access log knows them.
/// Error codes and reasons are the gateway's own `&'static str`s, so they
/// are bounded label values.
pub struct Outcome {
    pub route: Option<usize>,
    pub tier: Option<usize>,
    pub status: u16,
    pub error: Option<&'static str>,
    pub detail: Option<&'static str>,
}

/// Route and tier names by index, as one configuration has them.
pub(super) struct Labels {
    pub(super) routes: Vec<String>,
    pub(super) tiers: Vec<String>,
}

impl Labels {
    fn route(&self, index: Option<usize>) -> &str {
        index
            .and_then(|i| self.routes.get(i))
            .map_or("none", String::as_str)
    }

    pub(super) fn tier(&self, index: usize) -> &str {
        match index {
            0 => "none",
            n => self.tiers.get(n - 1).map_or("unknown", String::as_str),
        }
    }
}

/// Counts by name, as a scrape shows them.
#[derive(Clone, Default)]
pub(super) struct Named {
    /// (route, tier, status) → requests.
    pub(super) requests: BTreeMap<(String, String, u16), u64>,
    pub(super) auth_failures: BTreeMap<&'static str, u64>,
    /// By tier.
    pub(super) shed: BTreeMap<String, u64>,
    pub(super) banned: BTreeMap<&'static str, u64>,
}

impl Named {
    fn add(&mut self, labels: &Labels, counts: &Counts) {
        for ((route, tier, status), n) in &counts.requests {
            let key = (
                labels.route(*route).to_owned(),
                labels.tier(*tier).to_owned(),
                *status,
            );
            *self.requests.entry(key).or_default() += n;
        }
        for (reason, n) in &counts.auth_failures {
            *self.auth_failures.entry(reason).or_default() += n;
        }
        for (tier, n) in &counts.shed {
            *self.shed.entry(labels.tier(*tier).to_owned()).or_default() += n;
        }
        for (ban, n) in &counts.banned {
            *self.banned.entry(ban).or_default() += n;
        }
    }
}

/// The live recorders (each with the names its indices mean) and what
/// the dropped ones counted.
#[derive(Default)]
pub(super) struct Recorders {
    live: Vec<(Arc<Labels>, Arc<Mutex<Counts>>)>,
    retired: Named,
}

/// Shared by [`super::Metrics`] and every recorder it made.
pub(super) type Registry = Arc<Mutex<Recorders>>;

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

impl Recorders {
    /// A recorder counting under `labels`, live until dropped.
    pub(super) fn recorder(registry: &Registry, labels: Arc<Labels>) -> Recorder {
        let counts = Arc::new(Mutex::new(Counts::default()));
        lock(registry).live.push((labels, counts.clone()));
        Recorder {
            counts,
            registry: registry.clone(),
        }
    }

    /// Everything counted so far, live and retired, by name.
    pub(super) fn named(registry: &Registry) -> Named {
        let recorders = lock(registry);
        let mut named = recorders.retired.clone();
        for (labels, counts) in &recorders.live {
            named.add(labels, &lock(counts));
        }
        named
    }

    /// How many recorders are live.
    pub(super) fn live(registry: &Registry) -> usize {
        lock(registry).live.len()
    }
}

/// A worker's handle: records without touching other workers' state.
pub struct Recorder {
    counts: Arc<Mutex<Counts>>,
    registry: Registry,
}

impl Recorder {
    pub fn record(&self, outcome: &Outcome) {
        let mut counts = lock(&self.counts);
        let tier = outcome.tier.map_or(0, |rank| rank + 1);
        *counts
            .requests
            .entry((outcome.route, tier, outcome.status))
            .or_default() += 1;
        match outcome.error {
            // `invalid_client`: a refused secret at the token endpoint.
            Some(
                code @ ("missing_credential" | "invalid_credential" | "invalid_token"
                | "invalid_client"),
            ) => {
                let reason = outcome.detail.unwrap_or(code);
                *counts.auth_failures.entry(reason).or_default() += 1;
            }
            Some("overloaded") => *counts.shed.entry(tier).or_default() += 1,
            Some("banned") => {
                let ban = outcome.detail.unwrap_or("source");
                *counts.banned.entry(ban).or_default() += 1;
            }
            _ => {}
        }
    }
}

impl Drop for Recorder {
    /// Folds the counts into the retired totals, under the names they
    /// were counted with.
    fn drop(&mut self) {
        let mut recorders = lock(&self.registry);
        let live = &mut recorders.live;
        if let Some(at) = live.iter().position(|(_, c)| Arc::ptr_eq(c, &self.counts)) {
            let (labels, counts) = live.swap_remove(at);
            let counts = lock(&counts);
            recorders.retired.add(&labels, &counts);
        }
    }
}
