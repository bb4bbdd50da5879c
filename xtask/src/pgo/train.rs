//! The PGO training load: the traffic the gateway is for, through the
//! instrumented build on loopback. HTTP/1.1 GETs rotating through 1,000 API
//! keys, small POST bodies, TLS, HTTP/2 over TLS, JWTs from the gateway's
//! own token endpoint, a well-formed key this gateway does not know (401)
//! and a client over its limit (429), from wrk, h2load and curl against
//! the xtask's upstream, with the source guard counting (monitor mode).
//!
//! Every load must be answered as it should or the build fails: a broken
//! route would otherwise train the build on its error path alone.
use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::{ensure, Context, Result};

use crate::bench::{
    keys,
    procs::{dies_with_spawner, free_port, output_within, Running},
    scratch,
    upstream::Upstream,
};

/// API keys the HTTP/1.1 and TLS loads rotate through.
const KEYS: usize = 1_000;

/// The instrumented `gateway` under each load in turn, its counters written
/// to `raw` as `serve-<pid>.profraw` when it exits after SIGTERM (the
/// CLI's runs that make keys write theirs beside it).
pub(super) fn run(gateway: &Path, raw: &Path) -> Result<()> {
    let dir = scratch::dir("gateway-pgo-")?;
    let upstream = Upstream::start()?;
    let (port, tls_port) = (free_port()?, free_port()?);
    ensure!(port != tls_port, "free_port gave {port} twice");
    let config = dir.path().join("gateway.toml");
    let text = config_text(dir.path(), "keys.db", port, tls_port, upstream.port);
    std::fs::write(&config, text).with_context(|| format!("writing {}", config.display()))?;
    let gold = keys::create(gateway, &config, "pgo", "gold", KEYS)?;
    let bronze = keys::create(gateway, &config, "pgo-limited", "bronze", 1)?;
    // A real key of another store: well formed, so the 401 comes from the
    // lookup, not from the format check.
    let elsewhere = dir.path().join("elsewhere.toml");
    let text = config_text(dir.path(), "elsewhere.db", port, tls_port, upstream.port);
    std::fs::write(&elsewhere, text).with_context(|| format!("writing {}", elsewhere.display()))?;
    let unknown = keys::create(gateway, &elsewhere, "pgo-unknown", "gold", 1)?;
    let keys_file = dir.path().join("keys.txt");
    let lines: Vec<&str> = gold.iter().map(|k| k.api_key.as_str()).collect();
    std::fs::write(&keys_file, lines.join("\n") + "\n")?;
    let get = lua(dir.path(), "get.lua", &keys_file, "GET", None)?;
    let post = lua(
        dir.path(),
        "post.lua",
        &keys_file,
        "POST",
        Some(&"x".repeat(600)),
    )?;

    let mut command = Command::new(gateway);
    dies_with_spawner(&mut command)
        .args(["run", "--config"])
        .arg(&config)
        // Its start-up lines and the guard's would-be bans would bury the
        // build's output.
        .env("RUST_LOG", "error")
        .env("LLVM_PROFILE_FILE", raw.join("serve-%p.profraw"));
    let process = Running::listening_within(command, tls_port, Duration::from_secs(60))?;
    let http = format!("http://127.0.0.1:{port}/train");
    let https = format!("https://127.0.0.1:{tls_port}/train");
    wrk(&["-c32", "-d5s", "-s"], Some(&get), &http, Expect::Ok)?;
    wrk(&["-c8", "-d1s", "-s"], Some(&post), &http, Expect::Ok)?;
    wrk(&["-c32", "-d3s", "-s"], Some(&get), &https, Expect::Ok)?;
    h2load(&gold[0].api_key, &https)?;
    let bearer = format!("authorization: Bearer {}", token(port, &gold[1].api_key)?);
    let jwt = format!("http://127.0.0.1:{port}/jwt/train");
    wrk(&["-c16", "-d2s", "-H", &bearer], None, &jwt, Expect::Ok)?;
    let refused = [(&unknown[0].api_key, "401"), (&bronze[0].api_key, "429")];
    for (key, status) in refused {
        let header = format!("x-api-key: {key}");
        // The limited key's ten requests go in the load; the probe checks
        // the route answers the refusal trained on, not a 404 or a 502.
        wrk(
            &["-c4", "-d1s", "-H", &header],
            None,
            &http,
            Expect::Refused,
        )?;
        let got = probe(&http, &header)?;
        ensure!(got == status, "{http} with a {status} key answered {got}");
    }
    let status = process.stop_within(Duration::from_secs(40))?;
    ensure!(
        status.success(),
        "the instrumented gateway exited with {status}"
    );
    let served = std::fs::read_dir(raw)
        .with_context(|| format!("reading {}", raw.display()))?
        .flatten()
        .any(|entry| entry.file_name().to_string_lossy().starts_with("serve-"));
    ensure!(
        served,
        "the instrumented gateway wrote no profile into {}",
        raw.display()
    );
    Ok(())
}

/// The training gateway: HTTP and TLS listeners, its token endpoint, a JWT
/// route and an API-key one, an unlimited tier and one of ten requests a
/// minute, the guard in monitor mode (enforcing, it would ban the 401
/// load's source before it is done); no XDP or admin API.
fn config_text(dir: &Path, store: &str, port: u16, tls_port: u16, upstream: u16) -> String {
    format!(
        "state_dir = \"{dir}/state\"\n\
         [xdp]\nenabled = false\n[admin]\nenabled = false\n[guard]\nmode = \"monitor\"\n\
         [keys]\nstore = \"{dir}/{store}\"\n\
         [tokens]\nenabled = true\naudience = \"gateway\"\nrate_limit = false\n\
         [[tiers]]\nname = \"gold\"\nrequests = 1000000000\nwindow = \"60s\"\nburst = 100000000\n\
         [[tiers]]\nname = \"bronze\"\nrequests = 10\nwindow = \"60s\"\nburst = 10\n\
         [[listeners]]\naddress = \"127.0.0.1:{port}\"\n\
         [[listeners]]\naddress = \"127.0.0.1:{tls_port}\"\n\
         [listeners.tls]\nnames = [\"localhost\", \"127.0.0.1\"]\n\
         [[upstreams]]\nname = \"app\"\nservers = [\"127.0.0.1:{upstream}\"]\n\
         [[routes]]\npath_prefix = \"/jwt/\"\nupstream = \"app\"\nauth = \"jwt\"\nrate_limit = true\n\
         [[routes]]\npath_prefix = \"/\"\nupstream = \"app\"\nauth = \"api_key\"\nrate_limit = true\n",
        dir = dir.display(),
    )
}

/// One GET with `header` by curl: the status it got.
fn probe(url: &str, header: &str) -> Result<String> {
    let mut command = Command::new("curl");
    command
        .args([
            "-sS",
            "--max-time",
            "10",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-H",
        ])
        .arg(header)
        .arg(url);
    output_within(command, Duration::from_secs(15))
}

/// A JWT from the gateway's own token endpoint for the client of `key`
/// (client credentials, by curl).
fn token(port: u16, key: &str) -> Result<String> {
    let mut command = Command::new("curl");
    command
        .args(["-sS", "--max-time", "10", "--data"])
        .arg(format!("grant_type=client_credentials&client_secret={key}"))
        .arg(format!("http://127.0.0.1:{port}/oauth2/token"));
    let out = output_within(command, Duration::from_secs(15))?;
    let reply: serde_json::Value = serde_json::from_str(&out)
        .with_context(|| format!("the token endpoint answered {out:?}"))?;
    reply["access_token"]
        .as_str()
        .map(str::to_owned)
        .with_context(|| format!("no access_token in the token endpoint's answer {reply}"))
}

/// A wrk script sending `method` (with `body`, if any), rotating through
/// the keys.
fn lua(dir: &Path, name: &str, keys: &Path, method: &str, body: Option<&str>) -> Result<PathBuf> {
    let path = dir.join(name);
    let body = body.map_or_else(|| "nil".to_owned(), |body| format!("\"{body}\""));
    std::fs::write(
        &path,
        format!(
            "local keys = {{}}\nfor line in io.lines(\"{}\") do keys[#keys + 1] = line end\n\
             local i = 0\nrequest = function()\n  i = i % #keys + 1\n  \
             return wrk.format(\"{method}\", \"/train\", {{[\"x-api-key\"] = keys[i]}}, {body})\nend\n",
            keys.display()
        ),
    )
    .with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

/// What a training load's answers must be.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Expect {
    /// Every answer a 2xx.
    Ok,
    /// Some answers not 2xx (which status: [`probe`]).
    Refused,
}

/// One wrk run of `args` (then `script`, if any) against `url`; fails
/// unless it made requests and they were answered as `expect` says.
fn wrk(args: &[&str], script: Option<&Path>, url: &str, expect: Expect) -> Result<()> {
    let mut command = Command::new("wrk");
    command.args(["-t1", "--timeout", "2s"]).args(args);
    command.args(script).arg(url);
    let out = output_within(command, Duration::from_secs(30))?;
    ensure!(
        answered_as(&out, expect),
        "wrk {args:?} {url}: not what training needs:\n{out}"
    );
    Ok(())
}

/// Whether wrk's report shows requests answered as `expect` says.
fn answered_as(wrk_out: &str, expect: Expect) -> bool {
    let requests = crate::bench::wrk::requests(wrk_out).unwrap_or(0.0);
    let refused = wrk_out.contains("Non-2xx or 3xx responses");
    requests > 0.0 && refused == (expect == Expect::Refused)
}

/// HTTP/2 over TLS, many streams per connection; every answer a 2xx.
fn h2load(key: &str, url: &str) -> Result<()> {
    let requests = 100_000;
    let mut command = Command::new("h2load");
    command
        .args(["-c16", "-m16", "-n", &requests.to_string(), "-H"])
        .arg(format!("x-api-key: {key}"))
        .arg(url);
    let out = output_within(command, Duration::from_secs(60))?;
    let ok = format!("status codes: {requests} 2xx");
    ensure!(
        out.contains(&ok),
        "h2load {url}: not every answer a 2xx:\n{out}"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL_OK: &str = "Running 1s test @ http://127.0.0.1:1/train\n  \
        52104 requests in 1.00s, 20.1MB read\nRequests/sec:  52000.10\n";
    const SOME_REFUSED: &str = "  4431 requests in 1.00s, 1.1MB read\n  \
        Non-2xx or 3xx responses: 4421\nRequests/sec:   4431.00\n";

    #[test]
    fn a_load_counts_only_when_answered_as_expected() {
        assert!(answered_as(ALL_OK, Expect::Ok));
        assert!(!answered_as(ALL_OK, Expect::Refused));
        assert!(answered_as(SOME_REFUSED, Expect::Refused));
        assert!(!answered_as(SOME_REFUSED, Expect::Ok));
        // Nothing answered (the gateway down, every socket refused).
        let none = "  0 requests in 1.00s, 0B read\n  Socket errors: connect 4\n";
        assert!(!answered_as(none, Expect::Ok));
        assert!(!answered_as(none, Expect::Refused));
        assert!(!answered_as("", Expect::Ok));
    }

    #[test]
    fn the_training_config_routes_jwts_before_keys() {
        let text = config_text(Path::new("/tmp/x"), "k.db", 1001, 1002, 1003);
        for wanted in [
            "127.0.0.1:1001",
            "127.0.0.1:1002",
            "127.0.0.1:1003",
            "[tokens]",
        ] {
            assert!(text.contains(wanted), "{wanted} missing:\n{text}");
        }
        let jwt = text.find("path_prefix = \"/jwt/\"").unwrap();
        let keys = text.find("path_prefix = \"/\"").unwrap();
        assert!(jwt < keys, "{text}");
    }

    #[test]
    fn scripts_rotate_keys_and_carry_the_body() {
        let dir = scratch::dir("gateway-pgo-test-").unwrap();
        let keys = dir.path().join("keys.txt");
        let path = lua(dir.path(), "post.lua", &keys, "POST", Some("xyz")).unwrap();
        let script = std::fs::read_to_string(path).unwrap();
        assert!(script.contains(&keys.display().to_string()), "{script}");
        assert!(
            script.contains("wrk.format(\"POST\", \"/train\""),
            "{script}"
        );
        assert!(script.contains("keys[i]}, \"xyz\")"), "{script}");
        // A GET has no body at all (an empty one would add Content-Length: 0).
        let path = lua(dir.path(), "get.lua", &keys, "GET", None).unwrap();
        let script = std::fs::read_to_string(path).unwrap();
        assert!(script.contains("keys[i]}, nil)"), "{script}");
    }
}
