//! The connection to the fleet's Redis: one multiplexed connection that
//! reconnects by itself (the `redis` crate's connection manager), so the
//! limiter and the ban stream share it instead of each dialling their own.
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

#[derive(Debug, thiserror::Error)]
pub enum RedisError {
    /// Not shown: what cannot be read may hold a password anywhere.
    #[error("not a Redis URL: use redis://[:password@]host:port[/db] or redis+unix:///path (TLS to Redis is not built in yet)")]
    BadUrl,
    #[error("redis {url}: {source}")]
    Connect {
        url: String,
        source: redis::RedisError,
    },
    #[error("redis: {0}")]
    Command(#[from] redis::RedisError),
}

/// Parses `url` without connecting; the URL's password is never echoed.
pub fn parse_url(url: &str) -> Result<redis::ConnectionInfo, RedisError> {
    let scheme_ok = ["redis://", "redis+unix://", "unix://"]
        .iter()
        .any(|scheme| url.starts_with(scheme));
    if !scheme_ok {
        return Err(RedisError::BadUrl);
    }
    redis::IntoConnectionInfo::into_connection_info(url).map_err(|_| RedisError::BadUrl)
}

/// Connects (once, with a bounded wait); later drops reconnect in the
/// background with backoff, and calls fail fast meanwhile.
pub async fn connect(url: &str) -> Result<ConnectionManager, RedisError> {
    let info = parse_url(url)?;
    let failed = |source| RedisError::Connect {
        url: redacted(url),
        source,
    };
    let client = redis::Client::open(info).map_err(failed)?;
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(2)))
        .set_response_timeout(Some(Duration::from_secs(2)))
        .set_number_of_retries(2)
        .set_max_delay(Duration::from_secs(2));
    ConnectionManager::new_with_config(client, config)
        .await
        .map_err(failed)
}

/// `url` as messages and logs show it: rebuilt from what redis-rs reads of
/// it (scheme, address, database), so no password it reads, in user info
/// or a `pass` parameter, however spelt or escaped, can show; a URL it
/// cannot read is not shown at all.
pub fn redacted(url: &str) -> String {
    let Ok(info) = parse_url(url) else {
        return "(not a Redis URL)".to_owned();
    };
    let db = info.redis_settings().db();
    match info.addr() {
        redis::ConnectionAddr::Unix(path) => format!("redis+unix://{}?db={db}", path.display()),
        redis::ConnectionAddr::TcpTls { host, port, .. } => format!("rediss://{host}:{port}/{db}"),
        redis::ConnectionAddr::Tcp(host, port) => format!("redis://{host}:{port}/{db}"),
        other => format!("redis ({other})"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_checked_and_passwords_never_shown() {
        assert!(parse_url("redis://127.0.0.1:6379/0").is_ok());
        assert!(parse_url("redis+unix:///run/redis.sock").is_ok());
        let error = parse_url("http://user:hunter2@host")
            .unwrap_err()
            .to_string();
        assert!(!error.contains("hunter2"), "{error}");
        assert_eq!(redacted("redis://:hunter2@h:1/0"), "redis://h:1/0");
    }

    /// A unix socket's password is a query parameter (`pass`); a password
    /// may hold `@`, `/` or `?`, or be escaped: none is shown.
    #[test]
    fn every_password_redis_reads_is_redacted() {
        let url = "redis+unix:///run/redis.sock?db=0&pass=hunter2";
        let info = parse_url(url).unwrap();
        assert!(
            format!("{info:?}").contains("redacted"),
            "redis-rs read a password"
        );
        assert_eq!(redacted(url), "redis+unix:///run/redis.sock?db=0");
        let bad = parse_url("redis+unix://?pass=hunter2")
            .map(drop)
            .unwrap_err()
            .to_string();
        assert!(!bad.contains("hunter2"), "{bad}");
        for url in [
            "unix:///run/redis.sock?PASSWORD=hunter2",
            "redis+unix:///run/redis.sock?db=0&pass=hun@ter2",
            "redis+unix:///run/redis.sock?p%61ss=hunter2",
            "redis://:hun@ter2@h:1/0",
            "redis://:hun/ter2@h:1/0",
            "redis://:hun?ter2@h:1/0",
            "redis://user:hunter2@h:1/0?x=1",
            "redis:/:hunter2@h",
            "http://user:hunter2@host",
        ] {
            let shown = redacted(url);
            assert!(
                !shown.contains("hunter") && !shown.contains("ter2"),
                "{url}: {shown}"
            );
        }
        assert_eq!(redacted("redis://h:1/2"), "redis://h:1/2");
    }
}
