//! Durability: how `flush_lsn` moves, and what a failed sync leaves behind.
//!
//! A group-commit leader (see `group_commit.rs` for who leads) notes the write position and the
//! finisher's ticket count, msyncs the open segment from where the last leader's sync reached,
//! then waits for the finisher to reach the noted ticket before it moves `flush_lsn`: records
//! of a segment count only once every earlier segment's seal marker and this segment's name are
//! durable too (the ticket ordering told in `finisher.rs`).
//!
//! Failed syncs: every sync of a segment (a leader's msync, the finisher's msync and fsync, the
//! early write-back) goes through `Inner::sync_segment`. The segment runs its syncs one at a
//! time and keeps the first failure for every later one, because Linux reports a write-back
//! error to only one sync of an open file; the failure poisons the writer. `flush_lsn` moves
//! only under the poison lock and only while the writer is healthy, so a sync that succeeded
//! beside a failed one never advances it, and every wait checks the poison flag before it.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::group_commit::SyncedTo;
use super::{lock, Inner};
use crate::error::{Error, Result};
use crate::segment_file::ActiveSegment;
use crate::Lsn;

/// A sync of a segment, made through `Inner::sync_segment`.
pub(super) enum SegmentSync {
    /// msync of `[from, to)`.
    Range(usize, usize),
    /// fsync of the file.
    File,
    /// Start writing `[from, to)` back (no wait); only its own I/O error counts.
    StartWriteback(usize, usize),
}

impl Inner {
    pub(super) fn check_poison(&self) -> Result<()> {
        if self.poisoned.load(Ordering::Acquire) {
            return Err(Error::Poisoned(
                lock(&self.failure).clone().unwrap_or_default(),
            ));
        }
        Ok(())
    }

    /// Marks the writer failed after a sync error; every later call gets the error.
    pub(super) fn poison(&self, what: String, e: std::io::Error) -> Error {
        let reason = format!("{what}: {e}");
        tracing::error!(%reason, "sync failed: the writer refuses further appends");
        let mut failure = lock(&self.failure);
        let first = failure.get_or_insert(reason).clone();
        self.poisoned.store(true, Ordering::Release);
        Error::Poisoned(first)
    }

    /// Moves `flush_lsn` up to `end` after a sync that covered it, unless the writer was
    /// poisoned meanwhile: a sync that succeeded says nothing once another one failed. Shippers
    /// in this process see it at once; the caller then brings `state/flush_position` up
    /// (`FlushPublisher::write_file`), a leader only after it has woken the waiters.
    pub(super) fn advance_flushed(&self, end: u64) -> Result<()> {
        let failure = lock(&self.failure);
        if let Some(reason) = &*failure {
            return Err(Error::Poisoned(reason.clone()));
        }
        let prev = self.flushed.fetch_max(end, Ordering::AcqRel);
        if end > prev {
            self.published.publish(end);
        }
        Ok(())
    }

    /// Every sync of a segment goes through here: the segment serializes its syncs and keeps
    /// its first failure (see `ActiveSegment::synced`); a failure poisons the writer; and a sync
    /// that succeeded still fails when the writer was poisoned before it returned.
    pub(super) fn sync_segment(&self, seg: &ActiveSegment, sync: SegmentSync) -> Result<()> {
        let (what, r) = match sync {
            SegmentSync::Range(from, to) => ("msync", seg.sync_range(from, to)),
            SegmentSync::File => ("fsync", seg.sync_all()),
            SegmentSync::StartWriteback(from, to) => ("write back", seg.start_writeback(from, to)),
        };
        r.map_err(|e| self.poison(format!("{what} {}", seg.path.display()), e))?;
        self.check_poison()
    }

    /// Lets every appender that is ready to run append before the leader syncs: yields the CPU
    /// while the write position still moves (at most 200 µs). With more writers than cores, a
    /// leader that syncs at once covers only the few that were quick to come back; the rest
    /// each wait a whole sync longer. The prefault thread pauses meanwhile (`prefault.rs`):
    /// the yield would hand it the core.
    fn gather_appenders(&self) {
        self.prefault_pause.store(true, Ordering::Relaxed);
        let start = Instant::now();
        let mut seen = self.written.load(Ordering::Acquire);
        loop {
            std::thread::yield_now();
            let now = self.written.load(Ordering::Acquire);
            if now == seen || start.elapsed() > Duration::from_micros(200) {
                break;
            }
            seen = now;
        }
        self.prefault_pause.store(false, Ordering::Relaxed);
    }

    /// Warns of a slow sync once per episode: the first sync over the bound is logged, the
    /// next ones are not until a sync within the bound ends the episode (logged too).
    fn note_sync_time(&self, took: Duration, bytes: usize) {
        let bound = self.options.slow_sync_warning;
        let over = took > bound;
        let mut episode = crate::sync::lock(&self.slow_sync);
        if !over && !episode.active() {
            return;
        }
        episode.observe(over, || {
            if over {
                format!(
                    "an msync of {bytes} bytes of the open segment took {:.3} s, over {:.3} s",
                    took.as_secs_f64(),
                    bound.as_secs_f64()
                )
            } else {
                format!("a sync took {:.3} s", took.as_secs_f64())
            }
        });
    }

    pub(super) fn wait_durable(&self, target: u64) -> Result<()> {
        let led = std::cell::Cell::new(false);
        let r = self.commit.wait(
            || {
                // The poison flag before `flushed`: once a sync failed, no wait succeeds, not
                // even for a position `flush_lsn` passed before (the caller asks now, and the
                // writer can no longer vouch for anything).
                self.check_poison()?;
                Ok(self.flushed.load(Ordering::Acquire) >= target)
            },
            || self.appended.load(Ordering::Relaxed),
            || self.gather_appenders(),
            |synced_to| {
                led.set(true);
                self.lead_sync(target, synced_to)
            },
        );
        // The waiters this leader covered are awake by now: they need not wait for the file.
        if led.get() {
            self.published.write_file();
        }
        r
    }

    /// A group-commit leader's turn: syncs everything written so far, from where the last
    /// sync of the open segment reached, and moves `flush_lsn`. Returns where the sync reached.
    fn lead_sync(&self, target: u64, synced_to: Option<SyncedTo>) -> Result<Option<SyncedTo>> {
        let (seg, to, end, seals, hashed_to) = {
            let st = lock(&self.tail);
            (
                st.seg.clone(),
                st.off,
                st.end_lsn.0,
                st.tickets,
                st.hashed_to,
            )
        };
        if target > end {
            return Err(Error::InvalidArgument(format!(
                "cannot wait for LSN {}: nothing has been written past {}",
                Lsn(target),
                Lsn(end)
            )));
        }
        let Some(seg) = seg else {
            // No open segment: everything written is in sealed segments.
            self.wait_finishing(seals, |f| f.durable)?;
            self.advance_flushed(end)?;
            return Ok(None);
        };
        let segment_no = seg.name.segment_no.0;
        let from = SyncedTo::start_in(synced_to, segment_no);
        // Timed from here: a test holding the sync point (or sleeping in it) stands for a slow
        // device.
        let started = Instant::now();
        crate::sync_point!("wal::group_commit::sync");
        let synced = if to > from {
            // The whole pages below `to` are written back unmapped (see `unmap_pages`), except
            // the page holding `to`, where the next record goes, and the pages the segment's
            // running checksum has still to read: an unmapped page would fault back in under
            // the tail lock when it does.
            seg.unmap_pages(from, to.min(hashed_to));
            self.sync_segment(&seg, SegmentSync::Range(from, to))?;
            let took = started.elapsed();
            self.sync_ns
                .fetch_add(took.as_nanos() as u64, Ordering::Relaxed);
            self.lib.sync_seconds.observe(took.as_secs_f64());
            self.note_sync_time(took, to - from);
            true
        } else {
            false
        };
        // Records of this segment count only once every earlier segment (and this one's name)
        // is durable too. The finisher works on that meanwhile: after a crash before it is
        // done, recovery ends the log before this segment.
        if !self.finishing_reached(seals) {
            let t0 = Instant::now();
            self.wait_finishing(seals, |f| f.durable)?;
            self.rotation_waits.fetch_add(1, Ordering::Relaxed);
            self.rotation_wait_us
                .fetch_add(t0.elapsed().as_micros() as u64, Ordering::Relaxed);
        }
        self.check_poison()?;
        self.advance_flushed(end)?;
        if synced {
            self.syncs.fetch_add(1, Ordering::Relaxed);
        }
        Ok(Some(SyncedTo {
            segment_no,
            offset: to,
        }))
    }
}
