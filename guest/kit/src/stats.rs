//! Integer arithmetic for measurements: rates, TSC conversions and percentiles. Only `core`, no
//! register access, so that the host-side test crate (`guest/host-tests`) can include this file
//! and unit-test it.

/// Megabytes (10^6 bytes) per second for `bytes` moved in `cycles` TSC cycles at `tsc_khz`:
/// `bytes * tsc_khz / cycles / 1000`. 0 when `cycles` or `tsc_khz` is 0 (no rate known);
/// saturates at `u64::MAX`.
pub fn mbps(bytes: u64, tsc_khz: u64, cycles: u64) -> u64 {
    if cycles == 0 || tsc_khz == 0 {
        return 0;
    }
    let v = u128::from(bytes) * u128::from(tsc_khz) / u128::from(cycles) / 1000;
    u64::try_from(v).unwrap_or(u64::MAX)
}

/// Nanoseconds of `cycles` TSC cycles at `tsc_khz` (rounded down); 0 when `tsc_khz` is 0.
pub fn cycles_to_ns(cycles: u64, tsc_khz: u64) -> u64 {
    if tsc_khz == 0 {
        return 0;
    }
    let v = u128::from(cycles) * 1_000_000 / u128::from(tsc_khz);
    u64::try_from(v).unwrap_or(u64::MAX)
}

/// The nearest-rank `pct`-th percentile (0..=100) of `sorted` (ascending): the smallest value
/// with at least `pct`% of the samples at or below it. `pct` 0 gives the minimum, 100 the
/// maximum; an empty slice gives 0.
pub fn percentile(sorted: &[u64], pct: u32) -> u64 {
    let n = sorted.len();
    if n == 0 {
        return 0;
    }
    let pct = pct.min(100) as usize;
    // rank = ceil(pct * n / 100), at least 1.
    let rank = (pct * n).div_ceil(100).max(1);
    sorted[rank - 1]
}

/// Order statistics of a sample set.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    /// Number of samples.
    pub samples: usize,
    /// Median (nearest rank).
    pub p50: u64,
    /// 99th percentile (nearest rank).
    pub p99: u64,
    /// Smallest sample.
    pub min: u64,
    /// Largest sample.
    pub max: u64,
}

impl Summary {
    /// Sorts `samples` in place (no allocation) and summarises them.
    pub fn of(samples: &mut [u64]) -> Self {
        samples.sort_unstable();
        Self {
            samples: samples.len(),
            p50: percentile(samples, 50),
            p99: percentile(samples, 99),
            min: samples.first().copied().unwrap_or(0),
            max: samples.last().copied().unwrap_or(0),
        }
    }

    /// Every statistic mapped through `f` (e.g. cycles to nanoseconds; `f` must be monotonic
    /// for the order to hold).
    pub fn map(self, f: impl Fn(u64) -> u64) -> Self {
        Self {
            samples: self.samples,
            p50: f(self.p50),
            p99: f(self.p99),
            min: f(self.min),
            max: f(self.max),
        }
    }
}
