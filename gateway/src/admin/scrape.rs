//! What `/metrics` reads besides the request counts: the kernel ban maps'
//! fill level and the listeners' certificates (see [`crate::metrics::ops`]).
use gateway_common::maps;

use crate::{
    config::Config,
    metrics::ops::{BanMapFill, Certificate},
    proxy::tls,
    xdp::PinnedMaps,
};

/// The certificate of each TLS listener, read once at start (the acceptor
/// has just loaded or made it). One that cannot be read is logged and left
/// out; the listener itself would not have started.
pub(super) fn certificates(config: &Config) -> Vec<Certificate> {
    let tls_listeners = config
        .listeners
        .iter()
        .filter_map(|l| l.tls.as_ref().map(|tls| (l.address, tls)));
    tls_listeners
        .filter_map(|(address, tls)| match tls::expiry(tls, &config.state_dir) {
            Ok(expires_at) => Some(Certificate {
                listener: address.to_string(),
                expires_at,
            }),
            Err(error) => {
                tracing::warn!(%error, listener = %address, "cannot read the certificate's expiry");
                None
            }
        })
        .collect()
}

/// Both ban maps' entries against their configured sizes; a map that
/// cannot be read is left out.
pub(super) fn ban_maps(maps: &PinnedMaps, capacity: (u32, u32)) -> Vec<BanMapFill> {
    let bans = maps.bans().map(|b| b.len());
    let prefix_bans = maps.prefix_bans().map(|b| b.len());
    [
        (maps::BANS, bans, capacity.0),
        (maps::PREFIX_BANS, prefix_bans, capacity.1),
    ]
    .into_iter()
    .filter_map(|(map, entries, capacity)| {
        entries.ok().map(|entries| BanMapFill {
            map,
            entries,
            capacity,
        })
    })
    .collect()
}
