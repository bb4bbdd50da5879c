//! What the guard remembers about one client address, and the decisions
//! made from it alone. Plain data; time in nanoseconds from the caller.
use std::time::Duration;

use gateway_common::Budget;

/// Clients remembered per address; a full list forgets the one seen least
/// recently. Enough to tell "other clients here are fine" from "this
/// address is one abuser".
const CLIENTS_PER_ADDRESS: usize = 8;

/// One address.
#[derive(Clone, Debug, Default)]
pub(super) struct SourceState {
    /// Rank + 1 of the tier whose budget is in place; 0: the default.
    pub budget_tier: u32,
    pub last_authenticated_ns: u64,
    pub auth_failures: u32,
    pub auth_window_until_ns: u64,
    pub banned_until_ns: u64,
    pub offences: u32,
    /// Recent clients at this address, by the guard's hash of their id.
    pub clients: Vec<ClientState>,
}

/// One client at one address.
#[derive(Clone, Debug, Default)]
pub(super) struct ClientState {
    pub id: u64,
    /// Last authenticated here / last refused with 429 here (0: never).
    pub last_ok_ns: u64,
    pub last_limited_ns: u64,
    /// Refusals (429) since its window last freed up, until `excess_until_ns`.
    pub excess: u32,
    pub excess_until_ns: u64,
    /// Banned alone at this address until then.
    pub banned_until_ns: u64,
    pub offences: u32,
}

/// What one more 429 makes of a client at an address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Excess {
    /// Within its allowance, or already banned.
    Tolerated,
    /// Over it, and other clients here are in good standing: ban it alone.
    Client,
    /// Over it, and nobody else here is: ban the address.
    Address,
}

impl ClientState {
    /// Authenticated here within `window_ns` and not refused with 429
    /// within it.
    fn in_good_standing(&self, window_ns: u64, now_ns: u64) -> bool {
        let recent = |at: u64| at != 0 && now_ns.saturating_sub(at) < window_ns;
        recent(self.last_ok_ns) && !recent(self.last_limited_ns)
    }

    fn last_seen_ns(&self) -> u64 {
        self.last_ok_ns.max(self.last_limited_ns)
    }

    fn idle(&self, now_ns: u64, keep_ns: u64) -> bool {
        self.banned_until_ns <= now_ns
            && self.excess_until_ns <= now_ns
            && self.last_seen_ns().saturating_add(keep_ns) <= now_ns
    }
}

impl SourceState {
    pub fn idle(&self, now_ns: u64, keep_ns: u64) -> bool {
        self.budget_tier == 0
            && self.banned_until_ns <= now_ns
            && self.auth_window_until_ns <= now_ns
            && self.last_authenticated_ns.saturating_add(keep_ns) <= now_ns
            && self.clients.iter().all(|c| c.idle(now_ns, keep_ns))
    }

    /// Forgets clients with nothing left to remember.
    pub fn forget_idle_clients(&mut self, now_ns: u64, keep_ns: u64) {
        self.clients.retain(|c| !c.idle(now_ns, keep_ns));
    }

    /// The client `id` here, remembered from now on (evicting the one
    /// seen least recently when the list is full).
    pub fn client(&mut self, id: u64) -> &mut ClientState {
        let index = match self.clients.iter().position(|c| c.id == id) {
            Some(index) => index,
            None => {
                if self.clients.len() >= CLIENTS_PER_ADDRESS {
                    if let Some(oldest) = (0..self.clients.len()).min_by_key(|&i| {
                        (
                            self.clients[i].banned_until_ns,
                            self.clients[i].last_seen_ns(),
                        )
                    }) {
                        self.clients.swap_remove(oldest);
                    }
                }
                self.clients.push(ClientState {
                    id,
                    ..ClientState::default()
                });
                self.clients.len() - 1
            }
        };
        &mut self.clients[index]
    }

    /// A client of tier `tier` (rank + 1) authenticated here: remembers it
    /// in good standing, and returns the tier budget to write when it
    /// raises the address's budget.
    pub fn authenticated(
        &mut self,
        id: Option<u64>,
        raise: Option<(u32, Budget)>,
        now_ns: u64,
    ) -> Option<Budget> {
        if let Some(id) = id {
            self.client(id).last_ok_ns = now_ns;
        }
        let (tier, budget) = raise?;
        self.last_authenticated_ns = now_ns;
        (self.budget_tier < tier).then(|| {
            self.budget_tier = tier;
            Budget { tier, ..budget }
        })
    }

    /// Client `id` here was refused with 429 (`reset`: until its quota is
    /// whole again). More than `allowance` such refusals before its window
    /// frees up, and it is banned: alone if another client here is in good
    /// standing (see [`ClientState::in_good_standing`] over `standing_ns`),
    /// else with its address.
    pub fn rate_limited(
        &mut self,
        id: u64,
        reset: Duration,
        allowance: u32,
        standing_ns: u64,
        now_ns: u64,
    ) -> Excess {
        let others_fine =
            (self.clients.iter()).any(|c| c.id != id && c.in_good_standing(standing_ns, now_ns));
        let address_banned = self.banned_until_ns > now_ns;
        let client = self.client(id);
        client.last_limited_ns = now_ns;
        if client.excess_until_ns <= now_ns {
            client.excess = 0;
        }
        client.excess += 1;
        client.excess_until_ns = now_ns.saturating_add(super::duration_ns(reset));
        // While banned, refusals still in flight do not ban again.
        if client.excess <= allowance || client.banned_until_ns > now_ns || address_banned {
            return Excess::Tolerated;
        }
        client.excess = 0;
        match others_fine {
            true => Excess::Client,
            false => Excess::Address,
        }
    }

    /// A refusal that suggests guessing: whether it is one too many within
    /// the window (`window_ns` long, from the first).
    pub fn auth_failed(&mut self, allowance: u32, window_ns: u64, now_ns: u64) -> bool {
        if self.auth_window_until_ns <= now_ns {
            self.auth_failures = 0;
            self.auth_window_until_ns = now_ns.saturating_add(window_ns);
        }
        self.auth_failures += 1;
        if self.auth_failures > allowance && self.banned_until_ns <= now_ns {
            self.auth_failures = 0;
            return true;
        }
        false
    }
}
