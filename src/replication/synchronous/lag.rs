//! Lag in time: how long ago the primary made durable what a standby has just flushed. The
//! primary keeps a small ring of (durable position, time it became durable) samples; a
//! standby's position is looked up in it. Pure (times are passed in).

use std::collections::VecDeque;

use crate::Lsn;

/// Samples kept: at one per group commit seen, enough for the recent past.
pub const RING_SAMPLES: usize = 4096;

#[derive(Clone, Debug, Default)]
pub struct LagRing {
    /// (durable position, microseconds since the epoch when it was seen), oldest first,
    /// positions strictly increasing.
    samples: VecDeque<(Lsn, i64)>,
}

impl LagRing {
    pub fn new() -> LagRing {
        LagRing::default()
    }

    /// Notes that WAL up to `lsn` was durable at `now_us`.
    pub fn record(&mut self, lsn: Lsn, now_us: i64) {
        if self.samples.back().is_some_and(|&(l, _)| l >= lsn) {
            return;
        }
        if self.samples.len() == RING_SAMPLES {
            self.samples.pop_front();
        }
        self.samples.push_back((lsn, now_us));
    }

    /// How long ago (µs) the primary made durable WAL up to `position`: 0 when the position
    /// is at or past the newest sample (caught up); from the oldest sample when it is behind
    /// all of them (a lower bound); None with no sample yet.
    pub fn lag_us(&self, position: Lsn, now_us: i64) -> Option<i64> {
        let &(newest, _) = self.samples.back()?;
        if position >= newest {
            return Some(0);
        }
        // The first sample that covers the position: WAL past `position` has been waiting
        // since the sample before it was passed, i.e. since this sample's time at the latest.
        let i = self.samples.partition_point(|&(l, _)| l <= position);
        let (_, t) = self.samples[i];
        Some(now_us.saturating_sub(t).max(0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lag_is_the_age_of_the_first_wal_not_flushed() {
        let mut r = LagRing::new();
        assert_eq!(r.lag_us(Lsn(0), 100), None);
        r.record(Lsn(100), 1_000);
        r.record(Lsn(200), 2_000);
        r.record(Lsn(200), 2_500); // no move, no sample
        r.record(Lsn(300), 3_000);
        assert_eq!(r.lag_us(Lsn(300), 5_000), Some(0));
        assert_eq!(r.lag_us(Lsn(400), 5_000), Some(0));
        // Flushed up to 200: WAL up to 300 waits since 3000.
        assert_eq!(r.lag_us(Lsn(200), 5_000), Some(2_000));
        assert_eq!(r.lag_us(Lsn(150), 5_000), Some(3_000));
        // Behind every sample: at least as old as the oldest.
        assert_eq!(r.lag_us(Lsn(0), 5_000), Some(4_000));
    }

    #[test]
    fn the_ring_keeps_the_newest_samples() {
        let mut r = LagRing::new();
        for i in 0..(RING_SAMPLES as u64 + 10) {
            r.record(Lsn(i + 1), i as i64);
        }
        assert_eq!(r.samples.len(), RING_SAMPLES);
        assert_eq!(r.samples.front().unwrap().0, Lsn(11));
    }
}
