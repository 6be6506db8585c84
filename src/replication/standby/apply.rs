//! Applying: the applier thread takes stored segments in order, hands each record past the
//! applied position to the [`Applicator`], flushes it, and only then records the new applied
//! position durably. A failure stops the standby.
//!
//! A segment the store checked whole in this process comes with what that check read and
//! found (the mapping it checked, its header and seal marker): the applier reads the records
//! from those bytes without hashing them again or reading the control file. A segment stored
//! before the process started was checked only as far as its header and seal marker when the
//! directory was opened: the applier checks it whole as it reads it.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::directory::write_applied;
use super::Shared;
use crate::decoder::{ScanEnd, SegmentScanner};
use crate::error::Error;
use crate::replication::applicator::Applicator;
use crate::segment_check::SealedSegment;
use crate::Lsn;

/// A sealed segment handed to the applier, in LSN order.
pub(super) struct ApplyJob {
    /// Its name, header and seal marker, checked against the directory's identity.
    pub(super) segment: SealedSegment,
    /// The bytes the store checked whole (every record, the seal marker, the segment checksum,
    /// the chain), in the read-only mapping it checked them through: the standby holds the
    /// directory's lock and never changes a sealed file. `None` for a segment stored before
    /// this process started.
    pub(super) checked: Option<memmap2::Mmap>,
}

/// Where the applier's jobs are sent.
pub(super) type Jobs = std::sync::mpsc::Sender<ApplyJob>;

impl ApplyJob {
    /// A segment found on disk when the directory was opened: checked whole when applied.
    pub(super) fn stored_earlier(segment: SealedSegment) -> Self {
        ApplyJob {
            segment,
            checked: None,
        }
    }
}

/// Applies sealed segments in order, recording applied_lsn after each.
pub(super) fn applier(
    shared: Arc<Shared>,
    rx: std::sync::mpsc::Receiver<ApplyJob>,
    mut app: impl Applicator,
) {
    for job in rx {
        if let Err(e) = apply_segment(&shared, &job, &mut app) {
            let msg = format!("applying {} failed: {e}", job.segment.name);
            tracing::error!("{msg}");
            shared.failed.send_replace(Some(msg));
            return;
        }
    }
}

fn apply_segment(shared: &Shared, job: &ApplyJob, app: &mut impl Applicator) -> crate::Result<()> {
    let name = &job.segment.name;
    let path = shared.dd.segment_path(name);
    let start = job.segment.header.start_lsn();
    let read;
    let mut scan = match &job.checked {
        Some(map) => SegmentScanner::over_checked(map, job.segment.header, job.segment.seal),
        None => {
            let file = std::fs::File::open(&path)
                .map_err(|e| Error::io(format!("open {}", path.display()), e))?;
            // SAFETY: the standby holds the directory's lock and never changes a sealed file,
            // so the mapped bytes cannot change or shrink under us.
            read = unsafe { memmap2::Mmap::map(&file) }
                .map_err(|e| Error::io(format!("mmap {}", path.display()), e))?;
            SegmentScanner::new(&read).map_err(|r| Error::Corrupt {
                file: path.clone(),
                offset: 0,
                lsn: Lsn(start),
                reason: r,
            })?
        }
    };
    let applied = shared.applied.load(Ordering::Acquire);
    let mut end = applied;
    for r in scan.by_ref() {
        if r.end_lsn() > applied {
            app.apply(&r)?;
            end = r.end_lsn();
        }
    }
    if let Some(ScanEnd::Invalid { offset, error }) = scan.end() {
        return Err(Error::Corrupt {
            file: path,
            offset: *offset as u64,
            lsn: Lsn(start + *offset as u64),
            reason: error.to_string(),
        });
    }
    app.flush()?;
    if end > applied {
        write_applied(&shared.dd, end)?;
        shared.applied.store(end, Ordering::Release);
        tracing::debug!(segment = %name, applied = %Lsn(end), "applied segment");
        shared.notify();
    }
    Ok(())
}
