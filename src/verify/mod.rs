//! Checking stored WAL end to end: headers, every record (its LSN and its bytes: by its own CRC,
//! or in a sealed segment by the seal's checksum over the whole segment), seal markers, the
//! chain between segments, and gaps. Unlike recovery it repairs nothing
//! and goes on after a problem, so one run lists every problem it can find.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::datadir::{list_segments_and_refused, DataDir};
use crate::decoder::{
    is_zero_from, judge_open_tail, later_records, OpenTail, ReadChecksum, ScanEnd, SegmentScanner,
};
use crate::error::{Error, IoContext, Result};
use crate::format::segment_header::SEGMENT_HEADER_LEN;
use crate::format::{SegmentFileKind, SegmentName};
use crate::reader::{claimed_segment_size, read_segment_hashed, segment_start, WalSource};
use crate::segment_check::sealed_end;
use crate::Lsn;
use read_ahead::{ReadAhead, ReadBuf, ReadResult};

/// One problem found, located.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct VerifyIssue {
    pub segment: String,
    pub offset: u64,
    pub lsn: Lsn,
    pub reason: String,
}

/// The outcome of a verify run.
#[derive(Clone, Debug, Serialize, Default)]
pub struct VerifyReport {
    pub ok: bool,
    pub segments: u64,
    pub records: u64,
    pub bytes: u64,
    pub first_lsn: Option<Lsn>,
    pub end_lsn: Lsn,
    pub errors: Vec<VerifyIssue>,
    /// Findings that are not damage (a torn tail in the open segment, which recovery repairs).
    pub notes: Vec<String>,
}

pub use crate::reader::Identity;

mod archive;
mod history;
mod live;
mod read_ahead;
pub use archive::{verify_archive, verify_store};

/// Verifies a data directory, its wal/ folder, one segment file, or an archive. Only an empty
/// but valid data directory or archive is clean with no segments: a directory that is none of
/// these is an error (not a walship path), and one that is partly a data directory (a `wal/`
/// without `control`, a damaged `control`) or holds segments with nothing to check their
/// identity against is damage.
pub fn verify_path(path: &Path) -> Result<VerifyReport> {
    let r = verify_path_uncounted(path);
    if let Ok(report) = &r {
        crate::metrics::library::damage_found("verify", report.errors.len() as u64);
    }
    r
}

fn verify_path_uncounted(path: &Path) -> Result<VerifyReport> {
    live::until_unchanged(path, verify_listed)
}

/// One check of `path`, from one listing of its files.
fn verify_listed(path: &Path) -> Result<VerifyReport> {
    let meta = std::fs::metadata(path).ctx(|| format!("{}", path.display()))?;
    if meta.is_dir() && crate::archive::is_archive(path) {
        return verify_archive(path);
    }
    let mut report = VerifyReport::default();
    let problem = |report: &mut VerifyReport, segment: &str, reason: String| {
        report.errors.push(VerifyIssue {
            segment: segment.into(),
            offset: 0,
            lsn: Lsn(0),
            reason,
        })
    };
    let mut identity = None;
    let mut data_dir_root = None;
    let files: Vec<(SegmentName, PathBuf)> = if meta.is_file() {
        let name = crate::setaside::single_segment_name(path)?;
        // A file in a data directory's wal/ must belong to that directory.
        if let Some(dd) = WalSource::File(path.to_path_buf()).data_dir() {
            match dd.read_control() {
                Ok(c) => identity = Some(Identity::from(&c)),
                Err(e) => problem(&mut report, "control", control_problem(e)),
            }
        }
        vec![(name, path.to_path_buf())]
    } else if meta.is_dir() {
        let (root, wal) = data_dir_layout(path);
        let has_control = std::fs::symlink_metadata(root.join("control")).is_ok();
        let has_wal = std::fs::symlink_metadata(&wal).is_ok();
        if has_control || has_wal {
            if has_control {
                data_dir_root = Some(root.clone());
                match DataDir::new(&root).read_control() {
                    Ok(c) => identity = Some(Identity::from(&c)),
                    Err(e) => problem(&mut report, "control", control_problem(e)),
                }
            } else {
                problem(
                    &mut report,
                    "control",
                    format!(
                        "{}: the data directory has no control file: its identity is missing, so its segments cannot be checked (restore it, or rebuild from an archive or a standby)",
                        root.display()
                    ),
                );
            }
            if wal.is_dir() {
                let files = segment_files(&wal, identity, &mut report)?;
                if has_control {
                    let names: Vec<SegmentName> = files.iter().map(|(n, _)| *n).collect();
                    history::check_histories(&root, &names, &mut report);
                }
                if files.is_empty() && identity.is_some() {
                    if let Some(lsn) = reached_lsn(&DataDir::new(&root)) {
                        problem(
                            &mut report,
                            "wal",
                            format!(
                                "{}: holds no segment, yet the log had reached LSN {} (the checkpoint or a consumer's position): its segments were removed",
                                wal.display(),
                                lsn
                            ),
                        );
                    }
                }
                files
            } else {
                problem(
                    &mut report,
                    "wal",
                    format!(
                        "{}: the data directory has no wal/ folder: every segment is missing",
                        root.display()
                    ),
                );
                Vec::new()
            }
        } else {
            let files = segment_files(path, None, &mut report)?;
            let archived = crate::archive::store::list_dir(path)?
                .iter()
                .any(|o| crate::archive::parse_object_name(&o.name).is_some());
            if files.is_empty() && !archived {
                return Err(Error::InvalidArgument(format!(
                    "{}: not a walship path: no control file or wal/ folder (a data directory), no IDENTITY file (an archive) and no segment files",
                    path.display()
                )));
            }
            problem(
                &mut report,
                "IDENTITY",
                format!(
                    "{}: holds segment files but neither an IDENTITY file (an archive) nor a control file (a data directory): there is nothing to check whose segments they are",
                    path.display()
                ),
            );
            files
        }
    } else {
        return Err(Error::InvalidArgument(format!(
            "{}: is a {}: not a data directory, wal/ folder, archive or segment file",
            path.display(),
            crate::fsutil::file_kind(&meta.file_type())
        )));
    };
    verify_segments(&files, identity, &mut report, |p, b| {
        read_segment_hashed(p, b).map(Some)
    })?;
    if let Some(root) = data_dir_root {
        check_opens(&root, &mut report);
        count_standby_copy(&DataDir::new(&root), &mut report);
    }
    report.ok = report.errors.is_empty();
    Ok(report)
}

/// A standby's copy of its primary's open segment (`.wal.partial`): its valid records count
/// with the log's, as `status` and `dump` count them. They were checked one by one as they
/// arrived; the copy ends wherever they do (the standby takes it up from there).
fn count_standby_copy(dd: &DataDir, report: &mut VerifyReport) {
    if !crate::replication::standby::directory::meta_path(dd).exists() {
        return;
    }
    let Ok(control) = dd.read_control() else {
        return;
    };
    if let Ok(Some(copy)) = crate::replication::standby::partial::copy_records(dd, &control) {
        report.records += copy.records;
        report.first_lsn = report.first_lsn.or(Some(copy.first));
        report.end_lsn = report.end_lsn.max(copy.end);
        report.notes.push(format!(
            "{}: the standby's copy of its primary's open segment: {} records up to LSN {}",
            copy.name, copy.records, copy.end
        ));
    }
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
            lsn,
            reason: format!("{reason} (walship write refuses to open this directory)"),
        }),
        Err(_) => {}
    }
}

/// The highest position the directory's own state says its log reached (the checkpoint, a
/// consumer's position), when above zero: a wal/ without segments is then not a fresh one.
fn reached_lsn(dd: &DataDir) -> Option<Lsn> {
    let r = crate::retention::report(dd).ok()?;
    let reached = r
        .consumers
        .iter()
        .map(|c| c.position)
        .fold(r.checkpoint_lsn, Lsn::max);
    (reached > Lsn(0)).then_some(reached)
}

/// The data directory a directory given by the user stands for, and its wal/ folder: a wal/
/// folder given directly stands for the directory it sits in.
fn data_dir_layout(path: &Path) -> (PathBuf, PathBuf) {
    if let Some(dd) = WalSource::Dir(path.to_path_buf()).data_dir() {
        return (dd.root().to_path_buf(), path.to_path_buf());
    }
    let named_wal = path
        .canonicalize()
        .ok()
        .filter(|c| c.file_name().is_some_and(|n| n == "wal"));
    match named_wal {
        // A wal/ folder whose directory has lost its control file.
        Some(c) if c.parent().is_some() && !path.join("wal").exists() => (
            c.parent().map(Path::to_path_buf).unwrap_or_default(),
            path.to_path_buf(),
        ),
        _ => (path.to_path_buf(), path.join("wal")),
    }
}

/// A control file's problem without the segment position a `Corrupt` error carries.
fn control_problem(e: Error) -> String {
    match e {
        Error::Corrupt { file, reason, .. } => format!("{}: {reason}", file.display()),
        e => e.to_string(),
    }
}

/// The sealed and open segment files of a folder, in order; a segment name holding anything
/// but a regular file is a problem reported, never opened.
fn segment_files(
    dir: &Path,
    identity: Option<Identity>,
    report: &mut VerifyReport,
) -> Result<Vec<(SegmentName, PathBuf)>> {
    let (names, refused) = list_segments_and_refused(dir)?;
    for e in refused {
        let name = match &e {
            Error::NotRegularFile { path, .. } => path
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(SegmentName::parse),
            _ => None,
        };
        let lsn = name
            .zip(identity)
            .and_then(|(n, i)| segment_start(n.segment_no.0, i.segment_size))
            .unwrap_or(Lsn(0));
        report.errors.push(VerifyIssue {
            segment: name.map(|n| n.to_string()).unwrap_or_default(),
            offset: 0,
            lsn,
            reason: e.to_string(),
        });
    }
    Ok(names
        .into_iter()
        .filter(|n| matches!(n.kind, SegmentFileKind::Sealed | SegmentFileKind::Open))
        .map(|n| (n, dir.join(n.to_string())))
        .collect())
}

fn file_name(p: &Path) -> String {
    p.file_name().map_or_else(
        || p.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    )
}

/// Verifies segments given in order, reading each with `read` (which may hash the bytes as it
/// reads them) on a second thread, one segment ahead of the check ([`read_ahead`]). Shared by
/// the data-directory check and the archive check, which reads through its store.
pub fn verify_segments(
    files: &[(SegmentName, PathBuf)],
    identity: Option<Identity>,
    report: &mut VerifyReport,
    read: impl FnMut(&Path, &mut Vec<u8>) -> Result<Option<ReadChecksum>> + Send,
) -> Result<()> {
    std::thread::scope(|scope| {
        let paths = files.iter().map(|(_, p)| p.clone()).collect();
        let mut reads = ReadAhead::start(scope, paths, read)?;
        check_segments(files, identity, report, || reads.next_file())
    })
}

/// The checks of [`verify_segments`], given each file's read in order.
fn check_segments(
    files: &[(SegmentName, PathBuf)],
    mut identity: Option<Identity>,
    report: &mut VerifyReport,
    mut next_read: impl FnMut() -> Option<(ReadResult, ReadBuf)>,
) -> Result<()> {
    let mut prev: Option<(SegmentName, Option<u32>)> = None;
    // Where an open segment without its seal marker ended the log, newer open segments
    // following it: recovery sets those aside, so their records are not the log's.
    let mut log_ended = false;
    for (i, (name, path)) in files.iter().enumerate() {
        // Taken first, so that each file is paired with its own read whatever is skipped below.
        let Some((read_sum, bytes)) = next_read() else {
            return Err(Error::Other(format!(
                "{}: its read never came back (the reading thread stopped)",
                path.display()
            )));
        };
        if log_ended && name.kind == SegmentFileKind::Open {
            report.notes.push(format!(
                "{name}: past the end of the log: recovery sets it aside; its records are not counted"
            ));
            continue;
        }
        report.segments += 1;
        // Where this segment starts by its name, once the set's segment size is known: a
        // header too damaged to say, or a missing neighbour, is still located.
        let size = identity.map_or(0, |i| i.segment_size);
        let named = |no: u64| segment_start(no, size).unwrap_or(Lsn(0));
        let issue = |offset: usize, lsn: Lsn, reason: String| VerifyIssue {
            segment: name.to_string(),
            offset: offset as u64,
            lsn,
            reason,
        };
        if let Some((p, _)) = &prev {
            if name.segment_no == p.segment_no {
                report.errors.push(issue(
                    0,
                    named(name.segment_no.0),
                    format!(
                        "segment {:X} appears twice ({} and {})",
                        name.segment_no,
                        file_name(&files[i - 1].1),
                        file_name(path)
                    ),
                ));
            } else if name.segment_no.0 != p.segment_no.next().0 {
                let missing = SegmentName::new(
                    name.timeline,
                    p.segment_no.next().0,
                    SegmentFileKind::Sealed,
                );
                report.errors.push(issue(
                    0,
                    named(missing.segment_no.0),
                    format!("segment {missing} is missing between {p} and {name}"),
                ));
            }
        }
        // The writer seals a segment in the background while it writes the next one.
        let followed = i + 1 != files.len();
        let read_sum = match read_sum {
            Ok(sum) => sum,
            // A running writer sealed it after the listing: sealed segments are checked by
            // the next run, not taken for damage now.
            Err(Error::Io { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound
                    && name.kind == SegmentFileKind::Open
                    && path.with_extension("").exists() =>
            {
                report.notes.push(format!(
                    "{name}: sealed while verify ran (now {}): not checked this time",
                    name.with_kind(SegmentFileKind::Sealed)
                ));
                prev = Some((*name, None));
                continue;
            }
            Err(e) => {
                report
                    .errors
                    .push(issue(0, named(name.segment_no.0), e.to_string()));
                prev = Some((*name, None));
                continue;
            }
        };
        report.bytes += bytes.len() as u64;
        if name.kind == SegmentFileKind::Open {
            if let Some(id) = identity {
                let size = id.segment_size as usize;
                let start = name.segment_no.start_lsn_saturating(id.segment_size);
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
                    segment_no: name.segment_no.0,
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
                let at = match identity {
                    Some(_) => named(name.segment_no.0),
                    None => claimed_segment_size(&bytes)
                        .and_then(|size| segment_start(name.segment_no.0, size))
                        .unwrap_or(Lsn(0)),
                };
                report.errors.push(issue(0, at, reason));
                prev = Some((*name, None));
                continue;
            }
        };
        let header = *scan.header();
        let start = header.start_lsn();
        let id = *identity.get_or_insert(Identity::from(&header));
        // A header that disagrees with its name or set is located by the name.
        let at_name = segment_start(name.segment_no.0, id.segment_size).unwrap_or(Lsn(0));
        if header.system_id != id.system_id {
            report.errors.push(issue(
                0,
                at_name,
                format!(
                    "segment belongs to system {}, expected {}",
                    header.system_id, id.system_id
                ),
            ));
        }
        if header.segment_size != id.segment_size {
            report.errors.push(issue(
                0,
                at_name,
                format!(
                    "segment size {} differs from {}",
                    header.segment_size, id.segment_size
                ),
            ));
        }
        if header.segment_no != name.segment_no.0 || header.timeline != name.timeline {
            report.errors.push(issue(
                0,
                at_name,
                format!(
                    "header says timeline {} segment {:X}; the file name disagrees",
                    header.timeline, header.segment_no
                ),
            ));
        }
        if let Some((p, Some(prev_sum))) = &prev {
            if p.segment_no.next().0 == name.segment_no.0 && header.prev_checksum != Some(*prev_sum)
            {
                report.errors.push(issue(
                    0,
                    at_name,
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
            (_, SegmentFileKind::Sealed) => {
                if let ScanEnd::Sealed { seal, .. } = &end {
                    seal_sum = Some(seal.segment_checksum);
                }
                if let Err((_, why)) = sealed_end(&end) {
                    report.errors.push(issue(off, at, why));
                }
            }
            (ScanEnd::Sealed { seal, .. }, _) => {
                seal_sum = Some(seal.segment_checksum);
                report.notes.push(format!("{name}: holds a seal marker at offset {off} but is still named open (an interrupted seal; recovery finishes it)"));
            }
            (_, _) => {
                let why = match &end {
                    ScanEnd::Invalid { error, .. } => error.to_string(),
                    _ => "nothing written".into(),
                };
                let size = header.segment_size as usize;
                if let Some(reason) =
                    crate::segment_check::open_length_damage(bytes.len(), size, &why)
                {
                    report.errors.push(issue(off, at, reason));
                } else {
                    match judge_open_tail(&bytes, &header, off) {
                        OpenTail::Damage(later) => report.errors.push(issue(
                            off,
                            at,
                            format!("{why}, yet {later}: damage in the middle of the log"),
                        )),
                        OpenTail::Torn { later_records, .. } => report.notes.push(format!(
                            "{name}: torn tail at offset {off} (LSN {}): {why}{}; repairable: recovery keeps a copy in setaside/ and zeroes it",
                            at,
                            if later_records > 0 { format!(" ({later_records} valid records after it were never durable: a write persisted out of order)") } else { String::new() }
                        )),
                        OpenTail::Stale(stale) => report.notes.push(format!(
                            "{name}: the log ends at offset {off} (LSN {at}); {stale}: not damage"
                        )),
                        OpenTail::Clean => {}
                    }
                    if followed {
                        log_ended = true;
                        report.notes.push(format!("{name}: ends at offset {off} (LSN {}) without a seal marker, yet newer open segments follow (a crash while sealing; recovery cuts the log here and sets the newer ones aside)", at));
                    }
                }
            }
        }
        prev = Some((*name, seal_sum));
    }
    Ok(())
}
