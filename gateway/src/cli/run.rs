//! `gateway run` and `gateway check-config`: load the configuration, apply
//! the command line on top, then start the kernel path, the key store,
//! the listeners, the token endpoint and the admin API.
use std::{
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use anyhow::{bail, Context, Result};
use clap::Args;
use gateway::{
    admin::Admin,
    clock::unix_now,
    config::{Config, IssuerConfig, LimitsBackend},
    jwt::{keys::IssuerKeys, JwtVerifier},
    keys::{postgres::follow, KeyIndex, KeyStore, PgStore, SqliteStore},
    proxy::workers,
    reload::{self, Reloader},
    shared::Shared,
    tokens::TokenIssuer,
    xdp::{
        self, syncookies::SynCookies, Enforcement, KernelPath, Mode, PolicyWriter, UserspaceBans,
    },
};
use ipnet::IpNet;

/// `--mode`'s values. A mirror of [`Mode`] so clap stays out of the
/// library.
#[derive(Clone, Copy, clap::ValueEnum)]
enum ModeArg {
    Enforce,
    Monitor,
}

impl From<ModeArg> for Mode {
    fn from(mode: ModeArg) -> Self {
        match mode {
            ModeArg::Enforce => Mode::Enforce,
            ModeArg::Monitor => Mode::Monitor,
        }
    }
}

#[derive(Args, Clone)]
pub struct RunArgs {
    /// Configuration file (TOML); without it, the embedded defaults.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Overrides `xdp.interface`: the interface whose ingress XDP guards.
    #[arg(long)]
    interface: Option<String>,
    /// Overrides `xdp.ports` (comma separated); default: the listeners' ports.
    #[arg(long, value_delimiter = ',')]
    ports: Vec<u16>,
    /// Overrides `xdp.pin_root`.
    #[arg(long)]
    pin_root: Option<PathBuf>,
    /// Overrides `xdp.mode`: `enforce` drops; `monitor` only counts.
    #[arg(long, value_enum)]
    mode: Option<ModeArg>,
    /// Fail to start if XDP cannot be attached, instead of enforcing in userspace only.
    #[arg(long)]
    require_xdp: bool,
    /// Run without the kernel path at all.
    #[arg(long, conflicts_with = "require_xdp")]
    no_xdp: bool,
    /// Sets `xdp.detach_on_exit`: on a clean stop, detach the program and
    /// remove its pins instead of leaving the bans enforced by the kernel
    /// for the next gateway to adopt.
    #[arg(long)]
    detach_on_exit: bool,
    /// Adds to `xdp.allow`: CIDRs that are never dropped (repeatable).
    #[arg(long = "allow", value_name = "CIDR")]
    allow: Vec<IpNet>,
    /// Overrides the default kernel budget's new connections per second
    /// (0 = unlimited).
    #[arg(long)]
    syn_rate: Option<u32>,
    /// Overrides the default kernel budget's connection burst.
    #[arg(long)]
    syn_burst: Option<u32>,
    /// Overrides the default kernel budget's packets per second (0 =
    /// unlimited).
    #[arg(long)]
    pkt_rate: Option<u32>,
    /// Overrides the default kernel budget's packet burst.
    #[arg(long)]
    pkt_burst: Option<u32>,
    /// Overrides `xdp.syn_cookies`: spoof-resistant SYN budgets, SYN
    /// cookies for sources over budget sent by `xdp` or the `kernel` (both
    /// set net.ipv4.tcp_syncookies = 2), or `off`.
    #[arg(long, value_enum)]
    syn_cookies: Option<SynCookies>,
    /// Overrides `xdp.syn_flood_rate`: SYNs/s from all sources past which
    /// every source is in SYN-cookie mode (0 = off).
    #[arg(long)]
    syn_flood_rate: Option<u32>,
}

impl RunArgs {
    /// Applies command-line overrides on top of the file (or defaults).
    fn apply(&self, config: &mut Config) {
        let xdp = &mut config.xdp;
        if let Some(interface) = &self.interface {
            xdp.interface = interface.clone();
        }
        if !self.ports.is_empty() {
            xdp.ports = self.ports.clone();
        }
        if let Some(pin_root) = &self.pin_root {
            xdp.pin_root = pin_root.clone();
        }
        if let Some(mode) = self.mode {
            xdp.mode = mode.into();
        }
        xdp.require_xdp |= self.require_xdp;
        xdp.detach_on_exit |= self.detach_on_exit;
        if self.no_xdp {
            xdp.enabled = false;
        }
        xdp.allow.extend(self.allow.iter().cloned());
        if let Some(cookies) = self.syn_cookies {
            xdp.syn_cookies = cookies;
        }
        if let Some(rate) = self.syn_flood_rate {
            xdp.syn_flood_rate = rate;
        }
        for (value, target) in [
            (self.syn_rate, &mut xdp.default_syn_rate),
            (self.syn_burst, &mut xdp.default_syn_burst),
            (self.pkt_rate, &mut xdp.default_pkt_rate),
            (self.pkt_burst, &mut xdp.default_pkt_burst),
        ] {
            if let Some(value) = value {
                *target = value;
            }
        }
    }
}

/// Loads a configuration as `run` would and summarises it.
pub fn check_config(file: &Path) -> Result<()> {
    let config = Config::load(Some(file))
        .with_context(|| format!("{} is not a valid configuration", file.display()))?;
    println!(
        "{}: valid ({} listeners, {} upstreams, {} routes)",
        file.display(),
        config.listeners.len(),
        config.upstreams.len(),
        config.routes.len()
    );
    Ok(())
}

pub fn run(args: RunArgs) -> Result<()> {
    let mut config = Config::load(args.config.as_deref()).context("loading the configuration")?;
    args.apply(&mut config);
    // The overrides get the file's checks (`--syn-burst 0` is `xdp.default_syn_burst`).
    config
        .validate()
        .context("the configuration with the command line's overrides is not valid")?;
    let settings = config.xdp_settings();
    if config.xdp.enabled && settings.ports.is_empty() {
        bail!("the kernel path needs at least one port to protect (xdp.ports or a listener)");
    }
    // The control runtime: kernel policy, key and JWKS refresh, health
    // checks. Requests are served by the worker threads.
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async {
        // Before anything binds: a gateway still running here hands over its sockets.
        let (mut inherited, mut predecessor) = super::takeover::take(&config)?;
        let workers = match config.limits.workers {
            0 => std::thread::available_parallelism().map_or(1, usize::from),
            n => n,
        };
        // Before its kernel path is borrowed: a bad certificate fails here.
        let started = bind_listeners(&config, workers, &mut inherited)?;
        let lent = super::takeover::borrow_pin_root(&config, &mut predecessor)?;
        let mut kernel = if config.xdp.enabled {
            Some(KernelPath::start(&settings).context("starting the XDP kernel path")?)
        } else {
            None
        };
        if lent {
            kernel.iter_mut().for_each(KernelPath::on_loan);
        }
        // Kernel events reach the log only while this reads them.
        if let Some(reader) = kernel.as_mut().and_then(KernelPath::take_event_reader) {
            tokio::spawn(reader.run());
        }
        let (policy, writer) = xdp::policy::channel(4096);
        let userspace_bans = match &kernel {
            Some(kernel) => {
                spawn_writer(kernel, writer)?;
                kernel.userspace_bans()
            }
            None => {
                let bans = UserspaceBans::default();
                tokio::spawn(writer.run(bans.clone(), Duration::from_secs(1)));
                bans
            }
        };
        // Fleet mode: this node's bans and budgets reach every node's kernel.
        let policy = match &config.redis.url {
            Some(url) => {
                let node = gateway::fleet::node_id();
                tracing::info!(node, redis = %gateway::fleet::redis::redacted(url), "sharing bans with the fleet");
                // Read only, to reconcile what the fleet wrote there.
                let maps = match kernel.as_ref().and_then(KernelPath::pin_root) {
                    Some(root) => Some(xdp::maps::PinnedMaps::open(root)?),
                    None => None,
                };
                gateway::fleet::bans::start(url, node, config.xdp.allow.clone(), policy, maps)
            }
            None => policy,
        };

        // The shared store when configured (reachable, schema current), or
        // this gateway's own SQLite file.
        let (store, shared_store): (Arc<dyn KeyStore>, Option<Arc<PgStore>>) = match &config
            .store
            .url
        {
            Some(url) => {
                let shared = Arc::new(super::store::open_shared(&config, url).await?);
                (shared.clone(), Some(shared))
            }
            None => (
                Arc::new(SqliteStore::open(&config.keys.store).context("opening the key store")?),
                None,
            ),
        };
        let index = Arc::new(KeyIndex::default());
        // Nothing refreshes a client before the admin API is up: read once.
        let count = (index.load(store.as_ref()).await)
            .context("loading API keys")?
            .context("loading API keys: a client changed meanwhile")?;
        let shown = (config.store.url.as_deref()).map_or_else(
            || config.keys.store.display().to_string(),
            gateway::keys::postgres::redacted,
        );
        tracing::info!(keys = count, store = %shown, "API keys loaded");
        if index.unscoped_external_ids() > 0 {
            tracing::warn!(
                clients = index.unscoped_external_ids(),
                "external ids without an issuer map no token: set them again as ISSUER#CLAIM"
            );
        }
        let contact = Arc::new(follow::Contact::default());
        if let (Some(_), Some(max)) = (&shared_store, config.store.max_staleness) {
            tokio::spawn(follow::watch_staleness(index.clone(), contact.clone(), max));
        }
        match shared_store {
            // Every change on any node, as it commits.
            Some(shared) => tokio::spawn(follow::follow(
                shared,
                index.clone(),
                follow::poll_every(config.keys.refresh, config.store.max_staleness),
                contact.clone(),
            )),
            None => tokio::spawn(refresh_keys(
                store.clone(),
                index.clone(),
                config.keys.refresh,
            )),
        };

        let first_url = started.urls.first().cloned();
        let kernel_attached = kernel
            .as_ref()
            .is_some_and(|k| matches!(k.enforcement(), Enforcement::Kernel { .. }));
        let cookie_targets =
            (kernel_attached && settings.syn_cookies == SynCookies::Xdp).then(|| {
                let own: Vec<_> = started.active.iter().map(|l| l.address).collect();
                xdp::syncookies::CookieTargets::spawn(&settings.ports, &own)
            });

        let tiers = config.tiers.iter().map(|t| t.name.clone()).collect();
        let mut jwt =
            JwtVerifier::new(&config.issuers, tiers).context("configuring JWT issuers")?;
        let tokens = match (config.tokens.enabled, first_url) {
            (true, Some(url)) => Some(start_tokens(&config, url, &mut jwt)?),
            _ => None,
        };
        let jwt = Arc::new(jwt);
        jwt.spawn_refresh();
        if let Some(tokens) = &tokens {
            if let Some(own) = jwt.keys_of(&tokens.issuer) {
                tokio::spawn(follow_token_keys(tokens.clone(), own));
            }
        }
        let mut shared = Shared::new(&config, index, jwt, userspace_bans, policy, tokens);
        if let (LimitsBackend::Redis, Some(url)) = (config.limits.backend, &config.redis.url) {
            shared.limiter =
                gateway::fleet::limits::sync::start(gateway::fleet::limits::Settings {
                    url: url.clone(),
                    lease: config.limits.lease,
                    nodes: config.limits.nodes,
                });
        }
        if let (LimitsBackend::RedisSync, Some(url)) = (config.limits.backend, &config.redis.url) {
            shared.limiter = Arc::new(
                gateway::fleet::limits::naive::SyncLimiter::new(url, config.limits.nodes)
                    .context("redis.url")?,
            );
        }
        shared.spawn_health_checks();
        tokio::spawn(shared.clone().sweep_guard(Duration::from_secs(5)));
        // SIGHUP and `POST /v1/reload`: the same file, the same overrides.
        let overrides = args.clone();
        let reloader = Arc::new(Reloader::new(
            args.config.clone(),
            Box::new(move |config| overrides.apply(config)),
            &config,
            &shared,
            started.active,
            workers,
            kernel.as_ref().and_then(KernelPath::writes),
        ));
        if let Some(targets) = cookie_targets {
            reloader.keep_accepting(targets);
        }
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let admin_socket = match config.admin.enabled {
            true => Some(
                super::takeover::admin_socket(&mut inherited, config.admin.address).with_context(
                    || format!("cannot listen on {} (admin)", config.admin.address),
                )?,
            ),
            false => None,
        };
        super::takeover::close_unclaimed(inherited);
        let proxy_sockets: Vec<_> = started.listeners.iter().flat_map(|l| &l.sockets).collect();
        let offer = super::takeover::offer(&config, &proxy_sockets, admin_socket.as_ref());
        if let Some(offer) = &offer {
            reloader.offer(offer.offered());
        }
        let mut admin_task = None;
        if let Some(socket) = admin_socket {
            let listener = tokio::net::TcpListener::from_std(socket)?;
            println!("admin: http://{}", listener.local_addr()?);
            let pin_root = kernel
                .as_ref()
                .and_then(KernelPath::pin_root)
                .map(Path::to_path_buf);
            let admin = Admin::new(&config, shared.clone(), store.clone(), pin_root).with_context(
                || format!("opening the audit log {}", config.admin.audit_log.display()),
            )?;
            let admin = admin.with_reloader(reloader.clone());
            let admin = Arc::new(admin.with_events(kernel.as_ref().and_then(KernelPath::events)));
            admin_task = Some(tokio::spawn(admin.serve(listener)));
        }
        let (servers, running) =
            workers::spawn(&config, &shared, started.listeners, workers, stopped)
                .context("starting worker threads")?;
        reloader.attach(running);
        tokio::spawn(reload_on_hangup(reloader.clone())?);
        // Serving: the running gateway hands its kernel path off (or refuses).
        super::takeover::ready(predecessor, lent, kernel.as_mut(), offer.as_ref())?;
        match kernel.as_ref().map(KernelPath::enforcement) {
            Some(Enforcement::Kernel { attach }) => println!(
                "ready: XDP attached to {} in {} mode, {:?}, ports {:?}, maps pinned at {}",
                settings.interface,
                attach.name(),
                settings.mode,
                settings.ports,
                settings.pin_root.display()
            ),
            Some(Enforcement::UserspaceOnly { reason }) => {
                println!("ready: userspace-only enforcement ({reason})")
            }
            None => println!("ready: kernel path disabled (xdp.enabled = false)"),
        }
        let (release, releases) = tokio::sync::mpsc::channel(1);
        let offering = offer.map(|offer| tokio::spawn(offer.serve(Some(release))));
        super::takeover::until_shutdown(wait_for_shutdown(), releases, kernel.as_mut()).await?;
        // A draining gateway refuses reloads (a SIGHUP could add listeners).
        reloader.shutting_down();
        tracing::info!(
            drain_timeout = ?config.limits.drain_timeout,
            "shutting down: closing listeners, draining connections"
        );
        // Stop offering and accepting first; a gateway that took the
        // sockets over keeps them open and accepts what is queued.
        for task in offering.into_iter().chain(admin_task) {
            task.abort();
            let _ = task.await;
        }
        let _ = stop.send(true);
        for server in servers {
            let _ = tokio::task::spawn_blocking(move || server.join()).await;
        }
        drop(kernel);
        Ok(())
    })
}

/// Every listener on its sockets (taken over from a running gateway, or
/// bound: one per worker), its address printed.
fn bind_listeners(
    config: &Config,
    workers: usize,
    inherited: &mut gateway::handover::Inherited,
) -> Result<reload::Started> {
    let started = reload::start_listeners(config, |listener| {
        super::takeover::proxy_sockets(inherited, listener.address, workers)
    })
    .map_err(|error| match error {
        // Ports below 1024 without the capability: say so.
        reload::listeners::ListenerError::Bind { address, source } => {
            let hint = gateway::caps::bind_hint(address, &source)
                .map(|hint| format!(": {hint}"))
                .unwrap_or_default();
            anyhow::Error::new(source).context(format!("cannot listen on {address}{hint}"))
        }
        error @ reload::listeners::ListenerError::Tls { .. } => anyhow::Error::new(error),
    })?;
    for url in &started.urls {
        println!("listening: {url}");
    }
    Ok(started)
}

/// Reloads the configuration file on each SIGHUP (the handler is in place
/// when this returns, so a SIGHUP no longer stops the gateway).
fn reload_on_hangup(reloader: Arc<Reloader>) -> Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hangup = signal(SignalKind::hangup()).context("installing SIGHUP handler")?;
    Ok(async move {
        while hangup.recv().await.is_some() {
            tracing::info!("SIGHUP: reloading the configuration");
            // A refusal is logged; the running configuration keeps serving.
            let _ = tokio::task::block_in_place(|| reloader.reload_logged());
        }
    })
}

/// The gateway's own token issuer, trusted by its own JWT verifier.
fn start_tokens(config: &Config, url: String, jwt: &mut JwtVerifier) -> Result<Arc<TokenIssuer>> {
    let issuer = config.tokens.issuer.clone().unwrap_or(url);
    let path = config.state_dir.join("token-keys.json");
    let tokens = TokenIssuer::open(&config.tokens, issuer.clone(), &path, unix_now())
        .context("loading the token signing keys")?;
    jwt.add_static_issuer(
        IssuerConfig::own(&issuer, &config.tokens.audience),
        tokens.verification_keys(),
    )
    .context("trusting the gateway's own tokens")?;
    tracing::info!(%issuer, "token endpoint ready");
    Ok(Arc::new(tokens))
}

/// Follows key rotations (`gateway tokens rotate-key`) and retired keys
/// ageing out of the JWKS.
async fn follow_token_keys(tokens: Arc<TokenIssuer>, own: Arc<IssuerKeys>) {
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    let mut last_reload = unix_now();
    loop {
        ticker.tick().await;
        let now = unix_now();
        if !tokens.changed() && now - last_reload < 60 {
            continue;
        }
        last_reload = now;
        match tokens.reload(now) {
            Ok(keys) => own.set(keys),
            Err(error) => tracing::warn!(%error, "reloading the token signing keys failed"),
        }
    }
}

/// Picks up keys another process (the CLI) wrote to the store.
async fn refresh_keys(store: Arc<dyn KeyStore>, index: Arc<KeyIndex>, every: Duration) {
    let mut seen = store.version().await.ok();
    let mut ticker = tokio::time::interval(every);
    loop {
        ticker.tick().await;
        let version = match store.version().await {
            Ok(version) => version,
            Err(error) => {
                tracing::warn!(%error, "checking the key store failed");
                continue;
            }
        };
        if seen == Some(version) {
            continue;
        }
        match index.load(store.as_ref()).await {
            Ok(Some(count)) => {
                seen = Some(version);
                tracing::info!(keys = count, "API keys reloaded");
            }
            // The admin API changed a client while the keys were read (a
            // revocation, say, which the read may predate; made on this
            // process's connection, it moves no version): next tick.
            Ok(None) => tracing::debug!("a client changed while API keys were read: reading again"),
            Err(error) => tracing::warn!(%error, "reloading API keys failed"),
        }
    }
}

fn spawn_writer(kernel: &KernelPath, writer: PolicyWriter) -> Result<()> {
    let sink = kernel.policy_sink()?;
    tokio::spawn(writer.run(sink, Duration::from_secs(1)));
    Ok(())
}

async fn wait_for_shutdown() -> Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut terminate = signal(SignalKind::terminate()).context("installing SIGTERM handler")?;
    let mut quit = signal(SignalKind::quit()).context("installing SIGQUIT handler")?;
    tokio::select! {
        result = tokio::signal::ctrl_c() => result.context("waiting for SIGINT")?,
        _ = terminate.recv() => {}
        _ = quit.recv() => {}
    }
    Ok(())
}
