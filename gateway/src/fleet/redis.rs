//! The connection to the fleet's Redis: one multiplexed connection that
//! reconnects by itself (the `redis` crate's connection manager), so the
//! limiter and the ban stream share it instead of each dialling their own.
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

#[derive(Debug, thiserror::Error)]
pub enum RedisError {
    #[error("{0}: use redis://[:password@]host:port[/db] or redis+unix:///path (TLS to Redis is not built in yet)")]
    BadUrl(String),
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
    let shown = redacted(url);
    let scheme_ok = ["redis://", "redis+unix://", "unix://"]
        .iter()
        .any(|scheme| url.starts_with(scheme));
    if !scheme_ok {
        return Err(RedisError::BadUrl(shown));
    }
    redis::IntoConnectionInfo::into_connection_info(url).map_err(|_| RedisError::BadUrl(shown))
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

/// `url` with any password replaced, for messages and logs: the user info
/// up to the last `@` (a password may hold `/`, `?` or `@`), and the
/// `pass` / `password` query parameters redis-rs reads for a unix socket.
pub fn redacted(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let rest = match rest.rsplit_once('@') {
        Some((_, host)) => format!("***@{host}"),
        None => rest.to_owned(),
    };
    let Some((path, query)) = rest.split_once('?') else {
        return format!("{scheme}://{rest}");
    };
    let pairs: Vec<String> = query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((name, _))
                if name.eq_ignore_ascii_case("pass") || name.eq_ignore_ascii_case("password") =>
            {
                format!("{name}=***")
            }
            _ => pair.to_owned(),
        })
        .collect();
    format!("{scheme}://{path}?{}", pairs.join("&"))
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
        assert_eq!(redacted("redis://:hunter2@h:1/0"), "redis://***@h:1/0");
    }

    /// A unix socket's password is a query parameter (`pass`); a password
    /// may hold `@`, `/` or `?`: none is shown.
    #[test]
    fn every_password_redis_reads_is_redacted() {
        let url = "redis+unix:///run/redis.sock?db=0&pass=hunter2";
        let info = parse_url(url).unwrap();
        assert!(
            format!("{info:?}").contains("redacted"),
            "redis-rs read a password"
        );
        assert_eq!(redacted(url), "redis+unix:///run/redis.sock?db=0&pass=***");
        let bad = parse_url("redis+unix://?pass=hunter2")
            .map(drop)
            .unwrap_err()
            .to_string();
        assert!(!bad.contains("hunter2"), "{bad}");
        for url in [
            "unix:///run/redis.sock?PASSWORD=hunter2",
            "redis://:hun@ter2@h:1/0",
            "redis://:hun/ter2@h:1/0",
            "redis://:hun?ter2@h:1/0",
            "redis://user:hunter2@h:1/0?x=1",
        ] {
            let shown = redacted(url);
            assert!(
                !shown.contains("hunter2") && !shown.contains("ter2"),
                "{url}: {shown}"
            );
        }
        assert_eq!(redacted("redis://h:1/0?db=2"), "redis://h:1/0?db=2");
    }
}
