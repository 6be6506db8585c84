//! A latency histogram: log-linear buckets (64 per power of two, under 1.6% error), fixed
//! size, so recording costs a few instructions and no allocation on the measured path.

use std::time::Duration;

const SUB_BITS: u32 = 6;
const SUB: usize = 1 << SUB_BITS;
/// Values below this are counted exactly.
const LINEAR: u64 = 2 * SUB as u64;
const BUCKETS: usize = LINEAR as usize + (64 - SUB_BITS as usize - 1) * SUB;

/// Counts of nanosecond values.
#[derive(Clone)]
pub struct Histogram {
    counts: Vec<u64>,
    total: u64,
    max: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            counts: vec![0; BUCKETS],
            total: 0,
            max: 0,
        }
    }
}

fn bucket(v: u64) -> usize {
    if v < LINEAR {
        return v as usize;
    }
    let e = 63 - v.leading_zeros(); // >= SUB_BITS + 1
    let sub = ((v >> (e - SUB_BITS)) as usize) & (SUB - 1);
    LINEAR as usize + (e - SUB_BITS - 1) as usize * SUB + sub
}

/// The middle of a bucket's range.
fn value_of(b: usize) -> u64 {
    if b < LINEAR as usize {
        return b as u64;
    }
    let i = b - LINEAR as usize;
    let e = (i / SUB) as u32 + SUB_BITS + 1;
    let sub = (i % SUB) as u64;
    let low = (1u64 << e) | (sub << (e - SUB_BITS));
    low + (1u64 << (e - SUB_BITS)) / 2
}

impl Histogram {
    pub fn record(&mut self, d: Duration) {
        self.record_ns(d.as_nanos().min(u64::MAX as u128) as u64);
    }

    pub fn record_ns(&mut self, ns: u64) {
        self.counts[bucket(ns)] += 1;
        self.total += 1;
        self.max = self.max.max(ns);
    }

    pub fn merge(&mut self, other: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.total += other.total;
        self.max = self.max.max(other.max);
    }

    pub fn count(&self) -> u64 {
        self.total
    }

    /// The value at quantile `q` (0..=1) in microseconds; 0 when empty.
    pub fn quantile_us(&self, q: f64) -> f64 {
        if self.total == 0 {
            return 0.0;
        }
        let rank = ((q * self.total as f64).ceil() as u64).clamp(1, self.total);
        let mut seen = 0;
        for (b, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return value_of(b).min(self.max) as f64 / 1000.0;
            }
        }
        self.max as f64 / 1000.0
    }

    pub fn max_us(&self) -> f64 {
        self.max as f64 / 1000.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_ordered_and_close() {
        let mut last = 0;
        for v in [
            0u64,
            1,
            127,
            128,
            129,
            1000,
            4095,
            4096,
            1 << 20,
            123_456_789,
            u64::MAX / 2,
        ] {
            let b = bucket(v);
            assert!(b >= last, "bucket order at {v}");
            last = b;
            let mid = value_of(b);
            let err = (mid as f64 - v as f64).abs() / (v.max(1) as f64);
            assert!(err < 0.016, "value {v} -> {mid}");
        }
        assert!(bucket(u64::MAX) < BUCKETS);
    }

    #[test]
    fn quantiles() {
        let mut h = Histogram::default();
        for v in 1..=1000u64 {
            h.record_ns(v * 1000);
        }
        let p50 = h.quantile_us(0.5);
        assert!((p50 - 500.0).abs() < 8.0, "{p50}");
        let p99 = h.quantile_us(0.99);
        assert!((p99 - 990.0).abs() < 16.0, "{p99}");
        assert_eq!(h.max_us(), 1000.0);
        assert_eq!(h.count(), 1000);
    }
}
