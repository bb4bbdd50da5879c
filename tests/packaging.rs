//! `packaging/grafana/gateway.json` and `packaging/prometheus/alerts.yml`
//! against the real thing: the dashboard is a Grafana dashboard (a data
//! source variable, panels with targets), the alerts are Prometheus rule
//! groups, and every metric either names is exported by a running gateway
//! with XDP attached, with the labels they select on.
#![allow(clippy::unwrap_used, reason = "tests: a panic is the failure report")]

use std::{
    collections::{BTreeMap, BTreeSet},
    net::SocketAddr,
    path::PathBuf,
    time::Duration,
};

use gateway_tests::{
    gateway::Gateway,
    http::{get_from, request, tiers_and_app, FakeUpstream},
    netns::{Topology, CLIENT_V4, SERVER_V4},
    require_root,
};
use serde::Deserialize;

const PORT: u16 = 18080;
const TLS_PORT: u16 = 18443;
/// Labels Prometheus adds at scrape time, not the gateway.
const TARGET_LABELS: [&str; 2] = ["instance", "job"];

fn packaging(path: &str) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../packaging")
        .join(path);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn dashboard() -> serde_json::Value {
    serde_json::from_str(&packaging("grafana/gateway.json")).unwrap()
}

/// Prometheus rule files, as `promtool check rules` reads them: unknown
/// keys are errors.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleFile {
    groups: Vec<Group>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Group {
    name: String,
    #[serde(default)]
    interval: Option<String>,
    rules: Vec<Rule>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Rule {
    alert: String,
    expr: String,
    #[serde(default, rename = "for")]
    for_: Option<String>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
}

fn alerts() -> RuleFile {
    serde_norway::from_str(&packaging("prometheus/alerts.yml")).unwrap()
}

/// A Prometheus duration: digits and one unit (what the rules use).
fn is_duration(text: &str) -> bool {
    let digits = text.trim_end_matches(['s', 'm', 'h', 'd', 'w', 'y']);
    text.len() == digits.len() + 1
        && !digits.is_empty()
        && digits.bytes().all(|b| b.is_ascii_digit())
}

#[test]
fn the_dashboard_is_a_grafana_dashboard() {
    let dashboard = dashboard();
    for key in ["uid", "title"] {
        assert!(dashboard[key].is_string(), "no {key}");
    }
    assert!(dashboard["schemaVersion"].as_u64().unwrap() >= 36);
    let variables = dashboard["templating"]["list"].as_array().unwrap();
    assert!(
        variables.iter().any(|v| v["type"] == "datasource"
            && v["name"] == "datasource"
            && v["query"] == "prometheus"),
        "no Prometheus data source variable"
    );
    let panels = dashboard["panels"].as_array().unwrap();
    let mut ids = BTreeSet::new();
    let mut graphs = 0;
    for panel in panels {
        let title = panel["title"].as_str().unwrap();
        assert!(
            ids.insert(panel["id"].as_u64().unwrap()),
            "{title}: id used twice"
        );
        for key in ["h", "w", "x", "y"] {
            assert!(panel["gridPos"][key].is_u64(), "{title}: gridPos.{key}");
        }
        if panel["type"] == "row" {
            continue;
        }
        graphs += 1;
        assert_eq!(panel["datasource"]["uid"], "${datasource}", "{title}");
        let targets = panel["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "{title}: no targets");
        let refs: BTreeSet<&str> = targets
            .iter()
            .map(|t| t["refId"].as_str().unwrap())
            .collect();
        assert_eq!(refs.len(), targets.len(), "{title}: refIds must differ");
        for target in targets {
            assert!(!target["expr"].as_str().unwrap().is_empty(), "{title}");
        }
    }
    assert!(graphs >= 10, "{graphs} panels");
}

#[test]
fn the_alerts_are_prometheus_rules() {
    let file = alerts();
    assert!(!file.groups.is_empty());
    for group in &file.groups {
        assert!(!group.name.is_empty());
        assert!(group.interval.as_deref().is_none_or(is_duration));
        for rule in &group.rules {
            assert!(!rule.alert.is_empty() && !rule.expr.trim().is_empty());
            assert!(
                rule.for_.as_deref().is_none_or(is_duration),
                "{}",
                rule.alert
            );
            assert!(rule.labels.contains_key("severity"), "{}", rule.alert);
            assert!(rule.annotations.contains_key("summary"), "{}", rule.alert);
        }
    }
}

/// Every PromQL expression in the two files.
fn expressions() -> Vec<String> {
    let dashboard = dashboard();
    let mut exprs: Vec<String> = (dashboard["panels"].as_array().unwrap().iter())
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .map(|t| t["expr"].as_str().unwrap().to_owned())
        .collect();
    for variable in dashboard["templating"]["list"].as_array().unwrap() {
        if let Some(query) = variable["definition"].as_str() {
            exprs.push(query.to_owned());
        }
    }
    let alerts = alerts();
    exprs.extend(
        alerts
            .groups
            .iter()
            .flat_map(|g| g.rules.iter().map(|r| r.expr.clone())),
    );
    exprs
}

/// The `gateway_*` series names an expression selects, each with the label
/// names of its `{...}` selector (quoted values skipped).
fn selectors(expr: &str) -> Vec<(String, BTreeSet<String>)> {
    let mut found = Vec::new();
    let bytes = expr.as_bytes();
    let mut i = 0;
    let ident = |b: u8| b.is_ascii_alphanumeric() || b == b'_' || b == b':';
    while i < bytes.len() {
        match bytes[i] {
            b'"' => {
                i += 1;
                while i < bytes.len() && bytes[i] != b'"' {
                    i += if bytes[i] == b'\\' { 2 } else { 1 };
                }
                i += 1;
            }
            b if ident(b) => {
                let start = i;
                while i < bytes.len() && ident(bytes[i]) {
                    i += 1;
                }
                let name = &expr[start..i];
                if !name.starts_with("gateway_") {
                    continue;
                }
                let mut labels = BTreeSet::new();
                if bytes.get(i) == Some(&b'{') {
                    let end = i + expr[i..].find('}').unwrap();
                    for matcher in split_matchers(&expr[i + 1..end]) {
                        let label = matcher.split(['=', '!']).next().unwrap().trim();
                        labels.insert(label.to_owned());
                    }
                    i = end + 1;
                }
                found.push((name.to_owned(), labels));
            }
            _ => i += 1,
        }
    }
    found
}

/// `a="x,y", b=~"z"` split at the commas outside quotes.
fn split_matchers(text: &str) -> Vec<&str> {
    let (mut parts, mut start, mut quoted) = (Vec::new(), 0, false);
    for (i, c) in text.char_indices() {
        match c {
            '"' => quoted = !quoted,
            ',' if !quoted => {
                parts.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&text[start..]);
    parts.into_iter().filter(|p| !p.trim().is_empty()).collect()
}

/// The exposition's sample names with the label names they carry, and
/// each family's `# TYPE`.
fn exposition(text: &str) -> (BTreeMap<String, BTreeSet<String>>, BTreeMap<String, String>) {
    let (mut samples, mut types) = (BTreeMap::<String, BTreeSet<String>>::new(), BTreeMap::new());
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            types.insert(name.to_owned(), kind.to_owned());
            continue;
        }
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        let end = line.find(['{', ' ']).unwrap();
        let labels = samples.entry(line[..end].to_owned()).or_default();
        if line[end..].starts_with('{') {
            let close = line.rfind('}').unwrap();
            for matcher in split_matchers(&line[end + 1..close]) {
                labels.insert(matcher.split('=').next().unwrap().to_owned());
            }
        }
    }
    (samples, types)
}

#[test]
fn selectors_are_read_with_their_labels() {
    let found = selectors(
        r#"histogram_quantile(0.9, sum by (le) (rate(gateway_a_bucket{instance=~"$i", x!="a,gateway_b"}[5m]))) / gateway_c"#,
    );
    let names: Vec<&str> = found.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, ["gateway_a_bucket", "gateway_c"]);
    assert_eq!(found[0].1, BTreeSet::from(["instance".into(), "x".into()]));
}

#[test]
fn every_metric_they_use_is_exported_by_a_running_gateway() {
    if !require_root("every_metric_they_use_is_exported_by_a_running_gateway") {
        return;
    }
    let topology = Topology::new();
    let upstream = topology.server.run(|| FakeUpstream::start(None));
    let body = format!(
        "[[listeners]]\naddress = \"{SERVER_V4}:{PORT}\"\n\n\
         [[listeners]]\naddress = \"{SERVER_V4}:{TLS_PORT}\"\n[listeners.tls]\n\n\
         {}\n[[routes]]\npath_prefix = \"/\"\nupstream = \"app\"\n",
        tiers_and_app(upstream.addr)
    );
    let builder = Gateway::builder(&body)
        .in_namespace(&topology.server)
        .xdp(&format!("{PORT},{TLS_PORT}"));
    let key = builder.create_key("bronze");
    let gateway = builder.start();
    // A served request (requests, latency) and a refused key (auth failures).
    let server = SocketAddr::from(([10, 77, 0, 1], PORT));
    let source = CLIENT_V4.parse().unwrap();
    for (key, status) in [(key.as_str(), 200), ("gk_not_a_key", 401)] {
        let key = key.to_owned();
        let reply = topology
            .client
            .run(move || {
                get_from(
                    source,
                    server,
                    "/",
                    &[("x-api-key", &key)],
                    Duration::from_secs(5),
                )
            })
            .unwrap();
        assert_eq!(reply.status, status);
    }
    assert_eq!(
        upstream.requests().len(),
        1,
        "only the served request reached the upstream"
    );
    let admin = gateway.admin.unwrap();
    let text = topology
        .server
        .run(move || request(admin, "GET", "/metrics", &[]).body);
    let (samples, types) = exposition(&text);

    let mut checked = BTreeSet::new();
    for expr in expressions() {
        for (name, labels) in selectors(&expr) {
            let Some(exported) = samples.get(&name) else {
                panic!("{name} (in {expr}) has no series on /metrics:\n{text}");
            };
            for label in labels
                .iter()
                .filter(|l| !TARGET_LABELS.contains(&l.as_str()))
            {
                assert!(
                    exported.contains(label),
                    "{name} has no label {label} (in {expr})"
                );
            }
            if let Some(family) = name.strip_suffix("_bucket") {
                assert_eq!(
                    types.get(family).map(String::as_str),
                    Some("histogram"),
                    "{name}"
                );
            }
            checked.insert(name);
        }
    }
    // What the issue asks the files to show, by the metrics that show it.
    for name in [
        "gateway_requests_total",
        "gateway_rate_limited_total",
        "gateway_shed_total",
        "gateway_auth_failures_total",
        "gateway_bans_issued_total",
        "gateway_xdp_packets_total",
        "gateway_upstream_latency_seconds_bucket",
        "gateway_policy_updates_dropped_total",
        "gateway_shed_tiers",
        "gateway_policy_writes_failed_total",
        "gateway_xdp_ban_map_entries",
        "gateway_xdp_ban_map_capacity",
        "gateway_tls_certificate_expiry_timestamp_seconds",
    ] {
        assert!(checked.contains(name), "neither file uses {name}");
    }
    // The new gauges carry real values: the self-signed certificate's end
    // (rcgen's default, 4096-01-01) and the default ban map size.
    assert!(
        text.contains(&format!(
            "gateway_tls_certificate_expiry_timestamp_seconds{{listener=\"{SERVER_V4}:{TLS_PORT}\"}} 67090118400"
        )),
        "{text}"
    );
    assert!(
        text.contains("gateway_xdp_ban_map_entries{map=\"GW_BANS\"} 0"),
        "{text}"
    );
}
