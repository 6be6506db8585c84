//! Applying: the applier thread takes stored segments in order, hands each record past the
//! applied position to the [`Applicator`], flushes it, and only then records the new applied
//! position durably. A failure stops the standby.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use super::directory::write_applied;
use super::{lock, Shared};
use crate::decoder::{ScanEnd, SegmentScanner};
use crate::error::Error;
use crate::format::SegmentName;
use crate::replication::applicator::Applicator;
use crate::Lsn;

/// Applies sealed segments in order, recording applied_lsn after each.
pub(super) fn applier(
    shared: Arc<Shared>,
    rx: std::sync::mpsc::Receiver<SegmentName>,
    mut app: impl Applicator,
) {
    for name in rx {
        if let Err(e) = apply_segment(&shared, &name, &mut app) {
            let e = Error::Applying {
                segment: name.to_string(),
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

fn apply_segment(
    shared: &Shared,
    name: &SegmentName,
    app: &mut impl Applicator,
) -> crate::Result<()> {
    let path = shared.dd.segment_path(name);
    let file =
        std::fs::File::open(&path).map_err(|e| Error::io(format!("open {}", path.display()), e))?;
    // SAFETY: the standby holds the directory's lock and never changes a sealed file, so the
    // mapped bytes cannot change or shrink under us.
    let map = unsafe { memmap2::Mmap::map(&file) }
        .map_err(|e| Error::io(format!("mmap {}", path.display()), e))?;
    let applied = Lsn(shared.applied.load(Ordering::Acquire));
    let start = name
        .segment_no
        .start_lsn_saturating(shared.dd.read_control()?.segment_size);
    let mut scan = SegmentScanner::new(&map).map_err(|r| Error::Corrupt {
        file: path.clone(),
        offset: 0,
        lsn: start,
        reason: r,
    })?;
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
    if end > applied {
        write_applied(&shared.dd, end)?;
        shared.applied.store(end.0, Ordering::Release);
        tracing::debug!(segment = %name, applied = %end, "applied segment");
        shared.notify();
    }
    Ok(())
}
