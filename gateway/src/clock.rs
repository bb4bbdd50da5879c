//! The one clock the kernel and userspace agree on for bans.

/// `CLOCK_MONOTONIC` in nanoseconds: the clock the XDP program reads (at tick
/// resolution, `bpf_ktime_get_coarse_ns`), so
/// a `banned_until_ns` computed here means the same instant in the kernel.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_MONOTONIC always exists on Linux.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    debug_assert_eq!(rc, 0);
    (ts.tv_sec as u64) * 1_000_000_000 + ts.tv_nsec as u64
}

/// Wall-clock unix seconds (expiry times, JWT claims).
pub fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn monotonic_is_ordered_and_counts_nanoseconds() {
        let a = monotonic_ns();
        let b = monotonic_ns();
        assert!(a > 0);
        assert!(b >= a, "reads are ordered: {a} then {b}");
        // A sleep of N ms moves the clock by at least N ms: the unit is
        // nanoseconds (a seconds or microseconds mix-up falls short). No
        // upper bound: a busy machine may sleep much longer.
        let before = monotonic_ns();
        #[allow(clippy::disallowed_methods, reason = "a sync test of the clock itself")]
        std::thread::sleep(std::time::Duration::from_millis(20));
        let after = monotonic_ns();
        assert!(
            after - before >= 20_000_000,
            "20 ms of sleep moved the clock by {} ns",
            after - before
        );
    }
}
