//! The HTTP proxy: listeners (plain HTTP/1.1 and h2c, or TLS with HTTP/2
//! and HTTP/1.1 by ALPN, optionally mTLS), authentication, limits,
//! forwarding to upstream pools.
//!
//! Every request goes through named phases, one method each on
//! [`Gateway`], in this order; each fills in the request's
//! [`RequestContext`](context::RequestContext):
//!
//! ```text
//! accept ─▶ route ─▶ credential ─▶ authenticate ─▶ authorize ─▶ shed ─▶ limit ─▶ forward ─▶ respond ─▶ log
//!   │         │          │              │              │          │        │         │
//! banned     404        401            401            403        503      429   502 / 503 / 504
//! ```
//!
//! A phase that refuses returns a [`ProxyError`]; the remaining phases up
//! to `respond` are skipped, so a refused request never reaches an
//! upstream and never uses quota. `respond` and `log` run for every
//! request. Serving connections (and the per-connection half of accept) is
//! [`serve`]'s; the gateway's own OAuth2 endpoints ([`oauth`]) are answered
//! after accept, before route.
pub mod credentials;
pub mod error;
pub mod forward;
pub mod oauth;
pub mod route;
pub mod tls;
pub mod workers;

mod context;
mod identity;
mod rewrite;
mod serve;

use std::{net::IpAddr, sync::Arc, time::Instant};

use bytes::Bytes;
use http::{header::HOST, HeaderValue, Request, Response, StatusCode};
use http_body_util::{combinators::BoxBody, BodyExt};
use hyper::{body::Incoming, upgrade::OnUpgrade};
use hyper_util::{
    client::legacy::{connect::HttpConnector, Client},
    rt::{TokioExecutor, TokioIo},
};

use self::{
    context::{Refusal, RequestContext},
    error::ProxyError,
    forward::X_REQUEST_ID,
    identity::Identity,
    rewrite::{Origin, Rewriter},
    route::{Route, RouteTable},
};
use crate::{
    clock::{monotonic_ns, unix_now},
    config::{AuthPolicy, Config, LimitBy, LimitsConfig},
    guard::ReportMemo,
    limits::LimitKey,
    metrics::{Outcome, Recorder},
    shared::Shared,
    upstream::{overload::InFlight, Pool},
};

pub type ProxyBody = BoxBody<Bytes, hyper::Error>;

/// One per worker thread, with its own upstream connections, so a request
/// and its upstream exchange stay on one thread.
pub struct Gateway {
    /// What every worker shares (keys, JWT, pools, limiter, log, ...).
    shared: Shared,
    routes: RouteTable,
    rewriter: Rewriter,
    limits: LimitsConfig,
    client: Client<HttpConnector, Incoming>,
    /// This worker's request counts.
    metrics: Recorder,
    /// Which sources this worker told the guard about lately.
    reported: ReportMemo,
}

/// The credential phase's find, borrowed from the request.
enum Credential<'r> {
    Jwt(&'r str),
    ApiKey(String),
}

/// What the gateway answers when no phase refused.
enum Reply {
    /// The upstream's response, and the client's side of an upgrade it asked for.
    Upstream(Response<Incoming>, Option<OnUpgrade>),
    /// The gateway's own (the OAuth2 endpoints).
    Local(Response<ProxyBody>),
}

impl Gateway {
    pub fn new(config: &Config, shared: &Shared) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(config.limits.connect_timeout));
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(std::time::Duration::from_secs(90))
            .build(connector);
        Self {
            shared: shared.clone(),
            routes: RouteTable::new(&config.routes),
            rewriter: Rewriter::new(config),
            limits: config.limits.clone(),
            client,
            metrics: shared.metrics.recorder(),
            reported: ReportMemo::default(),
        }
    }

    /// One request, through every phase.
    async fn handle(
        self: Arc<Self>,
        req: Request<Incoming>,
        peer: std::net::SocketAddr,
        proto: &'static str,
    ) -> Response<ProxyBody> {
        let mut ctx = RequestContext::new(&req, peer, proto);
        let outcome = self.process(req, &mut ctx).await;
        let response = self.respond(outcome, &mut ctx);
        self.log(&ctx, &response);
        response
    }

    /// The phases that may refuse, in order.
    async fn process<'g>(
        &'g self,
        mut req: Request<Incoming>,
        ctx: &mut RequestContext<'g>,
    ) -> Result<Reply, ProxyError> {
        self.accept(ctx)?;
        if let Some(tokens) = &self.shared.tokens {
            if oauth::handles(req.uri().path()) {
                let response = oauth::handle(&self.shared, tokens, req, ctx).await;
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
        let upgrade = forward::upgrade_protocol(req.headers())
            .is_some()
            .then(|| hyper::upgrade::on(&mut req));
        let response = self.forward(req, route, pool, ctx).await?;
        Ok(Reply::Upstream(response, upgrade))
    }

    /// **accept**, per request: runs first. A source banned in
    /// userspace-only mode while its keep-alive connection was open is
    /// refused (403, connection closed). The per-connection half runs in
    /// [`serve`] before any request is read.
    fn accept(&self, ctx: &RequestContext<'_>) -> Result<(), ProxyError> {
        if self.is_banned(ctx.peer.ip()) {
            return Err(ProxyError::BannedSource);
        }
        Ok(())
    }

    /// Whether bans are enforced here (no XDP) and `ip` is banned now.
    fn is_banned(&self, ip: IpAddr) -> bool {
        (self.shared.userspace_bans.as_ref()).is_some_and(|bans| bans.is_banned(ip, monotonic_ns()))
    }

    /// **route**: host, then the longest path prefix. No match is a 404.
    fn route<'g>(
        &'g self,
        req: &Request<Incoming>,
        ctx: &mut RequestContext<'g>,
    ) -> Result<&'g Route, ProxyError> {
        let host = (req.headers().get(HOST).and_then(|v| v.to_str().ok()))
            .or_else(|| req.uri().authority().map(|a| a.as_str()));
        let route = (self.routes.find(host, req.uri().path())).ok_or(ProxyError::NoRoute)?;
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
        route: &Route,
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
            .then(|| credentials::extract(req.headers(), req.uri().query(), &route.key_sources))
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
                let verified = (self.shared.jwt.verify(token, unix_now()).await)
                    .map_err(ProxyError::InvalidToken)?;
                ctx.issuer = Some(verified.issuer.clone());
                Identity::of_token(verified, keys, unix_now())?
            }
            Credential::ApiKey(key) => {
                let (key_id, outcome) = keys.verify(&key, unix_now());
                ctx.key_id = key_id;
                Identity::Stored(outcome.map_err(ProxyError::InvalidCredential)?)
            }
        };
        ctx.identity = Some(identity);
        Ok(())
    }

    /// **authorize**: resolves the identity's tier (and tells the guard,
    /// which gives the source that tier's kernel budget), then checks the
    /// route's required scopes; one missing is a 403.
    fn authorize(&self, route: &Route, ctx: &mut RequestContext<'_>) -> Result<(), ProxyError> {
        let Some(identity) = &ctx.identity else {
            return Ok(());
        };
        let (rank, _) = self.shared.tier(identity.tier());
        ctx.tier = Some(rank);
        let ip = ctx.peer.ip();
        let now = monotonic_ns();
        if self.reported.due(ip, rank, now) {
            self.shared
                .submit(self.shared.guard.authenticated(ip, rank, now));
        }
        match (route.required_scopes.iter()).find(|scope| !identity.scopes().contains(scope)) {
            Some(missing) => Err(ProxyError::MissingScope(missing.clone())),
            None => Ok(()),
        }
    }

    /// The route's upstream pool (config validation makes it exist).
    fn pool(&self, route: &Route) -> Result<&Arc<Pool>, ProxyError> {
        (self.shared.pools.get(&route.upstream)).ok_or(ProxyError::NoHealthyUpstream)
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
        let ip = ctx.peer.ip().to_canonical();
        let key = match route.limit_by {
            LimitBy::Client => LimitKey::Client(identity.client_id().to_owned()),
            LimitBy::Source => LimitKey::Source(ip),
            LimitBy::Both => LimitKey::ClientAtSource(identity.client_id().to_owned(), ip),
        };
        let decision = (self.shared.limiter).check(&key, quota, route.cost, monotonic_ns());
        let allowed = decision.allowed;
        ctx.limit = Some((quota, decision));
        match allowed {
            true => Ok(()),
            false => Err(ProxyError::RateLimited(Box::new(quota.clone()))),
        }
    }

    /// **forward**: the request, rewritten (see [`rewrite`]), to a server of
    /// the pool, until its response head. No healthy server is a 503, a
    /// refused connection a 502 (and the server is ejected), a timeout a 504.
    async fn forward(
        &self,
        req: Request<Incoming>,
        route: &Route,
        pool: &Pool,
        ctx: &mut RequestContext<'_>,
    ) -> Result<Response<Incoming>, ProxyError> {
        let lease = pool.pick().ok_or(ProxyError::NoHealthyUpstream)?;
        ctx.upstream = Some(lease.server.addr);
        // WebSocket and other HTTP/1.1 upgrades: the protocol name goes to
        // the upstream, and after its 101 both connections are spliced.
        let upgrade = forward::upgrade_protocol(req.headers());
        let origin = Origin {
            peer: ctx.peer,
            proto: ctx.proto,
            request_id: &ctx.request_id,
            identity: ctx.identity.as_ref(),
        };
        let tokens = self.shared.tokens.as_deref();
        let mut upstream_req =
            (self.rewriter).upstream_request(req, route, &origin, tokens, lease.server.addr)?;
        if let Some(protocol) = upgrade {
            forward::set_upgrade(upstream_req.headers_mut(), protocol);
        }
        let sent = Instant::now();
        let result = tokio::time::timeout(
            self.limits.upstream_timeout,
            self.client.request(upstream_req),
        )
        .await;
        let server_error = !matches!(&result, Ok(Ok(r)) if !r.status().is_server_error());
        pool.load.observe(sent.elapsed(), server_error);
        match result {
            Err(_elapsed) => Err(ProxyError::UpstreamTimeout),
            Ok(Err(error)) if error.is_connect() => {
                lease.eject();
                Err(ProxyError::UpstreamConnect)
            }
            Ok(Err(error)) => {
                tracing::warn!(%error, upstream = %lease.server.addr, "upstream request failed");
                Err(ProxyError::Upstream)
            }
            Ok(Ok(response)) => Ok(response),
        }
    }

    /// **respond**: runs for every request. The upstream's response loses
    /// its hop-by-hop headers (an accepted upgrade is spliced), a refusal
    /// becomes the gateway's own answer (and tells the guard), then the
    /// gateway's headers go on whatever is answered: `X-Request-Id`, and
    /// the rate-limit headers once the limit phase ran. The one place
    /// those are set.
    fn respond(
        &self,
        outcome: Result<Reply, ProxyError>,
        ctx: &mut RequestContext<'_>,
    ) -> Response<ProxyBody> {
        let mut response = match outcome {
            Ok(Reply::Upstream(response, upgrade)) => relay(response, upgrade, ctx),
            Ok(Reply::Local(response)) => response,
            Err(error) => {
                self.feedback(&error, ctx);
                ctx.refusal = Some(Refusal::from(&error));
                error.into_response()
            }
        };
        let headers = response.headers_mut();
        if let Some((quota, decision)) = &ctx.limit {
            forward::set_rate_limit(headers, quota, decision);
        }
        if let Ok(id) = HeaderValue::from_str(&ctx.request_id) {
            headers.insert(X_REQUEST_ID, id);
        }
        response
    }

    /// Kernel feedback from a refusal: refused credentials (key or token
    /// guessing) and 429s a source ignores get it banned by the guard.
    fn feedback(&self, error: &ProxyError, ctx: &RequestContext<'_>) {
        let (ip, now, guard) = (ctx.peer.ip(), monotonic_ns(), &self.shared.guard);
        let update = match (error, &ctx.limit) {
            (ProxyError::RateLimited(_), Some((_, decision))) => {
                guard.rate_limited(ip, decision.reset, now)
            }
            (ProxyError::InvalidCredential(_) | ProxyError::InvalidToken(_), _) => {
                guard.auth_failed(ip, now)
            }
            _ => None,
        };
        self.shared.submit(update);
    }

    /// **log**: runs last for every request: metrics, and one JSON
    /// access-log line (key id, never the key; path, never the query).
    fn log(&self, ctx: &RequestContext<'_>, response: &Response<ProxyBody>) {
        let status = response.status().as_u16();
        let refusal = ctx.refusal.as_ref();
        self.metrics.record(&Outcome {
            route: ctx.route.map(|route| route.index),
            tier: ctx.tier,
            status,
            error: refusal.map(|r| r.code),
            detail: refusal.and_then(|r| r.detail),
        });
        if let Some(line) = ctx.log_line(status) {
            self.shared.access_log.log(&line);
        }
    }
}

/// The upstream's response for the client: hop-by-hop headers removed and,
/// when the upstream agreed (101) to an upgrade the client asked for, both
/// connections spliced once hyper hands them over.
fn relay(
    mut response: Response<Incoming>,
    client_upgrade: Option<OnUpgrade>,
    ctx: &RequestContext<'_>,
) -> Response<ProxyBody> {
    let switched = response.status() == StatusCode::SWITCHING_PROTOCOLS;
    let accepted = forward::upgrade_protocol(response.headers());
    forward::strip_hop_by_hop(response.headers_mut());
    if let (true, Some(client_upgrade), Some(protocol)) = (switched, client_upgrade, accepted) {
        forward::set_upgrade(response.headers_mut(), protocol);
        let upstream_upgrade = hyper::upgrade::on(&mut response);
        let peer = ctx.peer.ip().to_canonical();
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
    response.map(BodyExt::boxed)
}
