//! Where a restore's time goes: its phases one after another, and the work of each segment
//! summed over the segments (reported by `restore --json`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;

/// Where a restore's time went, in microseconds. The phases run one after another and add up
/// to `total_us`; the `*_sum_us` figures add each segment's time in that step, so they overlap
/// one another (several segments are fetched, checked and staged at once) and may exceed
/// `fetch_check_stage_us`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct RestoreTimings {
    /// From the start of the restore to the control file written.
    pub total_us: u64,
    /// The identity, the destination's check, the staging directory, the history files.
    pub prepare_us: u64,
    /// Listing the archive and checking the list.
    pub list_us: u64,
    /// Pass one: from the first GET to the last segment checked and staged.
    pub fetch_check_stage_us: u64,
    /// Pass two: the segments moved into `wal/`, the open segment, the history files, the
    /// directory fsyncs and the control file.
    pub write_us: u64,
    /// GETs, from the request to the last byte.
    pub fetch_sum_us: u64,
    /// Decompression and the check of every record.
    pub check_sum_us: u64,
    /// Writing staging files (into the page cache).
    pub stage_write_sum_us: u64,
    /// `fdatasync` of the staging files.
    pub stage_sync_sum_us: u64,
    /// Bytes written to staging files: each segment's bytes once.
    pub staged_bytes: u64,
}

/// Per-segment times, added from the tasks that fetch, check and stage.
#[derive(Default)]
pub(super) struct Sums {
    fetch: AtomicU64,
    check: AtomicU64,
    stage_write: AtomicU64,
    stage_sync: AtomicU64,
    staged_bytes: AtomicU64,
}

fn us(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

impl Sums {
    pub(super) fn add_fetch(&self, d: Duration) {
        self.fetch.fetch_add(us(d), Ordering::Relaxed);
    }
    pub(super) fn add_check(&self, d: Duration) {
        self.check.fetch_add(us(d), Ordering::Relaxed);
    }
    pub(super) fn add_stage_write(&self, d: Duration, bytes: u64) {
        self.stage_write.fetch_add(us(d), Ordering::Relaxed);
        self.staged_bytes.fetch_add(bytes, Ordering::Relaxed);
    }
    pub(super) fn add_stage_sync(&self, d: Duration) {
        self.stage_sync.fetch_add(us(d), Ordering::Relaxed);
    }
}

/// The restore's clock: phases are laps.
pub(super) struct Clock {
    started: Instant,
    mark: Instant,
    pub timings: RestoreTimings,
    pub sums: std::sync::Arc<Sums>,
}

impl Clock {
    pub(super) fn start() -> Clock {
        let now = Instant::now();
        Clock {
            started: now,
            mark: now,
            timings: RestoreTimings::default(),
            sums: Default::default(),
        }
    }

    /// Microseconds since the last lap (or the start).
    pub(super) fn lap(&mut self) -> u64 {
        let now = Instant::now();
        let d = now - self.mark;
        self.mark = now;
        us(d)
    }

    /// The timings, with the total and the per-segment sums.
    pub(super) fn finish(mut self) -> RestoreTimings {
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let s = &self.sums;
        self.timings.fetch_sum_us = load(&s.fetch);
        self.timings.check_sum_us = load(&s.check);
        self.timings.stage_write_sum_us = load(&s.stage_write);
        self.timings.stage_sync_sum_us = load(&s.stage_sync);
        self.timings.staged_bytes = load(&s.staged_bytes);
        self.timings.total_us = us(self.started.elapsed());
        self.timings
    }
}
