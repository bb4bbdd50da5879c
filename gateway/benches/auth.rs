//! Per-request cost of authentication, as `cargo xtask bench auth` prints
//! it: API-key verification against an index of 10,000 keys, and JWT
//! verification uncached (every token new, ES256 and RS256) vs cached (one
//! token repeated), and one limiter check.
//! A plain harness: median of interleaved rounds, ns per operation.
//!
//! `GATEWAY_BENCH_PROFILE=key|es256|rs256` runs only 1,000 operations of
//! one kind, once, for an exact instruction count per operation:
//! `valgrind --tool=callgrind --toggle-collect='*KeyIndex*verify*'` (or
//! `'*JwtVerifier*verify*'`) on the bench binary, then divide by 1,000.
use std::{hint::black_box, sync::Arc, time::Instant};

use gateway::{
    config::Config,
    jwt::JwtVerifier,
    keys::{KeyIndex, NewClient, SqliteStore},
    limits::{LimitKey, LocalLimiter, Quota, RateLimiter},
};
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};

const ROUNDS: usize = 5;
/// Operations in a profile run (`GATEWAY_BENCH_PROFILE`).
const PROFILE_OPS: usize = 1_000;

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
    index.replace(store.clients()?, store.keys()?);
    let now = unix_now();

    // JWTs: an ES256 issuer (P-256) and an RS256 issuer (RSA-2048, as
    // most IdPs sign), each with its public key in a PEM file.
    let pair = rcgen::KeyPair::generate()?;
    let es_public = dir.join("es256.pem");
    std::fs::write(&es_public, pair.public_key_pem())?;
    let es_signing = EncodingKey::from_ec_pem(pair.serialize_pem().as_bytes())?;
    let (rs_private, rs_public) = rsa_key_pair(dir)?;
    let rs_signing = EncodingKey::from_rsa_pem(&rs_private)?;
    let issuer = |name: &str, pem: &std::path::Path| {
        format!(
            "[[issuers]]\nissuer = \"{name}\"\npem = \"{}\"\naudiences = [\"api\"]\n",
            pem.display()
        )
    };
    let config = Config::parse(&format!(
        "[[listeners]]\naddress = \"127.0.0.1:1\"\n{}{}",
        issuer("bench-es256", &es_public),
        issuer("bench-rs256", &rs_public),
    ))?;
    let tiers = vec!["bronze".to_owned(), "silver".into(), "gold".into()];
    let verifier = Arc::new(JwtVerifier::new(&config.issuers, tiers)?);
    const TOKENS: usize = 2_000;
    let mint = |algorithm: Algorithm, i: usize| {
        let (iss, signing) = match algorithm {
            Algorithm::ES256 => ("bench-es256", &es_signing),
            _ => ("bench-rs256", &rs_signing),
        };
        let claims = serde_json::json!({
            "iss": iss, "aud": "api", "sub": format!("svc-{i}"),
            "scope": "read gold", "exp": now + 3600,
        });
        encode(&Header::new(algorithm), &claims, signing)
    };
    let mint_many = |algorithm: Algorithm, from: usize, count: usize| {
        (from..from + count)
            .map(|i| mint(algorithm, i))
            .collect::<Result<Vec<String>, _>>()
    };
    let runtime = tokio::runtime::Builder::new_current_thread().build()?;
    let verify_all = |tokens: &[String]| {
        runtime.block_on(async {
            for token in tokens {
                assert!(verifier.verify(black_box(token), now).await.is_ok());
            }
        })
    };

    if let Ok(kind) = std::env::var("GATEWAY_BENCH_PROFILE") {
        match kind.as_str() {
            "key" => {
                for key in keys.iter().take(PROFILE_OPS) {
                    assert!(index.verify(black_box(key), now).1.is_ok());
                }
            }
            "es256" => verify_all(&mint_many(Algorithm::ES256, 0, PROFILE_OPS)?),
            "rs256" => verify_all(&mint_many(Algorithm::RS256, 0, PROFILE_OPS)?),
            other => {
                return Err(format!("GATEWAY_BENCH_PROFILE={other}: key, es256 or rs256").into())
            }
        }
        return Ok(());
    }

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
    let mut rs256_ns = Vec::new();
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
        let tokens = mint_many(Algorithm::ES256, round * TOKENS, TOKENS)?;
        let started = Instant::now();
        verify_all(&tokens);
        uncached_ns.push(started.elapsed().as_nanos() as f64 / TOKENS as f64);

        let rs256 = mint_many(Algorithm::RS256, round * TOKENS, TOKENS)?;
        let started = Instant::now();
        verify_all(&rs256);
        rs256_ns.push(started.elapsed().as_nanos() as f64 / TOKENS as f64);

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
    let rs256 = median(rs256_ns);
    println!("per-request authentication cost (median of {ROUNDS} rounds):");
    println!("  API key (checksum, SHA-256, index of 10,000, constant-time compare) {key:>9.0} ns");
    println!(
        "  JWT ES256, uncached (signature + claims)                           {uncached:>9.0} ns"
    );
    println!(
        "  JWT RS256 (RSA-2048), uncached (signature + claims)                {rs256:>9.0} ns"
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
        // Absolute times, so the machine's load at the end is worth knowing.
        let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
        let load = load
            .split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ");
        std::fs::write(
            path,
            format!(
                "## Authentication and limiter cost (`cargo xtask bench auth`)\n\n\
                 Load average when it finished (1/5/15 min): {load}; targets: \
                 API key <= 400 ns, uncached ES256 and RS256 <= 60,000 ns each.\n\n\
                 | operation | ns per request |\n|---|---|\n\
                 | API key (checksum, SHA-256, index of 10,000, constant-time compare) | {key:.0} |\n\
                 | JWT ES256, uncached | {uncached:.0} |\n\
                 | JWT RS256 (RSA-2048), uncached | {rs256:.0} |\n\
                 | JWT ES256, cached (cached / uncached {:.3}x) | {cached:.0} |\n\
                 | limiter (GCRA, 10,000 clients) | {limiter:.0} |\n",
                cached / uncached
            ),
        )?;
    }
    Ok(())
}

/// An RSA-2048 key pair made by openssl (rcgen cannot make RSA keys): the
/// private PEM's bytes and the public PEM's path.
fn rsa_key_pair(
    dir: &std::path::Path,
) -> Result<(Vec<u8>, std::path::PathBuf), Box<dyn std::error::Error>> {
    let (private, public) = (dir.join("rs256.key"), dir.join("rs256.pem"));
    let openssl = |args: &[&std::ffi::OsStr]| -> Result<(), Box<dyn std::error::Error>> {
        let status = std::process::Command::new("openssl").args(args).status()?;
        if !status.success() {
            return Err(format!("openssl {args:?}: {status}").into());
        }
        Ok(())
    };
    openssl(&[
        "genpkey".as_ref(),
        "-algorithm".as_ref(),
        "RSA".as_ref(),
        "-pkeyopt".as_ref(),
        "rsa_keygen_bits:2048".as_ref(),
        "-out".as_ref(),
        private.as_os_str(),
    ])?;
    openssl(&[
        "pkey".as_ref(),
        "-in".as_ref(),
        private.as_os_str(),
        "-pubout".as_ref(),
        "-out".as_ref(),
        public.as_os_str(),
    ])?;
    Ok((std::fs::read(&private)?, public))
}
