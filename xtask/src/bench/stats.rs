//! The statistics every bench reports: medians of interleaved rounds, the
//! max/min spread of a series as a noise indicator, and nearest-rank
//! percentiles of sorted samples.

/// The median of `values` (the upper one of an even count), sorting them.
pub(crate) fn median(values: &mut [f64]) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
}

/// A series whose max/min is above this was measured on too noisy a
/// machine for close ratios.
pub(crate) const NOISY: f64 = 1.3;

/// max/min of a series, as a noise indicator.
pub(crate) fn spread_ratio(values: &[f64]) -> f64 {
    let min = values.iter().copied().fold(f64::INFINITY, f64::min);
    let max = values.iter().copied().fold(0.0, f64::max);
    max / min
}

/// [`spread_ratio`], printed.
pub(crate) fn spread(values: &[f64]) -> String {
    format!("{:.2}", spread_ratio(values))
}

/// The index of the `q` quantile (0..1) among `len` sorted samples, by
/// nearest rank (the smallest sample with at least `q` of them at or
/// below it); `None` without samples.
pub(crate) fn rank(len: usize, q: f64) -> Option<usize> {
    (len > 0).then(|| ((q * len as f64).ceil() as usize).clamp(1, len) - 1)
}

/// The `q` quantile of `sorted` by nearest rank; NaN without samples.
pub(crate) fn percentile(sorted: &[f64], q: f64) -> f64 {
    rank(sorted.len(), q).map_or(f64::NAN, |i| sorted[i])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_sorts_and_takes_the_middle() {
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&mut [4.0, 1.0, 3.0, 2.0]), 3.0);
        assert!(median(&mut []).is_nan());
    }

    #[test]
    fn spread_is_max_over_min() {
        assert_eq!(spread_ratio(&[2.0, 3.0, 4.0]), 2.0);
        assert_eq!(spread(&[2.0, 3.0]), "1.50");
    }

    #[test]
    fn nearest_rank_percentiles() {
        let sorted: Vec<f64> = (1..=1000).map(f64::from).collect();
        assert_eq!(percentile(&sorted, 0.5), 500.0);
        assert_eq!(percentile(&sorted, 0.99), 990.0);
        assert_eq!(percentile(&sorted, 0.999), 999.0);
        assert_eq!(percentile(&sorted[..1], 0.99), 1.0);
        assert!(percentile(&[], 0.5).is_nan());
        // The integer form `bench limits` used for its p99 before it shared
        // this one: the same index for every sample count it can have.
        for len in 1..100_000usize {
            assert_eq!(rank(len, 0.99), Some((len * 99).div_ceil(100).max(1) - 1));
        }
    }
}
