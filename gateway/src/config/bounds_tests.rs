//! Every bounded key, given zero, negative and huge values: each is an
//! error that names the key's path, never a panic later.
use super::super::{tests::error, Config};

const LISTENER: &str = "[[listeners]]\naddress = \"127.0.0.1:1\"\n";
const POOL: &str = "[[upstreams]]\nname = \"app\"\nservers = [\"127.0.0.1:2\"]\n";
const ISSUER: &str =
    "[[issuers]]\nissuer = \"i\"\naudiences = [\"a\"]\npem = \"/nonexistent.pem\"\n";
const TIER: &str = "[[tiers]]\nname = \"t\"\nrequests = 1\n";

/// Out of range for a duration: nothing, before nothing, beyond anything.
const DURATIONS: &[&str] = &["\"0s\"", "\"-1s\"", "\"1000000000years\""];
/// A count that must be positive and has a ceiling.
const COUNTS: &[&str] = &["0", "-1", "4294967295"];
/// A count that must be positive (any u32 otherwise).
const POSITIVE: &[&str] = &["0", "-1", "4294967296"];

/// (what comes before the key, the key's path, bad values).
fn cases() -> Vec<(String, &'static str, &'static [&'static str])> {
    let section = |header: &str, key: &str| format!("{header}{key} = ");
    vec![
        (section("[keys]\n", "refresh"), "keys.refresh", DURATIONS),
        (
            section("[limits]\n", "request_timeout"),
            "limits.request_timeout",
            DURATIONS,
        ),
        (
            section("[limits]\n", "drain_timeout"),
            "limits.drain_timeout",
            &["\"2h\"", "\"soon\"", "-1"],
        ),
        (
            section("[limits]\n", "handover_timeout"),
            "limits.handover_timeout",
            &["\"0s\"", "\"2h\"", "\"soon\""],
        ),
        (
            section("[limits]\n", "upstream_timeout"),
            "limits.upstream_timeout",
            DURATIONS,
        ),
        (
            section("[limits]\n", "connect_timeout"),
            "limits.connect_timeout",
            DURATIONS,
        ),
        (
            section("[limits]\n", "park_idle_after"),
            "limits.park_idle_after",
            &["\"soon\"", "-1", "\"-1s\""],
        ),
        (
            section("[limits]\n", "upstream_idle_timeout"),
            "limits.upstream_idle_timeout",
            &["\"0s\"", "\"500ms\"", "\"2h\"", "\"-1s\""],
        ),
        (
            section("[limits]\n", "max_header_bytes"),
            "limits.max_header_bytes",
            &["0", "-1", "100", "1000000000000"],
        ),
        (
            section("[limits]\n", "max_connections"),
            "limits.max_connections",
            &["0", "-1", "1000000000000"],
        ),
        (
            section("[limits]\n", "workers"),
            "limits.workers",
            &["-1", "1000000"],
        ),
        (
            section("[tokens]\n", "ttl"),
            "tokens.ttl",
            &["\"0s\"", "\"-1s\"", "\"500ms\"", "\"1000years\""],
        ),
        (
            section("[tokens]\n", "upstream_ttl"),
            "tokens.upstream_ttl",
            &["\"0s\"", "\"-5m\"", "\"1000years\""],
        ),
        (
            section("[guard]\n", "excess"),
            "guard.excess",
            &["-1", "4294967295"],
        ),
        (
            section("[guard]\n", "auth_failures"),
            "guard.auth_failures",
            &["-1", "4294967295"],
        ),
        (
            section("[guard]\n", "auth_failure_window"),
            "guard.auth_failure_window",
            DURATIONS,
        ),
        (
            section("[guard]\n", "auth_failure_ban"),
            "guard.auth_failure_ban",
            DURATIONS,
        ),
        (section("[guard]\n", "min_ban"), "guard.min_ban", DURATIONS),
        (section("[guard]\n", "max_ban"), "guard.max_ban", DURATIONS),
        (
            section("[guard]\n", "budget_idle"),
            "guard.budget_idle",
            DURATIONS,
        ),
        (
            section("[xdp]\n", "default_syn_burst"),
            "xdp.default_syn_burst",
            POSITIVE,
        ),
        (
            section("[xdp]\n", "default_pkt_burst"),
            "xdp.default_pkt_burst",
            POSITIVE,
        ),
        (
            section("[xdp]\n", "default_syn_rate"),
            "xdp.default_syn_rate",
            &["-1", "4294967296"],
        ),
        (section("[xdp]\n", "max_bans"), "xdp.max_bans", COUNTS),
        // A flood threshold without cookies would do nothing.
        (
            section("[xdp]\n", "syn_flood_rate"),
            "xdp.syn_flood_rate",
            &["1", "-1", "4294967296"],
        ),
        (section("[xdp]\n", "max_sources"), "xdp.max_sources", COUNTS),
        (
            section("[xdp]\n", "max_prefix_bans"),
            "xdp.max_prefix_bans",
            COUNTS,
        ),
        (
            section("[guard]\n", "prefix_threshold"),
            "guard.prefix_threshold",
            &["-1", "65537"],
        ),
        (
            section("[guard]\n", "prefix_len_v4"),
            "guard.prefix_len_v4",
            &["0", "7", "32", "-1", "300"],
        ),
        (
            section("[guard]\n", "prefix_len_v6"),
            "guard.prefix_len_v6",
            &["0", "15", "128", "300"],
        ),
        (
            section("[guard]\n", "prefix_auth_failures"),
            "guard.prefix_auth_failures",
            &["-1", "1", "19", "1000001"],
        ),
        (
            section("[[tiers]]\nname = \"t\"\n", "requests"),
            "tiers[0].requests",
            POSITIVE,
        ),
        (section(TIER, "window"), "tiers[0].window", DURATIONS),
        (section(TIER, "burst"), "tiers[0].burst", POSITIVE),
        (section(TIER, "syn_burst"), "tiers[0].syn_burst", POSITIVE),
        (section(TIER, "pkt_burst"), "tiers[0].pkt_burst", POSITIVE),
        (
            section(ISSUER, "leeway"),
            "issuers[0].leeway",
            &["\"-1s\"", "\"2h\""],
        ),
        (section(ISSUER, "refresh"), "issuers[0].refresh", DURATIONS),
        (
            section(ISSUER, "min_refresh_interval"),
            "issuers[0].min_refresh_interval",
            &["\"0s\"", "\"999ms\"", "\"-1s\"", "\"1000years\""],
        ),
        (
            section(
                &format!("{POOL}[upstreams.health_check]\npath = \"/h\"\n"),
                "interval",
            ),
            "upstreams[0].health_check.interval",
            DURATIONS,
        ),
        (
            section(
                &format!("{POOL}[upstreams.health_check]\npath = \"/h\"\n"),
                "timeout",
            ),
            "upstreams[0].health_check.timeout",
            DURATIONS,
        ),
        (
            section(
                &format!("{POOL}[upstreams.health_check]\npath = \"/h\"\n"),
                "unhealthy_threshold",
            ),
            "upstreams[0].health_check.unhealthy_threshold",
            COUNTS,
        ),
        (
            section(
                &format!("{POOL}[upstreams.health_check]\npath = \"/h\"\n"),
                "healthy_threshold",
            ),
            "upstreams[0].health_check.healthy_threshold",
            COUNTS,
        ),
        (
            section(&format!("{POOL}[upstreams.health_check]\n"), "path"),
            "upstreams[0].health_check.path",
            &["\"health\"", "\"\""],
        ),
        (
            section(&format!("{POOL}[upstreams.overload]\n"), "interval"),
            "upstreams[0].overload.interval",
            DURATIONS,
        ),
        (
            section(&format!("{POOL}[upstreams.overload]\n"), "p99_latency"),
            "upstreams[0].overload.p99_latency",
            DURATIONS,
        ),
        (
            section(&format!("{POOL}[upstreams.overload]\n"), "max_in_flight"),
            "upstreams[0].overload.max_in_flight",
            &["0", "-1", "1000000000000"],
        ),
        (
            section(&format!("{POOL}[upstreams.overload]\n"), "error_rate"),
            "upstreams[0].overload.error_rate",
            &["-0.1", "1.5", "nan", "inf", "-inf"],
        ),
        (
            section(
                &format!("{POOL}[[routes]]\npath_prefix = \"/\"\nupstream = \"app\"\n"),
                "cost",
            ),
            "routes[0].cost",
            COUNTS,
        ),
    ]
}

#[test]
fn every_out_of_range_value_is_an_error_naming_its_key() {
    for (before, path, values) in cases() {
        for value in values {
            let text = format!("{LISTENER}{before}{value}\n");
            let message = error(&text);
            assert!(
                message.starts_with(&format!("{path}: ")),
                "{path} = {value}: {message}"
            );
        }
    }
}

#[test]
fn the_ends_of_each_range_are_accepted() {
    let text = format!(
        "{LISTENER}[keys]\nrefresh = \"1ms\"\n[limits]\nrequest_timeout = \"1ms\"\n\
         max_header_bytes = 8192\nmax_connections = 1\nworkers = 1024\n\
         [tokens]\nttl = \"1s\"\nupstream_ttl = \"1day\"\n[guard]\nexcess = 0\nmax_ban = \"1year\"\n\
         prefix_threshold = 0\nprefix_len_v4 = 31\nprefix_len_v6 = 127\nprefix_auth_failures = 0\n\
         [xdp]\ndefault_syn_rate = 0\ndefault_syn_burst = 1\nmax_bans = 1\nmax_prefix_bans = 1\n\
         {ISSUER}leeway = \"0s\"\nmin_refresh_interval = \"1s\"\n\
         {POOL}[upstreams.overload]\nerror_rate = 1.0\n"
    );
    let config = Config::parse(&text).unwrap();
    assert_eq!(config.keys.refresh, std::time::Duration::from_millis(1));
}

#[test]
fn a_message_says_the_range_and_the_value() {
    let message = error(&format!("{LISTENER}[keys]\nrefresh = \"0s\"\n"));
    assert_eq!(message, "keys.refresh: must be at least 1ms, not 0s");
    let message = error(&format!(
        "{LISTENER}{POOL}[upstreams.overload]\nerror_rate = nan\n"
    ));
    assert_eq!(
        message,
        "upstreams[0].overload.error_rate: must be from 0 to 1"
    );
}

/// What the config fuzz target does, bounded: the documented example cut
/// at the end and the middle of every line, and with each line dropped,
/// parses to a config or an error, never a panic.
#[test]
fn cut_and_mangled_examples_never_panic() {
    let example = include_str!("../../../examples/gateway.toml");
    let mut start = 0;
    for line in example.split_inclusive('\n') {
        let middle = (start + line.len() / 2..)
            .find(|&i| example.is_char_boundary(i))
            .unwrap_or(start);
        for end in [middle, start + line.len()] {
            let _ = Config::parse(&example[..end]);
        }
        start += line.len();
    }
    let lines: Vec<&str> = example.lines().collect();
    for skip in 0..lines.len() {
        let mut text = lines.clone();
        text.remove(skip);
        let _ = Config::parse(&text.join("\n"));
    }
}

#[test]
fn deep_nesting_is_an_error_not_a_stack_overflow() {
    for open in ["[", "{a="] {
        let text = format!("a = {}", open.repeat(100_000));
        assert!(Config::parse(&text).is_err());
    }
    let text = format!("{}= 1", "a.".repeat(100_000));
    assert!(Config::parse(&text).is_err());
}
