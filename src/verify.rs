//! Checking stored WAL end to end: headers, every record (its LSN and its bytes: by its own CRC,
//! or in a sealed segment by the seal's checksum over the whole segment), seal markers, the
//! chain between segments, and gaps. Unlike recovery it repairs nothing
//! and goes on after a problem, so one run lists every problem it can find.

use std::path::{Path, PathBuf};

use serde::Serialize;
use uuid::Uuid;

use crate::datadir::{list_segments_in, DataDir};
use crate::decoder::{
    is_zero_from, judge_open_tail, later_records, OpenTail, ReadChecksum, ScanEnd, SegmentScanner,
};
use crate::error::Result;
use crate::format::segment_header::SEGMENT_HEADER_LEN;
use crate::format::{ControlFile, SegmentFileKind, SegmentName};
use crate::reader::{read_segment_hashed, WalSource};
use crate::Lsn;

/// One problem found, located.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct VerifyIssue {
    pub segment: String,
    pub offset: u64,
    pub lsn: u64,
    pub reason: String,
}

/// The outcome of a verify run.
#[derive(Clone, Debug, Serialize, Default)]
pub struct VerifyReport {
    pub ok: bool,
    pub segments: u64,
    pub records: u64,
    pub bytes: u64,
    pub first_lsn: Option<u64>,
    pub end_lsn: u64,
    pub errors: Vec<VerifyIssue>,
    /// Findings that are not damage (a torn tail in the open segment, which recovery repairs).
    pub notes: Vec<String>,
}

/// What every segment in a set must agree on.
#[derive(Clone, Copy, Debug)]
pub struct Identity {
    pub system_id: Uuid,
    pub segment_size: u64,
}

impl From<&ControlFile> for Identity {
    fn from(c: &ControlFile) -> Self {
        Identity {
            system_id: c.system_id,
            segment_size: c.segment_size,
        }
    }
}

/// Verifies a data directory, a folder of segments, one segment file, or an archive.
pub fn verify_path(path: &Path) -> Result<VerifyReport> {
    if crate::archive::is_archive(path) {
        return crate::archive::verify_archive(path);
    }
    let mut report = VerifyReport::default();
    let mut identity = None;
    let mut data_dir_root = None;
    let files: Vec<(SegmentName, PathBuf)> = match WalSource::resolve(path)? {
        WalSource::File(p) => {
            let name = p
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(crate::setaside::segment_name_of);
            match name {
                Some(n) => vec![(n, p)],
                None => {
                    return Err(crate::Error::InvalidArgument(format!(
                    "{}: not a segment file name (expected 24 hex digits and .wal or .wal.open)",
                    p.display()
                )))
                }
            }
        }
        WalSource::Dir(d) => {
            let root = d.parent().map(Path::to_path_buf).unwrap_or_default();
            let dd = DataDir::new(&root);
            if d.file_name().is_some_and(|n| n == "wal") && dd.is_initialized() {
                data_dir_root = Some(root.clone());
                match dd.read_control() {
                    Ok(c) => identity = Some(Identity::from(&c)),
                    Err(e) => report.errors.push(VerifyIssue {
                        segment: "control".into(),
                        offset: 0,
                        lsn: 0,
                        reason: e.to_string(),
                    }),
                }
            }
            list_segments_in(&d)?
                .into_iter()
                .filter(|n| matches!(n.kind, SegmentFileKind::Sealed | SegmentFileKind::Open))
                .map(|n| (n, d.join(n.to_string())))
                .collect()
        }
    };
    verify_segments(&files, identity, &mut report, |p, b| {
        read_segment_hashed(p, b).map(Some)
    })?;
    if let Some(root) = data_dir_root {
        check_opens(&root, &mut report);
    }
    report.ok = report.errors.is_empty();
    Ok(report)
}

/// Verify and `write` must agree: a data directory that verify finds clean is one recovery
/// opens. Recovery's plan is read-only; damage it refuses is reported here too (once: only
/// when the segment checks found nothing, which would otherwise say the same).
fn check_opens(root: &Path, report: &mut VerifyReport) {
    let dd = DataDir::new(root);
    let Ok(control) = dd.read_control() else {
        return;
    };
    match crate::recovery::plan_only(&dd, &control) {
        Ok(repairs) => report.notes.extend(repairs),
        Err(crate::Error::Corrupt {
            file,
            offset,
            lsn,
            reason,
        }) if report.errors.is_empty() => report.errors.push(VerifyIssue {
            segment: file
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            offset,
            lsn: lsn.0,
            reason: format!("{reason} (walship write refuses to open this directory)"),
        }),
        Err(_) => {}
    }
}

/// Verifies segments given in order, reading each with `read` into one buffer reused from
/// segment to segment (`read` may hash the bytes as it reads them). Shared by the
/// data-directory check and the archive check, which reads through its store.
pub fn verify_segments(
    files: &[(SegmentName, PathBuf)],
    mut identity: Option<Identity>,
    report: &mut VerifyReport,
    mut read: impl FnMut(&Path, &mut Vec<u8>) -> Result<Option<ReadChecksum>>,
) -> Result<()> {
    let mut bytes = Vec::new();
    let mut prev: Option<(SegmentName, Option<u32>)> = None;
    for (i, (name, path)) in files.iter().enumerate() {
        report.segments += 1;
        let issue = |offset: usize, lsn: u64, reason: String| VerifyIssue {
            segment: name.to_string(),
            offset: offset as u64,
            lsn,
            reason,
        };
        if let Some((p, _)) = &prev {
            if name.segment_no == p.segment_no {
                report.errors.push(issue(
                    0,
                    0,
                    format!(
                        "segment {:X} appears twice ({p} and {name})",
                        name.segment_no
                    ),
                ));
            } else if name.segment_no != p.segment_no + 1 {
                let missing =
                    SegmentName::new(name.timeline, p.segment_no + 1, SegmentFileKind::Sealed);
                report.errors.push(issue(
                    0,
                    0,
                    format!("segment {missing} is missing between {p} and {name}"),
                ));
            }
        }
        // The writer seals a segment in the background while it writes the next one.
        let followed = i + 1 != files.len();
        let read_sum = match read(path, &mut bytes) {
            Ok(sum) => sum,
            Err(e) => {
                report.errors.push(issue(0, 0, e.to_string()));
                prev = Some((*name, None));
                continue;
            }
        };
        report.bytes += bytes.len() as u64;
        if name.kind == SegmentFileKind::Open {
            if let Some(id) = identity {
                let size = id.segment_size as usize;
                let start = name.segment_no.saturating_mul(id.segment_size);
                if bytes.len() > size {
                    report.errors.push(issue(size, start + size as u64, format!("open segment is {} bytes, longer than the segment size {size}: not a file the writer made", bytes.len())));
                    prev = Some((*name, None));
                    continue;
                }
            }
        }
        if name.kind == SegmentFileKind::Open
            && is_zero_from(&bytes[..bytes.len().min(SEGMENT_HEADER_LEN)], 0)
        {
            let proof = identity.and_then(|id| {
                let assumed = crate::format::SegmentHeader {
                    format_version: crate::format::SEGMENT_FORMAT_VERSION,
                    timeline: name.timeline,
                    segment_size: id.segment_size,
                    segment_no: name.segment_no,
                    system_id: id.system_id,
                    prev_checksum: None,
                    created_us: 0,
                };
                later_records(&bytes, &assumed, SEGMENT_HEADER_LEN)
                    .find(|r| r.durable_offset > 0)
                    .map(|r| (r, assumed.start_lsn()))
            });
            match proof {
                Some((later, start)) => report.errors.push(issue(0, start, format!("segment header is zeros, yet {later}: the header had been synced, so it is damage"))),
                None => report.notes.push(format!(
                    "{name}: created but its header was never written (no acknowledged records; recovery starts it again and sets aside any bytes it holds)"
                )),
            }
            prev = Some((*name, None));
            continue;
        }
        let scan = match read_sum {
            Some(sum) => SegmentScanner::with_read_checksum(&bytes, sum),
            None => SegmentScanner::new(&bytes),
        };
        let mut scan = match scan {
            Ok(s) => s,
            Err(reason) => {
                report.errors.push(issue(0, 0, reason));
                prev = Some((*name, None));
                continue;
            }
        };
        let header = *scan.header();
        let start = header.start_lsn();
        let id = *identity.get_or_insert(Identity {
            system_id: header.system_id,
            segment_size: header.segment_size,
        });
        if header.system_id != id.system_id {
            report.errors.push(issue(
                0,
                start,
                format!(
                    "segment belongs to system {}, expected {}",
                    header.system_id, id.system_id
                ),
            ));
        }
        if header.segment_size != id.segment_size {
            report.errors.push(issue(
                0,
                start,
                format!(
                    "segment size {} differs from {}",
                    header.segment_size, id.segment_size
                ),
            ));
        }
        if header.segment_no != name.segment_no || header.timeline != name.timeline {
            report.errors.push(issue(
                0,
                start,
                format!(
                    "header says timeline {} segment {:X}; the file name disagrees",
                    header.timeline, header.segment_no
                ),
            ));
        }
        if let Some((p, Some(prev_sum))) = &prev {
            if p.segment_no + 1 == name.segment_no && header.prev_checksum != Some(*prev_sum) {
                report.errors.push(issue(
                    0,
                    start,
                    format!(
                        "chain broken: header expects previous checksum {}, {p} has {prev_sum:08x}",
                        header
                            .prev_checksum
                            .map(|c| format!("{c:08x}"))
                            .unwrap_or_else(|| "none".into())
                    ),
                ));
            }
        }
        for r in scan.by_ref() {
            report.first_lsn.get_or_insert(r.lsn());
            report.end_lsn = r.end_lsn();
        }
        report.records += scan.record_count();
        let end = scan.end().cloned().unwrap_or(ScanEnd::Unwritten {
            offset: scan.offset(),
        });
        let off = end.offset();
        let at = start + off as u64;
        let mut seal_sum = None;
        match (&end, name.kind) {
            (ScanEnd::Sealed { seal, trailing, .. }, SegmentFileKind::Sealed) => {
                seal_sum = Some(seal.segment_checksum);
                if *trailing != 0 {
                    report.errors.push(issue(
                        off,
                        at,
                        format!("{trailing} bytes follow the seal marker"),
                    ));
                }
            }
            (ScanEnd::Sealed { seal, .. }, _) => {
                seal_sum = Some(seal.segment_checksum);
                report.notes.push(format!("{name}: holds a seal marker at offset {off} but is still named open (an interrupted seal; recovery finishes it)"));
            }
            (ScanEnd::Invalid { error, .. }, SegmentFileKind::Sealed) => {
                report.errors.push(issue(off, at, error.to_string()));
            }
            (ScanEnd::Unwritten { .. }, SegmentFileKind::Sealed) => {
                report.errors.push(issue(
                    off,
                    at,
                    "sealed segment ends without a seal marker (truncated?)".into(),
                ));
            }
            (_, _) => {
                let why = match &end {
                    ScanEnd::Invalid { error, .. } => error.to_string(),
                    _ => "nothing written".into(),
                };
                let size = header.segment_size as usize;
                if bytes.len() != size {
                    report.errors.push(issue(off, at, format!("open segment is cut to {} bytes (the writer cuts a segment only after its seal marker is durable), yet it does not end with a valid seal marker: {why}", bytes.len())));
                } else {
                    match judge_open_tail(&bytes, &header, off) {
                        OpenTail::Damage(later) => report.errors.push(issue(
                            off,
                            at,
                            format!("{why}, yet {later}: damage in the middle of the log"),
                        )),
                        OpenTail::Torn { later_records, .. } => report.notes.push(format!(
                            "{name}: torn tail at offset {off} (LSN {}): {why}{}; repairable: recovery keeps a copy in setaside/ and zeroes it",
                            Lsn(at),
                            if later_records > 0 { format!(" ({later_records} valid records after it were never durable: a write persisted out of order)") } else { String::new() }
                        )),
                        OpenTail::Clean => {}
                    }
                    if followed {
                        report.notes.push(format!("{name}: ends at offset {off} (LSN {}) without a seal marker, yet newer open segments follow (a crash while sealing; recovery cuts the log here and sets the newer ones aside)", Lsn(at)));
                    }
                }
            }
        }
        prev = Some((*name, seal_sum));
    }
    Ok(())
}
