use super::*;

#[derive(Default)]
struct Recorder(Vec<PolicyUpdate>);

impl PolicySink for Recorder {
    fn apply(&mut self, update: &PolicyUpdate) -> Result<Written, MapsError> {
        self.0.push(update.clone());
        Ok(Written::Done)
    }
    fn remove_expired_bans(&mut self, _now_ns: u64) -> Result<usize, MapsError> {
        Ok(0)
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn budget(rate: u32) -> Budget {
    Budget {
        syn_per_sec: rate,
        ..Budget::default()
    }
}

#[test]
fn batch_keeps_last_update_per_source_and_kind() {
    let (_handle, mut writer) = channel(16);
    let mut sink = Recorder::default();
    let a = ip("10.0.0.1");
    let mut batch = vec![
        PolicyUpdate::Ban {
            target: BanTarget::Source(a),
            until_ns: 5,
            reason: 0,
        },
        PolicyUpdate::Budget {
            ip: a,
            budget: budget(1),
        },
        PolicyUpdate::Unban { ip: a },
        PolicyUpdate::Budget {
            ip: a,
            budget: budget(2),
        },
    ];
    writer.apply_batch(&mut sink, &mut batch);
    assert_eq!(
        sink.0,
        vec![
            PolicyUpdate::Unban { ip: a },
            PolicyUpdate::Budget {
                ip: a,
                budget: budget(2)
            },
        ]
    );
    assert!(batch.is_empty());
}

#[test]
fn unchanged_budget_is_not_rewritten() {
    let (_handle, mut writer) = channel(16);
    let mut sink = Recorder::default();
    let update = PolicyUpdate::Budget {
        ip: ip("fd00::1"),
        budget: budget(7),
    };
    writer.apply_batch(&mut sink, &mut vec![update.clone()]);
    writer.apply_batch(&mut sink, &mut vec![update.clone()]);
    assert_eq!(sink.0, vec![update]);
}

#[test]
fn full_queue_counts_overflow_instead_of_blocking() {
    let (handle, _writer) = channel(1);
    let unban = PolicyUpdate::Unban { ip: ip("10.0.0.2") };
    assert!(handle.submit(unban.clone()));
    assert!(!handle.submit(unban));
    assert_eq!(handle.overflowed(), 1);
}

/// A kernel that refuses every write: the map is full and the new ban
/// is refused (`MapsError::Full`), and publishing fails too.
struct Refusing;

impl PolicySink for Refusing {
    fn apply(&mut self, _update: &PolicyUpdate) -> Result<Written, MapsError> {
        Err(MapsError::Full { map: "GW_BANS" })
    }
    fn commit(&mut self) -> Result<(), MapsError> {
        Err(MapsError::Full {
            map: "GW_GENERATION",
        })
    }
    fn remove_expired_bans(&mut self, _now_ns: u64) -> Result<usize, MapsError> {
        Ok(0)
    }
}

#[test]
fn failed_writes_are_counted_for_the_alert() {
    let (handle, mut writer) = channel(16);
    let unban = |s| PolicyUpdate::Unban { ip: ip(s) };
    writer.apply_batch(&mut Recorder::default(), &mut vec![unban("10.0.0.1")]);
    assert_eq!(handle.failed(), 0);
    writer.apply_batch(
        &mut Refusing,
        &mut vec![unban("10.0.0.1"), unban("10.0.0.2")],
    );
    // Two updates refused, then the publish.
    assert_eq!(handle.failed(), 3);
}

#[test]
fn userspace_bans_expire_and_match_mapped_v4() {
    let mut bans = UserspaceBans::default();
    bans.apply(&PolicyUpdate::Ban {
        target: BanTarget::Source(ip("::ffff:10.0.0.3")),
        until_ns: 100,
        reason: 0,
    })
    .unwrap();
    let reader = bans.clone();
    assert!(
        !reader.is_banned(ip("10.0.0.3"), 50),
        "not before the commit"
    );
    bans.commit().unwrap();
    assert!(reader.is_banned(ip("10.0.0.3"), 50));
    assert!(!bans.is_banned(ip("10.0.0.4"), 50));
    assert!(!bans.is_banned(ip("10.0.0.3"), 100));
    assert_eq!(bans.remove_expired_bans(100).unwrap(), 1);
    assert_eq!(reader.active(0), 0);
}

#[test]
fn with_xdp_only_packet_source_bans_reach_the_kernel() {
    let userspace = UserspaceBans::default();
    let mut split = Split {
        kernel: Recorder::default(),
        userspace: userspace.clone(),
    };
    let ban = |target| PolicyUpdate::Ban {
        target,
        until_ns: 100,
        reason: 0,
    };
    let source = ban(BanTarget::Source(ip("10.0.0.1")));
    let forwarded = ban(BanTarget::Forwarded(ip("203.0.113.7")));
    let client = ban(BanTarget::Client {
        client: "cl_a".into(),
        ip: ip("10.0.0.2"),
    });
    for update in [&source, &forwarded, &client] {
        split.apply(update).unwrap();
    }
    split.commit().unwrap();
    assert_eq!(split.kernel.0, vec![source]);
    assert!(!userspace.is_banned(ip("10.0.0.1"), 50));
    assert_eq!(
        userspace.ban_left(ip("203.0.113.7"), 40),
        Some(Duration::from_nanos(60))
    );
    assert!(userspace
        .client_ban_left("cl_a", ip("10.0.0.2"), 50)
        .is_some());
    assert!(userspace
        .client_ban_left("cl_b", ip("10.0.0.2"), 50)
        .is_none());
    assert!(
        !userspace.is_banned(ip("10.0.0.2"), 50),
        "the address is not banned"
    );
    assert_eq!(userspace.active(50), 2);
    assert_eq!(split.remove_expired_bans(100).unwrap(), 2);
    assert_eq!(userspace.active(0), 0);
}

#[tokio::test]
async fn writer_applies_what_handles_submit() {
    let (handle, writer) = channel(16);
    let sink = UserspaceBans::default();
    let view = sink.clone();
    let task = tokio::spawn(writer.run(sink, Duration::from_secs(3600)));
    assert!(handle.submit(PolicyUpdate::Ban {
        target: BanTarget::Source(ip("10.0.0.9")),
        until_ns: u64::MAX,
        reason: 0,
    }));
    drop(handle);
    task.await.unwrap();
    assert!(view.is_banned(ip("10.0.0.9"), monotonic_ns()));
}

#[test]
fn userspace_bans_honour_prefix_bans_of_both_families() {
    let mut bans = UserspaceBans::default();
    let prefix = |net: &str| PolicyUpdate::Ban {
        target: BanTarget::SourcePrefix(net.parse().unwrap()),
        until_ns: 100,
        reason: 3,
    };
    bans.apply(&prefix("2001:db8:0:1::/64")).unwrap();
    bans.apply(&prefix("::ffff:203.0.113.0/120")).unwrap();
    bans.apply(&PolicyUpdate::Ban {
        target: BanTarget::ForwardedPrefix("198.51.100.0/24".parse().unwrap()),
        until_ns: 80,
        reason: 3,
    })
    .unwrap();
    bans.commit().unwrap();
    for (addr, banned) in [
        ("2001:db8:0:1::7", true),
        ("2001:db8:0:1:ffff::1", true),
        ("2001:db8:0:2::7", false),
        ("203.0.113.77", true),
        ("::ffff:203.0.113.78", true),
        ("203.0.114.1", false),
        ("198.51.100.9", true),
    ] {
        assert_eq!(bans.is_banned(ip(addr), 50), banned, "{addr}");
    }
    assert_eq!(
        bans.ban_left(ip("198.51.100.9"), 50),
        Some(Duration::from_nanos(30))
    );
    assert_eq!(bans.active(50), 3);
    assert_eq!(bans.remove_expired_bans(90).unwrap(), 1);
    assert!(!bans.is_banned(ip("198.51.100.9"), 85));
    assert!(bans.is_banned(ip("203.0.113.77"), 85));
}

/// A sink whose ban map is always full.
struct Full(Written);

impl PolicySink for Full {
    fn apply(&mut self, _update: &PolicyUpdate) -> Result<Written, MapsError> {
        Ok(self.0)
    }
    fn remove_expired_bans(&mut self, _now_ns: u64) -> Result<usize, MapsError> {
        Ok(0)
    }
}

#[test]
fn the_writer_counts_evicted_and_refused_bans() {
    let (handle, mut writer) = channel(16);
    let ban = |addr: &str| PolicyUpdate::Ban {
        target: BanTarget::Source(ip(addr)),
        until_ns: 100,
        reason: 0,
    };
    let mut refusing = Full(Written::Refused {
        map: gateway_common::maps::BANS,
    });
    writer.apply_batch(&mut refusing, &mut vec![ban("10.0.0.1"), ban("10.0.0.2")]);
    let mut evicting = Full(Written::Evicted {
        map: gateway_common::maps::PREFIX_BANS,
        key: "10.1.0.0/24".parse().unwrap(),
        ban: Ban::default(),
    });
    writer.apply_batch(&mut evicting, &mut vec![ban("10.0.0.3")]);
    let full = handle.full_counters();
    assert_eq!(full.bans_refused.load(Ordering::Relaxed), 2);
    assert_eq!(full.prefix_bans_evicted.load(Ordering::Relaxed), 1);
    assert_eq!(full.bans_evicted.load(Ordering::Relaxed), 0);
}
