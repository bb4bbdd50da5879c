//! Who a request is from, whichever credential proved it, and how a
//! verified token becomes an identity: the gateway's own tokens name a
//! stored client by id; another issuer's token names one only through an
//! external id tied to that issuer (`ISSUER#CLAIM`), and is otherwise its
//! own client, `ISSUER#CLAIM`, so no issuer can speak for another's
//! clients or for a stored one. A token's scopes narrow, never widen,
//! the stored client's.
use std::sync::Arc;

use super::error::ProxyError;
use crate::{
    jwt::VerifiedToken,
    keys::{Client, KeyIndex, KeyRejection},
};

/// Shares what the key index or the token cache holds: nothing is copied
/// per request, except the scopes a token narrows.
#[derive(Clone, Debug)]
pub enum Identity {
    /// A client in the key store, by API key: all its scopes.
    Stored(Arc<Client>),
    /// A client in the key store named by a token: the scopes both the
    /// client and the token have.
    Delegated {
        client: Arc<Client>,
        scopes: Vec<String>,
    },
    /// A token's client that the store does not know.
    Token(Arc<VerifiedToken>),
}

impl Identity {
    /// A stored client's id, or a token client's `ISSUER#CLAIM`.
    pub fn client_id(&self) -> &str {
        match self {
            Identity::Stored(client) | Identity::Delegated { client, .. } => &client.id,
            Identity::Token(token) => &token.principal,
        }
    }

    pub fn tier(&self) -> &str {
        match self {
            Identity::Stored(client) | Identity::Delegated { client, .. } => &client.tier,
            Identity::Token(token) => &token.tier,
        }
    }

    pub fn scopes(&self) -> &[String] {
        match self {
            Identity::Stored(client) => &client.scopes,
            Identity::Delegated { scopes, .. } => scopes,
            Identity::Token(token) => &token.scopes,
        }
    }

    /// The identity a verified token proves. A token of the gateway's own
    /// issuer must name a stored client by id, so revoking the client
    /// revokes its tokens, and the key it was bought with must still
    /// verify, so rotating a leaked key away ends them too; another issuer's names one by the external id
    /// `ISSUER#CLAIM`. A stored client that is disabled or expired at
    /// `now` (unix seconds) is refused either way, and either kind while
    /// the index is stale (`store.max_staleness`).
    pub fn of_token(
        token: Arc<VerifiedToken>,
        keys: &KeyIndex,
        now: i64,
    ) -> Result<Identity, ProxyError> {
        // A stored client's standing is what the index says: not trusted
        // once the shared store has been out of reach too long.
        if keys.is_stale() && (token.own || keys.by_external_id(&token.principal).is_some()) {
            return Err(ProxyError::KeyStoreStale);
        }
        let stored = if token.own {
            let client = keys.client(&token.client_id);
            let client = client.ok_or(ProxyError::InvalidCredential(KeyRejection::Revoked))?;
            if let Some(key_id) = &token.key_id {
                (keys.key_standing(&client.id, key_id, now))
                    .map_err(ProxyError::InvalidCredential)?;
            }
            Some(client)
        } else {
            keys.by_external_id(&token.principal)
        };
        match stored {
            Some(client) if client.disabled => {
                Err(ProxyError::InvalidCredential(KeyRejection::Disabled))
            }
            Some(client) if client.expires_at.is_some_and(|at| at <= now) => {
                Err(ProxyError::InvalidCredential(KeyRejection::Expired))
            }
            Some(client) => {
                let scopes = (client.scopes.iter())
                    .filter(|scope| token.scopes.contains(scope))
                    .cloned()
                    .collect();
                Ok(Identity::Delegated { client, scopes })
            }
            None => Ok(Identity::Token(token)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::{store::NewClient, SqliteStore};

    fn token(issuer: &str, claim: &str, own: bool, scopes: &[&str]) -> Arc<VerifiedToken> {
        Arc::new(VerifiedToken {
            issuer: issuer.into(),
            client_id: claim.into(),
            principal: crate::jwt::principal(issuer, claim),
            own,
            tier: "bronze".into(),
            scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
            key_id: None,
        })
    }

    /// A store with one gold client, scopes read and write, external id
    /// `https://a#svc`; the index over it and the client's id.
    fn index() -> (KeyIndex, String) {
        let (index, _, client) = store_and_index();
        (index, client)
    }

    /// [`index`], with its store and the client's key.
    fn store_and_index() -> (KeyIndex, (SqliteStore, String), String) {
        let store = SqliteStore::open(std::path::Path::new(":memory:")).unwrap();
        let new = NewClient {
            name: "svc".into(),
            tier: "gold".into(),
            scopes: vec!["read".into(), "write".into()],
            external_id: Some("https://a#svc".into()),
            ..NewClient::default()
        };
        let (client, key) = store.create(new, 0).unwrap();
        let index = KeyIndex::default();
        index.replace(store.clients().unwrap(), store.keys().unwrap());
        (index, (store, key), client.id)
    }

    #[test]
    fn no_issuer_speaks_for_another_or_for_a_stored_client() {
        let (index, id) = index();
        // The stored client's id, or its external id, from the wrong issuer.
        for (issuer, claim) in [
            ("https://b", id.as_str()),
            ("https://b", "svc"),
            ("https://a", id.as_str()),
        ] {
            let identity =
                Identity::of_token(token(issuer, claim, false, &["read"]), &index, 1).unwrap();
            assert!(matches!(identity, Identity::Token(_)), "{issuer} {claim}");
            assert_eq!(identity.client_id(), format!("{issuer}#{claim}"));
            assert_eq!(identity.tier(), "bronze");
        }
        // Same claim, two issuers: two clients.
        let a = Identity::of_token(token("https://x", "alice", false, &[]), &index, 1).unwrap();
        let b = Identity::of_token(token("https://y", "alice", false, &[]), &index, 1).unwrap();
        assert_ne!(a.client_id(), b.client_id());
        // The right issuer and claim: the stored client.
        let mapped =
            Identity::of_token(token("https://a", "svc", false, &["read"]), &index, 1).unwrap();
        assert_eq!((mapped.client_id(), mapped.tier()), (id.as_str(), "gold"));
    }

    #[test]
    fn a_token_narrows_the_stored_clients_scopes() {
        let (index, id) = index();
        let own = Identity::of_token(
            token("https://gw", &id, true, &["read", "admin"]),
            &index,
            1,
        )
        .unwrap();
        assert_eq!(own.client_id(), id);
        assert_eq!(own.scopes(), ["read"]);
        let unknown = Identity::of_token(token("https://gw", "cl_nobody", true, &[]), &index, 1);
        assert!(unknown.is_err());
    }

    /// With `store.max_staleness` passed, a token naming a stored client
    /// (the gateway's own, or another issuer's mapped one) is refused
    /// like an API key: the client may have been revoked meanwhile.
    #[test]
    fn a_stale_index_vouches_for_no_stored_client() {
        let (index, id) = index();
        index.set_stale(true);
        for token in [
            token("https://gw", &id, true, &["read"]),
            token("https://a", "svc", false, &["read"]),
        ] {
            let refused = Identity::of_token(token, &index, 1).err();
            assert!(
                matches!(refused, Some(ProxyError::KeyStoreStale)),
                "{refused:?}"
            );
        }
        // A token that names no stored client depends on no store.
        let own = Identity::of_token(token("https://b", "svc", false, &[]), &index, 1).unwrap();
        assert!(matches!(own, Identity::Token(_)));
        index.set_stale(false);
        assert!(Identity::of_token(token("https://gw", &id, true, &[]), &index, 1).is_ok());
    }

    /// An own token bought with an API key lives only as long as the key:
    /// rotated away (once its grace is over), it ends the token too, as
    /// does a key id that is not the client's. One without a key id (minted
    /// before tokens carried one) still names its client alone.
    #[test]
    fn an_own_token_ends_with_the_key_it_was_bought_with() {
        let (index, (store, key), id) = store_and_index();
        let key_id = index.verify(&key, 1).0.unwrap().to_string();
        let bought = |key_id: Option<&str>| {
            let mut token = (*token("https://gw", &id, true, &["read"])).clone();
            token.key_id = key_id.map(str::to_owned);
            Arc::new(token)
        };
        // The client it names, or why the key refuses it.
        let of = |key_id: Option<&str>, now| match Identity::of_token(bought(key_id), &index, now) {
            Ok(identity) => Ok(identity.client_id().to_owned()),
            Err(ProxyError::InvalidCredential(why)) => Err(why),
            Err(other) => panic!("{other:?}"),
        };
        assert_eq!(of(Some(&key_id), 1), Ok(id.clone()));
        assert_eq!(of(None, 1), Ok(id.clone()));
        // No such key (of the id's length, or malformed).
        for other in [
            "AAAAAAAAAAAA",
            "cl_nobody",
            "",
            "not a key id at all, far too long",
        ] {
            assert_eq!(of(Some(other), 1), Err(KeyRejection::Revoked), "{other}");
        }
        // Another client's key, however real.
        let other = NewClient {
            name: "other".into(),
            tier: "gold".into(),
            ..NewClient::default()
        };
        let (_, other_key) = store.create(other, 0).unwrap();
        index.replace(store.clients().unwrap(), store.keys().unwrap());
        let other_id = index.verify(&other_key, 1).0.unwrap().to_string();
        assert_eq!(of(Some(&other_id), 1), Err(KeyRejection::Revoked));
        // Rotated with 10 s of grace at 100: good until 110, then not.
        store.rotate(&id, 10, 100).unwrap().unwrap();
        index.replace(store.clients().unwrap(), store.keys().unwrap());
        assert_eq!(of(Some(&key_id), 109), Ok(id.clone()));
        assert_eq!(of(Some(&key_id), 110), Err(KeyRejection::Expired));
        assert_eq!(of(None, 110), Ok(id));
    }
}
