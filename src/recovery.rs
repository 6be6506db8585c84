//! Recovery at open: check sealed segments are whole, find the open segment's last valid record,
//! and zero its torn tail so garbage can never reappear behind a later record.

use std::fs::{self, OpenOptions};
use std::os::unix::fs::FileExt;

use crate::datadir::DataDir;
use crate::decoder::{find_later_record, is_zero_from, ScanEnd, SegmentScanner};
use crate::error::{Error, IoContext, Result};
use crate::format::record::{decode_at, Decoded, SEAL_LEN};
use crate::format::segment_header::SEGMENT_HEADER_LEN;
use crate::format::{ControlFile, SealInfo, SegmentFileKind, SegmentHeader, SegmentName};
use crate::fsutil::fsync_dir;
use crate::Lsn;

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

/// A sealed segment as found at open.
#[derive(Clone, Debug)]
pub struct SealedSegment {
    pub name: SegmentName,
    pub header: SegmentHeader,
    pub seal: SealInfo,
    /// LSN where the seal marker sits: the end of the segment's last record.
    pub end_lsn: u64,
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
    pub last_lsn: u64,
}

/// What recovery found and did.
#[derive(Clone, Debug, Default)]
pub struct Recovered {
    pub sealed: Vec<SealedSegment>,
    pub open: Option<OpenSegment>,
    /// End of the last valid record (0 when the log is empty).
    pub end_lsn: u64,
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

fn corrupt(path: &std::path::Path, offset: usize, lsn: u64, reason: impl Into<String>) -> Error {
    Error::Corrupt {
        file: path.to_path_buf(),
        offset: offset as u64,
        lsn: Lsn(lsn),
        reason: reason.into(),
    }
}

/// Checks that a sealed segment file is whole: header, identity, and a valid seal marker at its
/// very end. Cheap: it reads the header and the marker, not every record (`verify` does that).
pub fn check_sealed(
    path: &std::path::Path,
    name: &SegmentName,
    control: &ControlFile,
) -> Result<SealedSegment> {
    let file = fs::File::open(path).ctx(|| format!("open {}", path.display()))?;
    let len = file
        .metadata()
        .ctx(|| format!("stat {}", path.display()))?
        .len() as usize;
    let start = name.segment_no.saturating_mul(control.segment_size);
    let mut hb = [0u8; SEGMENT_HEADER_LEN];
    if len < SEGMENT_HEADER_LEN + SEAL_LEN {
        return Err(corrupt(
            path,
            len,
            start + len as u64,
            format!("sealed segment is only {len} bytes: too short for a header and a seal marker"),
        ));
    }
    file.read_exact_at(&mut hb, 0)
        .ctx(|| format!("read {}", path.display()))?;
    let header = SegmentHeader::decode(&hb).map_err(|r| corrupt(path, 0, start, r))?;
    check_identity(path, &header, name, control)?;
    let seal_off = len - SEAL_LEN;
    let mut sb = vec![0u8; SEAL_LEN];
    file.read_exact_at(&mut sb, seal_off as u64)
        .ctx(|| format!("read {}", path.display()))?;
    // decode_at works on a buffer; place the marker at its real offset's alignment.
    let seal_lsn = start + seal_off as u64;
    let seal = match decode_at(&sb, 0, seal_lsn, control.segment_size as usize) {
        Ok(Decoded::Seal(s)) => s,
        Ok(Decoded::Record(_)) => return Err(corrupt(
            path,
            seal_off,
            seal_lsn,
            "sealed segment does not end with a seal marker (last bytes are a record: truncated?)",
        )),
        Err(e) => {
            return Err(corrupt(
                path,
                seal_off,
                seal_lsn,
                format!("sealed segment does not end with a valid seal marker: {e}"),
            ))
        }
    };
    Ok(SealedSegment {
        name: *name,
        header,
        seal,
        end_lsn: seal_lsn,
    })
}

/// A segment belongs here when its header matches the directory's identity and its name.
pub fn check_identity(
    path: &std::path::Path,
    header: &SegmentHeader,
    name: &SegmentName,
    control: &ControlFile,
) -> Result<()> {
    let start = header.start_lsn();
    if header.system_id != control.system_id {
        return Err(corrupt(
            path,
            0,
            start,
            format!(
                "segment belongs to system {}, this directory is system {}",
                header.system_id, control.system_id
            ),
        ));
    }
    if header.segment_size != control.segment_size {
        return Err(corrupt(
            path,
            0,
            start,
            format!(
                "segment size {} differs from the directory's {}",
                header.segment_size, control.segment_size
            ),
        ));
    }
    if header.segment_no != name.segment_no || header.timeline != name.timeline {
        return Err(corrupt(
            path,
            0,
            start,
            format!(
                "header says timeline {} segment {:X}, the file name says timeline {} segment {:X}",
                header.timeline, header.segment_no, name.timeline, name.segment_no
            ),
        ));
    }
    Ok(())
}

/// Runs recovery over `dir`. Repairs (zeroing a torn tail, finishing an interrupted seal,
/// removing prepared files) are made only in `TolerateTail` mode, except removing prepared
/// files, which hold no records.
pub fn recover(dir: &DataDir, control: &ControlFile, mode: RecoveryMode) -> Result<Recovered> {
    let mut rec = Recovered::default();
    let mut open_names = Vec::new();
    let mut prepared = Vec::new();
    for name in dir.list_segments()? {
        let path = dir.segment_path(&name);
        match name.kind {
            SegmentFileKind::Prepared => prepared.push(name),
            SegmentFileKind::Partial => {}
            SegmentFileKind::Sealed => {
                let s = check_sealed(&path, &name, control)?;
                if let Some(prev) = rec.sealed.last() {
                    if name.segment_no != prev.name.segment_no + 1 {
                        return Err(corrupt(
                            &path,
                            0,
                            s.header.start_lsn(),
                            format!(
                                "segment {} is missing: {} is followed by {}",
                                SegmentName::new(
                                    name.timeline,
                                    prev.name.segment_no + 1,
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
        rec.next_segment_no = last.name.segment_no + 1;
        rec.prev_checksum = Some(last.seal.segment_checksum);
    }
    // A prepared file holds no acknowledged record, but it may hold unacknowledged ones: a
    // segment activated just before a crash whose new name never became durable. Never reuse
    // one: stale records at the very LSNs a new segment would use could pass for new ones.
    for name in prepared {
        let path = dir.segment_path(&name);
        fs::remove_file(&path).ctx(|| format!("remove {}", path.display()))?;
    }
    // The writer seals a segment in the background while it writes the next one, and counts
    // no record of the next one durable before the sealed one's marker is. An older open segment
    // that ends with its seal marker is finished; one that does not holds the end of the log,
    // and the newer open segments hold no acknowledged record.
    for (i, name) in open_names.iter().enumerate() {
        if recover_open(dir, control, mode, *name, &open_names[i + 1..], &mut rec)? {
            break;
        }
    }
    Ok(rec)
}

/// Recovers one open segment; `newer` are the open segments after it. Returns true when the
/// log ends in this segment (the newer ones, if any, were removed).
fn recover_open(
    dir: &DataDir,
    control: &ControlFile,
    mode: RecoveryMode,
    name: SegmentName,
    newer: &[SegmentName],
    rec: &mut Recovered,
) -> Result<bool> {
    let path = dir.segment_path(&name);
    let start = name.segment_no.saturating_mul(control.segment_size);
    if name.segment_no < rec.next_segment_no {
        return Err(corrupt(&path, 0, start, format!("open segment is not newer than the last sealed segment (expected number {:X} or later)", rec.next_segment_no)));
    }
    if !rec.sealed.is_empty() && name.segment_no != rec.next_segment_no {
        return Err(corrupt(
            &path,
            0,
            start,
            format!(
                "segment {:X} is missing before the open segment",
                rec.next_segment_no
            ),
        ));
    }
    // What the disk holds, not pages a failed write-back left in the cache; read through a
    // descriptor advised as random access: a plain read of uncached pages would fill the page
    // cache with large folios, and every later msync of the writer would write whole folios back.
    let mut buf = crate::reader::read_segment_from_disk(&path)?;
    if is_zero_from(&buf[..buf.len().min(SEGMENT_HEADER_LEN)], 0) {
        // Activated but its header never reached the disk. The header becomes durable with the
        // segment's first sync, so none of its records was acknowledged: the writer starts the
        // segment again under the same number, reusing the file only when it is all zeros.
        remove_newer(dir, mode, &name, start, newer, rec)?;
        let empty = is_zero_from(&buf, 0);
        if !empty && mode == RecoveryMode::Strict {
            return Err(corrupt(&path, 0, start, "header never written, yet the segment holds data (unacknowledged records of a crash); open in tolerate-tail mode to discard them"));
        }
        rec.next_segment_no = name.segment_no;
        let prepared = dir.segment_path(&name.with_kind(SegmentFileKind::Prepared));
        if empty && buf.len() as u64 == control.segment_size {
            fs::rename(&path, &prepared).ctx(|| format!("rename {}", path.display()))?;
            rec.prepared = Some(prepared);
        } else {
            fs::remove_file(&path).ctx(|| format!("remove {}", path.display()))?;
        }
        fsync_dir(&dir.wal_dir())?;
        rec.repairs.push(if empty {
            format!("{name}: empty open segment (header never written) restarted")
        } else {
            format!("{name}: header never written; its unacknowledged records were discarded and the segment restarted")
        });
        return Ok(true);
    }
    let header = SegmentHeader::decode(&buf).map_err(|r| corrupt(&path, 0, start, r))?;
    check_identity(&path, &header, &name, control)?;
    if header.prev_checksum != rec.prev_checksum && !rec.sealed.is_empty() {
        return Err(corrupt(&path, 0, start, "chain broken: the open segment's previous-checksum does not match the last sealed segment"));
    }
    let mut scan = SegmentScanner::new(&buf).map_err(|r| corrupt(&path, 0, start, r))?;
    let mut last_lsn = 0;
    let mut last_end = None;
    for r in scan.by_ref() {
        last_lsn = r.lsn();
        last_end = Some(r.end_lsn());
    }
    let count = scan.record_count();
    let end = scan.end().cloned().unwrap_or(ScanEnd::Unwritten {
        offset: scan.offset(),
    });
    let off = end.offset();
    if let Some(e) = last_end {
        rec.end_lsn = e;
    }
    rec.records += count;
    match end {
        ScanEnd::Sealed { seal, .. } => {
            // A seal was interrupted after its marker was written: finish it.
            if mode == RecoveryMode::Strict {
                return Err(corrupt(&path, off, start + off as u64, "open segment holds a seal marker (an interrupted seal); open in tolerate-tail mode to finish it"));
            }
            let f = OpenOptions::new()
                .write(true)
                .open(&path)
                .ctx(|| format!("open {}", path.display()))?;
            f.set_len((off + SEAL_LEN) as u64)
                .ctx(|| format!("truncate {}", path.display()))?;
            f.sync_all().ctx(|| format!("fsync {}", path.display()))?;
            let sealed = dir.segment_path(&name.with_kind(SegmentFileKind::Sealed));
            fs::rename(&path, &sealed)
                .ctx(|| format!("rename {} to {}", path.display(), sealed.display()))?;
            fsync_dir(&dir.wal_dir())?;
            rec.repairs
                .push(format!("{name}: finished an interrupted seal"));
            rec.end_lsn = start + off as u64;
            rec.sealed.push(SealedSegment {
                name: name.with_kind(SegmentFileKind::Sealed),
                header,
                seal,
                end_lsn: start + off as u64,
            });
            rec.next_segment_no = name.segment_no + 1;
            rec.prev_checksum = Some(seal.segment_checksum);
            return Ok(false);
        }
        ScanEnd::Unwritten { .. } | ScanEnd::Invalid { .. } => {
            if let Some((later, lsn)) = find_later_record(&buf, &header, off + 8) {
                let why = match &end {
                    ScanEnd::Invalid { error, .. } => error.to_string(),
                    _ => "unwritten bytes".into(),
                };
                return Err(corrupt(&path, off, start + off as u64, format!("{why}, yet a valid record follows at offset {later} (LSN {}): damage in the middle of the log, not a torn tail", Lsn(lsn))));
            }
            remove_newer(dir, mode, &name, start, newer, rec)?;
            if !is_zero_from(&buf, off) {
                let reason = match &end {
                    ScanEnd::Invalid { error, .. } => error.to_string(),
                    _ => "non-zero bytes after the last record".into(),
                };
                if mode == RecoveryMode::Strict {
                    return Err(corrupt(
                        &path,
                        off,
                        start + off as u64,
                        format!("torn tail: {reason} (strict mode repairs nothing)"),
                    ));
                }
                let last_nz = buf.iter().rposition(|&b| b != 0).unwrap_or(off);
                let f = OpenOptions::new()
                    .write(true)
                    .open(&path)
                    .ctx(|| format!("open {}", path.display()))?;
                buf[off..=last_nz].fill(0);
                f.write_all_at(&buf[off..=last_nz], off as u64)
                    .ctx(|| format!("zero torn tail of {}", path.display()))?;
                f.sync_data().ctx(|| format!("fsync {}", path.display()))?;
                rec.repairs.push(format!(
                    "{name}: zeroed torn tail of {} bytes at offset {off} (LSN {}): {reason}",
                    last_nz + 1 - off,
                    Lsn(start + off as u64)
                ));
            }
        }
    }
    // The records found may be only in the page cache (the last writer was killed before it
    // synced them); the writer reports them as durable from the start, so make them so.
    fs::File::open(&path)
        .and_then(|f| f.sync_data())
        .ctx(|| format!("fsync {}", path.display()))?;
    let crc = crc32fast::hash(&buf[..off]);
    rec.open = Some(OpenSegment {
        name,
        header,
        offset: off,
        crc,
        record_count: count,
        last_lsn,
    });
    rec.next_segment_no = name.segment_no + 1;
    Ok(true)
}

/// The log ends in open segment `name`, which has no seal marker: the open segments after it
/// were written while it was being sealed, and none of their records was acknowledged (the
/// writer counts nothing in a segment durable before the previous one's seal marker is).
fn remove_newer(
    dir: &DataDir,
    mode: RecoveryMode,
    name: &SegmentName,
    start: u64,
    newer: &[SegmentName],
    rec: &mut Recovered,
) -> Result<()> {
    if newer.is_empty() {
        return Ok(());
    }
    let list: Vec<String> = newer.iter().map(|n| n.to_string()).collect();
    if mode == RecoveryMode::Strict {
        return Err(corrupt(&dir.segment_path(name), 0, start, format!("open segment does not end with a seal marker, yet newer open segments follow ({}); open in tolerate-tail mode to cut the log here", list.join(", "))));
    }
    for n in newer {
        let p = dir.segment_path(n);
        fs::remove_file(&p).ctx(|| format!("remove {}", p.display()))?;
    }
    fsync_dir(&dir.wal_dir())?;
    rec.repairs.push(format!(
        "{name}: seal never became durable; removed the newer open segments {}",
        list.join(", ")
    ));
    Ok(())
}
