//! Reading what wrk prints: the request rate, the request count and, with
//! `--latency`, the latency percentiles. How wrk is run (threads,
//! connections, scripts, namespaces, CPUs) stays with each bench.

/// The `Requests/sec:` figure.
pub(crate) fn requests_per_sec(text: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|n| n.trim().parse().ok())
}

/// How many requests were answered (`N requests in T, B read`).
pub(crate) fn requests(text: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.contains("requests in"))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
}

/// A percentile of `--latency`'s distribution, e.g. `"99%"`, in ms; NaN if
/// wrk printed none or one that does not parse.
pub(crate) fn percentile_ms(text: &str, percentile: &str) -> f64 {
    text.lines()
        .find_map(|l| l.trim().strip_prefix(percentile))
        .map(|v| latency_ms(v.trim()))
        .unwrap_or(f64::NAN)
}

/// wrk prints latencies such as `812.00us`, `1.52ms`, `2.01s`.
fn latency_ms(text: &str) -> f64 {
    let (number, scale) = if let Some(v) = text.strip_suffix("us") {
        (v, 0.001)
    } else if let Some(v) = text.strip_suffix("ms") {
        (v, 1.0)
    } else if let Some(v) = text.strip_suffix('s') {
        (v, 1000.0)
    } else {
        (text, 1.0)
    };
    number.parse::<f64>().map_or(f64::NAN, |n| n * scale)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrk_latencies_in_ms() {
        for (text, ms) in [("812.00us", 0.812), ("1.52ms", 1.52), ("2.01s", 2010.0)] {
            assert!((latency_ms(text) - ms).abs() < 1e-9, "{text}");
        }
        assert!(latency_ms("n/a").is_nan());
    }

    #[test]
    fn reads_wrks_summary() {
        let text = "Running 5s test @ http://10.0.0.2:18080/\n  1 threads and 16 connections\n\
                    \x20 Latency Distribution\n     50%  401.00us\n     99%    1.52ms\n\
                    \x20 123456 requests in 5.00s, 10.00MB read\nRequests/sec:  24691.20\n\
                    Transfer/sec:      2.00MB\n";
        assert_eq!(requests_per_sec(text), Some(24691.2));
        assert_eq!(requests(text), Some(123_456.0));
        assert!((percentile_ms(text, "99%") - 1.52).abs() < 1e-9);
        assert!((percentile_ms(text, "50%") - 0.401).abs() < 1e-9);
        assert!(percentile_ms(text, "90%").is_nan());
        assert_eq!(requests_per_sec(""), None);
        assert_eq!(requests(""), None);
    }
}
