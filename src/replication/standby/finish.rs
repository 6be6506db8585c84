//! Finishing a complete incoming segment: the store task makes it durable, checks it whole (every
//! record, the seal marker, the segment checksum, the chain to its predecessor), renames it to
//! its sealed name and fsyncs the directory; only then does the standby count it as flushed and
//! hand it to the applier. For a directory being adopted, the first stored segment also decides
//! the adoption: it must chain to what the directory holds, and its own open segment must be a
//! prefix of it.

use std::sync::atomic::Ordering;

use super::adoption::{adopt, prefix_mismatch};
use super::apply::{ApplyJob, Job, Jobs};
use super::{lock, Shared};
use crate::error::Error;
use crate::format::segment_header::SEGMENT_HEADER_LEN;
use crate::format::{SegmentFileKind, SegmentName};
use crate::fsutil::fsync_dir;
use crate::replication::messages::ErrorCode;
use crate::replication::segments::verify_incoming;
use crate::replication::ReplError;
use crate::segment_check::SealedSegment;

/// Why a received segment was not stored.
enum NotStored {
    /// A local failure: ours, retried.
    Local(Error),
    /// Its bytes fail the checks.
    Invalid(Error),
    /// It shows that this directory's own open segment is not a prefix of the primary's
    /// history: refused for good, the directory left as it was.
    Diverged(String),
}

/// Makes a complete segment durable, checks it, renames it to its sealed name, fsyncs the
/// directory, and only then counts it as flushed.
pub(super) fn finish_segment(
    shared: &Shared,
    name: SegmentName,
    path: &std::path::Path,
    file: std::fs::File,
    streamed: usize,
    jobs: &Jobs,
) -> Result<(), ReplError> {
    let held = shared.held();
    let Some(control) = held.control else {
        return Err(ReplError::refused(ErrorCode::Protocol, "no identity"));
    };
    let adopting = lock(&shared.adopting).clone();
    let expected_prev = if held.next_segment == Some(name.segment_no.0) {
        held.prev_checksum
    } else {
        None
    };
    // For a directory becoming a standby, a first segment that does not chain to what it holds
    // shows another history, not damage: checked apart below.
    let chain = if adopting.is_some() {
        None
    } else {
        expected_prev
    };
    let own_open = adopting
        .as_ref()
        .and_then(|a| a.open.clone())
        .filter(|o| o.name.segment_no == name.segment_no);
    let stored = (|| -> Result<(SealedSegment, memmap2::Mmap), NotStored> {
        crate::fault!("standby::fsync", e => NotStored::Local(Error::io(format!("fsync {}", path.display()), e)));
        file.sync_all()
            .map_err(|e| NotStored::Local(Error::io(format!("fsync {}", path.display()), e)))?;
        // SAFETY: the file is ours (the directory's lock is held) and nothing changes it.
        let map = unsafe { memmap2::Mmap::map(&file) }
            .map_err(|e| NotStored::Local(Error::io(format!("mmap {}", path.display()), e)))?;
        let sealed_name = name.with_kind(SegmentFileKind::Sealed);
        let seg =
            verify_incoming(&map, path, &sealed_name, &control, chain).map_err(|e| match e {
                Error::Io { .. } => NotStored::Local(e),
                other => NotStored::Invalid(other),
            })?;
        if adopting.is_some() {
            if let Some(want) = expected_prev {
                if seg.header.prev_checksum != Some(want) {
                    return Err(NotStored::Diverged(format!(
                        "the primary's segment {sealed_name} follows a segment with checksum {}, this directory's previous segment has {want:08x}: the histories diverged",
                        seg.header.prev_checksum.map_or("none".into(), |c| format!("{c:08x}"))
                    )));
                }
            }
        }
        if let Some(open) = &own_open {
            let open_path = shared.dd.segment_path(&open.name);
            let ours = crate::reader::read_segment(&open_path).map_err(NotStored::Local)?;
            let sealed_end =
                seg.end_lsn - name.segment_no.start_lsn_saturating(control.segment_size);
            if let Some(at) = prefix_mismatch(&ours, open.valid_end, &map, sealed_end) {
                return Err(NotStored::Diverged(if at as u64 >= sealed_end {
                    format!("this directory's open segment {} holds records up to offset {}, past the end of the primary's sealed copy (offset {sealed_end}): it is ahead of the primary", open.name, open.valid_end)
                } else {
                    format!("this directory's open segment {} differs from the primary's sealed copy at offset {at} (LSN {}): the histories diverged", open.name, name.segment_no.start_lsn_saturating(control.segment_size) + at as u64)
                }));
            }
        }
        if adopting.is_some() {
            // Accepted: the directory's control names the timeline before a segment of it is
            // stored under its name.
            super::new_timeline::persist_timeline(shared).map_err(NotStored::Local)?;
        }
        let target = shared.dd.segment_path(&sealed_name);
        crate::fault!("standby::rename", e => NotStored::Local(Error::io(format!("rename {} to {}", path.display(), target.display()), e)));
        std::fs::rename(path, &target).map_err(|e| {
            NotStored::Local(Error::io(
                format!("rename {} to {}", path.display(), target.display()),
                e,
            ))
        })?;
        fsync_dir(&shared.dd.wal_dir()).map_err(NotStored::Local)?;
        Ok((seg, map))
    })();
    let (seg, map) = match stored {
        Ok(s) => s,
        Err(e) => {
            // Records streamed while the segment was open that were checked one by one, synced
            // and acknowledged (`streamed`, the synced prefix): they stay (the copy is cut back to them and continued on the next
            // connection). A segment received whole is removed.
            let kept = streamed > SEGMENT_HEADER_LEN
                && file
                    .set_len(streamed as u64)
                    .and_then(|()| file.sync_all())
                    .is_ok();
            if !kept {
                let _ = std::fs::remove_file(path);
            }
            return Err(match e {
                // A local I/O failure is ours, not the primary's: report it as it is and retry.
                NotStored::Local(e) => ReplError::Store(e),
                NotStored::Invalid(Error::Corrupt {
                    offset,
                    lsn,
                    reason,
                    ..
                }) => ReplError::InvalidSegment {
                    segment: name.with_kind(SegmentFileKind::Sealed),
                    offset,
                    lsn,
                    reason,
                },
                NotStored::Invalid(e) => ReplError::InvalidSegment {
                    segment: name.with_kind(SegmentFileKind::Sealed),
                    offset: 0,
                    lsn: name.segment_no.start_lsn_saturating(control.segment_size),
                    reason: e.to_string(),
                },
                NotStored::Diverged(msg) => ReplError::refused(ErrorCode::Identity, msg),
            });
        }
    };
    if let Some(open) = own_open {
        // The primary's sealed copy holds every record of our open segment: it replaces it,
        // and only then does the directory become a standby's.
        // Whatever followed its last valid record is kept aside, never deleted.
        let open_path = shared.dd.segment_path(&open.name);
        let aside = crate::setaside::move_aside(&shared.dd, &open_path)?;
        tracing::info!(file = %open_path.display(), set_aside_as = %aside.display(), "replaced by the primary's sealed copy, which holds every record of it");
        adopt(shared, jobs)?;
    }
    {
        let mut h = lock(&shared.held);
        h.next_segment = Some(seg.name.segment_no.next().0);
        h.prev_checksum = Some(seg.seal.segment_checksum);
    }
    shared.written.fetch_max(seg.end_lsn.0, Ordering::AcqRel);
    shared.flushed.fetch_max(seg.end_lsn.0, Ordering::AcqRel);
    tracing::debug!(segment = %seg.name, flushed = %seg.end_lsn, "stored segment");
    shared.notify();
    // The applier reads the records from the bytes just checked.
    let _ = jobs.send(Job::Sealed(ApplyJob {
        segment: seg,
        checked: Some(map),
    }));
    Ok(())
}
