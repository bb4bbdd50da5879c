//! Keys a running gateway reads only at start. A reload keeps their
//! running values, applies everything else, and names each one that
//! changed (answer, log, `gateway reload`): a restart applies them.
use crate::config::Config;

/// Copies every start-only key from `running` into `next`; returns the key
/// paths whose values differed.
pub fn keep_running(running: &Config, next: &mut Config) -> Vec<String> {
    let mut kept = Vec::new();
    // Compared by `Debug`: the config types are plain data without `PartialEq`.
    macro_rules! keep {
        ($($first:ident $(.$field:ident)*),* $(,)?) => {$(
            if format!("{:?}", running.$first$(.$field)*) != format!("{:?}", next.$first$(.$field)*) {
                kept.push(concat!(stringify!($first) $(, ".", stringify!($field))*).to_owned());
                next.$first$(.$field)* = running.$first$(.$field)*.clone();
            }
        )*};
    }
    keep!(
        // Certificates, token keys and the audit log live under it.
        state_dir,
        keys.store,
        keys.refresh,
        store.url,
        store.max_staleness,
        store.pool_size,
        admin.enabled,
        admin.address,
        admin.audit_log,
        // Threads and the connection semaphores are made once.
        limits.workers,
        limits.max_connections,
        limits.max_connections_per_source,
        // Read by the listener hand-over's offer, made once.
        limits.handover_timeout,
        // The shared limiter, its Redis task and connection are made once.
        limits.backend,
        limits.lease,
        limits.nodes,
        redis.url,
        // The program, its pins and its maps' sizes are set at load.
        xdp.enabled,
        xdp.interface,
        xdp.pin_root,
        xdp.require_xdp,
        xdp.detach_on_exit,
        xdp.max_bans,
        xdp.max_sources,
        xdp.max_prefix_bans,
        xdp.bans_full,
        // Sets a sysctl and a task at start.
        xdp.syn_cookies,
        // The token issuer and its keys.
        tokens.enabled,
        tokens.issuer,
        tokens.audience,
        tokens.ttl,
        tokens.upstream_ttl,
    );
    kept
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_only_keys_keep_their_running_values_and_are_named() {
        let running = Config::parse(crate::config::EMBEDDED_DEFAULT).unwrap();
        let mut next = running.clone();
        next.xdp.interface = "eth9".into();
        next.admin.address = "127.0.0.1:1".parse().unwrap();
        next.xdp.default_syn_rate += 1;
        next.tiers[0].requests += 1;
        let kept = keep_running(&running, &mut next);
        assert_eq!(kept, ["admin.address", "xdp.interface"]);
        assert_eq!(next.xdp.interface, running.xdp.interface);
        assert_eq!(next.admin.address, running.admin.address);
        // Everything else is the new value.
        assert_eq!(next.xdp.default_syn_rate, running.xdp.default_syn_rate + 1);
        assert_eq!(next.tiers[0].requests, running.tiers[0].requests + 1);
    }

    #[test]
    fn the_limiter_backend_is_kept_and_named() {
        let running = Config::parse(crate::config::EMBEDDED_DEFAULT).unwrap();
        let mut next = running.clone();
        next.limits.backend = crate::config::LimitsBackend::Redis;
        next.limits.lease = 8;
        next.limits.nodes = 3;
        next.redis.url = Some("redis+unix:///run/r.sock".into());
        let kept = keep_running(&running, &mut next);
        assert_eq!(
            kept,
            [
                "limits.backend",
                "limits.lease",
                "limits.nodes",
                "redis.url"
            ]
        );
        assert_eq!(next.limits.backend, running.limits.backend);
        assert_eq!(next.redis.url, None);
    }
}
