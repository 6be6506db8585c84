//! Recovery at open: check sealed segments are whole, find the open segment's last valid record,
//! and zero its torn tail so garbage can never reappear behind a later record.
//!
//! The checks a segment file passes are [`crate::segment_check`]'s. Here: what recovery decides
//! for each crash window (interrupted seal, torn tail, headerless or newer open segments), read
//! best beside the others; `apply.rs`: the changes a plan makes on disk, applied in order.

use std::path::{Path, PathBuf};

use crate::datadir::DataDir;
use crate::decoder::{
    is_zero_from, judge_open_tail, later_records, OpenTail, ScanEnd, SegmentScanner,
};
use crate::error::{IoContext, Result};
use crate::format::record::SEAL_LEN;
use crate::format::segment_header::SEGMENT_HEADER_LEN;
use crate::format::{ControlFile, SegmentFileKind, SegmentHeader, SegmentName, SegmentNo};
use crate::fsutil::fsync_dir;
use crate::segment_check::{
    check_identity, check_sealed, corrupt, open_length_damage, SealedSegment,
};
use crate::Lsn;

mod apply;
mod prepared;
mod recycled;

use apply::{apply, Action};
pub(crate) use prepared::prepared_damage;

/// How recovery treats invalid bytes at the end of the open segment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RecoveryMode {
    /// A torn tail (an incomplete last write) is expected after a crash: keep the valid prefix
    /// and zero the rest. Damage followed by valid records is still refused.
    #[default]
    TolerateTail,
    /// Any invalid byte is an error; nothing is repaired.
    Strict,
}

/// Where the open segment stands after recovery.
#[derive(Clone, Debug)]
pub struct OpenSegment {
    pub name: SegmentName,
    pub header: SegmentHeader,
    /// Offset of the next record.
    pub offset: usize,
    /// CRC32 of bytes `[0, offset)`.
    pub crc: u32,
    pub record_count: u64,
    /// The LSN of its last record, `None` when it holds none.
    pub last_lsn: Option<Lsn>,
}

/// What recovery found and did.
#[derive(Clone, Debug, Default)]
pub struct Recovered {
    pub sealed: Vec<SealedSegment>,
    pub open: Option<OpenSegment>,
    /// End of the last valid record (0 when the log is empty).
    pub end_lsn: Lsn,
    /// Number the next activated segment gets when there is no open one.
    pub next_segment_no: u64,
    /// Seal checksum of the newest sealed segment, for the next header's chain field.
    pub prev_checksum: Option<u32>,
    /// Records in the open segment plus those counted by seal markers.
    pub records: u64,
    /// One line per repair made.
    pub repairs: Vec<String>,
    /// A prepared file ready for `next_segment_no`.
    pub prepared: Option<std::path::PathBuf>,
}

/// Runs recovery over `dir`. It first reads everything and decides; any damage or any repair
/// that `Strict` mode forbids is refused before a single byte changes. Then it applies the
/// repairs: finishing interrupted seals, zeroing a torn tail, moving files that may hold
/// records but are not part of the log into `setaside/` (never deleting them), and removing
/// files that hold only zeros. The write-ahead directory is synced last, so every name the
/// writer relies on is durable before it acknowledges anything.
pub fn recover(dir: &DataDir, control: &ControlFile, mode: RecoveryMode) -> Result<Recovered> {
    let (mut rec, actions) = plan_settled(dir, control, mode)?;
    apply(dir, &actions, &mut rec)?;
    // A name the last writer gave (activating a prepared file) may not be durable yet; the new
    // writer acknowledges records in that file, so the name must be before it does.
    crate::fault!("recovery::dir_fsync", e => crate::Error::io(format!("fsync directory {}", dir.wal_dir().display()), e));
    fsync_dir(&dir.wal_dir())?;
    Ok(rec)
}

/// What recovery would do to `dir` in the default mode, or the damage it would refuse: the
/// same decisions, nothing changed on disk. For `verify`, so that it and `write` agree.
pub fn plan_only(dir: &DataDir, control: &ControlFile) -> Result<Vec<String>> {
    let (_, actions) = plan_settled(dir, control, RecoveryMode::TolerateTail)?;
    Ok(actions
        .iter()
        .filter_map(|a| match a {
            Action::MoveAside { path, why } => Some(format!(
                "{}: recovery would set it aside: {why}",
                path.display()
            )),
            _ => None,
        })
        .collect())
}

/// Times [`plan_settled`] reads the directory again when a file it listed is gone.
const PLAN_ATTEMPTS: usize = 5;

/// [`plan`], read again when a file listed is gone by the time it is opened: a checkpoint
/// running beside it (it takes no lock) releases old sealed segments and recycled files, and a
/// new reading no longer lists them.
fn plan_settled(
    dir: &DataDir,
    control: &ControlFile,
    mode: RecoveryMode,
) -> Result<(Recovered, Vec<Action>)> {
    let mut attempt = 1;
    loop {
        match plan(dir, control, mode) {
            Err(e) if e.is_not_found() && attempt < PLAN_ATTEMPTS => {
                tracing::debug!(error = %e, attempt, "a file recovery listed is gone; reading wal/ again");
                attempt += 1;
            }
            r => return r,
        }
    }
}

/// Reads the directory and decides what recovery finds and does, changing nothing.
fn plan(
    dir: &DataDir,
    control: &ControlFile,
    mode: RecoveryMode,
) -> Result<(Recovered, Vec<Action>)> {
    // Read before the segments: whatever a running writer published by then is in them.
    let published = crate::flush_position::published_evidence(dir);
    let mut rec = Recovered::default();
    let mut actions = Vec::new();
    let mut open_names = Vec::new();
    let mut prepared = Vec::new();
    for name in dir.list_segments()? {
        let path = dir.segment_path(&name);
        // A number whose LSN does not fit is no name a writer made: refused before anything.
        name.start_lsn(control.segment_size)
            .map_err(|_| corrupt(&path, 0, Lsn(u64::MAX), format!("segment number {:X} lies past the end of the LSN space with {}-byte segments: not a name walship makes", name.segment_no, control.segment_size)))?;
        match name.kind {
            SegmentFileKind::Prepared => prepared.push(name),
            SegmentFileKind::Partial => {}
            SegmentFileKind::Sealed => {
                let s = check_sealed(&path, &name, control)?;
                if let Some(prev) = rec.sealed.last() {
                    if name.segment_no.0 != prev.name.segment_no.next().0 {
                        // The LSN where the log breaks, as `verify` and `dump` give it.
                        return Err(corrupt(
                            &path,
                            0,
                            prev.name
                                .segment_no
                                .next()
                                .start_lsn_saturating(control.segment_size),
                            format!(
                                "segment {} is missing: {} is followed by {}",
                                SegmentName::new(
                                    name.timeline,
                                    prev.name.segment_no.next().0,
                                    SegmentFileKind::Sealed
                                ),
                                prev.name,
                                name
                            ),
                        ));
                    }
                    if s.header.prev_checksum != Some(prev.seal.segment_checksum) {
                        return Err(corrupt(&path, 0, s.header.start_lsn(), format!("chain broken: header expects previous checksum {:?}, {} has {:08x}", s.header.prev_checksum.map(|c| format!("{c:08x}")), prev.name, prev.seal.segment_checksum)));
                    }
                }
                rec.records += s.seal.record_count;
                rec.sealed.push(s);
            }
            SegmentFileKind::Open => open_names.push(name),
        }
    }
    if let Some(last) = rec.sealed.last() {
        rec.end_lsn = last.end_lsn;
        rec.next_segment_no = last.name.segment_no.next().0;
        rec.prev_checksum = Some(last.seal.segment_checksum);
    }
    // The writer seals a segment in the background while it writes the next one, and counts
    // no record of the next one durable before the sealed one's marker is. An older open segment
    // that ends with its seal marker is finished; one that does not holds the end of the log.
    for (i, name) in open_names.iter().enumerate() {
        let newer = &open_names[i + 1..];
        if plan_open(dir, control, mode, *name, newer, &mut rec, &mut actions)? {
            break;
        }
    }
    // Prepared files, decided after the open segments, which say which segment the log writes
    // next. Their changes come first, as each name they free may be the one a restart takes.
    let oldest_live = rec
        .sealed
        .first()
        .map(|x| x.name.segment_no.0)
        .or(open_names.first().map(|n| n.segment_no.0));
    let mut prep_actions =
        prepared::plan_prepared(dir, control, mode, prepared, &mut rec, oldest_live)?;
    prep_actions.append(&mut actions);
    let actions = prep_actions;
    // Wherever the log was found to end, nothing acknowledged may lie past it.
    let (path, offset, next) = match &rec.open {
        Some(o) => {
            let start = o.name.segment_no.start_lsn_saturating(control.segment_size);
            (dir.segment_path(&o.name), o.offset, start + o.offset as u64)
        }
        None => {
            let name =
                SegmentName::new(control.timeline, rec.next_segment_no, SegmentFileKind::Open);
            let start = name.segment_no.start_lsn_saturating(control.segment_size);
            (
                dir.segment_path(&name),
                0,
                start + SEGMENT_HEADER_LEN as u64,
            )
        }
    };
    if let Some(reason) = crate::flush_position::lost_acknowledged(published, rec.end_lsn, next) {
        return Err(corrupt(&path, offset, rec.end_lsn, reason));
    }
    Ok((rec, actions))
}

fn refuse_in_strict(mode: RecoveryMode, path: &Path, lsn: Lsn, what: &str) -> Result<()> {
    if mode == RecoveryMode::Strict {
        return Err(corrupt(
            path,
            0,
            lsn,
            format!(
                "{what}; strict mode repairs nothing (open in tolerate-tail mode to set it aside)"
            ),
        ));
    }
    Ok(())
}

/// Plans the recovery of one open segment; `newer` are the open segments after it. Returns
/// true when the log ends in this segment.
fn plan_open(
    dir: &DataDir,
    control: &ControlFile,
    mode: RecoveryMode,
    name: SegmentName,
    newer: &[SegmentName],
    rec: &mut Recovered,
    actions: &mut Vec<Action>,
) -> Result<bool> {
    let path = dir.segment_path(&name);
    let start = name.segment_no.start_lsn_saturating(control.segment_size);
    let seg_size = control.segment_size as usize;
    if name.segment_no.0 < rec.next_segment_no {
        return Err(corrupt(&path, 0, start, format!("open segment is not newer than the last sealed segment (expected number {:X} or later)", rec.next_segment_no)));
    }
    if !rec.sealed.is_empty() && name.segment_no.0 != rec.next_segment_no {
        return Err(corrupt(
            &path,
            0,
            SegmentNo(rec.next_segment_no).start_lsn_saturating(control.segment_size),
            format!(
                "segment {:X} is missing before the open segment",
                rec.next_segment_no
            ),
        ));
    }
    // What the disk holds, not pages a failed write-back left in the cache; read through a
    // descriptor advised as random access: a plain read of uncached pages would fill the page
    // cache with large folios, and every later msync of the writer would write whole folios back.
    let buf = crate::reader::read_segment_from_disk(&path)?;
    if buf.len() > seg_size {
        return Err(corrupt(
            &path,
            seg_size,
            start + seg_size as u64,
            format!(
                "open segment is {} bytes, longer than the segment size {seg_size}: not a file the writer made",
                buf.len()
            ),
        ));
    }
    if is_zero_from(&buf[..buf.len().min(SEGMENT_HEADER_LEN)], 0) {
        return plan_headerless(dir, control, mode, name, &buf, newer, rec, actions);
    }
    let header = SegmentHeader::decode(&buf).map_err(|r| corrupt(&path, 0, start, r))?;
    check_identity(&path, &header, &name, control)?;
    if header.prev_checksum != rec.prev_checksum && !rec.sealed.is_empty() {
        return Err(corrupt(&path, 0, start, "chain broken: the open segment's previous-checksum does not match the last sealed segment"));
    }
    let mut scan = SegmentScanner::new(&buf).map_err(|r| corrupt(&path, 0, start, r))?;
    let mut last_lsn = None;
    let mut last_end = None;
    for r in scan.by_ref() {
        last_lsn = Some(r.lsn());
        last_end = Some(r.end_lsn());
    }
    let count = scan.record_count();
    let end = scan.end().cloned().unwrap_or(ScanEnd::Unwritten {
        offset: scan.offset(),
    });
    let off = end.offset();
    let at = start + off as u64;
    if let ScanEnd::Sealed { seal, trailing, .. } = end {
        // A seal was interrupted after its marker was written: finish it.
        if mode == RecoveryMode::Strict {
            return Err(corrupt(&path, off, at, "open segment holds a seal marker (an interrupted seal); open in tolerate-tail mode to finish it"));
        }
        let len = off + SEAL_LEN;
        actions.push(Action::FinishSeal {
            path: path.clone(),
            len,
            sealed: dir.segment_path(&name.with_kind(SegmentFileKind::Sealed)),
            // Zeros, or the old records of a recycled file, need no copy.
            keep_copy: trailing > 0
                && !matches!(
                    judge_open_tail(&buf, &header, len),
                    OpenTail::Clean | OpenTail::Stale(_)
                ),
        });
        rec.repairs
            .push(format!("{name}: finished an interrupted seal"));
        rec.records += count;
        rec.end_lsn = at;
        rec.sealed.push(SealedSegment {
            name: name.with_kind(SegmentFileKind::Sealed),
            header,
            seal,
            end_lsn: at,
        });
        rec.next_segment_no = name.segment_no.next().0;
        rec.prev_checksum = Some(seal.segment_checksum);
        return Ok(false);
    }
    let why = match &end {
        ScanEnd::Invalid { error, .. } => error.to_string(),
        _ => "nothing written".into(),
    };
    // The writer cuts an open segment to its used length only once its seal marker is
    // durable: a cut segment without a valid marker lost a marker that had been synced.
    if let Some(reason) = open_length_damage(buf.len(), seg_size, &why) {
        return Err(corrupt(&path, off, at, reason));
    }
    let tail = judge_open_tail(&buf, &header, off);
    if let OpenTail::Damage(later) = &tail {
        return Err(corrupt(
            &path,
            off,
            at,
            format!("{why}, yet {later}: damage in the middle of the log, not a torn tail"),
        ));
    }
    plan_newer(dir, control, mode, &name, off, at, newer, actions)?;
    if let OpenTail::Torn {
        last_nonzero,
        later_records,
    } = tail
    {
        if mode == RecoveryMode::Strict {
            return Err(corrupt(
                &path,
                off,
                at,
                format!("torn tail: {why} (strict mode repairs nothing)"),
            ));
        }
        let after = if later_records > 0 {
            format!(
                "; {later_records} valid records after it were appended before the log was durable there (a write persisted out of order)"
            )
        } else {
            String::new()
        };
        actions.push(Action::ZeroTail {
            path: path.clone(),
            from: off,
            to: last_nonzero,
            why: format!(
                "{name}: torn tail of {} bytes at offset {off} (LSN {}): {why}{after}",
                last_nonzero + 1 - off,
                at
            ),
        });
    }
    // The records found may be only in the page cache (the last writer was killed before it
    // synced them); the writer reports them as durable from the start, so make them so.
    actions.push(Action::SyncData { path });
    if let Some(e) = last_end {
        rec.end_lsn = e;
    }
    rec.records += count;
    rec.open = Some(OpenSegment {
        name,
        header,
        offset: off,
        crc: crc32fast::hash(&buf[..off]),
        record_count: count,
        last_lsn,
    });
    rec.next_segment_no = name.segment_no.next().0;
    Ok(true)
}

/// An open segment whose header bytes are all zero: activated, but its header never reached
/// the disk. The header becomes durable with the segment's first sync, so none of its records
/// was acknowledged, unless one of them says the log was durable inside this segment (then the
/// header had been synced and is damaged). The writer starts the segment again under the same
/// number, reusing the file only when it is all zeros.
#[allow(clippy::too_many_arguments)]
fn plan_headerless(
    dir: &DataDir,
    control: &ControlFile,
    mode: RecoveryMode,
    name: SegmentName,
    buf: &[u8],
    newer: &[SegmentName],
    rec: &mut Recovered,
    actions: &mut Vec<Action>,
) -> Result<bool> {
    let path = dir.segment_path(&name);
    let start = name.segment_no.start_lsn_saturating(control.segment_size);
    let assumed = assumed_header(control, &name);
    if let Some(reason) = headerless_damage(dir, control, &name, buf) {
        return Err(corrupt(&path, 0, start, reason));
    }
    plan_newer(dir, control, mode, &name, 0, start, newer, actions)?;
    let empty = is_zero_from(buf, 0);
    // A recycled file activated before its first sync: only its earlier use's records.
    let stale_only = !empty && recycled::holds_only_stale(buf, &assumed);
    rec.next_segment_no = name.segment_no.0;
    if (empty || stale_only) && buf.len() as u64 == control.segment_size {
        let prepared = dir.segment_path(&name.with_kind(SegmentFileKind::Prepared));
        actions.push(Action::Restart {
            path,
            prepared: prepared.clone(),
        });
        rec.prepared = Some(prepared);
        rec.repairs.push(format!(
            "{name}: {} open segment (header never written) restarted",
            if empty { "empty" } else { "recycled" }
        ));
    } else if empty {
        actions.push(Action::Remove { path });
    } else {
        refuse_in_strict(
            mode,
            &path,
            start,
            "header never written, yet the segment holds data (unacknowledged records of a crash)",
        )?;
        actions.push(Action::MoveAside {
            path,
            why: "its header was never written, so none of its records was acknowledged; the segment is started again".into(),
        });
    }
    Ok(true)
}

/// Why open segment `name`, whose header is zeros (or which is too short to hold one), is
/// damage: the header had been synced with acknowledged records, as a record of it that says
/// the log was durable inside it proves, or the position the writer published (see
/// [`crate::flush_position::headerless_open_damage`]). None when nothing proves it: then none
/// of its records was acknowledged. Recovery, `verify` and `dump` judge it alike.
pub(crate) fn headerless_damage(
    dir: &DataDir,
    control: &ControlFile,
    name: &SegmentName,
    buf: &[u8],
) -> Option<String> {
    let assumed = assumed_header(control, name);
    if let Some(later) =
        later_records(buf, &assumed, SEGMENT_HEADER_LEN).find(|r| r.durable_offset > 0)
    {
        return Some(format!(
            "segment header is zeros, yet {later}: the header had been synced, so it is damage"
        ));
    }
    crate::flush_position::headerless_open_damage(
        dir,
        assumed.start_lsn(),
        buf.len(),
        control.segment_size,
    )
}

/// The header a segment of `name` would have: enough to look for records in one whose header
/// was lost (segment size and start; the version that carries durable offsets).
fn assumed_header(control: &ControlFile, name: &SegmentName) -> SegmentHeader {
    SegmentHeader {
        format_version: crate::format::SEGMENT_FORMAT_VERSION,
        timeline: name.timeline,
        segment_size: control.segment_size,
        segment_no: name.segment_no.0,
        system_id: control.system_id,
        prev_checksum: None,
        created_us: 0,
    }
}

/// The log ends in open segment `name` at offset `off` (LSN `at`) without a seal marker. The
/// open segments after it were written while it was being sealed, and the writer counts nothing
/// in a segment durable before the previous one's seal marker is; so they hold no acknowledged
/// record, unless one of their records says the log was durable inside it (then the marker had
/// been durable, and its loss is damage). They are set aside, never deleted.
#[allow(clippy::too_many_arguments)]
fn plan_newer(
    dir: &DataDir,
    control: &ControlFile,
    mode: RecoveryMode,
    name: &SegmentName,
    off: usize,
    at: Lsn,
    newer: &[SegmentName],
    actions: &mut Vec<Action>,
) -> Result<()> {
    let path = dir.segment_path(name);
    for n in newer {
        let p = dir.segment_path(n);
        let buf = crate::reader::read_segment_from_disk(&p)?;
        if is_zero_from(&buf, 0) {
            actions.push(Action::Remove { path: p });
            continue;
        }
        let header = SegmentHeader::decode(&buf)
            .ok()
            .filter(|h| h.segment_no == n.segment_no.0 && h.segment_size == control.segment_size)
            .unwrap_or_else(|| assumed_header(control, n));
        if recycled::holds_only_stale(&buf, &header) {
            // A recycled file with no record of its own: nothing of it was ever part of the log.
            actions.push(Action::Remove { path: p });
            continue;
        }
        if let Some(later) =
            later_records(&buf, &header, SEGMENT_HEADER_LEN).find(|r| r.durable_offset > 0)
        {
            return Err(corrupt(&path, off, at, format!("segment ends here without a valid seal marker, yet in the newer segment {n} {later}: the seal marker had been durable, so its loss is damage")));
        }
        if mode == RecoveryMode::Strict {
            return Err(corrupt(&path, off, at, format!("open segment does not end with a seal marker, yet the newer open segment {n} holds data; open in tolerate-tail mode to set it aside")));
        }
        actions.push(Action::MoveAside {
            path: p,
            why: format!("the log ends in {name} at LSN {} (its seal marker never became durable), so none of this segment's records was acknowledged", at),
        });
    }
    Ok(())
}
