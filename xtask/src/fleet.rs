//! `cargo xtask fleet`: a fleet on one machine for a developer to play
//! with. A throwaway PostgreSQL (unix socket, migrated) and Redis, three
//! gateways on loopback sharing them (`[store] url`, `[limits] backend =
//! "redis"`, bans through Redis), the demo upstream behind them, and one
//! admin key and one client printed. Ctrl-C stops everything; the temp
//! dirs (configs, states, the database) go with it. Root: PostgreSQL's
//! `initdb` runs as `nobody` (see tests/support/postgres.rs).
use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context, Result};
use gateway_tests::{postgres::Postgres, redis::Redis};

use crate::demo::{self, Upstream};

pub const NODES: usize = 3;

/// What one node listens on.
#[derive(Clone, Copy)]
pub struct Ports {
    pub listen: u16,
    pub admin: u16,
}

/// Node `i`'s configuration: its own listener, admin and state dir; the
/// shared store, Redis and upstream. XDP off (loopback, no root needed by
/// the gateways themselves); the guard on, as in production.
pub fn node_config(
    i: usize,
    ports: Ports,
    dir: &Path,
    store: &str,
    redis: &str,
    upstream: SocketAddr,
) -> String {
    format!(
        "# fleet node {i} of {NODES} (cargo xtask fleet)\n\
         state_dir = \"{}\"\n\n\
         [[listeners]]\naddress = \"127.0.0.1:{}\"\n\n\
         [admin]\naddress = \"127.0.0.1:{}\"\n\n\
         [xdp]\nenabled = false\n\n\
         [store]\nurl = \"{store}\"\n\n\
         [redis]\nurl = \"{redis}\"\n\n\
         [limits]\nbackend = \"redis\"\nnodes = {NODES}\n\n\
         [[tiers]]\nname = \"bronze\"\nrequests = 10\nwindow = \"60s\"\n\n\
         [[tiers]]\nname = \"gold\"\nrequests = 1000\nwindow = \"60s\"\n\n\
         [[upstreams]]\nname = \"app\"\nservers = [\"{upstream}\"]\n\n\
         [[routes]]\npath_prefix = \"/api/\"\nupstream = \"app\"\n",
        dir.join(format!("state{i}")).display(),
        ports.listen,
        ports.admin,
    )
}

fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// `gateway ARGS --json`, its JSON answer.
fn json(gateway: &Path, args: &[&str]) -> Result<serde_json::Value> {
    let output = Command::new(gateway)
        .args(args)
        .arg("--json")
        .output()
        .with_context(|| format!("cannot run {}", gateway.display()))?;
    if !output.status.success() {
        bail!(
            "gateway {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    serde_json::from_slice(&output.stdout).context("no JSON answer")
}

pub fn run(release: bool) -> Result<()> {
    let gateway = crate::build(release)?;
    let postgres = Postgres::start("cargo xtask fleet")
        .context("the fleet needs root and PostgreSQL 15 (cargo xtask setup installs it)")?;
    let redis = Redis::start("cargo xtask fleet")
        .context("the fleet needs redis-server (cargo xtask setup installs it)")?;
    let store = postgres.url();
    crate::run_cmd(
        Command::new(&gateway)
            .args(["store", "migrate", "--url", &store])
            .stdout(std::process::Stdio::null()),
    )?;
    let upstream = Upstream::start(SocketAddr::from(([127, 0, 0, 1], 0)))
        .context("starting the demo upstream")?;
    let dir = tempfile::Builder::new()
        .prefix("gateway-fleet-")
        .tempdir()
        .context("creating the fleet's temp dir")?;
    let mut configs: Vec<PathBuf> = Vec::new();
    let mut nodes = Vec::new();
    for i in 1..=NODES {
        let ports = Ports {
            listen: free_port()?,
            admin: free_port()?,
        };
        let text = node_config(i, ports, dir.path(), &store, &redis.url(), upstream.addr);
        let path = dir.path().join(format!("node{i}.toml"));
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
        configs.push(path);
        nodes.push(ports);
    }
    let first = configs[0]
        .to_str()
        .context("a temp dir path that is not UTF-8")?;
    let admin = json(&gateway, &["keys", "bootstrap", "--config", first])?;
    let client = json(
        &gateway,
        &[
            "keys", "create", "--name", "demo", "--tier", "bronze", "--config", first,
        ],
    )?;
    let field = |value: &serde_json::Value, name: &str| {
        (value[name].as_str().map(str::to_owned)).with_context(|| format!("no {name}"))
    };
    let (admin_key, key) = (field(&admin, "api_key")?, field(&client, "api_key")?);
    let mut running = Vec::new();
    for config in &configs {
        let mut command = Command::new(&gateway);
        command.arg("run").arg("--config").arg(config);
        running.push(demo::spawn(command)?);
    }
    // Ctrl-C reaches every process of the group: the gateways, PostgreSQL
    // and Redis stop by themselves; this one waits for them, then drops
    // the temp dirs. (Set after spawning: children would inherit SIG_IGN.)
    // SAFETY: setting a signal disposition; no handler runs.
    unsafe { libc::signal(libc::SIGINT, libc::SIG_IGN) };
    print!(
        "{}",
        announcement(&nodes, &store, &redis.url(), &admin_key, &key, dir.path())
    );
    for node in running {
        let status = node.wait()?;
        if !status.success() {
            eprintln!("fleet: a gateway exited with {status}");
        }
    }
    drop((redis, postgres, dir));
    println!("fleet: stopped; temp dirs removed");
    Ok(())
}

/// The block printed once every node is ready.
fn announcement(
    nodes: &[Ports],
    store: &str,
    redis: &str,
    admin_key: &str,
    key: &str,
    dir: &Path,
) -> String {
    let mut out =
        String::from("\n── fleet ─────────────────────────────────────────────────────────────\n");
    for (i, ports) in nodes.iter().enumerate() {
        out += &format!(
            "node {}: http://127.0.0.1:{}  admin http://127.0.0.1:{}  config {}\n",
            i + 1,
            ports.listen,
            ports.admin,
            dir.join(format!("node{}.toml", i + 1)).display()
        );
    }
    let [a, b, c] = [nodes[0], nodes[1], nodes[2]];
    out += &format!(
        "store:  {store}\nredis:  {redis}\n\n\
         Keys (shown this once; the store keeps hashes):\n\n  \
         ADMIN={admin_key}\n  KEY={key}\n\n\
         The client (tier bronze, 10 a minute) on any node; its quota is shared,\n\
         so 12 requests spread over the three nodes end in 429s all the same:\n\n  \
         for p in {a} {b} {c} {a} {b} {c} {a} {b} {c} {a} {b} {c}; do curl -s -o /dev/null -w \"%{{http_code}} \" -H \"X-API-Key: $KEY\" http://127.0.0.1:$p/api/hello; done; echo\n\n\
         A client made on node 1's admin API works on node 3 (a NOTIFY away);\n\
         revoked on node 1, it is refused on node 2:\n\n  \
         NEW=$(curl -s -H \"Authorization: Bearer $ADMIN\" -H 'content-type: application/json' \\\n    \
         -d '{{\"name\":\"new\",\"tier\":\"gold\"}}' http://127.0.0.1:{}/v1/management/api-clients)\n  \
         curl -si -H \"X-API-Key: $(echo \"$NEW\" | jq -r .api_key)\" http://127.0.0.1:{c}/api/hello | head -1\n  \
         curl -s -X DELETE -H \"Authorization: Bearer $ADMIN\" http://127.0.0.1:{}/v1/management/api-clients/$(echo \"$NEW\" | jq -r .id)\n  \
         curl -si -H \"X-API-Key: $(echo \"$NEW\" | jq -r .api_key)\" http://127.0.0.1:{b}/api/hello | head -1\n\n\
         Shared limits on each node's metrics: curl -s http://127.0.0.1:{}/metrics | grep gateway_limits\n\
         Ctrl-C stops the fleet, PostgreSQL and Redis, and removes their temp dirs.\n\
         ──────────────────────────────────────────────────────────────────────\n",
        a.admin, a.admin, b.admin,
        a = a.listen,
        b = b.listen,
        c = c.listen,
    );
    out
}

#[cfg(test)]
mod tests {
    use gateway_tests::{fs::TempDir, gateway_bin};

    use super::*;

    /// Every node's configuration is one `gateway check-config` accepts,
    /// on distinct ports and state dirs.
    #[test]
    fn the_generated_configs_are_valid() {
        let dir = TempDir::new("xtask-fleet");
        let upstream = SocketAddr::from(([127, 0, 0, 1], 9000));
        let store = "postgresql://gateway@localhost/postgres?host=/tmp/pg";
        for i in 1..=NODES {
            let port = 20_000 + 2 * i as u16;
            let ports = Ports {
                listen: port,
                admin: port + 1,
            };
            let text = node_config(
                i,
                ports,
                dir.path(),
                store,
                "redis+unix:///tmp/r.sock",
                upstream,
            );
            assert!(text.contains(&format!("127.0.0.1:{port}\"")), "{text}");
            assert!(text.contains(&format!("state{i}\"")), "{text}");
            let path = dir.write(&format!("node{i}.toml"), &text);
            let output = Command::new(gateway_bin())
                .arg("check-config")
                .arg(&path)
                .output()
                .unwrap();
            assert!(output.status.success(), "node {i}: {output:?}\n{text}");
            let said = String::from_utf8_lossy(&output.stdout);
            assert!(
                said.contains("valid (1 listeners, 1 upstreams, 1 routes)"),
                "{said}"
            );
        }
    }

    #[test]
    fn the_announcement_names_every_node() {
        let nodes = [1, 2, 3].map(|i| Ports {
            listen: 8000 + i,
            admin: 9000 + i,
        });
        let text = announcement(
            &nodes,
            "postgresql://s",
            "redis+unix:///r",
            "gwk_a",
            "gwk_k",
            Path::new("/d"),
        );
        for port in [8001, 8002, 8003, 9001, 9002, 9003] {
            assert!(
                text.contains(&format!("127.0.0.1:{port}")),
                "{port}: {text}"
            );
        }
        assert!(
            text.contains("ADMIN=gwk_a") && text.contains("KEY=gwk_k"),
            "{text}"
        );
    }
}
