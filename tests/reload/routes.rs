//! Which pool a route sends to: found once per configuration, by the
//! route's place in the file, while matching goes longest prefix first.
use gateway_tests::{
    gateway::Gateway,
    http::{FakeUpstream, Seen},
};

use super::support::{reload, ConfigFile};

/// Three routes listed shortest prefix first (the reverse of the order
/// they are matched in), each to its own pool; `swap` sends `/api/` and
/// `/api/admin/` to each other's pool.
fn three_routes(
    catch_all: &FakeUpstream,
    api: &FakeUpstream,
    admin: &FakeUpstream,
    swap: bool,
) -> String {
    let (to_api, to_admin) = if swap {
        ("admin", "api")
    } else {
        ("api", "admin")
    };
    format!(
        "[[tiers]]\nname = \"gold\"\nrequests = 1000\nwindow = \"1h\"\n\n\
         [[upstreams]]\nname = \"catch_all\"\nservers = [\"{}\"]\n\n\
         [[upstreams]]\nname = \"api\"\nservers = [\"{}\"]\n\n\
         [[upstreams]]\nname = \"admin\"\nservers = [\"{}\"]\n\n\
         [[routes]]\npath_prefix = \"/\"\nupstream = \"catch_all\"\nauth = \"none\"\n\n\
         [[routes]]\npath_prefix = \"/api/\"\nupstream = \"{to_api}\"\nauth = \"none\"\n\n\
         [[routes]]\npath_prefix = \"/api/admin/\"\nupstream = \"{to_admin}\"\nauth = \"none\"\n",
        catch_all.addr, api.addr, admin.addr
    )
}

fn targets(seen: Vec<Seen>) -> Vec<String> {
    seen.into_iter().map(|s| s.target).collect()
}

#[test]
fn each_route_reaches_its_own_pool_before_and_after_a_reload_that_swaps_them() {
    let (catch_all, api, admin) = (
        FakeUpstream::start(None),
        FakeUpstream::start(None),
        FakeUpstream::start(None),
    );
    let body = three_routes(&catch_all, &api, &admin, false);
    let builder = Gateway::builder(&body);
    let admin_key = builder.create_key_with("gold", &["--admin"]);
    let gateway = builder.start();
    let file = ConfigFile::of(&gateway, &body);
    for target in ["/api/admin/1", "/api/2", "/3"] {
        assert_eq!(gateway.get(target, &[]).status, 200, "{target}");
    }
    assert_eq!(targets(admin.requests()), ["/api/admin/1"]);
    assert_eq!(targets(api.requests()), ["/api/2"]);
    assert_eq!(targets(catch_all.requests()), ["/3"]);

    file.write(&three_routes(&catch_all, &api, &admin, true));
    let reply = reload(&gateway, &admin_key);
    assert_eq!(reply.status, 200, "{}", reply.body);
    for target in ["/api/admin/4", "/api/5", "/6"] {
        assert_eq!(gateway.get(target, &[]).status, 200, "{target}");
    }
    assert_eq!(targets(admin.requests()), ["/api/admin/1", "/api/5"]);
    assert_eq!(targets(api.requests()), ["/api/2", "/api/admin/4"]);
    assert_eq!(targets(catch_all.requests()), ["/3", "/6"]);
}
