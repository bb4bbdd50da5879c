//! `gateway keys ...`: API clients on the store directly, through the same
//! lifecycle as the admin API ([`Clients`]), or through a running
//! gateway's admin API with `--admin-url` (the admin key from
//! `GATEWAY_ADMIN_KEY`). Both print the same JSON with `--json`; a key is
//! printed once, when made.
mod remote;

use std::{io::Write, path::PathBuf, time::Duration};

use anyhow::{anyhow, bail, Context, Result};
use clap::{Args, Subcommand};
use gateway::{
    clock::unix_now,
    config::Config,
    jwt::principal,
    keys::{
        clients::{expires_after, revoked_json, ClientSpec, ClientView, ListQuery},
        store::ClientUpdate,
        ClientError, Clients, KeyStore,
    },
};
use serde_json::{json, Value};

#[derive(Subcommand)]
pub enum KeysCommand {
    /// Create the first admin client and print its key once, to stdout.
    /// Refuses when an admin client exists, unless `--force`.
    Bootstrap {
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        target: Target,
    },
    /// Create a client with a new API key; the key is printed once.
    Create {
        #[arg(long)]
        name: String,
        #[arg(long)]
        tier: String,
        /// Comma-separated scopes.
        #[arg(long, value_delimiter = ',')]
        scopes: Vec<String>,
        /// e.g. `30d`, `12h`; never expires when absent.
        #[arg(long, value_parser = humantime::parse_duration)]
        expires_in: Option<Duration>,
        #[arg(long)]
        admin: bool,
        /// Another issuer's client claim that maps its tokens to this
        /// client: `ISSUER#CLAIM`, or the claim with `--issuer` (or alone
        /// when the configuration has exactly one `[[issuers]]`).
        #[arg(long, conflicts_with = "count")]
        external_id: Option<String>,
        /// The issuer whose tokens `--external-id` names.
        #[arg(long, requires = "external_id")]
        issuer: Option<String>,
        /// Create this many clients (named NAME-1, NAME-2, ...) in one
        /// transaction (store only).
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
        count: u32,
        #[command(flatten)]
        target: Target,
    },
    /// List clients (never keys).
    List {
        #[arg(long)]
        tier: Option<String>,
        #[command(flatten)]
        target: Target,
    },
    /// One client with its key ids.
    Show {
        client_id: String,
        #[command(flatten)]
        target: Target,
    },
    /// Change a client; a running gateway follows at once through the
    /// admin API, within `keys.refresh` through the store.
    Update {
        client_id: String,
        #[arg(long)]
        name: Option<String>,
        #[arg(long)]
        tier: Option<String>,
        #[arg(long, value_delimiter = ',')]
        scopes: Option<Vec<String>>,
        #[arg(long, value_parser = humantime::parse_duration, conflicts_with = "no_expiry")]
        expires_in: Option<Duration>,
        #[arg(long)]
        no_expiry: bool,
        #[arg(long, conflicts_with = "enable")]
        disable: bool,
        #[arg(long)]
        enable: bool,
        /// A new external id, as for `create`.
        #[arg(long)]
        external_id: Option<String>,
        /// The issuer whose tokens `--external-id` names.
        #[arg(long, requires = "external_id")]
        issuer: Option<String>,
        #[command(flatten)]
        target: Target,
    },
    /// Delete a client and all its keys.
    Revoke {
        client_id: String,
        #[command(flatten)]
        target: Target,
    },
    /// A new key for the client (printed once); the old ones keep working
    /// for `--grace`.
    Rotate {
        client_id: String,
        #[arg(long, value_parser = humantime::parse_duration, default_value = "0s")]
        grace: Duration,
        #[command(flatten)]
        target: Target,
    },
    /// Refuse a client's keys from now on (`update --disable`).
    Disable {
        client_id: String,
        #[command(flatten)]
        target: Target,
    },
    /// Accept a disabled client's keys again (`update --enable`).
    Enable {
        client_id: String,
        #[command(flatten)]
        target: Target,
    },
}

/// Where a command acts: the store file, or a running gateway.
#[derive(Args)]
pub struct Target {
    /// Read the store path (and tier names) from this configuration.
    #[arg(long)]
    config: Option<PathBuf>,
    /// A SQLite store file (overrides the configuration's `keys.store`
    /// and `store.url`).
    #[arg(long)]
    store: Option<PathBuf>,
    /// Act through this running gateway's admin API instead of the store.
    #[arg(long, conflicts_with_all = ["config", "store"])]
    admin_url: Option<String>,
    #[arg(long)]
    json: bool,
}

/// One operation, done on the store or asked of the admin API; both
/// answer with the API's JSON.
enum Op {
    Create(ClientSpec),
    List { tier: Option<String> },
    Show(String),
    Update(String, ClientUpdate),
    Revoke(String),
    Rotate(String, u64),
}

impl Op {
    /// Does it on the store.
    async fn apply(self, clients: &Clients<'_>) -> Result<Value, ClientError> {
        let now = unix_now();
        Ok(match self {
            Op::Create(spec) => clients.create(spec, now).await?.to_json(),
            Op::List { tier } => {
                let query = ListQuery {
                    tier,
                    ..ListQuery::default()
                };
                let page = clients.list(&query).await?;
                let items: Vec<Value> = page.items.iter().map(ClientView::to_json).collect();
                json!({ "total": page.total, "items": items })
            }
            Op::Show(id) => clients.show(&id).await?.to_json(),
            Op::Update(id, update) => clients.update(&id, &update).await?.to_json(),
            Op::Revoke(id) => {
                clients.revoke(&id).await?;
                revoked_json(&id)
            }
            Op::Rotate(id, grace) => {
                let grace = i64::try_from(grace).unwrap_or(i64::MAX);
                clients.rotate(&id, grace, now).await?.to_json()
            }
        })
    }
}

/// The CLI's wording for the lifecycle's refusals: it names the store.
fn cli_error(error: ClientError) -> anyhow::Error {
    match error {
        ClientError::UnknownClient(id) => anyhow!("no client {id:?} in the store"),
        ClientError::AdminExists => {
            anyhow!("an admin client exists already; use it, or pass --force to make another")
        }
        other => other.into(),
    }
}

pub fn keys_command(command: KeysCommand) -> Result<()> {
    let patch = |disabled: bool| ClientUpdate {
        disabled: Some(disabled),
        ..ClientUpdate::default()
    };
    let (op, target) = match command {
        KeysCommand::Bootstrap { force, target } => return bootstrap(force, &target),
        KeysCommand::Create {
            name,
            tier,
            scopes,
            expires_in,
            admin,
            external_id,
            issuer,
            count,
            target,
        } => {
            let spec = ClientSpec {
                name,
                tier,
                scopes,
                is_admin: admin,
                expires_at: expires_in.map(|d| expires_after(d.as_secs(), unix_now())),
                ttl: None,
                with_key: true,
                external_id,
                external_issuer: issuer,
            };
            if count > 1 {
                return create_many(&target, spec, count);
            }
            (Op::Create(spec), target)
        }
        KeysCommand::List { tier, target } => (Op::List { tier }, target),
        KeysCommand::Show { client_id, target } => (Op::Show(client_id), target),
        KeysCommand::Update {
            client_id,
            name,
            tier,
            scopes,
            expires_in,
            no_expiry,
            disable,
            enable,
            external_id,
            issuer,
            target,
        } => {
            let expires_at = match (expires_in, no_expiry) {
                (Some(d), _) => Some(Some(expires_after(d.as_secs(), unix_now()))),
                (None, true) => Some(None),
                (None, false) => None,
            };
            let update = ClientUpdate {
                name,
                tier,
                scopes,
                expires_at,
                disabled: (disable || enable).then_some(disable),
                external_id: match (external_id, issuer) {
                    (Some(id), Some(issuer)) => Some(Some(principal(&issuer, &id))),
                    (id, _) => id.map(Some),
                },
                ..ClientUpdate::default()
            };
            (Op::Update(client_id, update), target)
        }
        KeysCommand::Disable { client_id, target } => (Op::Update(client_id, patch(true)), target),
        KeysCommand::Enable { client_id, target } => (Op::Update(client_id, patch(false)), target),
        KeysCommand::Revoke { client_id, target } => (Op::Revoke(client_id), target),
        KeysCommand::Rotate {
            client_id,
            grace,
            target,
        } => (Op::Rotate(client_id, grace.as_secs()), target),
    };
    let shows_key = matches!(op, Op::Create(_) | Op::Rotate(..));
    let answer = match &target.admin_url {
        Some(url) => remote::answer(url, &op)?,
        None => super::block_on(async {
            let (config, store) = open_store(&target).await?;
            op.apply(&lifecycle(&config, store.as_ref(), &target))
                .await
                .map_err(cli_error)
        })??,
    };
    print_answer(&answer, shows_key, target.json)
}

fn print_answer(answer: &Value, shows_key: bool, json: bool) -> Result<()> {
    let mut out = std::io::stdout().lock();
    if json {
        writeln!(out, "{answer}")?;
        return Ok(());
    }
    if let Some(items) = answer["items"].as_array() {
        writeln!(
            out,
            "{:<16} {:<20} {:<8} {:<9} {:<6} scopes",
            "id", "name", "tier", "disabled", "admin"
        )?;
        for c in items {
            let scopes: Vec<&str> = c["scopes"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(Value::as_str)
                .collect();
            writeln!(
                out,
                "{:<16} {:<20} {:<8} {:<9} {:<6} {}",
                c["id"].as_str().unwrap_or(""),
                c["name"].as_str().unwrap_or(""),
                c["tier"].as_str().unwrap_or(""),
                c["disabled"],
                c["is_admin"],
                scopes.join(",")
            )?;
        }
        return Ok(());
    }
    if let Some(deleted) = answer["deleted"].as_str() {
        writeln!(out, "revoked {deleted}: it and all its keys are gone")?;
        return Ok(());
    }
    writeln!(
        out,
        "client {} ({}, tier {})",
        answer["id"].as_str().unwrap_or("?"),
        answer["name"].as_str().unwrap_or("?"),
        answer["tier"].as_str().unwrap_or("?")
    )?;
    if shows_key {
        writeln!(out, "API key (shown once, store it now):")?;
        writeln!(out, "{}", answer["api_key"].as_str().unwrap_or(""))?;
    } else {
        writeln!(out, "{}", serde_json::to_string_pretty(answer)?)?;
    }
    Ok(())
}

/// `--count N`: N clients in one store transaction (bulk loads, benches).
fn create_many(target: &Target, spec: ClientSpec, count: u32) -> Result<()> {
    if target.admin_url.is_some() {
        bail!("--count works on the store only, not through --admin-url");
    }
    let created = super::block_on(async {
        let (config, store) = open_store(target).await?;
        lifecycle(&config, store.as_ref(), target)
            .create_many(spec, count, unix_now())
            .await
            .map_err(|error| match error {
                // Bulk loads have always named only the tier.
                ClientError::UnknownTier { tier, .. } => anyhow!("unknown tier {tier:?}"),
                other => cli_error(other),
            })
    })??;
    let mut out = std::io::stdout().lock();
    for (client, key) in created {
        if target.json {
            writeln!(
                out,
                "{}",
                json!({ "id": client.id, "name": client.name, "tier": client.tier, "api_key": key })
            )?;
        } else {
            writeln!(out, "{} {key}", client.id)?;
        }
    }
    Ok(())
}

/// The first admin key, printed once to stdout and nowhere else.
fn bootstrap(force: bool, target: &Target) -> Result<()> {
    if target.admin_url.is_some() {
        bail!("bootstrap works on the store only: it makes the key the admin API needs");
    }
    let view = super::block_on(async {
        let (config, store) = open_store(target).await?;
        lifecycle(&config, store.as_ref(), target)
            .bootstrap(force, unix_now())
            .await
            .map_err(cli_error)
    })??;
    let id = &view.client.id;
    let key = view.api_key.as_deref().unwrap_or_default();
    let mut out = std::io::stdout().lock();
    if target.json {
        writeln!(out, "{}", json!({ "id": id, "api_key": key }))?;
    } else {
        writeln!(out, "admin client {id} created")?;
        writeln!(
            out,
            "admin key (shown once, store it now; export GATEWAY_ADMIN_KEY=...):"
        )?;
        writeln!(out, "{key}")?;
    }
    Ok(())
}

/// The configured store (`--store`: that SQLite file instead).
async fn open_store(target: &Target) -> Result<(Config, Box<dyn KeyStore>)> {
    let config = Config::load(target.config.as_deref()).context("loading the configuration")?;
    let store = crate::cli::store::open(&config, target.store.as_deref()).await?;
    Ok((config, store))
}

/// The lifecycle on the store, checked against the configured tiers
/// (and, with `--config`, its issuers).
fn lifecycle<'a>(config: &'a Config, store: &'a dyn KeyStore, target: &Target) -> Clients<'a> {
    let clients = Clients::new(store, config.tiers.iter().map(|t| t.name.as_str()));
    match target.config {
        Some(_) => clients.with_issuers(config.issuers.iter().map(|i| i.issuer.clone())),
        None => clients,
    }
}
