//! `[store]`: where clients and keys are kept when several gateways share
//! them (PostgreSQL). Unset, each gateway keeps its own SQLite file,
//! `[keys] store`.
use std::time::Duration;

use serde::Deserialize;

use super::{bounds::At, durations, ConfigError};

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// `postgres://user:password@host:port/db` or
    /// `postgresql:///db?host=/socket/dir`; `sslmode=require` for TLS.
    pub url: Option<String>,
    /// Without the database for this long, refuse API keys with 503
    /// instead of serving them from memory; unset: serve from memory.
    #[serde(with = "durations::option")]
    pub max_staleness: Option<Duration>,
    /// Connections per gateway for admin calls and refreshes (the
    /// notification connection is one more).
    pub pool_size: u32,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            url: None,
            max_staleness: None,
            pool_size: 4,
        }
    }
}

impl StoreConfig {
    pub(super) fn check(&self, at: &At, keys_store_set: bool) -> Result<(), ConfigError> {
        at.within("pool_size", self.pool_size, 1..=64)?;
        at.within_opt(
            "max_staleness",
            self.max_staleness,
            Duration::from_secs(1)..=Duration::from_secs(7 * 86_400),
        )?;
        let Some(url) = &self.url else {
            return match self.max_staleness {
                Some(_) => Err(at.invalid("max_staleness", "needs store.url (a shared store)")),
                None => Ok(()),
            };
        };
        if keys_store_set {
            return Err(at.invalid(
                "url",
                "set either store.url (PostgreSQL, shared) or keys.store (the SQLite file), not both",
            ));
        }
        crate::keys::postgres::parse_url(url)
            .map(drop)
            .map_err(|message| at.invalid("url", message))
    }
}

/// Whether the file sets `[keys] store` itself (it has a default).
pub(super) fn keys_store_set(text: &str) -> bool {
    let Ok(table) = text.parse::<toml::Table>() else {
        return false;
    };
    (table.get("keys").and_then(|keys| keys.get("store"))).is_some()
}

#[cfg(test)]
mod tests {
    use super::super::{tests::error, Config};

    const LISTENER: &str = "[[listeners]]\naddress = \"127.0.0.1:1\"\n";

    #[test]
    fn a_bad_store_url_names_its_key_and_hides_the_password() {
        for url in [
            "mysql://gw:hunter2@db/keys",
            "postgres://gw:hunter2@db:port/keys",
            "sqlite:keys.db",
        ] {
            let message = error(&format!("{LISTENER}[store]\nurl = \"{url}\"\n"));
            assert!(message.starts_with("store.url"), "{message}");
            assert!(!message.contains("hunter2"), "{message}");
        }
        let config = Config::parse(&format!(
            "{LISTENER}[store]\nurl = \"postgresql:///keys?host=/run/pg\"\nmax_staleness = \"30s\"\n"
        ))
        .unwrap();
        assert_eq!(
            config.store.max_staleness,
            Some(std::time::Duration::from_secs(30))
        );
    }

    #[test]
    fn a_store_url_and_a_sqlite_file_are_exclusive() {
        let message = error(&format!(
            "{LISTENER}[keys]\nstore = \"k.db\"\n[store]\nurl = \"postgres://db/keys\"\n"
        ));
        assert!(
            message.starts_with("store.url") && message.contains("not both"),
            "{message}"
        );
        let message = error(&format!("{LISTENER}[store]\nmax_staleness = \"5s\"\n"));
        assert!(message.starts_with("store.max_staleness"), "{message}");
    }

    /// A TOML slip on a URL's line is reported by line and column, without
    /// the line: a reload logs and answers the message.
    #[test]
    fn a_syntax_error_never_quotes_the_line_with_a_password() {
        for text in [
            "[store]\nurl = \"postgres://gw:hunter2@db/keys\" #x\npool_size = 4 4\n",
            "[store]\nurl = \"postgres://gw:hunter2@db/keys\"x\n",
            "[store]\nurl = \"postgres://gw:hunter2@db/keys\"\nurl = \"postgres://gw:hunter2@db/keys\"\n",
            "[redis]\nurl = \"redis://:hunter2@127.0.0.1:6379/0\",\n",
        ] {
            let message = error(&format!("{LISTENER}{text}"));
            assert!(!message.contains("hunter2"), "{message}");
            assert!(message.contains("TOML parse error at line "), "{message}");
        }
        let message = error(&format!(
            "{LISTENER}[store]\nurl = \"postgres://gw:hunter2@db/keys\"x\n"
        ));
        let line = LISTENER.matches('\n').count() + 2;
        assert!(
            message.contains(&format!("at line {line}, column ")),
            "{message}"
        );
    }
}
