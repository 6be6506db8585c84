//! The segment pipeline: the next segment's file is created, its blocks reserved and its pages
//! faulted in by the `walship-prepare` thread while the writer still fills the current one, so
//! that a rotation only renames a file. The same thread seals the open segment once it grows
//! older than `WalOptions::max_segment_age`.
//!
//! The prepared file waits in one slot, for one segment number. A rotation takes it under the
//! slot's lock and renames it to its open name before releasing the lock, so the preparer never
//! sees the file taken but not yet renamed; when nothing is ready, the rotation prepares the file
//! in the append path.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use super::{lock, Inner};
use crate::error::{IoContext, Result};
use crate::format::{SegmentFileKind, SegmentName};
use crate::recovery::Recovered;
use crate::segment_file::PreparedSegment;

/// Work for the preparer thread.
pub(super) enum PrepareMsg {
    Prepare(u64),
    Stop,
}

/// The prepared slot and what it may still hold.
pub(super) struct Pipeline {
    /// A prepared file ready for the given segment number. The preparer holds this lock while
    /// it works, so a rotation that needs the file waits for it instead of racing it.
    prepared: Mutex<Option<(u64, PreparedSegment)>>,
    /// Segment numbers below this have been activated; a request to prepare one is stale.
    /// Written and read under the `prepared` lock.
    activated: AtomicU64,
}

impl Pipeline {
    /// The slot as recovery left it: holding the prepared file it kept for `next_segment_no`.
    pub fn from_recovered(
        rec: &Recovered,
        next_segment_no: u64,
        segment_size: u64,
    ) -> Result<Pipeline> {
        let prepared = match &rec.prepared {
            Some(p) => {
                let p = PreparedSegment::open(p.clone(), segment_size)?;
                p.prefault().run();
                Some((rec.next_segment_no, p))
            }
            None => None,
        };
        Ok(Pipeline {
            prepared: Mutex::new(prepared),
            activated: AtomicU64::new(next_segment_no),
        })
    }
}

/// Starts the preparer thread; send it `PrepareMsg::Prepare` after each activation.
pub(super) fn start(inner: &Arc<Inner>) -> Result<(mpsc::Sender<PrepareMsg>, JoinHandle<()>)> {
    let (tx, rx) = mpsc::channel();
    let inner = inner.clone();
    let handle = std::thread::Builder::new()
        .name("walship-prepare".into())
        .spawn(move || preparer(inner, rx))
        .ctx(|| "start the segment preparation thread".to_string())?;
    Ok((tx, handle))
}

fn preparer(inner: Arc<Inner>, rx: mpsc::Receiver<PrepareMsg>) {
    let tick = inner
        .options
        .max_segment_age
        .map(|a| (a / 4).clamp(Duration::from_millis(10), Duration::from_secs(1)))
        .unwrap_or(Duration::from_secs(3600));
    loop {
        match rx.recv_timeout(tick) {
            Ok(PrepareMsg::Stop) | Err(mpsc::RecvTimeoutError::Disconnected) => return,
            Ok(PrepareMsg::Prepare(no)) => {
                let mut slot = lock(&inner.pipeline.prepared);
                let stale = no < inner.pipeline.activated.load(Ordering::Acquire);
                if stale || matches!(&*slot, Some((n, _)) if *n == no) {
                    continue;
                }
                // A request queued before the rotation that already used this number: preparing
                // it again would truncate the file the writer is using.
                let open = SegmentName::new(inner.control.timeline, no, SegmentFileKind::Open);
                if inner.dir.segment_path(&open).exists()
                    || inner
                        .dir
                        .segment_path(&open.with_kind(SegmentFileKind::Sealed))
                        .exists()
                {
                    continue;
                }
                if let Some((_, old)) = slot.take() {
                    let _ = std::fs::remove_file(&old.path);
                }
                match inner.prepare(no) {
                    Ok(p) => {
                        // Prefaulting takes tens of milliseconds: the writer may take the
                        // segment meanwhile rather than wait for it.
                        let prefault = p.prefault();
                        *slot = Some((no, p));
                        drop(slot);
                        prefault.run();
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "preparing the next segment failed; the next rotation will try again")
                    }
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
        }
        if let Some(max) = inner.options.max_segment_age {
            if inner.poisoned.load(Ordering::Acquire) {
                continue;
            }
            let mut st = lock(&inner.tail);
            if st.seg.is_some() && st.seg_records > 0 && st.opened_at.elapsed() >= max {
                if let Err(e) = inner.seal_locked(&mut st, false) {
                    tracing::error!(error = %e, "sealing an aged segment failed");
                }
            }
        }
    }
}

impl Inner {
    /// Creates and maps the file for segment `no` under its prepared name.
    fn prepare(&self, no: u64) -> Result<PreparedSegment> {
        PreparedSegment::create(
            self.prepared_path(no),
            self.control.segment_size,
            self.options.segment_fill,
        )
    }

    fn prepared_path(&self, no: u64) -> PathBuf {
        self.dir.segment_path(&SegmentName::new(
            self.control.timeline,
            no,
            SegmentFileKind::Prepared,
        ))
    }

    /// Gives the file prepared for segment `no` (prepared now when none is ready) its open
    /// name `path`, and marks every request to prepare a segment below `no + 1` stale.
    pub(super) fn take_prepared(&self, no: u64, path: &Path) -> Result<PreparedSegment> {
        // The slot stays locked until the rename is done, so the preparer never sees the file
        // taken but not yet renamed (and recreates it under the writer's feet).
        let mut slot = lock(&self.pipeline.prepared);
        let prepared = match slot.take() {
            Some((n, p)) if n == no => p,
            other => {
                if let Some((_, p)) = other {
                    let _ = std::fs::remove_file(&p.path);
                }
                tracing::debug!(
                    segment = no,
                    "no prepared segment ready; preparing in the append path"
                );
                self.prepare(no)?
            }
        };
        let from = &prepared.path;
        crate::fault!("wal::activate::rename", e => crate::error::Error::io(format!("rename {} to {}", from.display(), path.display()), e));
        std::fs::rename(from, path)
            .ctx(|| format!("rename {} to {}", from.display(), path.display()))?;
        self.pipeline.activated.store(no + 1, Ordering::Release);
        drop(slot);
        Ok(prepared)
    }
}
