//! Guard collateral damage: trusted proxies, allow-lists, key rotation refusals, shared sources; the token endpoint's limits.
//!
//! On loopback with `--no-xdp`, so every ban is a userspace one and shows
//! as a refused request (403) or a dropped connection: 127.0.0.1 plays the
//! load balancer (`trusted_proxies`), other 127/8 addresses untrusted peers.
#![allow(clippy::unwrap_used, reason = "tests: a panic is the failure report")]
use std::{
    collections::HashSet,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use gateway_tests::{
    cmd::openssl,
    fs::TempDir,
    gateway::Gateway,
    http::{get_from, pause, request_with_body, tiers_and_app, FakeUpstream, Reply},
};
use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use serde_json::json;

const LB: &str = "127.0.0.1";
const ABUSER: &str = "203.0.113.7";
const NEIGHBOUR: &str = "203.0.113.8";

/// Tiers bronze (3/min) and gold, the pool `app`, an API-key route `/api/`
/// and a JWT route `/jwt/`, 127.0.0.1 as a trusted proxy, then `extra`.
fn config(upstream: &FakeUpstream, extra: &str) -> String {
    tiers_and_app(upstream.addr)
        + r#"
[[routes]]
path_prefix = "/api/"
upstream = "app"

[[routes]]
path_prefix = "/jwt/"
upstream = "app"
auth = "jwt"

[forwarding]
trusted_proxies = ["127.0.0.1/32"]
"# + extra
}

/// `GET path` from `source`; `None` if the connection is refused or
/// dropped (a banned source, with `--no-xdp`).
fn get(gateway: &Gateway, source: &str, path: &str, headers: &[(&str, &str)]) -> Option<Reply> {
    let source = source.parse().unwrap();
    get_from(source, gateway.addr, path, headers, Duration::from_secs(5)).ok()
}

/// Through the load balancer, for the client at `client`.
fn via_lb(gateway: &Gateway, client: &str, key: &str) -> Option<Reply> {
    get(
        gateway,
        LB,
        "/api/x",
        &[("x-forwarded-for", client), ("x-api-key", key)],
    )
}

fn metrics(gateway: &Gateway) -> String {
    gateway.admin_get("/metrics", &[]).body
}

/// The value of the metrics line that starts with `series` (0 if absent).
fn metric(gateway: &Gateway, series: &str) -> u64 {
    let text = metrics(gateway);
    (text.lines())
        .find_map(|line| line.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0)
}

/// Sends `send(i)` until it answers 403 or nothing (bounded); the statuses.
fn until_refused(mut send: impl FnMut(usize) -> Option<Reply>) -> Vec<u16> {
    let mut statuses = Vec::new();
    for i in 0..40 {
        match send(i) {
            Some(reply) => statuses.push(reply.status),
            None => return statuses,
        }
        if statuses.last() == Some(&403) {
            return statuses;
        }
        // The ban is applied by the policy writer, a batch later.
        if statuses.len() > 4 {
            pause(Duration::from_millis(50));
        }
    }
    statuses
}

#[test]
fn an_abuser_behind_a_trusted_load_balancer_is_banned_alone_and_the_balancer_never() {
    let upstream = FakeUpstream::start(None);
    let guard =
        "[guard]\nauth_failures = 3\nauth_failure_window = \"60s\"\nauth_failure_ban = \"60s\"\n";
    let gateway = Gateway::builder(&config(&upstream, guard)).start();
    let gold = gateway.create_key("gold");
    pause(Duration::from_millis(300));

    let statuses = until_refused(|i| via_lb(&gateway, ABUSER, &format!("gk_guess{i:04}_x")));
    assert_eq!(statuses.last(), Some(&403), "never banned: {statuses:?}");
    assert!(statuses[..statuses.len() - 1].iter().all(|s| *s == 401));
    assert!((4..12).contains(&statuses.len()), "{statuses:?}");
    // Refused from then on, with its key too, on the balancer's connection...
    let refused = via_lb(&gateway, ABUSER, &gold).expect("the balancer's connection was dropped");
    assert_eq!(refused.status, 403);
    assert!(refused.header("retry-after").is_some(), "{refused:?}");
    assert_eq!(refused.json()["error"], "banned");
    // ...while the abuser's neighbour behind the same balancer, and the
    // balancer itself, are served.
    let served = via_lb(&gateway, NEIGHBOUR, &gold).expect("the balancer was banned");
    assert_eq!(served.status, 200, "{served:?}");
    let direct = get(&gateway, LB, "/api/x", &[("x-api-key", &gold)]).unwrap();
    assert_eq!(direct.status, 200);
    let seen = upstream.requests();
    assert_eq!(
        seen.len(),
        2,
        "only the neighbour and the balancer: {seen:?}"
    );
    assert_eq!(
        seen[0].header("x-forwarded-for"),
        Some("203.0.113.8, 127.0.0.1")
    );

    // The balancer guessing keys itself (no X-Forwarded-For) is spared.
    for i in 0..8 {
        let reply = get(
            &gateway,
            LB,
            "/api/x",
            &[("x-api-key", &format!("gk_lbgs{i:04}_x"))],
        );
        assert_eq!(
            reply.map(|r| r.status),
            Some(401),
            "the balancer was banned"
        );
    }
    assert_eq!(
        via_lb(&gateway, NEIGHBOUR, &gold).map(|r| r.status),
        Some(200)
    );

    assert!(metric(&gateway, "gateway_bans_spared_total") >= 1);
    assert_eq!(
        metric(
            &gateway,
            "gateway_userspace_bans_issued_total{ban=\"forwarded\"}"
        ),
        1
    );
    assert_eq!(
        metric(
            &gateway,
            "gateway_bans_issued_total{reason=\"auth_failures\"}"
        ),
        1
    );
    assert_eq!(metric(&gateway, "gateway_bans_active"), 1);
    assert!(
        metric(
            &gateway,
            "gateway_banned_requests_total{ban=\"forwarded_address\"}"
        ) >= 1
    );
    // The access log tells the peer from the client.
    let line = gateway.wait_for_log(|l| l["error"] == "banned");
    assert_eq!(
        (line["peer"].as_str(), line["client_ip"].as_str()),
        (Some(LB), Some(ABUSER))
    );
    assert_eq!(line["detail"], "forwarded_address");
}

#[test]
fn an_untrusted_peer_does_not_choose_its_address_with_x_forwarded_for() {
    let upstream = FakeUpstream::start(None);
    let guard = "[guard]\nauth_failures = 3\nauth_failure_window = \"60s\"\n";
    let gateway = Gateway::builder(&config(&upstream, guard)).start();
    let gold = gateway.create_key("gold");
    pause(Duration::from_millis(300));

    let attacker = "127.0.0.2";
    let statuses = until_refused(|i| {
        let fake = format!("198.51.100.{i}");
        let key = format!("gk_guess{i:04}_x");
        get(
            &gateway,
            attacker,
            "/api/x",
            &[("x-forwarded-for", &fake), ("x-api-key", &key)],
        )
    });
    // Guesses are 401s until the ban lands; a connection accepted just
    // before it is refused by the request's own ban check (403), later
    // ones at accept (dropped: the list ends).
    let (last, guesses) = statuses.split_last().unwrap();
    assert!(
        guesses.iter().all(|s| *s == 401) && [401, 403].contains(last) && statuses.len() >= 4,
        "{statuses:?}"
    );
    let line = gateway.wait_for_log(|l| l["peer"] == attacker);
    assert_eq!(
        line["client_ip"], attacker,
        "the made-up address was believed"
    );
    // The attacker's own address is banned (its connections are dropped)...
    let deadline = Instant::now() + Duration::from_secs(5);
    while get(&gateway, attacker, "/api/x", &[("x-api-key", &gold)]).is_some() {
        assert!(Instant::now() < deadline, "the attacker was never banned");
        pause(Duration::from_millis(50));
    }
    // ...not the addresses it named, nor the kernel-less LB path.
    let named = via_lb(&gateway, "198.51.100.1", &gold).unwrap();
    assert_eq!(named.status, 200);
    assert_eq!(
        metric(
            &gateway,
            "gateway_userspace_bans_issued_total{ban=\"forwarded\"}"
        ),
        0
    );
    assert_eq!(upstream.requests().len(), 1);
}

#[test]
fn behind_a_trusted_load_balancer_source_limits_count_each_client_address() {
    let upstream = FakeUpstream::start(None);
    let route =
        "\n[[routes]]\npath_prefix = \"/src/\"\nupstream = \"app\"\nlimit_by = \"source\"\n";
    let gateway = Gateway::builder(&config(&upstream, route)).start();
    let bronze = gateway.create_key("bronze");
    pause(Duration::from_millis(300));
    let call = |client: &str| {
        let headers = [("x-forwarded-for", client), ("x-api-key", bronze.as_str())];
        get(&gateway, LB, "/src/x", &headers).unwrap().status
    };
    // Bronze allows 3 a minute per source: the abuser's address spends its own.
    let abuser: Vec<u16> = (0..4).map(|_| call(ABUSER)).collect();
    assert_eq!(abuser, [200, 200, 200, 429]);
    assert_eq!(call(NEIGHBOUR), 200, "the balancer's address was limited");
    assert_eq!(upstream.requests().len(), 4);
}

/// An Ed25519 key pair on disk and a configured issuer trusting it.
struct Idp {
    _dir: TempDir,
    key: EncodingKey,
    config: String,
}

impl Idp {
    const ISSUER: &str = "https://idp.test";

    fn new() -> Self {
        let dir = TempDir::new("idp");
        openssl(
            &dir.path,
            &["genpkey", "-algorithm", "ed25519", "-out", "idp.key"],
        );
        openssl(
            &dir.path,
            &["pkey", "-in", "idp.key", "-pubout", "-out", "idp.pub"],
        );
        let key =
            EncodingKey::from_ed_pem(&std::fs::read(dir.path.join("idp.key")).unwrap()).unwrap();
        let config = format!(
            "[[issuers]]\nissuer = \"{}\"\naudiences = [\"api\"]\npem = \"{}\"\n",
            Self::ISSUER,
            dir.path.join("idp.pub").display()
        );
        Self {
            _dir: dir,
            key,
            config,
        }
    }

    /// A token for `sub`, valid from `nbf` until `exp` (unix seconds).
    fn token(&self, sub: &str, nbf: i64, exp: i64) -> String {
        let claims = json!({"iss": Self::ISSUER, "aud": "api", "sub": sub, "nbf": nbf, "exp": exp});
        encode(&Header::new(Algorithm::EdDSA), &claims, &self.key).unwrap()
    }
}

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

#[test]
fn a_burst_of_expired_or_not_yet_valid_tokens_bans_nobody_but_forged_ones_do() {
    let upstream = FakeUpstream::start(None);
    let idp = Idp::new();
    let guard = "[guard]\nauth_failures = 3\nauth_failure_window = \"60s\"\n";
    let gateway = Gateway::builder(&(config(&upstream, guard) + &idp.config)).start();
    let jwt = |source: &str, token: &str| {
        let bearer = format!("Bearer {token}");
        get(&gateway, source, "/jwt/x", &[("authorization", &bearer)])
    };

    // Clients whose tokens ran out or whose clocks drift, from one
    // (untrusted) address: twenty refusals.
    let stale = "127.0.0.4";
    for i in 0..10 {
        let expired = idp.token(&format!("svc{i}"), now() - 3600, now() - 600);
        let early = idp.token(&format!("svc{i}"), now() + 600, now() + 3600);
        for (token, reason) in [(expired, "expired"), (early, "not_yet_valid")] {
            let reply = jwt(stale, &token).expect("banned for stale tokens");
            assert_eq!(reply.status, 401);
            assert!(reply.body.contains(reason), "{}", reply.body);
        }
    }
    let fresh = idp.token("svc", now() - 10, now() + 300);
    assert_eq!(jwt(stale, &fresh).map(|r| r.status), Some(200));
    assert_eq!(
        metric(
            &gateway,
            "gateway_bans_issued_total{reason=\"auth_failures\"}"
        ),
        0
    );
    assert_eq!(upstream.requests().len(), 1);

    // Forged signatures from another peer are guessing: banned.
    let forger = "127.0.0.3";
    let statuses = until_refused(|i| {
        let mut forged = idp.token(&format!("admin{i}"), now() - 10, now() + 300);
        forged.truncate(forged.len() - 4);
        forged.push_str("AAAA");
        jwt(forger, &forged)
    });
    // Refused at accept, or (when the ban lands between accept and the
    // request) answered 403 by the userspace ban check.
    let (last, guessed) = statuses.split_last().expect("no forged token was answered");
    assert!(guessed.iter().all(|s| *s == 401), "{statuses:?}");
    assert!([401, 403].contains(last), "{statuses:?}");
    let deadline = Instant::now() + Duration::from_secs(5);
    while jwt(forger, &fresh).is_some() {
        assert!(Instant::now() < deadline, "the forger was never banned");
        pause(Duration::from_millis(50));
    }
    assert_eq!(
        metric(
            &gateway,
            "gateway_bans_issued_total{reason=\"auth_failures\"}"
        ),
        1
    );
}

#[test]
fn one_clients_429_storm_from_a_shared_source_does_not_block_its_neighbours() {
    let upstream = FakeUpstream::start(None);
    let guard = "[guard]\nexcess = 3\nmin_ban = \"30s\"\n";
    let gateway = Gateway::builder(&config(&upstream, guard)).start();
    let bronze = gateway.create_key("bronze");
    let gold = gateway.create_key("gold");
    pause(Duration::from_millis(300));
    // An untrusted address (a trusted one is never banned anyway).
    let nat = "127.0.0.5";
    let call = |key: &str| get(&gateway, nat, "/api/x", &[("x-api-key", key)]);

    // A neighbour in good standing at the same address (say, a NAT).
    assert_eq!(call(&gold).map(|r| r.status), Some(200));
    let statuses = until_refused(|_| call(&bronze));
    assert_eq!(statuses[..3], [200, 200, 200], "{statuses:?}");
    assert_eq!(
        statuses.last(),
        Some(&403),
        "the address was banned: {statuses:?}"
    );
    assert!(
        statuses[3..statuses.len() - 1].iter().all(|s| *s == 429),
        "{statuses:?}"
    );
    // The storming client stays refused at that address; its neighbour is served.
    let refused = call(&bronze).expect("the address was banned");
    assert_eq!(refused.status, 403);
    assert_eq!(refused.json()["error"], "banned");
    assert_eq!(
        call(&gold).map(|r| r.status),
        Some(200),
        "the neighbour was blocked"
    );
    assert_eq!(
        upstream.requests().len(),
        5,
        "gold twice, bronze's three allowed"
    );

    assert_eq!(
        metric(
            &gateway,
            "gateway_userspace_bans_issued_total{ban=\"client\"}"
        ),
        1
    );
    assert_eq!(
        metric(&gateway, "gateway_bans_issued_total{reason=\"rate_limit\"}"),
        1
    );
    assert!(
        metric(
            &gateway,
            "gateway_banned_requests_total{ban=\"client_at_address\"}"
        ) >= 2
    );
    let line = gateway.wait_for_log(|l| l["detail"] == "client_at_address");
    assert_eq!(line["status"], 403);
}

fn mint(gateway: &Gateway, client: &str, key: &str) -> Reply {
    let form = format!("grant_type=client_credentials&client_secret={key}");
    let headers = [
        ("content-type", "application/x-www-form-urlencoded"),
        ("x-forwarded-for", client),
    ];
    request_with_body(gateway.addr, "POST", "/oauth2/token", &headers, &form)
}

#[test]
fn hammering_the_token_endpoint_gets_429s_and_mints_no_more_than_the_limit() {
    let upstream = FakeUpstream::start(None);
    let tokens = "[tokens]\nlimit_requests = 5\nlimit_window = \"60s\"\n";
    let gateway = Gateway::builder(&config(&upstream, tokens)).start();
    let gold = gateway.create_key("gold");
    let other = gateway.create_key("gold");
    pause(Duration::from_millis(300));

    let mut minted = HashSet::new();
    let mut refused = 0;
    for _ in 0..15 {
        let reply = mint(&gateway, ABUSER, &gold);
        match reply.status {
            200 => _ = minted.insert(reply.json()["access_token"].as_str().unwrap().to_owned()),
            429 => {
                refused += 1;
                assert!(reply
                    .header("retry-after")
                    .is_some_and(|s| s.parse::<u64>().unwrap() >= 1));
                assert_eq!(reply.header("x-ratelimit-limit"), Some("5"));
                assert_eq!(reply.header("x-ratelimit-remaining"), Some("0"));
                assert!(reply
                    .header("ratelimit-policy")
                    .unwrap()
                    .contains("q=5;w=60"));
                assert_eq!(reply.json()["error"], "rate_limited");
            }
            status => panic!("unexpected {status}: {}", reply.body),
        }
    }
    assert_eq!(
        (minted.len(), refused),
        (5, 10),
        "the limit (5 a minute) held"
    );
    // Each client at its own address has its own buckets; a client's
    // allowed answers carry the limit headers too.
    let fine = mint(&gateway, NEIGHBOUR, &other);
    assert_eq!(fine.status, 200);
    assert_eq!(fine.header("x-ratelimit-remaining"), Some("4"));
    // The same client from another address is still over its own limit.
    assert_eq!(mint(&gateway, "203.0.113.9", &gold).status, 429);
    // Minting never spent API quota, and a minted token works.
    let token = minted.iter().next().unwrap();
    let bearer = format!("Bearer {token}");
    let api = get(&gateway, LB, "/jwt/x", &[("authorization", &bearer)]).unwrap();
    assert_eq!(api.status, 200, "{}", api.body);
    assert_eq!(upstream.requests().len(), 1);
}

/// With XDP attached, in network namespaces: the load balancer is
/// CLIENT_V4 (trusted), an abuser behind it guesses keys. Its ban lives in
/// userspace only: the kernel's ban map never holds the balancer (nor
/// anyone), the balancer's other clients and the other source are served.
#[test]
fn with_xdp_a_forwarded_abusers_ban_never_reaches_the_kernel_map() {
    use gateway_tests::{
        netns::{Topology, CLIENT2_V4, CLIENT_V4},
        require_root,
    };
    if !require_root("with_xdp_a_forwarded_abusers_ban_never_reaches_the_kernel_map") {
        return;
    }
    const PORT: u16 = 18081;
    let topology = Topology::new();
    let upstream = topology.server.run(|| FakeUpstream::start(None));
    let body = format!(
        "[[listeners]]\naddress = \"10.77.0.1:{PORT}\"\n\n{}\n\
         [[routes]]\npath_prefix = \"/\"\nupstream = \"app\"\n\n\
         [forwarding]\ntrusted_proxies = [\"{CLIENT_V4}/32\"]\n\n\
         [guard]\nauth_failures = 3\nauth_failure_window = \"60s\"\n",
        tiers_and_app(upstream.addr)
    );
    let gateway = Gateway::builder(&body)
        .in_namespace(&topology.server)
        .xdp(&PORT.to_string())
        .start();
    let gold = gateway.create_key("gold");
    pause(Duration::from_millis(400));
    let send = |source: &'static str, client: &str, key: &str| {
        let server = std::net::SocketAddr::from(([10, 77, 0, 1], PORT));
        let headers = [
            ("x-forwarded-for", client.to_owned()),
            ("x-api-key", key.to_owned()),
        ];
        topology.client.run(move || {
            let headers: Vec<(&str, &str)> =
                headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
            let source = source.parse().unwrap();
            get_from(source, server, "/", &headers, Duration::from_millis(700))
                .ok()
                .map(|r| r.status)
        })
    };

    let mut statuses = Vec::new();
    for i in 0..30 {
        let status = send(CLIENT_V4, ABUSER, &format!("gk_guess{i:04}_x"));
        statuses.push(status);
        if status != Some(401) {
            break;
        }
        if i > 3 {
            pause(Duration::from_millis(50));
        }
    }
    assert_eq!(statuses.last(), Some(&Some(403)), "{statuses:?}");
    assert_eq!(
        send(CLIENT_V4, NEIGHBOUR, &gold),
        Some(200),
        "the balancer was dropped"
    );
    assert_eq!(send(CLIENT2_V4, "", &gold), Some(200));
    assert_eq!(
        gateway.xdp(&["bans", "--json"]).trim(),
        "[]",
        "a ban reached the kernel"
    );
    assert_eq!(gateway.counter("dropped_banned"), 0);
    let admin = gateway.admin.unwrap();
    let text = topology
        .server
        .run(move || gateway_tests::http::request(admin, "GET", "/metrics", &[]).body);
    assert!(
        text.contains("gateway_userspace_bans_issued_total{ban=\"forwarded\"} 1"),
        "{text}"
    );
    assert!(text.contains("gateway_bans_active 1"), "{text}");
}
