//! A Redis that answers garbage or nothing: the breaker opens, the node
//! limits locally, nothing panics.
use std::time::Duration;

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::UnixListener,
};

use super::*;
use crate::{
    fleet::limits::Settings,
    limits::{Quota, RateLimiter},
};

/// A unix-socket server that answers every read with `reply`, or never
/// when it is `None`.
async fn fake_redis(dir: &tempfile::TempDir, reply: Option<&'static [u8]>) -> String {
    let path = dir.path().join("fake.sock");
    let listener = UnixListener::bind(&path).unwrap();
    tokio::spawn(async move {
        for _ in 0..100 {
            let Ok((mut stream, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                for _ in 0..1_000 {
                    match stream.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(_) => {}
                    }
                    if let Some(reply) = reply {
                        if stream.write_all(reply).await.is_err() {
                            return;
                        }
                    }
                }
            });
        }
    });
    format!("redis+unix://{}", path.display())
}

fn limiter(url: String) -> Arc<RedisLimiter> {
    Arc::new(RedisLimiter::new(Settings {
        url,
        lease: 2,
        nodes: 2,
    }))
}

/// Probes (connect + heartbeat) and a refill against `reply`; each must
/// fail into the fallback.
async fn survives(reply: Option<&'static [u8]>) {
    let dir = tempfile::tempdir().unwrap();
    let limiter = limiter(fake_redis(&dir, reply).await);
    let mut syncer = Syncer::new(limiter.clone());
    syncer.step(1).await;
    assert!(
        limiter.backend().unwrap().fallback,
        "a bad probe keeps it open"
    );
    // Pretend it had answered: the next refill meets the same server.
    syncer.breaker.succeeded();
    limiter.open.store(false, Ordering::Release);
    syncer.next_beat_ns = u64::MAX;
    let quota = Quota::new("t", 10, Duration::from_secs(1), 10);
    let key = LimitKey::Client("c".into());
    assert!(limiter.check(&key, &quota, 1, 1).allowed, "provisional");
    syncer.step(2).await;
    let status = limiter.backend().unwrap();
    assert!(status.fallback && status.fallbacks == 1, "{status:?}");
    // Limited at its share: 10 / 2 nodes.
    let allowed = (0..20)
        .filter(|_| limiter.check(&key, &quota, 1, 3).allowed)
        .count();
    assert_eq!(allowed, 5);
    let lease = limiter.shard(&key).get(&key).cloned().unwrap();
    assert!(!lease.in_flight, "free to ask again after the failure");
}

#[tokio::test]
async fn garbage_replies_open_the_breaker() {
    survives(Some(b"+OK\r\n")).await;
    survives(Some(b"*2\r\n:-5\r\n$3\r\nabc\r\n")).await;
    survives(Some(b"\x00\xff\xfe garbage \r\n$-7\r\n")).await;
}

#[tokio::test]
async fn a_silent_redis_times_out_into_the_fallback() {
    survives(None).await;
}

#[test]
fn replies_are_two_numbers_then_three_non_negative_ones_per_key() {
    let reply = parse_reply(&[3, 1, 1, 0, 5, 0, 9, 7], 2).unwrap();
    assert_eq!((reply.nodes, reply.hostile, reply.grants.len()), (3, 1, 2));
    assert!(parse_reply(&[1, 0], 1).is_err());
    assert!(parse_reply(&[0, 0, 1, -1, 0], 1).is_err());
    assert!(parse_reply(&[-1, 0], 0).is_err());
}
