//! `[redis]`: the Redis server a fleet of gateways shares (limits, bans).
use serde::Deserialize;

use super::ConfigError;

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisConfig {
    /// `redis://host:port/db` or `redis+unix:///path`;
    /// unset: this gateway shares nothing through Redis.
    #[serde(default)]
    pub url: Option<String>,
}

impl RedisConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        let Some(url) = &self.url else {
            return Ok(());
        };
        crate::fleet::redis::parse_url(url)
            .map(drop)
            .map_err(|e| ConfigError::invalid("redis.url", e.to_string()))
    }
}

/// A shared limiter needs the Redis server it shares.
pub(super) fn validate_backend(
    limits: &super::LimitsConfig,
    redis: &RedisConfig,
) -> Result<(), ConfigError> {
    use super::LimitsBackend::{Redis, RedisSync};
    let name = match limits.backend {
        Redis => "redis",
        RedisSync => "redis_sync",
        super::LimitsBackend::Local => return Ok(()),
    };
    if redis.url.is_none() {
        return Err(ConfigError::invalid(
            "limits.backend",
            format!("\"{name}\" needs [redis] url"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::{tests::error, Config};

    const LISTENER: &str = "[[listeners]]\naddress = \"127.0.0.1:1\"\n";

    #[test]
    fn a_bad_redis_url_names_its_key() {
        let message = error(&format!("{LISTENER}[redis]\nurl = \"http://localhost\"\n"));
        assert!(message.starts_with("redis.url"), "{message}");
        let config = Config::parse(&format!(
            "{LISTENER}[redis]\nurl = \"redis+unix:///run/r.sock\"\n"
        ));
        assert!(config.is_ok(), "{:?}", config.err());
    }

    #[test]
    fn a_redis_backend_needs_a_redis_url() {
        let message = error(&format!("{LISTENER}[limits]\nbackend = \"redis\"\n"));
        assert!(message.starts_with("limits.backend"), "{message}");
        assert!(message.contains("[redis] url"), "{message}");
        let message = error(&format!("{LISTENER}[limits]\nbackend = \"memcached\"\n"));
        assert!(message.starts_with("limits"), "{message}");
        let config = Config::parse(&format!(
            "{LISTENER}[limits]\nbackend = \"redis\"\nlease = 4\nnodes = 3\n\
             [redis]\nurl = \"redis+unix:///run/r.sock\"\n"
        ));
        assert!(config.is_ok(), "{:?}", config.err());
    }

    #[test]
    fn the_per_request_baseline_needs_a_redis_url_too() {
        let message = error(&format!("{LISTENER}[limits]\nbackend = \"redis_sync\"\n"));
        assert!(message.starts_with("limits.backend"), "{message}");
        assert!(
            message.contains("\"redis_sync\" needs [redis] url"),
            "{message}"
        );
        let config = Config::parse(&format!(
            "{LISTENER}[limits]\nbackend = \"redis_sync\"\nnodes = 3\n\
             [redis]\nurl = \"redis+unix:///run/r.sock\"\n"
        ));
        assert!(config.is_ok(), "{:?}", config.err());
    }
}
