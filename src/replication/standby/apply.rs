//! Applying: the applier thread takes stored records in order, hands each record past the
//! applied position to the [`Applicator`], flushes it, and only then records the new applied
//! position durably. A failure stops the standby.
//!
//! Records arrive in two ways, through one queue and so in LSN order: each synced batch of the
//! open segment's copy (the bytes the store checked record by record, up to the flushed
//! position), and each sealed segment. Records at or below the applied position are skipped,
//! so a record is applied once: a sealed segment whose records were applied while it was open
//! only has its remaining records applied, and after a restart the durable applied position
//! decides where applying resumes, within a copy or a sealed segment.
//!
//! A segment the store checked whole in this process comes with what that check read and
//! found (the mapping it checked, its header and seal marker): the applier reads the records
//! from those bytes without hashing them again or reading the control file. A segment stored
//! before the process started was checked only as far as its header and seal marker when the
//! directory was opened: the applier checks it whole as it reads it.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::directory::write_applied;
use super::partial::PartialCopy;
use super::{lock, Shared};
use crate::decoder::{ScanEnd, SegmentScanner};
use crate::error::Error;
use crate::format::record::{decode_at_unhashed, Decoded};
use crate::format::segment_header::SEGMENT_HEADER_LEN;
use crate::format::SegmentFileKind;
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

/// Records of the open segment's copy, synced and checked one by one by the store: whole
/// records only, never past the flushed position.
pub(super) struct StreamedJob {
    /// The copy they come from (for messages).
    pub(super) copy: crate::format::SegmentName,
    /// The LSN of the first byte.
    pub(super) start: Lsn,
    /// Whole, checked records.
    pub(super) bytes: Vec<u8>,
    /// The segment size.
    pub(super) segment_size: usize,
}

/// What the applier is given, in LSN order.
pub(super) enum Job {
    Sealed(ApplyJob),
    Streamed(StreamedJob),
}

impl From<ApplyJob> for Job {
    fn from(j: ApplyJob) -> Job {
        Job::Sealed(j)
    }
}

/// Where the applier's jobs are sent.
pub(super) type Jobs = std::sync::mpsc::Sender<Job>;

impl ApplyJob {
    /// A segment found on disk when the directory was opened: checked whole when applied.
    pub(super) fn stored_earlier(segment: SealedSegment) -> Self {
        ApplyJob {
            segment,
            checked: None,
        }
    }
}

/// Hands the copy's synced, checked records not yet handed over to the applier, once the
/// directory is a standby's (nothing is applied before).
pub(super) fn hand_to_applier(shared: &Shared, c: &mut PartialCopy, jobs: &Jobs) {
    let from = c.sent_end.max(SEGMENT_HEADER_LEN);
    if c.valid_end <= from {
        return;
    }
    let is_standby = lock(&shared.meta).is_some();
    let standby = is_standby && lock(&shared.adopting).is_none();
    let Some(control) = shared.held().control else {
        return;
    };
    if !standby {
        return;
    }
    let start = c.name.segment_no.start_lsn_saturating(control.segment_size) + from as u64;
    let _ = jobs.send(Job::Streamed(StreamedJob {
        copy: c.name.with_kind(SegmentFileKind::Sealed),
        start,
        bytes: c.buf[from..c.valid_end].to_vec(),
        segment_size: control.segment_size as usize,
    }));
    c.sent_end = c.valid_end;
}

/// Applies stored records in order, recording applied_lsn after each job.
pub(super) fn applier(
    shared: Arc<Shared>,
    rx: std::sync::mpsc::Receiver<Job>,
    mut app: impl Applicator,
) {
    for job in rx {
        // Stopping: the jobs still queued are stored; the next start applies their records
        // from the durable applied position.
        if shared.stopping.load(Ordering::Acquire) {
            tracing::debug!("the standby is stopping; the applier leaves the rest of its queue to the next start");
            return;
        }
        let (r, segment) = match &job {
            Job::Sealed(j) => (
                apply_segment(&shared, j, &mut app),
                j.segment.name.to_string(),
            ),
            Job::Streamed(j) => (apply_streamed(&shared, j, &mut app), j.copy.to_string()),
        };
        if let Err(e) = r {
            let e = Error::Applying {
                segment,
                source: Box::new(e),
            };
            let msg = e.to_string();
            tracing::error!("{msg}");
            *lock(&shared.apply_error) = Some(e);
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
                lsn: start,
                reason: r,
            })?
        }
    };
    let applied = Lsn(shared.applied.load(Ordering::Acquire));
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
            lsn: start + *offset as u64,
            reason: error.to_string(),
        });
    }
    app.flush()?;
    record_applied(shared, applied, end)?;
    tracing::debug!(segment = %name, applied = %end, "applied segment");
    Ok(())
}

/// Applies the records of a synced batch of the open segment's copy that lie past the applied
/// position.
fn apply_streamed(
    shared: &Shared,
    job: &StreamedJob,
    app: &mut impl Applicator,
) -> crate::Result<()> {
    let applied = Lsn(shared.applied.load(Ordering::Acquire));
    let mut end = applied;
    let mut off = 0;
    while off < job.bytes.len() {
        let lsn = job.start + off as u64;
        let r = match decode_at_unhashed(&job.bytes, off, lsn, job.segment_size) {
            Ok(Decoded::Record(r)) => r,
            Ok(Decoded::Seal(_)) => {
                return Err(Error::Other(format!(
                    "a seal marker at {lsn} among the records of the open segment's copy {}",
                    job.copy
                )))
            }
            Err(e) => {
                return Err(Error::Other(format!(
                    "the checked records of the open segment's copy {} do not decode at {lsn}: {e}",
                    job.copy
                )))
            }
        };
        if r.end_lsn() > applied {
            app.apply(&r)?;
            end = r.end_lsn();
        }
        off = (r.end_lsn() - job.start) as usize;
    }
    if end > applied {
        app.flush()?;
        record_applied(shared, applied, end)?;
        tracing::trace!(copy = %job.copy, applied = %end, "applied streamed records");
    }
    Ok(())
}

/// Records `end` as the applied position, durably, when it is past `applied`.
fn record_applied(shared: &Shared, applied: Lsn, end: Lsn) -> crate::Result<()> {
    if end > applied {
        write_applied(&shared.dd, end)?;
        shared.applied.store(end.0, Ordering::Release);
        shared.notify();
    }
    Ok(())
}
