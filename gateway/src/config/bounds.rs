//! Ranges for the configuration's numbers and durations, so nothing a file
//! or the command line says reaches `tokio::time::interval(0)`, a division
//! by zero, an overflowing deadline or an unbounded allocation. Each
//! section checks its own keys next to its struct, one line a key:
//! `at.within("refresh", self.refresh, MS..=DAY)?`.
use std::{ops::RangeInclusive, time::Duration};

use super::ConfigError;

pub(super) const MS: Duration = Duration::from_millis(1);
pub(super) const SECOND: Duration = Duration::from_secs(1);
pub(super) const HOUR: Duration = Duration::from_secs(3600);
pub(super) const DAY: Duration = Duration::from_secs(86_400);
/// A long window or ban; `"1year"` (365.25 days) fits.
pub(super) const YEAR: Duration = Duration::from_secs(366 * 86_400);
/// Room for a counter that is compared with a configured threshold and
/// incremented past it.
pub(super) const COUNT: u32 = 1_000_000;

/// Something with a range: a number or a duration.
pub(super) trait Bounded: PartialOrd + Copy {
    /// As the configuration writes it.
    fn show(self) -> String;
}

impl Bounded for Duration {
    fn show(self) -> String {
        humantime::format_duration(self).to_string()
    }
}

macro_rules! bounded_numbers {
    ($($t:ty),*) => {$(
        impl Bounded for $t {
            fn show(self) -> String {
                self.to_string()
            }
        }
    )*};
}
bounded_numbers!(u32, u64, usize, f64);

/// Where a section is in the file: `limits`, `tiers[2]`,
/// `upstreams[0].health_check`; errors name `<that>.<key>`.
pub(super) struct At(String);

impl At {
    pub(super) fn new(path: impl Into<String>) -> Self {
        Self(path.into())
    }

    /// A subsection: `upstreams[0]` → `upstreams[0].health_check`.
    pub(super) fn child(&self, key: &str) -> Self {
        Self(self.path(key))
    }

    /// Checks each item of a list as `<list>[index]`.
    pub(super) fn each<T>(
        list: &str,
        items: &[T],
        check: impl Fn(&T, &At) -> Result<(), ConfigError>,
    ) -> Result<(), ConfigError> {
        for (index, item) in items.iter().enumerate() {
            check(item, &At(format!("{list}[{index}]")))?;
        }
        Ok(())
    }

    pub(super) fn path(&self, key: &str) -> String {
        format!("{}.{key}", self.0)
    }

    /// An error at `key` of this section.
    pub(super) fn invalid(&self, key: &str, message: impl Into<String>) -> ConfigError {
        ConfigError::invalid(self.path(key), message)
    }

    /// `value` is in `range`; NaN is in none.
    pub(super) fn within<T: Bounded>(
        &self,
        key: &str,
        value: T,
        range: RangeInclusive<T>,
    ) -> Result<(), ConfigError> {
        let (low, high) = (*range.start(), *range.end());
        let message = if value < low {
            format!("must be at least {}, not {}", low.show(), value.show())
        } else if value > high {
            format!("must be at most {}, not {}", high.show(), value.show())
        } else if range.contains(&value) {
            return Ok(());
        } else {
            format!("must be from {} to {}", low.show(), high.show())
        };
        Err(self.invalid(key, message))
    }

    /// The same for an optional value; absent is fine.
    pub(super) fn within_opt<T: Bounded>(
        &self,
        key: &str,
        value: Option<T>,
        range: RangeInclusive<T>,
    ) -> Result<(), ConfigError> {
        value.map_or(Ok(()), |value| self.within(key, value, range))
    }
}

#[cfg(test)]
#[path = "bounds_tests.rs"]
mod tests;
