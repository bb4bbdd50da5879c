//! `gateway store ...`: the shared store's schema (`migrate`) and moving
//! a SQLite store into it (`copy`); [`open`] picks the configured store
//! for `gateway run` and `gateway keys`.
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::Subcommand;
use gateway::{
    config::Config,
    keys::{copy, postgres, KeyStore, PgStore, SqliteStore},
};

#[derive(Subcommand)]
pub enum StoreCommand {
    /// Bring the PostgreSQL store's schema to this gateway's version (in
    /// one transaction); refuses a schema newer than this gateway's.
    Migrate {
        /// Read `store.url` from this configuration.
        #[arg(long)]
        config: Option<PathBuf>,
        /// The store's URL (overrides the configuration's `store.url`).
        #[arg(long)]
        url: Option<String>,
    },
    /// Copy every client and key hash from one store into another, empty
    /// one (`sqlite:FILE`, `postgres:URL` or a postgres:// URL), then
    /// compare counts and a checksum of both sides. Keys keep working:
    /// only their hashes are stored, and those are copied.
    Copy {
        #[arg(long)]
        from: String,
        #[arg(long)]
        to: String,
    },
}

pub fn store_command(command: StoreCommand) -> Result<()> {
    super::block_on(async {
        match command {
            StoreCommand::Migrate { config, url } => migrate(config.as_deref(), url).await,
            StoreCommand::Copy { from, to } => {
                let source = open_spec(&from, "--from").await?;
                let target = open_spec(&to, "--to").await?;
                let (from_summary, to_summary) = copy::copy(source.as_ref(), target.as_ref())
                    .await
                    .with_context(|| format!("copying {} to {}", shown(&from), shown(&to)))?;
                println!("source {}: {from_summary}", shown(&from));
                println!("target {}: {to_summary}", shown(&to));
                println!("copied: counts and checksums match");
                Ok(())
            }
        }
    })?
}

async fn migrate(config: Option<&Path>, url: Option<String>) -> Result<()> {
    let url = match url {
        Some(url) => url,
        None => {
            let config = Config::load(config).context("loading the configuration")?;
            match config.store.url {
                Some(url) => url,
                None => bail!("no shared store to migrate: set store.url or pass --url"),
            }
        }
    };
    let store = open_postgres(&url, 1)?;
    let (before, after) = store
        .migrate()
        .await
        .with_context(|| format!("migrating store.url ({})", postgres::redacted(&url)))?;
    if before == after {
        println!("store schema at version {after}: up to date");
    } else {
        println!("store schema migrated from version {before} to {after}");
    }
    Ok(())
}

/// A store named as `sqlite:FILE`, `postgres:URL`, or a postgres URL.
async fn open_spec(spec: &str, flag: &str) -> Result<Box<dyn KeyStore>> {
    if let Some(path) = spec.strip_prefix("sqlite:") {
        let store = SqliteStore::open(Path::new(path))
            .with_context(|| format!("{flag}: opening the SQLite store {path}"))?;
        return Ok(Box::new(store));
    }
    let url = spec
        .strip_prefix("postgres:")
        .filter(|u| postgres::is_postgres_url(u));
    let url = url.unwrap_or(spec);
    if !postgres::is_postgres_url(url) {
        bail!("{flag} {}: give sqlite:FILE or postgres:URL", shown(spec));
    }
    let store = open_postgres(url, 2)?;
    store
        .check_schema()
        .await
        .with_context(|| format!("{flag} {}", shown(spec)))?;
    Ok(Box::new(store))
}

fn shown(spec: &str) -> String {
    match spec
        .strip_prefix("postgres:")
        .filter(|u| postgres::is_postgres_url(u))
    {
        Some(url) => format!("postgres:{}", postgres::redacted(url)),
        None => postgres::redacted(spec),
    }
}

fn open_postgres(url: &str, pool_size: usize) -> Result<PgStore> {
    PgStore::open(url, pool_size).map_err(|error| anyhow::anyhow!("store.url: {error}"))
}

/// The configured store: PostgreSQL at `store.url` (its schema checked),
/// else the SQLite file `keys.store`; `sqlite` overrides both.
pub async fn open(config: &Config, sqlite: Option<&Path>) -> Result<Box<dyn KeyStore>> {
    match (sqlite, &config.store.url) {
        (None, Some(url)) => Ok(Box::new(open_shared(config, url).await?)),
        (path, _) => {
            let path = path.unwrap_or(&config.keys.store);
            let store = SqliteStore::open(path).context("opening the key store")?;
            Ok(Box::new(store))
        }
    }
}

/// The shared store at `url`, refused unless reachable and at this
/// gateway's schema version.
pub async fn open_shared(config: &Config, url: &str) -> Result<PgStore> {
    let pool_size = usize::try_from(config.store.pool_size).unwrap_or(4);
    let store = open_postgres(url, pool_size)?;
    store
        .check_schema()
        .await
        .with_context(|| format!("store.url ({})", postgres::redacted(url)))?;
    Ok(store)
}
