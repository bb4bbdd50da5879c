//! `gateway keys ...` and `gateway limits ...`: API clients on the store
//! directly, or through a running gateway's admin API with `--admin-url`
//! (the admin key from `GATEWAY_ADMIN_KEY`). Both print the same JSON with
//! `--json`; a key is printed once, when made.
use std::{io::Write, path::PathBuf, time::Duration};

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use gateway::{
    admin::client_view,
    admin_client,
    clock::unix_now,
    config::Config,
    keys::{store::ClientUpdate, KeyStore, NewClient, SqliteStore},
};
use http::Method;
use serde_json::{json, Value};

#[derive(Subcommand)]
pub enum LimitsCommand {
    /// Limit, remaining requests and time until the quota is whole.
    Show {
        client_id: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Make the client's quota whole again now.
    Reset {
        client_id: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
}

#[derive(Args)]
pub struct AdminArgs {
    /// The running gateway's admin listener.
    #[arg(long, default_value = "http://127.0.0.1:9901")]
    admin_url: String,
    #[arg(long)]
    json: bool,
}

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
        /// A JWT claim value that maps tokens to this client.
        #[arg(long, conflicts_with = "count")]
        external_id: Option<String>,
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
    /// The store file itself (overrides the configuration's `keys.store`).
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
    Create(NewClient),
    List { tier: Option<String> },
    Show(String),
    Update(String, ClientUpdate),
    Revoke(String),
    Rotate(String, u64),
}

const CLIENTS: &str = "/v1/management/api-clients";
/// The admin API's largest page.
const PAGE: usize = 500;

impl Op {
    /// The admin API request that does the same.
    fn request(&self) -> (Method, String, Option<Value>) {
        match self {
            Op::Create(new) => {
                let mut body = json!({
                    "name": new.name,
                    "tier": new.tier,
                    "scopes": new.scopes,
                    "is_admin": new.is_admin,
                });
                if let Some(at) = new.expires_at {
                    body["expires_at"] = json!(at);
                }
                if let Some(external) = &new.external_id {
                    body["api_client_id"] = json!(external);
                }
                (Method::POST, CLIENTS.into(), Some(body))
            }
            Op::List { tier } => {
                let filter = tier.as_ref().map_or(String::new(), |t| {
                    format!(
                        "&{}",
                        form_urlencoded::Serializer::new(String::new())
                            .append_pair("tier", t)
                            .finish()
                    )
                });
                (Method::GET, format!("{CLIENTS}?limit={PAGE}{filter}"), None)
            }
            Op::Show(id) => (Method::GET, format!("{CLIENTS}/{id}"), None),
            Op::Update(id, update) => {
                let mut body = json!({});
                let fields = [
                    ("name", update.name.as_ref().map(|v| json!(v))),
                    ("tier", update.tier.as_ref().map(|v| json!(v))),
                    ("scopes", update.scopes.as_ref().map(|v| json!(v))),
                    ("expires_at", update.expires_at.map(|v| json!(v))),
                    ("disabled", update.disabled.map(|v| json!(v))),
                    ("is_admin", update.is_admin.map(|v| json!(v))),
                ];
                for (name, value) in fields {
                    if let Some(value) = value {
                        body[name] = value;
                    }
                }
                (Method::PATCH, format!("{CLIENTS}/{id}"), Some(body))
            }
            Op::Revoke(id) => (Method::DELETE, format!("{CLIENTS}/{id}"), None),
            Op::Rotate(id, grace) => (
                Method::POST,
                format!("{CLIENTS}/{id}/rotate"),
                Some(json!({ "grace_seconds": grace })),
            ),
        }
    }

    /// Does it on the store.
    fn apply(self, store: &SqliteStore, config: &Config) -> Result<Value> {
        let check_tier = |tier: &str| {
            if !config.tiers.iter().any(|t| t.name == tier) {
                let names: Vec<_> = config.tiers.iter().map(|t| t.name.as_str()).collect();
                bail!(
                    "unknown tier {tier:?}; configured tiers: {}",
                    names.join(", ")
                );
            }
            Ok(())
        };
        let unknown = |id: &str| anyhow::anyhow!("no client {id:?} in the store");
        match self {
            Op::Create(new) => {
                check_tier(&new.tier)?;
                let (client, key) = store.create(new, unix_now())?;
                let mut view = client_view(store, &client)?;
                view["api_key"] = json!(key);
                Ok(view)
            }
            Op::List { tier } => {
                let items = store
                    .clients()?
                    .iter()
                    .filter(|c| tier.as_ref().is_none_or(|t| &c.tier == t))
                    .map(|c| client_view(store, c))
                    .collect::<Result<Vec<_>, _>>()?;
                Ok(json!({ "total": items.len(), "items": items }))
            }
            Op::Show(id) => {
                let client = store.client(&id)?.ok_or_else(|| unknown(&id))?;
                Ok(client_view(store, &client)?)
            }
            Op::Update(id, update) => {
                if let Some(tier) = &update.tier {
                    check_tier(tier)?;
                }
                let client = store.update(&id, &update)?.ok_or_else(|| unknown(&id))?;
                Ok(client_view(store, &client)?)
            }
            Op::Revoke(id) => match store.delete(&id)? {
                true => Ok(json!({ "deleted": id })),
                false => Err(unknown(&id)),
            },
            Op::Rotate(id, grace) => {
                let now = unix_now();
                let grace = i64::try_from(grace).unwrap_or(i64::MAX);
                let key = store.rotate(&id, grace, now)?.ok_or_else(|| unknown(&id))?;
                let client = store.client(&id)?.ok_or_else(|| unknown(&id))?;
                let mut view = client_view(store, &client)?;
                view["api_key"] = json!(key);
                view["previous_keys_expire_at"] = json!(now.saturating_add(grace));
                Ok(view)
            }
        }
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
            count,
            target,
        } => {
            let new = NewClient {
                name,
                tier,
                scopes,
                expires_at: expires_in.map(|d| unix_now().saturating_add(d.as_secs() as i64)),
                is_admin: admin,
                external_id,
                no_key: false,
            };
            if count > 1 {
                return create_many(&target, &new, count);
            }
            (Op::Create(new), target)
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
            target,
        } => {
            let expires_at = match (expires_in, no_expiry) {
                (Some(d), _) => Some(Some(unix_now().saturating_add(d.as_secs() as i64))),
                (None, true) => Some(None),
                (None, false) => None,
            };
            let update = ClientUpdate {
                name,
                tier,
                scopes,
                expires_at,
                disabled: (disable || enable).then_some(disable),
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
        Some(url) => {
            let (method, path, body) = op.request();
            if matches!(op, Op::List { .. }) {
                block_on(list_all(url, &path))??
            } else {
                block_on(admin_client::call(url, method, &path, body.as_ref()))??
            }
        }
        None => {
            let (config, store) = open_store(&target)?;
            op.apply(&store, &config)?
        }
    };
    print_answer(&answer, shows_key, target.json)
}

/// Every page of a list, as one answer shaped like the store's.
async fn list_all(url: &str, path: &str) -> Result<Value, admin_client::AdminClientError> {
    let mut items = Vec::new();
    loop {
        let page = admin_client::call(
            url,
            Method::GET,
            &format!("{path}&offset={}", items.len()),
            None,
        )
        .await?;
        let batch = page["items"].as_array().cloned().unwrap_or_default();
        let total = page["total"].as_u64().unwrap_or(0) as usize;
        let done = batch.is_empty();
        items.extend(batch);
        if done || items.len() >= total {
            return Ok(json!({ "total": items.len(), "items": items }));
        }
    }
}

fn block_on<T>(future: impl std::future::Future<Output = T>) -> Result<T> {
    Ok(tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?
        .block_on(future))
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
fn create_many(target: &Target, new: &NewClient, count: u32) -> Result<()> {
    if target.admin_url.is_some() {
        bail!("--count works on the store only, not through --admin-url");
    }
    let (config, store) = open_store(target)?;
    if !config.tiers.iter().any(|t| t.name == new.tier) {
        bail!("unknown tier {:?}", new.tier);
    }
    let batch: Vec<NewClient> = (1..=count)
        .map(|i| NewClient {
            name: format!("{}-{i}", new.name),
            ..new.clone()
        })
        .collect();
    let mut out = std::io::stdout().lock();
    for (client, key) in store.create_many(batch, unix_now())? {
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
    let (config, store) = open_store(target)?;
    if !force && store.clients()?.iter().any(|c| c.is_admin) {
        bail!("an admin client exists already; use it, or pass --force to make another");
    }
    let tier = config
        .tiers
        .last()
        .map_or_else(|| "gold".into(), |t| t.name.clone());
    let new = NewClient {
        name: "admin".into(),
        tier,
        is_admin: true,
        ..NewClient::default()
    };
    let (client, key) = store.create(new, unix_now())?;
    let mut out = std::io::stdout().lock();
    if target.json {
        writeln!(out, "{}", json!({ "id": client.id, "api_key": key }))?;
    } else {
        writeln!(out, "admin client {} created", client.id)?;
        writeln!(
            out,
            "admin key (shown once, store it now; export GATEWAY_ADMIN_KEY=...):"
        )?;
        writeln!(out, "{key}")?;
    }
    Ok(())
}

fn open_store(target: &Target) -> Result<(Config, SqliteStore)> {
    let config = Config::load(target.config.as_deref()).context("loading the configuration")?;
    let path = target
        .store
        .clone()
        .unwrap_or_else(|| config.keys.store.clone());
    let store = SqliteStore::open(&path).context("opening the key store")?;
    Ok((config, store))
}

pub fn limits_command(command: LimitsCommand) -> Result<()> {
    let (method, client_id, admin) = match command {
        LimitsCommand::Show { client_id, admin } => (Method::GET, client_id, admin),
        LimitsCommand::Reset { client_id, admin } => (Method::DELETE, client_id, admin),
    };
    let path = format!("{CLIENTS}/{client_id}/limits");
    let state = block_on(admin_client::call(&admin.admin_url, method, &path, None))??;
    if admin.json {
        println!("{state}");
    } else {
        println!(
            "client {}  tier {}  limit {} per {} s (burst {})  remaining {}  whole again in {:.1} s",
            state["client_id"].as_str().unwrap_or("?"),
            state["tier"].as_str().unwrap_or("?"),
            state["limit"],
            state["window_seconds"],
            state["burst"],
            state["remaining"],
            state["reset_seconds"].as_f64().unwrap_or(0.0)
        );
    }
    Ok(())
}

#[derive(Subcommand)]
pub enum TokensCommand {
    /// A new signing key for the token endpoint; the old one stays in the
    /// JWKS until its last token expires. A running gateway follows within
    /// a second.
    RotateKey {
        /// The configuration whose `state_dir` holds the keys.
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

pub fn tokens_command(command: TokensCommand) -> Result<()> {
    let TokensCommand::RotateKey { config } = command;
    let config = Config::load(config.as_deref()).context("loading the configuration")?;
    let file = gateway::tokens::KeyFile::new(
        config.state_dir.join("token-keys.json"),
        config.tokens.max_ttl_seconds(),
    );
    let kid = file
        .rotate(unix_now())
        .context("rotating the token signing key")?;
    println!(
        "new token signing key {kid}; the previous one stays published for {} s",
        config.tokens.max_ttl_seconds()
    );
    Ok(())
}
