//! The HTTP proxy: listeners (plain HTTP/1.1 and h2c, or TLS with HTTP/2
//! and HTTP/1.1 by ALPN, optionally mTLS), authentication, limits,
//! forwarding to upstream pools.
//!
//! Every request goes through named phases, one method each on
//! [`Gateway`], in this order; each fills in the request's
//! [`RequestContext`](context::RequestContext):
//!
//! ```text
//! accept ─▶ target ─▶ route ─▶ credential ─▶ authenticate ─▶ authorize ─▶ shed ─▶ limit ─▶ forward ─▶ respond ─▶ log
//!   │          │         │          │              │              │          │        │         │
//! banned      400       404        401            401            403        503      429   502 / 503 / 504
//! ```
//!
//! A phase that refuses returns a [`ProxyError`]; the remaining phases up
//! to `respond` are skipped, so a refused request never reaches an
//! upstream and never uses quota. `respond` and `log` run for every
//! request (they live in [`respond`]). Serving connections (and the per-connection half of accept) is
//! [`serve`]'s; the gateway's own OAuth2 endpoints ([`oauth`]) are answered
//! after target, before route.
pub mod credentials;
pub mod error;
pub mod forward;
pub mod oauth;
pub mod route;
pub mod tls;
pub mod trace;
pub mod workers;

/// The request-path policy (a leaf module, shared with the configuration).
pub use crate::path;

mod activity;
mod addr_text;
mod body;
mod context;
mod direct;
mod drain;
mod first_head;
mod flagged;
mod head_timer;
mod identity;
mod json_string;
mod one_send;
mod park;
mod rate_fields;
mod respond;
mod rewrite;
mod serve;
mod source;
#[cfg(test)]
mod test_upstream;
mod tier_reply;
mod tunnel;
mod upgrade;
mod upstream_conns;
mod window_stalls;

use std::{borrow::Cow, future::Future, net::IpAddr, sync::Arc};

use bytes::Bytes;
use http::{header::HOST, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::combinators::BoxBody;
use hyper::{body::Incoming, upgrade::OnUpgrade};

use self::{
    body::RequestBody,
    context::RequestContext,
    direct::DirectError,
    error::ProxyError,
    identity::Identity,
    rewrite::{Origin, Rewriter},
    route::{Route, RouteTable},
    tier_reply::TierReplies,
    upstream_conns::{SendError, UpstreamBody},
};
use crate::{
    clock::{monotonic_ns, unix_now},
    config::{AuthPolicy, Config, LimitBy, LimitsConfig},
    guard::ReportMemo,
    h1::H1Error,
    host,
    limits::LimitKeyRef,
    metrics::Recorder,
    shared::Shared,
    upstream::{overload::InFlight, Pool},
};

pub type ProxyBody = BoxBody<Bytes, Box<dyn std::error::Error + Send + Sync>>;

/// A worker's gateway as of the last configuration reload, swapped whole:
/// a connection loads it at accept and each request loads it again, so
/// requests see the new routes, limits and issuers at once while those in
/// flight finish on the one they started with. One atomic load per
/// request (`arc-swap`: no lock, no contention between workers).
pub struct Current(arc_swap::ArcSwap<Gateway>);

impl Current {
    pub fn new(gateway: Gateway) -> Self {
        Self(arc_swap::ArcSwap::from_pointee(gateway))
    }

    pub fn load(&self) -> Arc<Gateway> {
        self.0.load_full()
    }

    /// The worker's gateway under a reloaded configuration (see
    /// [`Gateway::reconfigured`]).
    pub fn reconfigure(&self, config: &Config, shared: &Shared) {
        let next = self.load().reconfigured(config, shared);
        self.0.store(Arc::new(next));
    }
}

/// One per worker thread; its upstream connections are the thread's own
/// ([`upstream_conns`]), so a request and its upstream exchange stay on
/// one thread.
pub struct Gateway {
    /// What every worker shares (keys, JWT, pools, limiter, log, ...).
    shared: Shared,
    routes: RouteTable,
    /// Each route's pool by [`Route::index`], looked up once here: by name
    /// it was a SipHash of the name on every request.
    route_pools: Vec<Option<Arc<Pool>>>,
    rewriter: Rewriter,
    limits: LimitsConfig,
    /// Peers whose `X-Forwarded-For` names the client (see [`source`]).
    trusted_proxies: Vec<ipnet::IpNet>,
    /// This worker's request counts.
    metrics: Recorder,
    /// Which sources this worker told the guard about lately.
    reported: ReportMemo,
    /// Each tier's rate-limit answer parts, built once.
    tier_replies: TierReplies,
}

/// The credential phase's find, borrowed from the request.
enum Credential<'r> {
    Jwt(&'r str),
    ApiKey(&'r str),
}

/// The client's side of a WebSocket upgrade, with its connection's permit
/// (which the tunnel keeps).
struct ClientUpgrade {
    on: OnUpgrade,
    permit: Arc<serve::ConnectionPermit>,
}

/// What the gateway answers when no phase refused.
enum Reply {
    /// The upstream's response, and the client's side of an upgrade it asked for.
    Upstream(Response<UpstreamBody>, Option<ClientUpgrade>),
    /// The gateway's own (the OAuth2 endpoints).
    Local(Response<ProxyBody>),
}

impl Gateway {
    pub fn new(config: &Config, shared: &Shared) -> Self {
        Self {
            shared: shared.clone(),
            routes: RouteTable::new(&config.routes),
            route_pools: (config.routes.iter())
                .map(|route| shared.pools.get(&route.upstream).cloned())
                .collect(),
            rewriter: Rewriter::new(config),
            limits: config.limits.clone(),
            trusted_proxies: config.forwarding.trusted_proxies.clone(),
            metrics: shared.metrics.recorder(),
            reported: ReportMemo::default(),
            tier_replies: TierReplies::new(shared),
        }
    }

    /// This worker's gateway under a reloaded configuration; its upstream
    /// connections (the thread's) are kept.
    pub fn reconfigured(&self, config: &Config, shared: &Shared) -> Self {
        Self::new(config, shared)
    }

    /// One request, through every phase; `finish` turns the response into
    /// what the connection sends.
    ///
    /// This and the phases that wait are written as `async move` blocks,
    /// not `async fn`s: an `async fn`'s future keeps each argument twice
    /// (as it was passed, and moved into the body), and a request's future
    /// is boxed per request, so every byte of it is copied once per
    /// request.
    #[allow(clippy::manual_async_fn)] // what this says
    fn handle<R>(
        self: Arc<Self>,
        req: Request<Incoming>,
        peer: addr_text::Peer,
        proto: &'static str,
        permit: Arc<serve::ConnectionPermit>,
        finish: impl FnOnce(Response<ProxyBody>) -> R,
    ) -> impl Future<Output = R> {
        async move {
            let mut ctx = RequestContext::new(&req, peer, proto);
            let outcome = self.process(req, &mut ctx, permit).await;
            let response = self.respond(outcome, &mut ctx);
            self.log(&ctx, &response);
            finish(response)
        }
    }

    /// The phases that may refuse, in order.
    #[allow(clippy::manual_async_fn)] // an `async fn` keeps its arguments twice (see `handle`)
    fn process<'g, 'c>(
        &'g self,
        mut req: Request<Incoming>,
        ctx: &'c mut RequestContext<'g>,
        permit: Arc<serve::ConnectionPermit>,
    ) -> impl Future<Output = Result<Reply, ProxyError>> + use<'g, 'c> {
        async move {
            self.accept(&req, ctx)?;
            self.target(&req, ctx)?;
            if let Some(tokens) = &self.shared.tokens {
                if oauth::handles(&ctx.path) {
                    let replies = &self.tier_replies;
                    // Boxed, as the JWT check below: see `authenticate`.
                    let response = Box::pin(oauth::handle(
                        &self.shared,
                        tokens,
                        replies,
                        req,
                        self.limits.request_timeout,
                        ctx,
                    ))
                    .await?;
                    return Ok(Reply::Local(response));
                }
            }
            let route = self.route(&req, ctx)?;
            if let Some(credential) = self.credential(&req, route)? {
                self.authenticate(credential, ctx).await?;
                self.authorize(route, ctx)?;
            }
            let pool = self.pool(route)?;
            let _in_flight = self.shed(pool, ctx)?;
            self.limit(route, ctx)?;
            // The client's side of an upgrade, taken before the request moves on.
            let protocol = upgrade::upgrade_protocol(req.headers());
            let upgrade = protocol.is_some().then(|| ClientUpgrade {
                on: hyper::upgrade::on(&mut req),
                permit,
            });
            let bodiless = hyper::body::Body::is_end_stream(req.body());
            let req =
                body::read_ahead(req, self.limits.max_body_bytes, self.limits.request_timeout)
                    .await?;
            if !bodiless {
                // Reading the body may have taken up to `request_timeout`: the
                // pool's ejections are judged by the time it is sent.
                ctx.now_ns = monotonic_ns();
            }
            let response = self.forward(req, protocol, route, pool, ctx).await?;
            Ok(Reply::Upstream(response, upgrade))
        }
    }

    /// **accept**, per request: runs first. Decides the client address
    /// once (the peer, or behind a trusted proxy the client it names; see
    /// [`source`]). A client address banned in userspace is refused with
    /// 403: a banned peer (no XDP) that kept its connection open has it
    /// closed; a forwarded address banned (the kernel cannot drop it: its
    /// packets are the proxy's) gets `Retry-After`, and the proxy's
    /// connection stays open for its other clients. Framing the gateway
    /// will not forward is a 400, a declared body over
    /// `limits.max_body_bytes` a 413, before the body is read (see
    /// [`body`]). The per-connection half runs in [`serve`] before any
    /// request is read.
    fn accept<B>(&self, req: &Request<B>, ctx: &mut RequestContext<'_>) -> Result<(), ProxyError> {
        let peer = ctx.peer.addr.ip();
        ctx.client_ip = source::client_address(req.headers(), peer, &self.trusted_proxies);
        let bans = &self.shared.userspace_bans;
        match bans.ban_left(ctx.client_ip, ctx.now_ns) {
            Some(left) if ctx.remote().forwarded() => Err(ProxyError::BannedForwarded(left)),
            Some(_) => Err(ProxyError::BannedSource),
            None => body::check_head(req.headers(), self.limits.max_body_bytes),
        }
    }

    /// Whether `ip` is banned here now (every ban without XDP).
    fn is_banned(&self, ip: IpAddr) -> bool {
        self.shared.userspace_bans.is_banned(ip, monotonic_ns())
    }

    /// **target**: the request target in the one form every later phase
    /// sees. The path is normalised ([`path::normalize`]) into `ctx.path`
    /// once, so the OAuth2 endpoints, routing, the access log and the
    /// upstream all see the path that was authorised; a path that is not
    /// origin-form is a 400. Two `Host` headers, or one that names another
    /// host or port than the target's authority (absolute-form, HTTP/2
    /// `:authority`; [`host::same`]), are a 400 too: RFC 9112 §3.2.2 would
    /// ignore `Host`, HAProxy refuses. So is a host upstreams could read
    /// as another ([`host::check`]).
    /// `CONNECT` (authority-form, or HTTP/2's, extended CONNECT included)
    /// asks for a tunnel a reverse proxy does not open: a 405.
    fn target<B>(&self, req: &Request<B>, ctx: &mut RequestContext<'_>) -> Result<(), ProxyError> {
        if req.method() == Method::CONNECT {
            return Err(ProxyError::MethodNotAllowed);
        }
        let mut hosts = req.headers().get_all(HOST).iter();
        if let Some(host) = hosts.next() {
            if hosts.next().is_some() {
                return Err(ProxyError::InvalidHost("duplicate_host"));
            }
            if let Some(authority) = req.uri().authority().map(|a| a.as_str().as_bytes()) {
                if !host::same(authority, host.as_bytes(), req.uri().scheme_str()) {
                    return Err(ProxyError::InvalidHost("host_mismatch"));
                }
                // Routing reads the authority: it is held to the rules too.
                if authority != host.as_bytes() {
                    host::check(authority).map_err(ProxyError::InvalidHost)?;
                }
            }
            host::check(host.as_bytes()).map_err(ProxyError::InvalidHost)?;
        } else if let Some(authority) = req.uri().authority() {
            host::check(authority.as_str().as_bytes()).map_err(ProxyError::InvalidHost)?;
        }
        if let Cow::Owned(normal) =
            path::normalize(req.uri().path()).map_err(ProxyError::InvalidPath)?
        {
            ctx.path = normal;
        }
        Ok(())
    }

    /// **route**: host (the target's authority, else `Host`), then the
    /// longest path prefix of the normalised path, on segment boundaries.
    /// No match is a 404; a path that Java's `;` reading or a case-blind
    /// reading would route elsewhere is a 400.
    fn route<'g>(
        &'g self,
        req: &Request<Incoming>,
        ctx: &mut RequestContext<'g>,
    ) -> Result<&'g Route, ProxyError> {
        let host = (req.uri().authority().map(|a| a.as_str()))
            .or_else(|| req.headers().get(HOST).and_then(|v| v.to_str().ok()));
        let route = (self.routes.find(host, &ctx.path)).ok_or(ProxyError::NoRoute)?;
        // Routed as a Java upstream reads the path too (see `path`): where
        // the readings differ, either could be the one served.
        let bare = path::without_parameters(&ctx.path);
        if matches!(bare, Cow::Owned(_))
            && (self.routes.find(host, &bare)).map(|bare| bare.index) != Some(route.index)
        {
            return Err(ProxyError::InvalidPath(
                path::PathError::ParametersDecideRoute,
            ));
        }
        // Likewise as an upstream matching paths without case reads it.
        if self.routes.case_decides(host, &ctx.path, route.index) {
            return Err(ProxyError::InvalidPath(path::PathError::CaseDecidesRoute));
        }
        ctx.route = Some(route);
        Ok(route)
    }

    /// **credential**: on an authenticated route, a JWT in `Authorization:
    /// Bearer` where the route takes JWTs, else an API key from the
    /// route's sources (headers, query, cookie, in that precedence). `None`
    /// on a route that authenticates nothing; none found is a 401.
    fn credential<'r>(
        &self,
        req: &'r Request<Incoming>,
        route: &'r Route,
    ) -> Result<Option<Credential<'r>>, ProxyError> {
        let (jwt, key) = match route.auth {
            AuthPolicy::None => return Ok(None),
            AuthPolicy::Jwt => (true, false),
            AuthPolicy::ApiKey => (false, true),
            AuthPolicy::Both => (true, true),
        };
        if let Some(token) = jwt
            .then(|| credentials::bearer_jwt(req.headers()))
            .flatten()
        {
            return Ok(Some(Credential::Jwt(token)));
        }
        let found = key
            .then(|| {
                let (sources, names) = (&route.key_sources, &route.key_headers);
                credentials::extract(req.headers(), req.uri().query(), sources, names)
            })
            .flatten();
        let found = found.ok_or(ProxyError::MissingCredential)?;
        Ok(Some(Credential::ApiKey(found.value)))
    }

    /// **authenticate**: a JWT's shape, `alg`, issuer, key, signature and
    /// claims (cached), then the client it names; an API key's checksum,
    /// then the in-memory index. Refused is a 401. Sets the identity.
    async fn authenticate(
        &self,
        credential: Credential<'_>,
        ctx: &mut RequestContext<'_>,
    ) -> Result<(), ProxyError> {
        let keys = &self.shared.keys;
        let identity = match credential {
            Credential::Jwt(token) => {
                // Boxed: its state (key refresh included) would otherwise
                // size every request's future, moved whole several times
                // per request whatever the credential.
                let verify = Box::pin(self.shared.jwt.verify(token, ctx.unix_now()));
                let verified = verify.await;
                // The wait for the issuer's keys may have been long: the
                // guard dates a refusal (its ban) from now, too.
                ctx.now_ns = monotonic_ns();
                let verified = verified.map_err(ProxyError::InvalidToken)?;
                ctx.issuer = Some(verified.issuer.clone());
                Identity::of_token(verified, keys, unix_now())?
            }
            Credential::ApiKey(_) if keys.is_stale() => return Err(ProxyError::KeyStoreStale),
            Credential::ApiKey(key) => {
                let (key_id, outcome) = keys.verify(key, ctx.unix_now());
                ctx.key_id = key_id;
                Identity::Stored(outcome.map_err(ProxyError::InvalidCredential)?)
            }
        };
        ctx.identity = Some(identity);
        Ok(())
    }

    /// **authorize**: a client banned alone at its address (its 429
    /// storm, while other clients there were fine) is refused with 403
    /// until the ban ends. Then resolves the identity's tier (and tells
    /// the guard, which keeps the client in good standing at its address
    /// and gives the packet source that tier's kernel budget), then checks
    /// the route's required scopes; one missing is a 403.
    fn authorize(&self, route: &Route, ctx: &mut RequestContext<'_>) -> Result<(), ProxyError> {
        let Some(identity) = &ctx.identity else {
            return Ok(());
        };
        let (rank, _) = self.shared.tier(identity.tier());
        ctx.tier = Some(rank);
        let now = ctx.now_ns;
        client_ban(&self.shared, identity.client_id(), ctx.client_ip, now)?;
        if (self.reported).due(ctx.client_ip, identity.client_id(), rank, now) {
            let guard = &self.shared.guard;
            let update = guard.authenticated(ctx.remote(), identity.client_id(), rank, now);
            self.shared.submit(update);
        }
        match (route.required_scopes.iter()).find(|scope| !identity.scopes().contains(scope)) {
            Some(missing) => Err(ProxyError::MissingScope(missing.clone())),
            None => Ok(()),
        }
    }

    /// The route's upstream pool (config validation makes it exist).
    fn pool(&self, route: &Route) -> Result<&Arc<Pool>, ProxyError> {
        (self.route_pools.get(route.index))
            .and_then(Option::as_ref)
            .ok_or(ProxyError::NoHealthyUpstream)
    }

    /// **shed**: when the route's pool is overloaded, the lowest tiers get a
    /// 503 with `Retry-After` first (anonymous requests count as the
    /// lowest). Before limit, so a shed request costs no quota. The
    /// returned guard counts the request in flight until it is dropped.
    fn shed<'p>(
        &self,
        pool: &'p Pool,
        ctx: &RequestContext<'_>,
    ) -> Result<InFlight<'p>, ProxyError> {
        let rank = ctx.tier.unwrap_or(0);
        (pool.load.admit(rank, self.shared.quotas.len())).map_err(ProxyError::Overloaded)
    }

    /// **limit**: counts an authenticated request against its tier's quota
    /// (GCRA) when the route is limited, by client, source or both. Over
    /// it is a 429. Runs after every check, so refused requests never count.
    fn limit<'g>(&'g self, route: &Route, ctx: &mut RequestContext<'g>) -> Result<(), ProxyError> {
        let (Some(identity), Some(rank), true) = (&ctx.identity, ctx.tier, route.rate_limit) else {
            return Ok(());
        };
        let quota = self.shared.quota(rank);
        let ip = ctx.client_ip;
        let key = match route.limit_by {
            LimitBy::Client => LimitKeyRef::Client(identity.client_id()),
            LimitBy::Source => LimitKeyRef::Source(ip),
            LimitBy::Both => LimitKeyRef::ClientAtSource(identity.client_id(), ip),
        };
        let decision = (self.shared.limiter).check_ref(key, quota, route.cost, ctx.now_ns);
        let allowed = decision.allowed;
        ctx.limit = Some((quota, decision));
        match allowed {
            true => Ok(()),
            false => Err(ProxyError::RateLimited(self.tier_replies.get(quota))),
        }
    }

    /// **forward**: the request, rewritten (see [`rewrite`]), to a server of
    /// the pool, until its response head. No healthy server is a 503, a
    /// refused connection a 502 (and the server is ejected), a timeout a 504;
    /// a body cut off on the way (over the limit: 413, malformed: 400)
    /// aborts the upstream request. `upgrade`: the WebSocket upgrade the
    /// client asked for ([`upgrade::upgrade_protocol`]); its protocol goes
    /// to the upstream, and after its 101 both connections are spliced.
    #[allow(clippy::manual_async_fn)] // an `async fn` keeps its arguments twice (see `handle`)
    fn forward<'a, 'g>(
        &'a self,
        req: Request<RequestBody>,
        upgrade: Option<HeaderValue>,
        route: &'a Route,
        pool: &'a Pool,
        ctx: &'a mut RequestContext<'g>,
    ) -> impl Future<Output = Result<Response<UpstreamBody>, ProxyError>> + use<'a, 'g> {
        async move {
            let lease = pool.pick(ctx.now_ns).ok_or(ProxyError::NoHealthyUpstream)?;
            let addr = lease.server.addr;
            ctx.upstream = Some(addr);
            let ctx = &*ctx;
            let path = route.upstream_path(&ctx.path);
            let origin = Origin {
                path: &path,
                peer: &ctx.peer,
                proto: ctx.proto,
                request_id: &ctx.request_id,
                trace: &ctx.trace,
                identity: ctx.identity.as_ref(),
            };
            let tokens = self.shared.tokens.as_deref();
            let body_failure = req.body().failure();
            let timeouts = upstream_conns::Timeouts {
                connect: self.limits.connect_timeout,
                idle: self.limits.upstream_idle_timeout,
            };
            // In a block of its own: the rewritten request is not kept beside
            // the exchange it moved into for as long as that waits. Pinned
            // where it is built: the timeout holds a pointer to it, and
            // neither it nor `.await` moves the exchange's 1.4 KB again.
            let sent;
            let exchange = std::pin::pin!({
                let (mut upstream_req, added) =
                    (self.rewriter).upstream_request(req, route, &origin, tokens, addr)?;
                if let Some(protocol) = &upgrade {
                    upgrade::set_upgrade(upstream_req.headers_mut(), protocol.clone());
                }
                sent = tokio::time::Instant::now();
                upstream_conns::send(addr, upstream_req, added, timeouts, sent)
            });
            let result =
                tokio::time::timeout_at(sent + self.limits.upstream_timeout, exchange).await;
            let server_error = !matches!(&result, Ok(Ok(r)) if !r.status().is_server_error());
            pool.load.observe(sent.elapsed(), server_error);
            let cut_off = body_failure
                .as_ref()
                .and_then(|failure| failure.get().copied());
            match result {
                Err(_elapsed) => Err(ProxyError::UpstreamTimeout),
                Ok(Err(_)) if cut_off.is_some() => {
                    Err(cut_off.map_or(ProxyError::Upstream, Into::into))
                }
                Ok(Err(SendError::Connect(_))) => {
                    lease.eject();
                    Err(ProxyError::UpstreamConnect)
                }
                // What hyper's path finds below, read on the direct path.
                Ok(Err(SendError::Direct(DirectError::Protocol(H1Error::UnsolicitedSwitch)))) => {
                    tracing::warn!(upstream = %lease.server.addr, what = "unsolicited_101", "upstream switched protocols unasked");
                    Err(ProxyError::UpstreamProtocol("unsolicited_101"))
                }
                Ok(Err(error)) => {
                    tracing::warn!(%error, upstream = %lease.server.addr, "upstream request failed");
                    Err(ProxyError::Upstream)
                }
                // Its connection is hyper's no more (a 101 always ends it): dropped.
                Ok(Ok(response)) if response.status() == StatusCode::SWITCHING_PROTOCOLS => {
                    upgrade::switched_as_asked(upgrade.as_ref(), response.headers())
                        .map(|()| response)
                        .map_err(|what| {
                            tracing::warn!(upstream = %lease.server.addr, what, "upstream switched protocols unasked");
                            ProxyError::UpstreamProtocol(what)
                        })
                }
                Ok(Ok(response)) if crate::h1::foreign_transfer_coding(response.headers()) => {
                    tracing::warn!(upstream = %lease.server.addr, what = "transfer_coding", "upstream applied a transfer coding the gateway does not decode");
                    Err(ProxyError::UpstreamProtocol("transfer_coding"))
                }
                Ok(Ok(response)) => Ok(response),
            }
        }
    }
}

/// Refuses `client` while it is banned alone at the address `ip`.
fn client_ban(shared: &Shared, client: &str, ip: IpAddr, now: u64) -> Result<(), ProxyError> {
    match shared.userspace_bans.client_ban_left(client, ip, now) {
        Some(left) => Err(ProxyError::BannedClient(left)),
        None => Ok(()),
    }
}
