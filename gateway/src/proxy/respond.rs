//! The two phases every request ends with, whatever happened before:
//! **respond** turns the outcome into the client's response and sets the
//! gateway's own headers on it (the one place they are set), and **log**
//! records it. Also the splice of an accepted upgrade.
use http::{Response, StatusCode};
use http_body_util::BodyExt;
use hyper_util::rt::TokioIo;

use super::{
    context::{Refusal, RequestContext},
    error::ProxyError,
    forward::{self, X_REQUEST_ID},
    identity::Identity,
    rate_fields, tunnel, upgrade,
    upstream_conns::UpstreamBody,
    ClientUpgrade, Gateway, ProxyBody, Reply,
};
use crate::metrics::Outcome;

impl Gateway {
    /// **respond**: runs for every request. The upstream's response loses
    /// its hop-by-hop headers (an accepted upgrade is spliced), a refusal
    /// becomes the gateway's own answer (and tells the guard), then the
    /// gateway's headers go on whatever is answered: `X-Request-Id`, and
    /// the rate-limit headers once the limit phase ran. The one place
    /// those are set.
    pub(super) fn respond(
        &self,
        outcome: Result<Reply, ProxyError>,
        ctx: &mut RequestContext<'_>,
    ) -> Response<ProxyBody> {
        let mut response = match outcome {
            Ok(Reply::Upstream(response, upgrade)) => {
                let bans = self.shared.userspace_bans.clone();
                relay(
                    response,
                    upgrade,
                    self.limits.tunnel_idle_timeout,
                    bans,
                    ctx,
                )
            }
            Ok(Reply::Local(response)) => response,
            Err(error) => {
                self.feedback(&error, ctx);
                ctx.refusal = Some(Refusal::from(&error));
                error.into_response()
            }
        };
        let headers = response.headers_mut();
        if let Some((quota, decision)) = &ctx.limit {
            rate_fields::set_rate_limit(headers, &self.tier_replies.get(quota), decision);
        }
        headers.insert(
            X_REQUEST_ID,
            rate_fields::per_response(ctx.request_id.clone()),
        );
        response
    }

    /// Kernel feedback from a refusal: refused credentials that suggest
    /// guessing (not expired or rotated-away ones) and 429s a client
    /// ignores get its address (or the client alone there) banned by the
    /// guard.
    fn feedback(&self, error: &ProxyError, ctx: &RequestContext<'_>) {
        let (remote, now, guard) = (ctx.remote(), ctx.now_ns, &self.shared.guard);
        let client = ctx.identity.as_ref().map(Identity::client_id);
        let update = match (error, &ctx.limit, client) {
            (ProxyError::RateLimited(_), Some((_, decision)), Some(client)) => {
                guard.rate_limited(remote, client, decision.reset, now)
            }
            (ProxyError::InvalidCredential(reason), _, _) if reason.is_guessing() => {
                guard.auth_failed(remote, now)
            }
            (ProxyError::InvalidToken(reason), _, _) if reason.is_guessing() => {
                guard.auth_failed(remote, now)
            }
            _ => None,
        };
        self.shared.submit(update);
    }

    /// **log**: runs last for every request: metrics, and one JSON
    /// access-log line (key id, never the key; path, never the query).
    pub(super) fn log(&self, ctx: &RequestContext<'_>, response: &Response<ProxyBody>) {
        let status = response.status().as_u16();
        let refusal = ctx.refusal.as_ref();
        self.metrics.record(&Outcome {
            route: ctx.route.map(|route| route.index),
            tier: ctx.tier,
            status,
            error: refusal.map(|r| r.code),
            detail: refusal.and_then(|r| r.detail),
        });
        (self.shared.access_log).log_with(|out| ctx.write_log_line(status, out));
    }
}

/// The upstream's response for the client: hop-by-hop headers removed and,
/// when the upstream agreed (101) to an upgrade the client asked for, both
/// connections spliced once hyper hands them over (see [`tunnel`]).
fn relay(
    mut response: Response<UpstreamBody>,
    client_upgrade: Option<ClientUpgrade>,
    idle: std::time::Duration,
    bans: crate::xdp::policy::UserspaceBans,
    ctx: &RequestContext<'_>,
) -> Response<ProxyBody> {
    let switched = response.status() == StatusCode::SWITCHING_PROTOCOLS;
    // Looked for on a 101 only: a lookup per response otherwise.
    let accepted = switched
        .then(|| upgrade::upgrade_protocol(response.headers()))
        .flatten();
    forward::strip_hop_by_hop(response.headers_mut());
    if let (true, Some(client_upgrade), Some(protocol)) = (switched, client_upgrade, accepted) {
        upgrade::set_upgrade(response.headers_mut(), protocol);
        let upstream_upgrade = hyper::upgrade::on(&mut response);
        let peer = ctx.peer.addr.ip().to_canonical();
        let client_ip = ctx.client_ip;
        let banned = move || bans.is_banned(client_ip, crate::clock::monotonic_ns());
        tokio::spawn(async move {
            let ClientUpgrade { on, permit } = client_upgrade;
            match tokio::try_join!(on, upstream_upgrade) {
                Ok((client, upstream)) => {
                    let (client, upstream) = (TokioIo::new(client), TokioIo::new(upstream));
                    match tunnel::splice(client, upstream, idle, banned, Some(permit)).await {
                        Ok(ended) => tracing::debug!(%peer, ?ended, "tunnel ended"),
                        Err(error) => tracing::debug!(%peer, %error, "tunnel ended with an error"),
                    }
                }
                Err(error) => tracing::debug!(%peer, %error, "upgrade failed"),
            }
        });
    }
    response.map(BodyExt::boxed)
}
