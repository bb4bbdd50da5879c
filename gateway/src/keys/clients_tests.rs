use super::*;
use crate::keys::SqliteStore;

fn spec(tier: &str) -> ClientSpec {
    ClientSpec {
        name: "app".into(),
        tier: tier.into(),
        scopes: vec![],
        is_admin: false,
        expires_at: None,
        ttl: None,
        with_key: true,
        external_id: None,
        external_issuer: None,
    }
}

fn store() -> SqliteStore {
    SqliteStore::open(std::path::Path::new(":memory:")).unwrap()
}

#[tokio::test]
async fn unknown_tier_names_the_configured_ones() {
    let store = store();
    let clients = Clients::new(&store, ["bronze", "gold"]);
    let error = clients.create(spec("silver"), 0).await.err().unwrap();
    assert_eq!(
        error.to_string(),
        "unknown tier \"silver\"; configured tiers: bronze, gold"
    );
}

#[tokio::test]
async fn scopes_are_scope_tokens_and_never_name_a_tier() {
    let store = store();
    let clients = Clients::new(&store, ["bronze", "gold"]);
    for scopes in [
        &["read", "gold"][..],
        &["GOLD"],
        &["read gold"],
        &["a,b"],
        &[""],
        &["x\"y"],
    ] {
        let mut bad = spec("bronze");
        bad.scopes = scopes.iter().map(|s| (*s).to_owned()).collect();
        let error = clients.create(bad, 0).await.err();
        assert!(
            matches!(error, Some(ClientError::Invalid(_))),
            "{scopes:?}: {error:?}"
        );
    }
    let mut good = spec("bronze");
    good.scopes = vec!["read".into(), "orders:write".into(), "admin:read".into()];
    let created = clients.create(good, 0).await.unwrap();
    let update = ClientUpdate {
        scopes: Some(vec!["bronze".into()]),
        ..ClientUpdate::default()
    };
    let error = clients.update(&created.client.id, &update).await.err();
    assert!(matches!(error, Some(ClientError::Invalid(_))), "{error:?}");
}

#[tokio::test]
async fn lifecycle_shows_keys_once() {
    let store = store();
    let clients = Clients::new(&store, ["bronze", "gold"]);
    let mut with_ttl = spec("gold");
    with_ttl.ttl = Some(Ttl::Text("1h".into()));
    let created = clients.create(with_ttl, 100).await.unwrap();
    let id = created.client.id.clone();
    assert!(created.api_key.is_some());
    assert_eq!(created.client.expires_at, Some(3700));
    let shown = clients.show(&id).await.unwrap().to_json();
    assert!(shown.get("api_key").is_none());
    assert_eq!(shown["keys"].as_array().unwrap().len(), 1);
    let rotated = clients.rotate(&id, 60, 200).await.unwrap().to_json();
    assert_eq!(rotated["previous_keys_expire_at"], 260);
    assert!(rotated["api_key"].is_string());
    let page = clients
        .list(&ListQuery {
            tier: Some("gold".into()),
            ..ListQuery::default()
        })
        .await
        .unwrap();
    assert_eq!(page.total, 1);
    clients.revoke(&id).await.unwrap();
    assert!(matches!(
        clients.revoke(&id).await,
        Err(ClientError::UnknownClient(_))
    ));
}

/// Racing bootstraps, each on its own connection as separate processes
/// would be: one admin. The store and its WAL files are owner-only.
#[test]
fn racing_bootstraps_make_one_admin_in_a_private_store() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("keys.db");
    let start = std::sync::Barrier::new(8);
    // Opened here, one after another: a thread that failed before the
    // barrier would leave the others waiting at it for ever, and the race
    // under test is the bootstrap's, not the first open's.
    let stores: Vec<SqliteStore> = (0..8).map(|_| SqliteStore::open(&path).unwrap()).collect();
    let outcomes: Vec<bool> = std::thread::scope(|scope| {
        let runs: Vec<_> = stores
            .into_iter()
            .map(|store| {
                let start = &start;
                scope.spawn(move || {
                    start.wait();
                    let runtime = tokio::runtime::Builder::new_current_thread()
                        .build()
                        .unwrap();
                    match runtime.block_on(Clients::new(&store, ["gold"]).bootstrap(false, 0)) {
                        Ok(_) => true,
                        Err(ClientError::AdminExists) => false,
                        Err(other) => panic!("{other}"),
                    }
                })
            })
            .collect();
        runs.into_iter().map(|run| run.join().unwrap()).collect()
    });
    assert_eq!(outcomes.iter().filter(|created| **created).count(), 1);
    let store = SqliteStore::open(&path).unwrap();
    let admins = store
        .clients()
        .unwrap()
        .iter()
        .filter(|c| c.is_admin)
        .count();
    assert_eq!(admins, 1);
    for file in ["keys.db", "keys.db-wal", "keys.db-shm"] {
        let mode = std::fs::metadata(dir.path().join(file))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600, "{file}");
    }
}

#[tokio::test]
async fn external_ids_are_tied_to_an_issuer() {
    let one = ["https://a".to_owned()];
    let two = ["https://a".to_owned(), "https://b".to_owned()];
    let ok = |id, issuer, configured| external_id(id, issuer, configured).unwrap();
    assert_eq!(ok("svc", None, Some(&one[..])), "https://a#svc");
    assert_eq!(ok("https://b#svc", None, Some(&two[..])), "https://b#svc");
    assert_eq!(
        ok("svc#1", Some("https://b"), Some(&two[..])),
        "https://b#svc#1"
    );
    assert_eq!(ok("https://c#svc", None, None), "https://c#svc");
    let refused = |id, issuer, configured| external_id(id, issuer, configured).is_err();
    assert!(refused("svc", None, Some(&two[..])), "which issuer?");
    assert!(refused("svc", None, None));
    assert!(
        refused("https://c#svc", None, Some(&two[..])),
        "not configured"
    );
    assert!(refused("https://a#", None, Some(&one[..])));

    let store = store();
    let clients = Clients::new(&store, ["gold"]).with_issuers(one.clone());
    let mut spec = spec("gold");
    spec.external_id = Some("svc".into());
    let created = clients.create(spec, 0).await.unwrap();
    assert_eq!(created.client.external_id.as_deref(), Some("https://a#svc"));
}

#[tokio::test]
async fn contradictory_expiry_is_refused() {
    let store = store();
    let clients = Clients::new(&store, ["gold"]);
    let mut both = spec("gold");
    (both.expires_at, both.ttl) = (Some(10), Some(Ttl::Seconds(10)));
    let refused = |r: Result<ClientView, _>| matches!(r, Err(ClientError::Invalid(_)));
    assert!(refused(clients.create(both, 0).await));
    assert!(refused(clients.rotate("x", -1, 0).await));
}
