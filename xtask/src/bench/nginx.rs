//! nginx configurations, for every nginx a bench runs (the shared
//! upstreams and the nginx peers): the main context (workers, pid and
//! error log, connections per worker) and the `http` block's common
//! directives written once, with what differs as parameters; plus the
//! command-line arguments that run nginx in the foreground. What a peer
//! does in its `http` block (limit_req zones, key maps) stays with its bench.
use std::{
    path::{Path, PathBuf},
    process::Command,
};

/// One nginx's configuration, apart from what its `http` block serves.
pub(crate) struct Nginx {
    pub(crate) workers: usize,
    pub(crate) worker_connections: u32,
    pub(crate) pid: PathBuf,
    /// What follows `error_log`: a file (and a level), or `stderr`.
    pub(crate) error_log: String,
    /// `keepalive_requests` in `http` (client connections), if not nginx's
    /// default.
    pub(crate) keepalive_requests: Option<u32>,
}

impl Nginx {
    /// `workers` worker processes with 4,096 connections each, `NAME.pid`
    /// and `NAME.err` in `dir`, and 1,000,000 requests per keep-alive
    /// client connection (the load generators never reconnect): what the
    /// benches' nginx use unless they say otherwise.
    pub(crate) fn new(dir: &Path, name: &str, workers: usize) -> Self {
        Self {
            workers,
            worker_connections: 4096,
            pid: dir.join(format!("{name}.pid")),
            error_log: dir.join(format!("{name}.err")).display().to_string(),
            keepalive_requests: Some(1_000_000),
        }
    }

    /// The whole configuration: the main context, then an `http` block of
    /// the common directives followed by `http` (directives, one or more
    /// lines).
    pub(crate) fn config(&self, http: &str) -> String {
        let keepalive = self
            .keepalive_requests
            .map_or(String::new(), |n| format!("  keepalive_requests {n};\n"));
        format!(
            "worker_processes {workers};\npid {pid};\nerror_log {error_log};\n\
             events {{ worker_connections {connections}; }}\n\
             http {{\n  access_log off;\n{keepalive}{http}}}\n",
            workers = self.workers,
            pid = self.pid.display(),
            error_log = self.error_log,
            connections = self.worker_connections,
            http = indent(http),
        )
    }

    /// A static site on 127.0.0.1:`port` answering every request 200 with
    /// `body` (an nginx string: `$variables` are expanded, `\n` is a
    /// newline): the upstream the benches put behind the proxies.
    pub(crate) fn static_site(&self, port: u16, body: &str) -> String {
        self.config(&format!(
            "server {{ listen 127.0.0.1:{port}; location / {{ return 200 \"{body}\"; }} }}\n"
        ))
    }
}

/// An `upstream app` block: a keep-alive pool of `keepalive` idle
/// connections to 127.0.0.1:`port`, with `keepalive_requests` per
/// connection if not nginx's default.
pub(crate) fn upstream_pool(port: u16, keepalive: u32, keepalive_requests: Option<u32>) -> String {
    let requests =
        keepalive_requests.map_or(String::new(), |n| format!(" keepalive_requests {n};"));
    format!("upstream app {{ server 127.0.0.1:{port}; keepalive {keepalive};{requests} }}\n")
}

/// The arguments that run nginx in the foreground with `config`, appended
/// to `command` (`nginx`, or a wrapper such as `taskset` that runs it).
pub(crate) fn foreground<'a>(command: &'a mut Command, config: &Path) -> &'a mut Command {
    command.arg("-c").arg(config).args(["-g", "daemon off;"])
}

/// Every non-empty line of `text` indented by two spaces, as the `http`
/// block's lines are.
fn indent(text: &str) -> String {
    text.lines()
        .filter(|line| !line.trim().is_empty())
        .map(|line| format!("  {line}\n"))
        .collect()
}

/// Test support: `a` and `b` are the same nginx configuration apart from
/// whitespace between tokens (which nginx ignores), and the
/// `daemon off;` that the command line now gives.
#[cfg(test)]
pub(crate) fn assert_same_directives(a: &str, b: &str) {
    let tokens = |text: &str| -> Vec<String> {
        text.replace("daemon off;", "")
            .split_whitespace()
            .map(str::to_owned)
            .collect()
    };
    assert_eq!(tokens(a), tokens(b), "\n{a}\nvs\n{b}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn main_context_and_http_block() {
        let nginx = Nginx::new(Path::new("/d"), "up", 2);
        assert_eq!(
            nginx.static_site(80, "ok\\n"),
            "worker_processes 2;\npid /d/up.pid;\nerror_log /d/up.err;\n\
             events { worker_connections 4096; }\n\
             http {\n  access_log off;\n  keepalive_requests 1000000;\n  \
             server { listen 127.0.0.1:80; location / { return 200 \"ok\\n\"; } }\n}\n"
        );
        let quiet = Nginx {
            error_log: "stderr".into(),
            keepalive_requests: None,
            ..nginx
        };
        let text = quiet.config("a;\n\n  b;\n");
        assert!(text.contains("error_log stderr;\n"), "{text}");
        assert!(
            text.ends_with("http {\n  access_log off;\n  a;\n    b;\n}\n"),
            "{text}"
        );
        assert_eq!(
            upstream_pool(81, 32, Some(5)),
            "upstream app { server 127.0.0.1:81; keepalive 32; keepalive_requests 5; }\n"
        );
    }

    #[test]
    fn runs_in_the_foreground() {
        let mut command = Command::new("nginx");
        foreground(&mut command, Path::new("/d/n.conf"));
        let args: Vec<_> = command.get_args().collect();
        assert_eq!(args, ["-c", "/d/n.conf", "-g", "daemon off;"]);
    }
}
