//! The shared limiter's local side: leases, shares, fallback charges.
use super::*;

fn limiter(nodes: u32, lease: u32) -> RedisLimiter {
    RedisLimiter::new(Settings {
        url: "redis+unix:///nonexistent".into(),
        lease,
        nodes,
    })
}

#[test]
fn hostile_client_ids_never_share_a_key() {
    let quota = Quota::new("gold", 10, Duration::from_secs(1), 10);
    let other_tier = Quota::new("b:gold", 10, Duration::from_secs(1), 10);
    let ids = [
        "a",
        "a:b",
        "a:b:gold",
        "{a}",
        "a b",
        "a\nb",
        "a\r\n*1\r\n$4\r\nPING",
        "",
        ":",
        "*",
    ];
    let mut seen = std::collections::HashSet::new();
    for id in ids {
        for quota in [&quota, &other_tier] {
            let key = redis_key(&LimitKey::Client(id.into()), quota);
            assert!(
                key.bytes()
                    .all(|b| b.is_ascii_hexdigit() || b"gw:limit".contains(&b)),
                "{key:?}"
            );
            assert!(seen.insert(key), "{id:?} collides");
        }
    }
    let ip: IpAddr = [127, 0, 0, 1].into();
    let source = redis_key(&LimitKey::Source(ip), &quota);
    let both = redis_key(&LimitKey::ClientAtSource("a".into(), ip), &quota);
    assert!(seen.insert(source) && seen.insert(both));
    // A tier's key is under its client's reset pattern.
    let key = LimitKey::Client("a:b".into());
    let pattern = reset_pattern(&key);
    assert!(redis_key(&key, &quota).starts_with(pattern.trim_end_matches('*')));
}

#[test]
fn until_redis_answers_a_node_limits_at_its_share() {
    let limiter = limiter(3, 2);
    let quota = Quota::new("t", 30, Duration::from_secs(60), 30);
    let key = LimitKey::Client("c".into());
    let allowed = (0..100)
        .filter(|_| limiter.check(&key, &quota, 1, 1_000_000_000).allowed)
        .count();
    assert_eq!(allowed, 10, "30 / 3 nodes");
    assert_eq!(limiter.backend().map(|s| s.fallback), Some(true));
}

#[test]
fn shared_checks_spend_leases_and_queue_one_refill() {
    let limiter = limiter(3, 4);
    limiter.open.store(false, Ordering::Release);
    let quota = Quota::new("t", 30, Duration::from_secs(60), 30);
    let key = LimitKey::Client("c".into());
    // Provisional: min(L = 4, ⌈30 / 3⌉) tokens, then refused locally.
    let allowed = (0..100)
        .filter(|_| limiter.check(&key, &quota, 1, 1).allowed)
        .count();
    assert_eq!(allowed, 4);
    assert_eq!(RedisLimiter::lock(&limiter.pending).len(), 1);
}

#[test]
fn the_default_lease_lasts_a_period_at_the_rate_and_leases_share_the_burst() {
    let auto = limiter(3, 0);
    let per_second = |requests, burst| Quota::new("t", requests, Duration::from_secs(1), burst);
    // 10/s for 1 s would be 10; three leases hold ⌈10 / 3⌉ each at most.
    assert_eq!(auto.lease_size(&per_second(10, 10)), 4);
    assert_eq!(auto.lease_size(&per_second(100, 1_000)), 100);
    assert_eq!(auto.lease_size(&per_second(1, 95)), 1);
    let slow = Quota::new("t", 10, Duration::from_secs(60), 10);
    assert_eq!(auto.lease_size(&slow), 1);
    assert_eq!(limiter(3, 7).lease_size(&slow), 7, "configured");
}

#[test]
fn a_recovery_charges_what_the_fallback_admitted() {
    let limiter = limiter(3, 2);
    let quota = Quota::new("t", 30, Duration::from_secs(60), 30);
    let key = LimitKey::Client("c".into());
    let sec = 1_000_000_000;
    // Redis unreachable: 10 of 30 admitted here (the share).
    let admitted = (0..20)
        .filter(|_| limiter.check(&key, &quota, 1, sec).allowed)
        .count();
    assert_eq!(admitted, 10);
    limiter.open.store(false, Ordering::Release);
    limiter.charge_fallback(sec);
    let lease = limiter.shard(&key).get(&key).cloned().unwrap();
    // Owed: the 10 still in use plus its provisional allowance.
    assert_eq!((lease.debt, lease.balance), (12, 2));
    assert!(lease.in_flight && !lease.fallback_used);
    assert_eq!(RedisLimiter::lock(&limiter.pending).len(), 1);
    // Charged once: a second recovery owes nothing more.
    limiter.charge_fallback(sec);
    assert_eq!(limiter.shard(&key).get(&key).unwrap().debt, 12);
}

#[test]
fn many_clients_hold_bounded_leases_and_the_rest_are_limited_at_their_share() {
    let limiter = limiter(4, 1);
    limiter.open.store(false, Ordering::Release);
    let quota = Quota::new("t", 4, Duration::from_secs(3600), 4);
    let clients = MAX_LEASES + MAX_LEASES / 2;
    for i in 0..clients {
        limiter.check(&LimitKey::Client(i.to_string()), &quota, 1, 1);
    }
    let held: usize = limiter.leases.iter().map(|s| s.lock().unwrap().len()).sum();
    assert!(held <= MAX_LEASES, "{held} leases");
    // A client without a lease (every shard is full of keys in use)
    // gets its share, 4 / 4 nodes = 1, never more.
    let key = LimitKey::Client("late".into());
    let allowed = (0..10)
        .filter(|_| limiter.check(&key, &quota, 1, 2).allowed)
        .count();
    assert_eq!(allowed, 1);
    assert!(limiter.shard(&key).get(&key).is_none());
}

#[test]
fn a_node_shows_its_lease_not_the_fleets_quota() {
    let limiter = limiter(3, 4);
    limiter.open.store(false, Ordering::Release);
    let quota = Quota::new("t", 30, Duration::from_secs(60), 30);
    let key = LimitKey::Client("c".into());
    assert_eq!(limiter.peek(&key, &quota, 1).remaining, 4, "provisional");
    limiter.check(&key, &quota, 1, 1);
    assert_eq!(limiter.peek(&key, &quota, 1).remaining, 3);
}
