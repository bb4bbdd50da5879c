//! Who a request is from, whichever credential proved it, and how a
//! verified token becomes an identity: the gateway's own tokens name a
//! stored client by id, others may name one by external id.
use std::sync::Arc;

use super::error::ProxyError;
use crate::{
    jwt::VerifiedToken,
    keys::{Client, KeyIndex, KeyRejection},
};

/// Shares what the key index or the token cache holds: nothing is copied
/// per request.
#[derive(Clone, Debug)]
pub enum Identity {
    /// A client in the key store (by API key, or named by a token).
    Stored(Arc<Client>),
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

    /// The identity a verified token proves. A token of the gateway's own
    /// issuer (`own`) must name a stored client, so revoking the client
    /// revokes its tokens; a stored client that is disabled or expired at
    /// `now` (unix seconds) is refused either way.
    pub fn of_token(
        token: Arc<VerifiedToken>,
        own: bool,
        keys: &KeyIndex,
        now: i64,
    ) -> Result<Identity, ProxyError> {
        let stored = if own {
            let client = keys.client(&token.client_id);
            Some(client.ok_or(ProxyError::InvalidCredential(KeyRejection::Unknown))?)
        } else {
            keys.by_external_id(&token.client_id)
        };
        match stored {
            Some(client) if client.disabled => {
                Err(ProxyError::InvalidCredential(KeyRejection::Disabled))
            }
            Some(client) if client.expires_at.is_some_and(|at| at <= now) => {
                Err(ProxyError::InvalidCredential(KeyRejection::Expired))
            }
            Some(client) => Ok(Identity::Stored(client)),
            None => Ok(Identity::Token(token)),
        }
    }
}
