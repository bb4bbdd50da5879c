//! Per-request cost of authentication, as `cargo xtask bench auth` prints
//! it: API-key verification against an index of 10,000 keys, and JWT
//! verification uncached (every token new) vs cached (one token repeated),
//! and one limiter check.
//! A plain harness: median of interleaved rounds, ns per operation.
use std::{hint::black_box, sync::Arc, time::Instant};

use gateway::{
    config::Config,
    jwt::JwtVerifier,
    keys::{KeyIndex, KeyStore, NewClient, SqliteStore},
    limits::{LimitKey, LocalLimiter, Quota, RateLimiter},
};
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};

const ROUNDS: usize = 5;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = tempfile::Builder::new()
        .prefix("gateway-bench-auth-")
        .tempdir()?;
    run(dir.path())
}

fn run(dir: &std::path::Path) -> Result<(), Box<dyn std::error::Error>> {
    // API keys.
    let store = SqliteStore::open(&dir.join("keys.db"))?;
    let new = (0..10_000)
        .map(|i| NewClient {
            name: format!("bench-{i}"),
            tier: "gold".into(),
            ..NewClient::default()
        })
        .collect();
    let keys: Vec<String> = store
        .create_many(new, 0)?
        .into_iter()
        .map(|(_, key)| key)
        .collect();
    let index = KeyIndex::default();
    index.load(&store)?;
    let now = unix_now();

    // JWTs: an ES256 issuer with its public key in a PEM file.
    let pair = rcgen::KeyPair::generate()?;
    let public = dir.join("issuer.pem");
    std::fs::write(&public, pair.public_key_pem())?;
    let config = Config::parse(&format!(
        "[[listeners]]\naddress = \"127.0.0.1:1\"\n[[issuers]]\nissuer = \"bench\"\npem = \"{}\"\naudiences = [\"api\"]\n",
        public.display()
    ))?;
    let tiers = vec!["bronze".to_owned(), "silver".into(), "gold".into()];
    let verifier = Arc::new(JwtVerifier::new(&config.issuers, tiers)?);
    let signing = EncodingKey::from_ec_pem(pair.serialize_pem().as_bytes())?;
    const TOKENS: usize = 2_000;
    let mint = |i: usize| {
        let claims = serde_json::json!({
            "iss": "bench", "aud": "api", "sub": format!("svc-{i}"),
            "scope": "read gold", "exp": now + 3600,
        });
        encode(&Header::new(Algorithm::ES256), &claims, &signing)
    };
    let runtime = tokio::runtime::Builder::new_current_thread().build()?;

    // The limiter: one GCRA check per request over 10,000 busy clients.
    let limiter = LocalLimiter::new(1_000_000);
    let quota = Quota::new(
        "gold",
        1_000_000,
        std::time::Duration::from_secs(60),
        1_000_000,
    );
    let limit_keys: Vec<LimitKey> = (0..10_000)
        .map(|i| LimitKey::Client(format!("cl_{i}")))
        .collect();

    let (mut key_ns, mut uncached_ns, mut cached_ns) = (Vec::new(), Vec::new(), Vec::new());
    let mut limiter_ns = Vec::new();
    for round in 0..ROUNDS {
        let started = Instant::now();
        for i in 0..200_000u64 {
            let decision = limiter.check(
                black_box(&limit_keys[i as usize % limit_keys.len()]),
                &quota,
                1,
                1_000_000_000 + i,
            );
            assert!(decision.allowed);
        }
        limiter_ns.push(started.elapsed().as_nanos() as f64 / 200_000.0);

        let started = Instant::now();
        for i in 0..200_000 {
            let (_, outcome) = index.verify(black_box(&keys[i % keys.len()]), now);
            assert!(outcome.is_ok());
        }
        key_ns.push(started.elapsed().as_nanos() as f64 / 200_000.0);

        // Fresh tokens every round, so none is in the cache yet.
        let tokens: Vec<String> = (0..TOKENS)
            .map(|i| mint(round * TOKENS + i))
            .collect::<Result<_, _>>()?;
        let started = Instant::now();
        runtime.block_on(async {
            for token in &tokens {
                assert!(verifier.verify(black_box(token), now).await.is_ok());
            }
        });
        uncached_ns.push(started.elapsed().as_nanos() as f64 / TOKENS as f64);

        let started = Instant::now();
        runtime.block_on(async {
            for i in 0..200_000 {
                let token = &tokens[i % 16];
                assert!(verifier.verify(black_box(token), now).await.is_ok());
            }
        });
        cached_ns.push(started.elapsed().as_nanos() as f64 / 200_000.0);
    }
    let (key, uncached, cached) = (median(key_ns), median(uncached_ns), median(cached_ns));
    println!("per-request authentication cost (median of {ROUNDS} rounds):");
    println!("  API key (checksum, SHA-256, index of 10,000, constant-time compare) {key:>9.0} ns");
    println!(
        "  JWT ES256, uncached (signature + claims)                           {uncached:>9.0} ns"
    );
    println!(
        "  JWT ES256, cached (SHA-256 of the token + lookup)                  {cached:>9.0} ns"
    );
    println!("  cached / uncached: {:.3}x", cached / uncached);
    let limiter = median(limiter_ns);
    println!(
        "  limiter (GCRA check, 10,000 clients, sharded)                       {limiter:>9.0} ns"
    );
    // For bench/RESULTS.md, when the xtask asks.
    if let Some(path) = std::env::var_os("GATEWAY_BENCH_MARKDOWN") {
        std::fs::write(
            path,
            format!(
                "## Authentication and limiter cost (`cargo xtask bench auth`)\n\n\
                 | operation | ns per request |\n|---|---|\n\
                 | API key (checksum, SHA-256, index of 10,000, constant-time compare) | {key:.0} |\n\
                 | JWT ES256, uncached | {uncached:.0} |\n\
                 | JWT ES256, cached (cached / uncached {:.3}x) | {cached:.0} |\n\
                 | limiter (GCRA, 10,000 clients) | {limiter:.0} |\n",
                cached / uncached
            ),
        )?;
    }
    Ok(())
}
