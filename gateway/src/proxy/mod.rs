//! The HTTP proxy: listeners (plain HTTP/1.1 and h2c, or TLS with HTTP/2
//! and HTTP/1.1 by ALPN, optionally mTLS), API-key authentication,
//! forwarding to upstream pools.
//!
//! Request lifecycle, as named phases (each is a step in [`Gateway::process`]):
//!
//! ```text
//! accept ─▶ route ─▶ credential ─▶ authenticate ─▶ authorize ─▶ shed ─▶ limit ─▶ forward ─▶ respond ─▶ log
//!   │         │          │              │              │          │        │         │
//! banned     404        401            401            403        503      429   502 / 503 / 504
//! ```
//!
//! - **accept**: a connection from a source banned in userspace-only mode is
//!   closed at once, and so is a request on an open connection (403) once
//!   its source is banned (with XDP attached the kernel already dropped it).
//! - **route**: host, then longest path prefix; no match is a 404.
//! - **credential**: a JWT in `Authorization: Bearer` (routes that take
//!   JWTs), else the API key from headers, query or cookie (route's sources,
//!   that precedence); none on an authenticated route is a 401 with
//!   `WWW-Authenticate`.
//! - **authenticate**: JWT: shape, cache, `alg`, issuer, key, signature,
//!   claims; API key: checksum, then the in-memory index. Refused is a 401.
//! - **authorize**: the route's required scopes; one missing is a 403.
//! - **shed**: when the route's upstream pool is overloaded (see
//!   [`overload`]), the lowest tiers get a 503 with `Retry-After` first.
//! - **limit**: the client's tier quota (GCRA); over it is a 429 with
//!   `Retry-After`. Only requests that passed every check before count.
//!
//! Refused credentials and 429s also feed the [`crate::guard`], which bans
//! sources that guess keys or ignore 429s in the kernel.
//! - **forward**: credentials stripped (unless the route keeps them), client
//!   identity, request id and `X-Forwarded-*` set, to a pool server; refused
//!   connection 502, no healthy server 503, timeout 504.
//! - **respond**: hop-by-hop headers removed, `X-Request-Id` added.
//! - **log**: one JSON access-log line on stdout (key id, never the key).
//!
//! A denied request never reaches an upstream.
pub mod access_log;
pub mod credentials;
pub mod error;
pub mod forward;
mod idle;
pub mod oauth;
pub mod overload;
pub mod route;
pub mod tls;
pub mod upstream;
pub mod workers;

use std::{collections::HashMap, convert::Infallible, net::SocketAddr, sync::Arc, time::Instant};

use bytes::Bytes;
use http::{header, HeaderName, HeaderValue, Request, Response, Uri, Version};
use http_body_util::{combinators::BoxBody, BodyExt};
use hyper::body::Incoming;
use hyper_util::{
    client::legacy::{connect::HttpConnector, Client},
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::conn::auto,
};
use tokio::{net::TcpListener, sync::watch};
use tokio_rustls::TlsAcceptor;

use self::{
    access_log::{request_id, AccessLog},
    error::ProxyError,
    forward::X_REQUEST_ID,
    idle::Activity,
    route::{Route, RouteTable},
    upstream::Pool,
};
use crate::{
    clock::{monotonic_ns, unix_now},
    config::{AuthPolicy, Config, LimitBy, LimitsConfig, TierConfig, UpstreamIdentity},
    guard::SourceGuard,
    jwt::{JwtVerifier, VerifiedToken},
    keys::{Client as ApiClient, KeyIndex, KeyRejection},
    limits::{Decision, LimitKey, LocalLimiter, Quota, RateLimiter},
    metrics::{Metrics, Outcome, Recorder},
    tokens::{Grant, TokenIssuer},
    xdp::{PolicyHandle, PolicyUpdate, UserspaceBans},
};

pub type ProxyBody = BoxBody<Bytes, hyper::Error>;

/// Only if a config somehow has no tiers (parsing always adds defaults).
static DEFAULT_QUOTA: std::sync::LazyLock<Quota> =
    std::sync::LazyLock::new(|| Quota::new("default", 10, std::time::Duration::from_secs(60), 10));

/// Who a request is from, whichever credential proved it. Shares what the
/// key index or the token cache holds: nothing is copied per request.
#[derive(Clone, Debug)]
pub enum Identity {
    /// A client in the key store (by API key, or named by a token).
    Stored(Arc<ApiClient>),
    /// A token's client that the store does not know.
    Token(Arc<VerifiedToken>),
}

impl Identity {
    pub fn client_id(&self) -> &str {
        match self {
            Identity::Stored(client) => &client.id,
            Identity::Token(token) => &token.client_id,
        }
    }

    pub fn tier(&self) -> &str {
        match self {
            Identity::Stored(client) => &client.tier,
            Identity::Token(token) => &token.tier,
        }
    }

    pub fn scopes(&self) -> &[String] {
        match self {
            Identity::Stored(client) => &client.scopes,
            Identity::Token(token) => &token.scopes,
        }
    }
}

pub struct Gateway {
    /// What every worker shares (keys, JWT, pools, limiter, log, ...).
    shared: Shared,
    routes: RouteTable,
    client_id_header: HeaderName,
    client_tier_header: HeaderName,
    trusted_proxies: Vec<ipnet::IpNet>,
    limits: LimitsConfig,
    client: Client<HttpConnector, Incoming>,
    /// This worker's request counts.
    metrics: Recorder,
}

/// What every worker's [`Gateway`] shares: built once per process.
#[derive(Clone)]
pub struct Shared {
    pub keys: Arc<KeyIndex>,
    pub jwt: Arc<JwtVerifier>,
    /// Set when bans are enforced here instead of in XDP.
    pub userspace_bans: Option<UserspaceBans>,
    /// One pool per upstream, so ejection and health state are the same
    /// for every worker.
    pub pools: Arc<HashMap<String, Arc<Pool>>>,
    pub access_log: access_log::AccessLogger,
    /// `limits.max_connections`, across all workers and listeners.
    pub connections: Arc<tokio::sync::Semaphore>,
    pub limiter: Arc<dyn RateLimiter>,
    /// Quotas by tier name; the first tier is the default for unknown names.
    pub quotas: Arc<Vec<Quota>>,
    /// Kernel feedback: decides bans and budgets from what requests show.
    pub guard: Arc<SourceGuard>,
    /// Where the guard's decisions go (batched, off the request path).
    pub policy: PolicyHandle,
    pub metrics: Arc<Metrics>,
    /// The gateway's own token issuer, when `[tokens]` is enabled.
    pub tokens: Option<Arc<TokenIssuer>>,
}

impl Shared {
    pub fn new(
        config: &Config,
        keys: Arc<KeyIndex>,
        jwt: Arc<JwtVerifier>,
        userspace_bans: Option<UserspaceBans>,
        policy: PolicyHandle,
        tokens: Option<Arc<TokenIssuer>>,
    ) -> Self {
        Self {
            keys,
            jwt,
            userspace_bans,
            pools: Arc::new(
                config
                    .upstreams
                    .iter()
                    .map(|u| (u.name.clone(), Arc::new(Pool::new(u))))
                    .collect(),
            ),
            access_log: access_log::AccessLogger::stdout(),
            connections: Arc::new(tokio::sync::Semaphore::new(config.limits.max_connections)),
            limiter: Arc::new(LocalLimiter::new(1_000_000)),
            quotas: Arc::new(config.tiers.iter().map(TierConfig::quota).collect()),
            guard: Arc::new(SourceGuard::new(config.guard_settings())),
            policy,
            tokens,
            metrics: Arc::new(Metrics::new(
                config.routes.iter().map(route::route_name).collect(),
                config.tiers.iter().map(|t| t.name.clone()).collect(),
            )),
        }
    }

    /// A tier's position (0 = lowest) and quota; unknown names get the first.
    pub fn tier(&self, name: &str) -> (usize, &Quota) {
        self.quotas
            .iter()
            .enumerate()
            .find(|(_, q)| q.name == name)
            .or(self.quotas.first().map(|q| (0, q)))
            .unwrap_or((0, &DEFAULT_QUOTA))
    }

    /// Tells the guard a client of tier `rank` authenticated from `ip`. The
    /// guard's state is shared by every worker; this per-thread memo keeps
    /// one busy source from making workers queue on the same guard shard:
    /// each worker reports a source at most once a second, or sooner for a
    /// higher tier. Budgets decay over minutes, so a second is plenty.
    fn note_authenticated(&self, ip: std::net::IpAddr, rank: usize) {
        const REPORT_EVERY_NS: u64 = 1_000_000_000;
        const REMEMBERED: usize = 4096;
        thread_local! {
            static REPORTED: std::cell::RefCell<HashMap<std::net::IpAddr, (usize, u64)>> =
                std::cell::RefCell::new(HashMap::new());
        }
        let now = monotonic_ns();
        let due = REPORTED.with(|reported| {
            let mut reported = reported.borrow_mut();
            match reported.get(&ip) {
                Some(&(seen, at)) if seen >= rank && now.saturating_sub(at) < REPORT_EVERY_NS => {
                    false
                }
                _ => {
                    if reported.len() >= REMEMBERED {
                        reported.clear();
                    }
                    reported.insert(ip, (rank, now));
                    true
                }
            }
        });
        if due {
            self.submit(self.guard.authenticated(ip, rank, now));
        }
    }

    /// Hands a guard decision to the policy writer.
    pub fn submit(&self, update: Option<PolicyUpdate>) {
        if let Some(update) = update {
            if !self.policy.submit(update) {
                tracing::warn!(?update, "policy queue full; update dropped");
            }
        }
    }

    /// Returns idle tier budgets to the default, forever; on the control runtime.
    pub async fn sweep_guard(self, every: std::time::Duration) {
        let mut ticker = tokio::time::interval(every);
        loop {
            ticker.tick().await;
            for update in self.guard.sweep(monotonic_ns()) {
                self.submit(Some(update));
            }
        }
    }

    /// Starts the pools' active health checks (on the calling runtime).
    pub fn spawn_health_checks(&self) {
        for pool in self.pools.values() {
            pool.spawn_health_checks();
            pool.spawn_overload_checks(self.quotas.len());
        }
    }
}

impl Gateway {
    /// One per worker thread: its own upstream connection pool, so a
    /// request and its upstream connection stay on one thread.
    pub fn new(config: &Config, shared: &Shared) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(config.limits.connect_timeout));
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(std::time::Duration::from_secs(90))
            .build(connector);
        // Validated in Config::parse; the fallbacks are never used.
        let header = |name: &str, fallback: &'static str| {
            HeaderName::from_bytes(name.as_bytes()).unwrap_or(HeaderName::from_static(fallback))
        };
        Self {
            shared: shared.clone(),
            routes: RouteTable::new(&config.routes),
            client_id_header: header(&config.forwarding.client_id_header, "x-client-id"),
            client_tier_header: header(&config.forwarding.client_tier_header, "x-client-tier"),
            trusted_proxies: config.forwarding.trusted_proxies.clone(),
            limits: config.limits.clone(),
            client,
            metrics: shared.metrics.recorder(),
        }
    }

    /// Accepts connections until `shutdown` turns true; with `tls`, each
    /// connection is a TLS handshake first (ALPN picks h2 or HTTP/1.1).
    pub async fn serve(
        self: Arc<Self>,
        listener: TcpListener,
        tls: Option<TlsAcceptor>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        loop {
            let (stream, peer) = tokio::select! {
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        tracing::warn!(%error, "accept failed");
                        continue;
                    }
                },
                _ = shutdown.changed() => return,
            };
            // Phase: accept.
            if let Some(bans) = &self.shared.userspace_bans {
                if bans.is_banned(peer.ip(), monotonic_ns()) {
                    continue;
                }
            }
            let Ok(permit) = self.shared.connections.clone().try_acquire_owned() else {
                tracing::warn!(%peer, "connection limit reached; closing the new connection");
                continue;
            };
            let gateway = self.clone();
            let tls = tls.clone();
            tokio::spawn(async move {
                let _permit = permit;
                match tls {
                    None => gateway.serve_connection(stream, peer, "http").await,
                    Some(acceptor) => {
                        let handshake = tokio::time::timeout(
                            gateway.limits.request_timeout,
                            acceptor.accept(stream),
                        );
                        match handshake.await {
                            Ok(Ok(stream)) => gateway.serve_connection(stream, peer, "https").await,
                            Ok(Err(error)) => {
                                tracing::debug!(%peer, %error, "TLS handshake failed")
                            }
                            Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                        }
                    }
                }
            });
        }
    }

    async fn serve_connection<I>(self: Arc<Self>, io: I, peer: SocketAddr, proto: &'static str)
    where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let header_timeout = self.limits.request_timeout;
        let max_buf = self.limits.max_header_bytes.max(8192);
        let gateway = self.clone();
        let activity = Arc::new(Activity::default());
        let seen = activity.clone();
        let service = hyper::service::service_fn(move |req| {
            let gateway = gateway.clone();
            let busy = seen.begin();
            async move {
                let response = gateway.handle(req, peer, proto).await;
                drop(busy);
                Ok::<_, Infallible>(response)
            }
        });
        let mut builder = auto::Builder::new(TokioExecutor::new());
        builder
            .http1()
            .timer(TokioTimer::new())
            .header_read_timeout(header_timeout)
            .max_buf_size(max_buf);
        builder
            .http2()
            .timer(TokioTimer::new())
            .max_header_list_size(u32::try_from(max_buf).unwrap_or(u32::MAX));
        let connection = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
        tokio::pin!(connection);
        // Idle connections (HTTP/2 ones too, which the header-read timeout
        // does not cover) are closed gracefully after `request_timeout`
        // (HTTP/2: GOAWAY), and dropped if the peer lingers as long again.
        let mut ticker = tokio::time::interval(header_timeout / 2);
        let mut closing_since: Option<Instant> = None;
        let result = loop {
            tokio::select! {
                result = connection.as_mut() => break Some(result),
                _ = ticker.tick() => match closing_since {
                    Some(since) if since.elapsed() >= header_timeout => break None,
                    Some(_) => {}
                    None if activity.idle_for(monotonic_ns()) >= header_timeout => {
                        connection.as_mut().graceful_shutdown();
                        closing_since = Some(Instant::now());
                    }
                    None => {}
                },
            }
        };
        if let Some(Err(error)) = result {
            tracing::debug!(%peer, %error, "connection ended with an error");
        }
    }

    async fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
        peer: SocketAddr,
        proto: &'static str,
    ) -> Response<ProxyBody> {
        let started = Instant::now();
        let mut log = AccessLog {
            ts: unix_now() as u64,
            request_id: request_id(req.headers()),
            peer: peer.ip().to_canonical().to_string(),
            method: req.method().to_string(),
            path: req.uri().path().to_owned(),
            ..AccessLog::default()
        };
        let mut response = match self.process(req, peer, proto, &mut log).await {
            Ok(response) => response,
            Err(error) => {
                // Feedback for the kernel: guessing and ignoring 429s get a source banned.
                let ip = peer.ip();
                match &error {
                    ProxyError::RateLimited(limited) => self.shared.submit(
                        self.shared
                            .guard
                            .rate_limited(ip, limited.1.reset, monotonic_ns()),
                    ),
                    ProxyError::InvalidCredential(_) | ProxyError::InvalidToken(_) => self
                        .shared
                        .submit(self.shared.guard.auth_failed(ip, monotonic_ns())),
                    _ => {}
                }
                log.error = Some(error.code());
                log.detail = error.detail();
                log.blame = Some(error.blame());
                let mut response = error.into_response();
                // A 502/503/504 after the limit phase still tells the quota.
                let quota = log.tier_rank.and_then(|rank| self.shared.quotas.get(rank));
                if let (Some(decision), Some(quota)) = (&log.limit, quota) {
                    forward::set_rate_limit(response.headers_mut(), quota, decision);
                }
                response
            }
        };
        if let Ok(id) = HeaderValue::from_str(&log.request_id) {
            response.headers_mut().insert(X_REQUEST_ID, id);
        }
        log.status = response.status().as_u16();
        log.latency_ms = started.elapsed().as_secs_f64() * 1000.0;
        self.metrics.record(&Outcome {
            route: log.route_index,
            tier: log.tier_rank,
            status: log.status,
            error: log.error,
            detail: log.detail,
        });
        if let Ok(line) = serde_json::to_vec(&log) {
            self.shared.access_log.log(&line);
        }
        response
    }

    /// The phases after accept; an `Err` is answered by the gateway and
    /// never reaches an upstream.
    async fn process(
        &self,
        mut req: Request<Incoming>,
        peer: SocketAddr,
        proto: &'static str,
        log: &mut AccessLog,
    ) -> Result<Response<ProxyBody>, ProxyError> {
        // Phase: accept, again: a source banned in userspace-only mode while
        // its keep-alive connection was open is refused (and disconnected).
        if let Some(bans) = &self.shared.userspace_bans {
            if bans.is_banned(peer.ip(), monotonic_ns()) {
                return Err(ProxyError::BannedSource);
            }
        }

        // The gateway's own OAuth2 endpoints come before any route.
        if let Some(tokens) = &self.shared.tokens {
            if oauth::handles(req.uri().path()) {
                return Ok(oauth::handle(&self.shared, tokens, req, peer.ip(), log).await);
            }
        }

        // Phase: route.
        let host = req
            .headers()
            .get(header::HOST)
            .and_then(|v| v.to_str().ok())
            .or_else(|| req.uri().authority().map(|a| a.as_str()));
        let route = self
            .routes
            .find(host, req.uri().path())
            .ok_or(ProxyError::NoRoute)?;
        log.route = Some(route.name.clone());
        log.route_index = Some(route.index);

        // Phases: credential, authenticate, authorize.
        let client = match route.auth {
            AuthPolicy::None => None,
            policy => Some(self.authenticate(&req, route, policy, log).await?),
        };
        if let Some(client) = &client {
            let (rank, _) = self.shared.tier(client.tier());
            log.tier_rank = Some(rank);
            self.shared.note_authenticated(peer.ip(), rank);
            if let Some(missing) = route
                .required_scopes
                .iter()
                .find(|scope| !client.scopes().contains(scope))
            {
                return Err(ProxyError::MissingScope(missing.clone()));
            }
        }

        // Phase: shed. Before limit, so a shed request costs no quota; the
        // lowest tier goes first, anonymous requests count as the lowest.
        let pool = self
            .shared
            .pools
            .get(&route.upstream)
            .ok_or(ProxyError::NoHealthyUpstream)?;
        let _in_flight = pool
            .load
            .admit(log.tier_rank.unwrap_or(0), self.shared.quotas.len())
            .map_err(ProxyError::Overloaded)?;

        // Phase: limit. After authorize, so refused requests never count.
        let limited = match &client {
            Some(identity) if route.rate_limit => {
                let (quota, decision) = self.limit(route, identity, log.tier_rank, peer);
                if !decision.allowed {
                    return Err(ProxyError::RateLimited(Box::new((quota.clone(), decision))));
                }
                log.limit = Some(decision.clone());
                Some((quota, decision))
            }
            _ => None,
        };

        // Phase: forward.
        let lease = pool.pick().ok_or(ProxyError::NoHealthyUpstream)?;
        log.upstream = Some(lease.server.addr.to_string());
        // WebSocket and other HTTP/1.1 upgrades: the protocol name goes to
        // the upstream, and after its 101 both connections are spliced.
        let upgrade = forward::upgrade_protocol(req.headers());
        let client_upgrade = upgrade.is_some().then(|| hyper::upgrade::on(&mut req));
        let mut upstream_req = self.rewrite(
            req,
            route,
            client.as_ref(),
            (peer, proto),
            &log.request_id,
            lease.server.addr,
        )?;
        if let Some(protocol) = &upgrade {
            forward::set_upgrade(upstream_req.headers_mut(), protocol.clone());
        }
        let sent = Instant::now();
        let result = tokio::time::timeout(
            self.limits.upstream_timeout,
            self.client.request(upstream_req),
        )
        .await;
        let server_error = !matches!(&result, Ok(Ok(r)) if !r.status().is_server_error());
        pool.load.observe(sent.elapsed(), server_error);
        let mut response = match result {
            Err(_elapsed) => return Err(ProxyError::UpstreamTimeout),
            Ok(Err(error)) if error.is_connect() => {
                lease.eject();
                return Err(ProxyError::UpstreamConnect);
            }
            Ok(Err(error)) => {
                tracing::warn!(%error, upstream = %lease.server.addr, "upstream request failed");
                return Err(ProxyError::Upstream);
            }
            Ok(Ok(response)) => response,
        };

        // Phase: respond.
        if let Some((quota, decision)) = &limited {
            forward::set_rate_limit(response.headers_mut(), quota, decision);
        }
        let switched = response.status() == http::StatusCode::SWITCHING_PROTOCOLS;
        let accepted = forward::upgrade_protocol(response.headers());
        forward::strip_hop_by_hop(response.headers_mut());
        if let (true, Some(client_upgrade), Some(protocol)) = (switched, client_upgrade, accepted) {
            forward::set_upgrade(response.headers_mut(), protocol);
            let upstream_upgrade = hyper::upgrade::on(&mut response);
            let peer = log.peer.clone();
            tokio::spawn(async move {
                match tokio::try_join!(client_upgrade, upstream_upgrade) {
                    Ok((client, upstream)) => {
                        let mut client = TokioIo::new(client);
                        let mut upstream = TokioIo::new(upstream);
                        if let Err(error) =
                            tokio::io::copy_bidirectional(&mut client, &mut upstream).await
                        {
                            tracing::debug!(%peer, %error, "upgraded connection ended with an error");
                        }
                    }
                    Err(error) => tracing::debug!(%peer, %error, "upgrade failed"),
                }
            });
        }
        Ok(response.map(BodyExt::boxed))
    }

    /// Counts the request against the client's tier quota.
    fn limit(
        &self,
        route: &Route,
        identity: &Identity,
        rank: Option<usize>,
        peer: SocketAddr,
    ) -> (&Quota, Decision) {
        let quota = rank
            .and_then(|rank| self.shared.quotas.get(rank))
            .unwrap_or(&DEFAULT_QUOTA);
        let ip = peer.ip().to_canonical();
        let key = match route.limit_by {
            LimitBy::Client => LimitKey::Client(identity.client_id().to_owned()),
            LimitBy::Source => LimitKey::Source(ip),
            LimitBy::Both => LimitKey::ClientAtSource(identity.client_id().to_owned(), ip),
        };
        let decision = self
            .shared
            .limiter
            .check(&key, quota, route.cost, monotonic_ns());
        (quota, decision)
    }

    /// A JWT in `Authorization: Bearer` where the route takes JWTs,
    /// otherwise an API key from the route's sources.
    async fn authenticate(
        &self,
        req: &Request<Incoming>,
        route: &Route,
        policy: AuthPolicy,
        log: &mut AccessLog,
    ) -> Result<Identity, ProxyError> {
        let accepts_jwt = matches!(policy, AuthPolicy::Jwt | AuthPolicy::Both);
        let accepts_key = matches!(policy, AuthPolicy::ApiKey | AuthPolicy::Both);
        if accepts_jwt {
            if let Some(token) = credentials::bearer_jwt(req.headers()) {
                let verified = self
                    .shared
                    .jwt
                    .verify(token, unix_now())
                    .await
                    .map_err(ProxyError::InvalidToken)?;
                log.issuer = Some(verified.issuer.clone());
                // The gateway's own tokens name a stored client by id (so
                // revoking the client revokes its tokens); others may name
                // one by external id.
                let own = self
                    .shared
                    .tokens
                    .as_ref()
                    .is_some_and(|t| t.issuer == verified.issuer);
                let stored = if own {
                    let client = self.shared.keys.client(&verified.client_id);
                    Some(client.ok_or(ProxyError::InvalidCredential(KeyRejection::Unknown))?)
                } else {
                    self.shared.keys.by_external_id(&verified.client_id)
                };
                let identity = match stored {
                    Some(client) if client.disabled => {
                        return Err(ProxyError::InvalidCredential(KeyRejection::Disabled))
                    }
                    Some(client) if client.expires_at.is_some_and(|at| at <= unix_now()) => {
                        return Err(ProxyError::InvalidCredential(KeyRejection::Expired))
                    }
                    Some(client) => Identity::Stored(client),
                    None => Identity::Token(verified),
                };
                log.client_id = Some(identity.client_id().to_owned());
                log.tier = Some(identity.tier().to_owned());
                return Ok(identity);
            }
        }
        if !accepts_key {
            return Err(ProxyError::MissingCredential);
        }
        let credential = credentials::extract(req.headers(), req.uri().query(), &route.key_sources)
            .ok_or(ProxyError::MissingCredential)?;
        let (key_id, outcome) = self.shared.keys.verify(&credential.value, unix_now());
        log.key_id = key_id;
        let client = outcome.map_err(ProxyError::InvalidCredential)?;
        log.client_id = Some(client.id.clone());
        log.tier = Some(client.tier.clone());
        Ok(Identity::Stored(client))
    }

    fn rewrite(
        &self,
        req: Request<Incoming>,
        route: &Route,
        client: Option<&Identity>,
        (peer, proto): (SocketAddr, &'static str),
        request_id: &str,
        server: SocketAddr,
    ) -> Result<Request<Incoming>, ProxyError> {
        let (mut parts, body) = req.into_parts();
        let headers = &mut parts.headers;
        forward::strip_hop_by_hop(headers);
        let query = if route.forward_credential {
            parts.uri.query().map(str::to_owned)
        } else {
            // A bearer JWT travels in Authorization whatever the key sources say.
            headers.remove(header::AUTHORIZATION);
            forward::strip_credentials(headers, parts.uri.query(), &route.key_sources)
        };
        // Identity headers come from us only, never from the client.
        headers.remove(&self.client_id_header);
        headers.remove(&self.client_tier_header);
        match (client, route.upstream_identity, &self.shared.tokens) {
            (Some(client), UpstreamIdentity::Jwt, Some(tokens)) => {
                let grant = Grant {
                    client_id: client.client_id(),
                    tier: client.tier(),
                    scopes: client.scopes(),
                };
                let token = tokens
                    .upstream_token(&grant, &route.upstream, unix_now())
                    .map_err(|error| {
                        tracing::error!(%error, "signing an upstream token failed");
                        ProxyError::Internal
                    })?;
                if let Ok(value) = HeaderValue::from_str(&format!("Bearer {token}")) {
                    headers.insert(header::AUTHORIZATION, value);
                }
            }
            (Some(client), _, _) => {
                for (name, value) in [
                    (&self.client_id_header, client.client_id()),
                    (&self.client_tier_header, client.tier()),
                ] {
                    if let Ok(value) = HeaderValue::from_str(value) {
                        headers.insert(name.clone(), value);
                    }
                }
            }
            (None, _, _) => {}
        }
        if let Ok(id) = HeaderValue::from_str(request_id) {
            headers.insert(X_REQUEST_ID, id);
        }
        forward::set_forwarded(headers, peer.ip(), &self.trusted_proxies, proto);
        // HTTP/2 requests carry the host in the URI, not a Host header.
        if !headers.contains_key(header::HOST) {
            if let Some(authority) = parts
                .uri
                .authority()
                .and_then(|a| HeaderValue::from_str(a.as_str()).ok())
            {
                headers.insert(header::HOST, authority);
            }
        }
        let path = parts.uri.path();
        let path_and_query = match query {
            Some(query) => format!("{path}?{query}"),
            None => path.to_owned(),
        };
        parts.uri = Uri::builder()
            .scheme("http")
            .authority(server.to_string())
            .path_and_query(path_and_query)
            .build()
            .map_err(|_| ProxyError::Upstream)?;
        parts.version = Version::HTTP_11;
        Ok(Request::from_parts(parts, body))
    }
}
