//! Small measurement helpers shared by the benchmarks: medians, a timed
//! series, and the peak resident set of the calling process.

use std::time::{Duration, Instant};

/// The median of `values` (the upper one of the two middle values for an
/// even count). Panics on an empty list, or on a NaN among `f64`s, since
/// either means the measurement itself failed.
pub fn median<T: PartialOrd + Copy>(mut values: Vec<T>) -> T {
    assert!(!values.is_empty(), "median of no measurements");
    values.sort_by(|a, b| a.partial_cmp(b).expect("a measurement is NaN"));
    values[values.len() / 2]
}

/// Runs `f` `runs` times in a row and returns the median wall time.
pub fn time_median(runs: usize, mut f: impl FnMut()) -> Duration {
    let times = (0..runs)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed()
        })
        .collect();
    median(times)
}

/// Peak RSS of the calling process in KiB (`VmHWM` in /proc/self/status).
/// Read it in the process that did the work: a parent's `ru_maxrss` of a
/// child also counts the parent's own RSS at fork/exec time.
pub fn vm_hwm_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("read /proc/self/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .expect("VmHWM in /proc/self/status")
}
