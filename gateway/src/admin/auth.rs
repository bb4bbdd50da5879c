//! Who may call the admin API: an admin key in `Authorization: Bearer`,
//! read-only (`admin:read`) or not; refused keys that look like guessing
//! count towards a ban, as on the proxy.
use std::net::SocketAddr;

use http::{header, Request};
use hyper::body::Incoming;

use super::{Admin, AdminError, READ_ONLY_SCOPE};
use crate::{
    clock::{monotonic_ns, unix_now},
    keys::{Client, KeyIndex},
};

/// The key in `Authorization: Bearer`.
pub(super) fn bearer(req: &Request<Incoming>) -> Result<&str, AdminError> {
    req.headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .ok_or(AdminError::MissingCredential)
}

/// The admin client `key` stands for, if it may have `access` now. Not
/// from a stale index (see [`KeyIndex::is_stale`]), as the proxy refuses
/// API keys from one.
pub(super) fn admit(keys: &KeyIndex, key: &str, access: Access) -> Result<Client, AdminError> {
    if keys.is_stale() {
        return Err(AdminError::KeysStale);
    }
    let (_, outcome) = keys.verify(key, unix_now());
    let client = outcome.map_err(AdminError::InvalidCredential)?;
    if !client.is_admin {
        return Err(AdminError::NotAdmin);
    }
    if access == Access::Write && client.scopes.iter().any(|s| s == READ_ONLY_SCOPE) {
        return Err(AdminError::ReadOnly);
    }
    Ok(client.as_ref().clone())
}

/// What an admin key may do.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Access {
    Read,
    Write,
}

impl Admin {
    /// [`Admin::authorize`]; key guessing counts like on the proxy (a
    /// disabled or expired key is not guessing).
    pub(super) fn authorize_counted(
        &self,
        req: &Request<Incoming>,
        access: Access,
        peer: SocketAddr,
    ) -> Result<Client, AdminError> {
        self.authorize(req, access).inspect_err(|error| {
            if let AdminError::InvalidCredential(reason) = error {
                if !reason.is_guessing() {
                    return;
                }
                let remote = crate::guard::Remote::direct(peer.ip());
                let update = self.shared.guard.auth_failed(remote, monotonic_ns());
                self.shared.submit(update);
            }
        })
    }

    pub(super) fn authorize(
        &self,
        req: &Request<Incoming>,
        access: Access,
    ) -> Result<Client, AdminError> {
        let client = admit(&self.shared.keys, bearer(req)?, access)?;
        if access == Access::Write {
            super::draining::refuse_changes(self.reloader.as_deref())?;
        }
        Ok(client)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::{NewClient, SqliteStore};

    /// A fleet node whose shared store is out of reach past its staleness
    /// bound admits no admin key: one revoked on another node may still be
    /// in its copy. It admits again once the copy is current.
    #[test]
    fn a_stale_index_admits_no_admin_key() {
        let store = SqliteStore::open(std::path::Path::new(":memory:")).unwrap();
        let admin = NewClient {
            name: "admin".into(),
            tier: "gold".into(),
            is_admin: true,
            ..NewClient::default()
        };
        let (_, key) = store.create(admin, 0).unwrap();
        let index = KeyIndex::default();
        index.replace(store.clients().unwrap(), store.keys().unwrap());
        assert!(admit(&index, &key, Access::Write).is_ok());
        index.set_stale(true);
        for access in [Access::Read, Access::Write] {
            let refused = admit(&index, &key, access).unwrap_err();
            assert_eq!(refused.status().0, http::StatusCode::SERVICE_UNAVAILABLE);
        }
        index.set_stale(false);
        assert!(admit(&index, &key, Access::Read).is_ok());
    }
}
