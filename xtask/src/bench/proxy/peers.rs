//! Bringing up what the proxy bench measures: 10,000 gateway keys and the
//! maps made from them, the peers' certificate, the shared upstream, the
//! gateway (with and without its limiter), HAProxy and nginx, each pinned
//! to the proxy CPUs, and a check that each answers as the others do.
use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

use anyhow::{ensure, Context, Result};

use super::configs::{self, Files, Listen};
use crate::bench::{
    keys, nginx,
    procs::{free_port, wait_for_port, CpuPlan, Running},
};

pub(super) const KEYS: u32 = 10_000;

/// A proxy under test.
pub(super) struct Proxy {
    pub(super) name: &'static str,
    pub(super) process: Running,
    pub(super) listen: Listen,
}

impl Proxy {
    pub(super) fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// The URL of `/bench` on the plain or the TLS listener.
    pub(super) fn url(&self, tls: bool) -> Option<String> {
        match tls {
            false => Some(format!("http://127.0.0.1:{}/bench", self.listen.port)),
            true => (self.listen.tls_port).map(|p| format!("https://127.0.0.1:{p}/bench")),
        }
    }
}

/// Everything running for the bench; dropping it stops it all.
pub(super) struct Setup {
    /// Keys, and the client id each maps to.
    pub(super) keys: Vec<(String, String)>,
    pub(super) keys_file: PathBuf,
    /// gateway, haproxy, nginx: the compared proxies, in table order.
    pub(super) peers: Vec<Proxy>,
    /// The gateway without its limiter, for the limiter's overhead.
    pub(super) unlimited: Proxy,
    _upstream: Running,
}

impl Setup {
    /// Every proxy with a per-key limit of `per_key` requests/s (bursts of
    /// as many).
    pub(super) fn start(
        gateway_bin: &Path,
        dir: &Path,
        cpus: &CpuPlan,
        per_key: u32,
    ) -> Result<Self> {
        let write = |name: &str, text: String| -> Result<PathBuf> {
            let path = dir.join(name);
            std::fs::write(&path, text)?;
            Ok(path)
        };
        let upstream_port = free_port()?;
        let upstream_conf = write("upstream.conf", configs::upstream(dir, upstream_port))?;
        let upstream = start_nginx(cpus.load_command("nginx"), &upstream_conf, upstream_port)?;

        let workers = cpus.workers();
        let listen = || -> Result<Listen> {
            Ok(Listen {
                port: free_port()?,
                tls_port: Some(free_port()?),
            })
        };
        let gateway_listen = listen()?;
        let gateway_text =
            configs::gateway(dir, gateway_listen, upstream_port, (true, per_key), workers);
        let gateway_conf = write("gateway.toml", gateway_text)?;
        let unlimited_listen = Listen {
            port: free_port()?,
            tls_port: None,
        };
        let unlimited_text = configs::gateway(
            dir,
            unlimited_listen,
            upstream_port,
            (false, per_key),
            workers,
        );
        let unlimited_conf = write("unlimited.toml", unlimited_text)?;
        let keys = create_keys(gateway_bin, &gateway_conf)?;

        let files = Files {
            dir,
            sha_map: &dir.join("keys.sha.map"),
            raw_map: &dir.join("keys.nginx.map"),
            cert: &dir.join("peer.crt"),
            key: &dir.join("peer.key"),
            pem: &dir.join("peer.pem"),
        };
        keys::write_maps(files.sha_map, files.raw_map, &keys)?;
        make_certificate(&files)?;
        let raw: Vec<&str> = keys.iter().map(|(key, _)| key.as_str()).collect();
        let keys_file = write("keys.txt", raw.join("\n") + "\n")?;

        let gateway_bin = gateway_bin.to_str().context("gateway path is not UTF-8")?;
        let gateway = |config: &Path, listen: Listen, name| -> Result<Proxy> {
            let mut command = cpus.proxy_command(gateway_bin);
            // Its access log goes to stdout (discarded); the peers log nothing.
            // rustls warns on stderr about every handshake whose SNI is an IP
            // address, as wrk's is: discarded too.
            command.args(["run", "--config"]).arg(config);
            command.stderr(Stdio::null());
            let process = Running::listening(command, listen.port)?;
            if let Some(port) = listen.tls_port {
                wait_for_port(port)?;
            }
            Ok(Proxy {
                name,
                process,
                listen,
            })
        };
        let ours = gateway(&gateway_conf, gateway_listen, "gateway")?;
        let unlimited = gateway(&unlimited_conf, unlimited_listen, "gateway, no limiter")?;

        let haproxy_listen = listen()?;
        let haproxy_text =
            configs::haproxy(&files, haproxy_listen, upstream_port, workers, per_key);
        let haproxy_conf = write("haproxy.cfg", haproxy_text)?;
        let mut command = cpus.proxy_command("haproxy");
        command.arg("-f").arg(&haproxy_conf).arg("-db");
        let haproxy = Proxy {
            name: "haproxy",
            process: Running::listening(command, haproxy_listen.port)?,
            listen: haproxy_listen,
        };

        let nginx_listen = listen()?;
        let nginx_text = configs::nginx(&files, nginx_listen, upstream_port, workers, per_key);
        let nginx_conf = write("nginx-peer.conf", nginx_text)?;
        let nginx = Proxy {
            name: "nginx",
            process: start_nginx(cpus.proxy_command("nginx"), &nginx_conf, nginx_listen.port)?,
            listen: nginx_listen,
        };

        let setup = Self {
            keys,
            keys_file,
            peers: vec![ours, haproxy, nginx],
            unlimited,
            _upstream: upstream,
        };
        setup.check()?;
        Ok(setup)
    }

    /// Each proxy, on each listener: a known key is forwarded with the
    /// client id set, the key removed and the other fields the design
    /// forwards set; an unknown key gets 401.
    fn check(&self) -> Result<()> {
        let (key, client) = self.keys.first().context("no keys")?;
        for proxy in self.peers.iter().chain([&self.unlimited]) {
            for url in [proxy.url(false), proxy.url(true)].into_iter().flatten() {
                let (status, body) = curl(&url, key)?;
                let expected = format!("ok id={client} key=");
                ensure!(
                    status == 200 && body.trim_end() == expected,
                    "{} at {url}: {status} {body:?}, expected 200 {expected:?}",
                    proxy.name
                );
                let (status, _) = curl(&url, "gk_unknown")?;
                ensure!(
                    status == 401,
                    "{} at {url}: {status} for an unknown key",
                    proxy.name
                );
                check_forwarded(proxy.name, "--http1.1", &url, key)?;
            }
        }
        Ok(())
    }
}

/// nginx in the foreground with `config`, up when `port` answers.
pub(super) fn start_nginx(mut command: Command, config: &Path, port: u16) -> Result<Running> {
    nginx::foreground(&mut command, config);
    Running::listening(command, port)
}

/// `KEYS` gold keys: `(key, client id)` each.
pub(super) fn create_keys(gateway_bin: &Path, config: &Path) -> Result<Vec<(String, String)>> {
    let created = keys::create(gateway_bin, config, "bench", configs::TIER, KEYS as usize)?;
    Ok(created
        .into_iter()
        .map(|key| (key.api_key, key.id))
        .collect())
}

/// One self-signed ECDSA P-256 certificate for both peers (the gateway
/// makes its own, of the same kind).
pub(super) fn make_certificate(files: &Files) -> Result<()> {
    crate::run_cmd(
        Command::new("openssl")
            .args(["req", "-x509", "-newkey", "ec", "-pkeyopt"])
            .args(["ec_paramgen_curve:prime256v1", "-nodes", "-days", "2"])
            .args(["-subj", "/CN=localhost"])
            .args(["-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"])
            .arg("-keyout")
            .arg(files.key)
            .arg("-out")
            .arg(files.cert)
            .stderr(Stdio::null()),
    )?;
    let pem = std::fs::read_to_string(files.cert)? + &std::fs::read_to_string(files.key)?;
    std::fs::write(files.pem, pem)?;
    Ok(())
}

/// The fields besides the client id that `name` forwarded for a request
/// to `url`'s `/check` over curl's `version` (the upstream names them,
/// [`configs::FORWARDED`]): the tier, the client's address and scheme, and
/// a request id that the client got too.
pub(super) fn check_forwarded(name: &str, version: &str, url: &str, key: &str) -> Result<()> {
    let url = url.replace("/bench", "/check");
    let text = curl_text(version, &url, key, "\n%header{x-request-id}\n%{http_code}")?;
    let proto = if url.starts_with("https:") {
        "https"
    } else {
        "http"
    };
    ensure!(
        forwarded_as_expected(&text, proto),
        "{name} at {url} ({version}) forwarded {text:?}, expected 200 and \
         \"tier={} request=ID for=127.0.0.1 proto={proto}\", ID (32 characters or more) \
         in the answer's X-Request-Id too",
        configs::TIER
    );
    Ok(())
}

/// Whether curl's output for `/check` (the body, then what `-w` wrote:
/// the answer's request id and the status) shows every field forwarded.
fn forwarded_as_expected(text: &str, proto: &str) -> bool {
    let mut lines = text.rsplitn(3, '\n');
    let (status, request_id) = (lines.next(), lines.next().unwrap_or_default());
    let body = lines.next().map(str::trim_end);
    let expected = format!(
        "tier={} request={request_id} for=127.0.0.1 proto={proto}",
        configs::TIER
    );
    status == Some("200") && request_id.len() >= 32 && body == Some(expected.as_str())
}

/// `(status, body)` of a GET with `x-api-key`, over HTTP/1.1 like wrk.
fn curl(url: &str, key: &str) -> Result<(u16, String)> {
    curl_over("--http1.1", url, key)
}

/// `(status, body)` of a GET with `x-api-key`, over the HTTP version curl's
/// `version` flag asks for (`--http2-prior-knowledge` fails otherwise).
pub(super) fn curl_over(version: &str, url: &str, key: &str) -> Result<(u16, String)> {
    let text = curl_text(version, url, key, "\n%{http_code}")?;
    let (body, status) = text.rsplit_once('\n').unwrap_or(("", &text));
    let status = status.trim().parse().unwrap_or(0);
    Ok((status, body.to_owned()))
}

/// What curl prints for a GET with `x-api-key`: the body, then
/// `write_out` (curl's `-w`).
fn curl_text(version: &str, url: &str, key: &str, write_out: &str) -> Result<String> {
    let output = Command::new("curl")
        .args(["-sk", version, "--max-time", "5", "-w", write_out])
        .args(["-H", &format!("x-api-key: {key}"), url])
        .output()
        .context("running curl")?;
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// The TLS version and cipher suite a proxy negotiates with OpenSSL's
/// defaults (what wrk offers).
pub(super) fn tls_parameters(proxy: &Proxy) -> String {
    let Some(port) = proxy.listen.tls_port else {
        return "no TLS listener".into();
    };
    let output = Command::new("timeout")
        .args(["5", "openssl", "s_client", "-brief", "-connect"])
        .arg(format!("127.0.0.1:{port}"))
        .stdin(Stdio::null())
        .output();
    let Ok(output) = output else {
        return "openssl s_client failed".into();
    };
    let text = String::from_utf8_lossy(&output.stderr) + String::from_utf8_lossy(&output.stdout);
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .map_or("?", |v| v.trim_start_matches(':').trim())
            .to_owned()
    };
    format!(
        "{} {}, {}",
        field("Protocol version"),
        field("Ciphersuite"),
        field("Signature type")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwarded_fields_are_read_from_curls_output() {
        let id = "0123456789abcdef0123456789abcdef";
        let good = format!("tier=gold request={id} for=127.0.0.1 proto=http\n\n{id}\n200");
        assert!(forwarded_as_expected(&good, "http"));
        assert!(!forwarded_as_expected(&good, "https"));
        let unterminated = format!("tier=gold request={id} for=127.0.0.1 proto=https\n{id}\n200");
        assert!(forwarded_as_expected(&unterminated, "https"));
        for bad in [
            // Nothing forwarded.
            format!("tier= request= for= proto=\n\n{id}\n200"),
            // No id in the answer (nor, then, a matching one upstream).
            "tier=gold request= for=127.0.0.1 proto=http\n\n\n200".to_string(),
            // The client got another id than the upstream.
            format!(
                "tier=gold request={id} for=127.0.0.1 proto=http\n\n{}\n200",
                &id.replace('0', "1")
            ),
            // Refused.
            format!("tier=gold request={id} for=127.0.0.1 proto=http\n\n{id}\n401"),
            // curl got nothing.
            "\n000".to_string(),
            String::new(),
        ] {
            assert!(!forwarded_as_expected(&bad, "http"), "{bad:?}");
        }
    }
}
