//! Adoption: a data directory of the primary's system (restored from the archive, or a former
//! primary) becoming a standby. It is examined without changing anything when the standby
//! opens; it becomes a standby's only once the primary accepted its identity and history, and,
//! when it ends in an open segment, once the primary's sealed copy of that segment proved to
//! hold every record of it (the store checks that, with [`prefix_mismatch`]).

use super::apply::Jobs;
use super::directory::{not_standby_dir, write_meta, StandbyMeta};
use super::{lock, Held, Shared};
use crate::datadir::DataDir;
use crate::decoder::SegmentScanner;
use crate::error::Error;
use crate::format::segment_header::SEGMENT_HEADER_LEN;
use crate::format::{ControlFile, SegmentFileKind, SegmentName};
use crate::fsutil::fsync_dir;
use crate::replication::ReplError;
use crate::segment_check::{check_sealed, SealedSegment};
use crate::Lsn;

/// A data directory of the primary's system (restored from the archive, or a former primary)
/// that becomes a standby once the primary accepts it.
#[derive(Clone, Debug)]
pub(super) struct Adopting {
    /// Its open segment, if any: the records up to `valid_end` must be a prefix of the
    /// primary's sealed segment of the same number; that sealed copy then replaces it.
    pub(super) open: Option<OpenPrefix>,
}

#[derive(Clone, Debug)]
pub(super) struct OpenPrefix {
    pub(super) name: SegmentName,
    /// End of its last valid record (offset in the file).
    pub(super) valid_end: usize,
}

/// Looks at a data directory that has a control file and is not a standby's yet, without
/// changing anything: its sealed segments must be whole and chained, and it may end in one open
/// segment, of which the records up to the first invalid byte count (as recovery would keep
/// them). Returns what it holds as a standby would, its end, the sealed segments to apply, and
/// its open segment.
#[allow(clippy::type_complexity)]
pub(super) fn examine_for_adoption(
    dd: &DataDir,
    control: &ControlFile,
) -> Result<(Held, Lsn, Vec<SealedSegment>, Option<OpenPrefix>), ReplError> {
    let names = dd.list_segments()?;
    let mut sealed: Vec<crate::segment_check::SealedSegment> = Vec::new();
    let mut opens = Vec::new();
    for name in names {
        match name.kind {
            SegmentFileKind::Sealed => {
                let seg = check_sealed(&dd.segment_path(&name), &name, control)?;
                if let Some(prev) = sealed.last() {
                    if seg.name.segment_no.0 != prev.name.segment_no.next().0
                        || seg.header.prev_checksum != Some(prev.seal.segment_checksum)
                    {
                        return Err(not_standby_dir(
                            dd,
                            format!(
                                "its sealed segments do not form one chain ({} after {}): it cannot follow a primary",
                                seg.name, prev.name
                            ),
                        ));
                    }
                }
                sealed.push(seg);
            }
            SegmentFileKind::Open => opens.push(name),
            _ => {}
        }
    }
    if opens.len() > 1 {
        return Err(not_standby_dir(
            dd,
            format!(
                "it holds {} open segments: open it for writing once (recovery decides which records count), then try again",
                opens.len()
            ),
        ));
    }
    let last = sealed.last();
    let mut held = Held {
        control: Some(*control),
        next_segment: last.map(|s| s.name.segment_no.next().0),
        prev_checksum: last.map(|s| s.seal.segment_checksum),
    };
    let mut open = None;
    if let Some(name) = opens.first().copied() {
        let path = dd.segment_path(&name);
        let bytes = crate::reader::read_segment(&path)?;
        let mut scan = SegmentScanner::new(&bytes).map_err(|r| Error::Corrupt {
            file: path.clone(),
            offset: 0,
            lsn: name.segment_no.start_lsn_saturating(control.segment_size),
            reason: r,
        })?;
        crate::segment_check::check_identity(&path, scan.header(), &name, control)?;
        let header_prev = scan.header().prev_checksum;
        for _ in scan.by_ref() {}
        let valid_end = scan.end().map_or(scan.offset(), |e| e.offset());
        match last {
            // Left by an adoption cut short after the primary's copy was stored: that copy
            // supersedes it when these records are a prefix of it.
            Some(l) if l.name.segment_no == name.segment_no => {
                let sealed_bytes = crate::reader::read_segment(&dd.segment_path(&l.name))?;
                if let Some(at) = prefix_mismatch(
                    &bytes,
                    valid_end,
                    &sealed_bytes,
                    l.end_lsn - name.segment_no.start_lsn_saturating(control.segment_size),
                ) {
                    return Err(not_standby_dir(dd, format!("its open segment {name} and its sealed segment {} differ at offset {at}", l.name)));
                }
            }
            Some(l) if l.name.segment_no.next().0 != name.segment_no.0 => {
                return Err(not_standby_dir(
                    dd,
                    format!(
                        "its open segment {name} does not follow its newest sealed segment {}",
                        l.name
                    ),
                ))
            }
            _ => {
                if let (Some(l), Some(h)) = (last, header_prev) {
                    if h != l.seal.segment_checksum {
                        return Err(not_standby_dir(
                            dd,
                            format!("its open segment {name} does not chain to {}", l.name),
                        ));
                    }
                }
                held.next_segment = Some(name.segment_no.0);
                if held.prev_checksum.is_none() {
                    held.prev_checksum = header_prev;
                }
                open = Some(OpenPrefix { name, valid_end });
            }
        }
    }
    let flushed = last.map_or(Lsn::ZERO, |s| s.end_lsn);
    Ok((held, flushed, sealed, open))
}

/// Where the records of an open segment (up to `valid_end`) stop matching a sealed segment of
/// the same number whose records end at `sealed_end`; None when they are a prefix of it.
pub(super) fn prefix_mismatch(
    open: &[u8],
    valid_end: usize,
    sealed: &[u8],
    sealed_end: u64,
) -> Option<usize> {
    let start = SEGMENT_HEADER_LEN;
    if valid_end <= start {
        return None;
    }
    if (valid_end as u64) > sealed_end || sealed.len() < valid_end || open.len() < valid_end {
        // The sealed copy ends before these records do.
        return Some((sealed_end as usize).max(start));
    }
    (start..valid_end).find(|&i| open[i] != sealed[i])
}

/// Makes a directory of the primary's system a standby's: records its id and primary.
pub(super) fn adopt(shared: &Shared, jobs: &Jobs) -> Result<(), ReplError> {
    // A standby holds sealed segments only. What goes: files prepared ahead by a former
    // writer (they hold no records), transfers an earlier attempt left, and an open segment that a sealed copy of the same number
    // already supersedes (checked to be its prefix when the directory was examined).
    let names = shared.dd.list_segments()?;
    let newest_sealed = names
        .iter()
        .filter(|n| n.kind == SegmentFileKind::Sealed)
        .map(|n| n.segment_no)
        .max();
    let mut removed = false;
    for n in &names {
        let stale = matches!(n.kind, SegmentFileKind::Prepared | SegmentFileKind::Partial)
            || (n.kind == SegmentFileKind::Open
                && newest_sealed.is_some_and(|s| n.segment_no <= s));
        if stale {
            let path = shared.dd.segment_path(n);
            if n.kind == SegmentFileKind::Open {
                // An open segment may hold bytes past what the sealed copy proves: keep them.
                let aside = crate::setaside::move_aside(&shared.dd, &path)?;
                tracing::info!(file = %path.display(), set_aside_as = %aside.display(), "set aside: a standby holds sealed segments only");
            } else {
                std::fs::remove_file(&path)
                    .map_err(|e| ReplError::io(format!("remove {}", path.display()), e))?;
                tracing::info!(file = %path.display(), "removed: a standby holds sealed segments only");
            }
            removed = true;
        }
    }
    if removed {
        fsync_dir(&shared.dd.wal_dir())?;
    }
    // Before the directory is recorded as a standby's, so that a crash between is finished by
    // the next start's adoption: the timeline it entered, and its former standbys' slots.
    super::new_timeline::persist_timeline(shared)?;
    let retired =
        crate::consumers::ConsumerRegistry::new(&shared.dd).set_aside_standbys(&shared.dd)?;
    if !retired.is_empty() {
        tracing::info!(slots = ?retired, "set aside the former primary's standby slots: its standbys follow another primary now");
    }
    let meta = StandbyMeta {
        standby_id: shared.id,
        primary: shared.config.primary.clone(),
        created_us: crate::now_us(),
        name: Some(shared.name.clone()),
    };
    crate::fault!("standby::adopt", e => ReplError::io("record the directory as a standby's", e));
    write_meta(&shared.dd, &meta)?;
    let adopting = super::directory::adopting_path(&shared.dd);
    if adopting.exists() {
        std::fs::remove_file(&adopting)
            .map_err(|e| ReplError::io(format!("remove {}", adopting.display()), e))?;
        fsync_dir(&shared.dd.state_dir())?;
    }
    *lock(&shared.meta) = Some(meta);
    *lock(&shared.adopting) = None;
    for job in std::mem::take(&mut *lock(&shared.deferred)) {
        let _ = jobs.send(job.into());
    }
    tracing::info!(primary = %shared.config.primary, standby_id = %shared.id, "this directory is now a standby: its history matches the primary's");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(fill: u8, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; SEGMENT_HEADER_LEN];
        v.resize(SEGMENT_HEADER_LEN + len, fill);
        v
    }

    #[test]
    fn an_open_segment_is_a_prefix_of_the_sealed_copy_or_where_it_differs() {
        let h = SEGMENT_HEADER_LEN;
        let sealed = bytes(7, 100);
        // No records at all: a prefix of anything.
        assert_eq!(prefix_mismatch(&bytes(9, 0), h, &sealed, 0), None);
        // The same records, fewer of them.
        assert_eq!(
            prefix_mismatch(&bytes(7, 40), h + 40, &sealed, (h + 90) as u64),
            None
        );
        // Bytes past the valid end do not count.
        let mut open = bytes(7, 60);
        open[h + 50] = 1;
        assert_eq!(
            prefix_mismatch(&open, h + 50, &sealed, (h + 90) as u64),
            None
        );
        // A different byte among the records.
        assert_eq!(
            prefix_mismatch(&open, h + 60, &sealed, (h + 90) as u64),
            Some(h + 50)
        );
        // Records past the end of the sealed copy's records: it ends first.
        assert_eq!(
            prefix_mismatch(&bytes(7, 60), h + 60, &sealed, (h + 30) as u64),
            Some(h + 30)
        );
    }
}
