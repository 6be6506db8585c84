//! `walship verify` of an archive: its identity file, that it holds the segment it begins at,
//! and every segment object (decompressed, bounded by the segment size) through the same
//! segment checks as a data directory's.

use std::path::{Path, PathBuf};

use super::{verify_segments, VerifyIssue, VerifyReport};
use crate::archive::{
    check_object_len, decode_object, parse_object_name, segment_objects, store, ArchiveIdentity,
    ArchiveStore, Compression, ObjectInfo, IDENTITY_NAME,
};
use crate::error::{Error, Result};
use crate::format::{SegmentFileKind, SegmentName, SegmentNo};
use crate::Lsn;

/// Verifies an archive in a local directory: the identity file, that the archive holds the
/// segment it begins at (layout version 2), every segment (compressed ones decompressed, bounded
/// by the segment size), the chain between segments and gaps. Goes on after a problem, like
/// `verify_path`.
pub fn verify_archive(root: &Path) -> Result<VerifyReport> {
    let identity = match std::fs::read(root.join(IDENTITY_NAME)) {
        Ok(b) => Some(b),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => {
            return Err(Error::io(
                format!("read {}", root.join(IDENTITY_NAME).display()),
                e,
            ))
        }
    };
    let objects = store::list_dir(root)?;
    verify_objects(root, identity, &objects, |name| {
        let p = root.join(name);
        std::fs::read(&p).map_err(|e| Error::io(format!("read {}", p.display()), e))
    })
}

/// Verifies an archive in any store, as [`verify_archive`] does a directory's. Objects are
/// fetched one at a time through `handle` (call it off the runtime's threads).
pub fn verify_store<S: ArchiveStore>(
    handle: &tokio::runtime::Handle,
    store: &S,
) -> Result<VerifyReport> {
    let loc = PathBuf::from(store.location());
    let identity = handle.block_on(store.get(IDENTITY_NAME))?;
    let objects = handle.block_on(store.list())?;
    // Nothing at all there: a mistyped bucket or prefix, not a damaged archive (a directory
    // without any is "not an archive" too).
    if identity.is_none() && objects.is_empty() {
        return Err(Error::InvalidArgument(format!(
            "no archive at {}: it holds no {IDENTITY_NAME} and no segments (check the bucket and the prefix)",
            store.location()
        )));
    }
    let report = verify_objects(&loc, identity, &objects, |name| {
        handle
            .block_on(store.get(name))?
            .ok_or_else(|| Error::Corrupt {
                file: loc.join(name),
                offset: 0,
                lsn: crate::Lsn(0),
                reason: "vanished from the archive while it was verified".into(),
            })
    })?;
    crate::metrics::library::damage_found("verify", report.errors.len() as u64);
    Ok(report)
}

/// The checks of an archive, given its identity file's bytes (`None` when missing), its
/// listing, and a way to read one object; `root` names the archive in the report.
fn verify_objects(
    root: &Path,
    identity_bytes: Option<Vec<u8>>,
    objects: &[ObjectInfo],
    read: impl Fn(&str) -> Result<Vec<u8>> + Sync,
) -> Result<VerifyReport> {
    let mut report = VerifyReport::default();
    let archive_id = match identity_bytes {
        Some(b) => match ArchiveIdentity::decode(&b) {
            Ok(id) => Some(id),
            Err(reason) => {
                report.errors.push(VerifyIssue {
                    segment: IDENTITY_NAME.into(),
                    offset: 0,
                    lsn: Lsn(0),
                    reason,
                });
                None
            }
        },
        None => {
            report.errors.push(VerifyIssue {
                segment: IDENTITY_NAME.into(),
                offset: 0,
                lsn: Lsn(0),
                reason: "missing: the archive's identity file is gone, so nothing says which system it belongs to or where it begins".into(),
            });
            None
        }
    };
    let identity = archive_id.map(|id| id.system);
    let mut segs = segment_objects(objects);
    // Segments before the one the archive begins at are what a pruning that stopped half-way
    // left: not part of the archive, and never read.
    if let Some(begin) = archive_id.as_ref().and_then(|id| id.first_segment) {
        let before = segs
            .iter()
            .filter(|(n, _, _)| n.segment_no.0 < begin)
            .count();
        if before > 0 {
            report.notes.push(format!(
                "{before} object(s) before the segment the archive begins at ({IDENTITY_NAME} first_segment {begin}) are left over from pruning and not checked; `walship archive-prune` removes them"
            ));
            segs.retain(|(n, _, _)| n.segment_no.0 >= begin);
        }
    }
    // After a promotion the archive holds several timelines: every history file must decode,
    // and the segments are checked along the newest history's path (the old timeline's copy of
    // a switch segment, and its segments past the switch, are off that path).
    let system_id = archive_id.map(|id| id.system_id);
    if let Err(e) =
        crate::archive::history::timeline_without_history(&root.display().to_string(), objects)
    {
        report.errors.push(VerifyIssue {
            segment: "history".into(),
            offset: 0,
            lsn: Lsn(0),
            reason: e.to_string(),
        });
    }
    if let Some(path) = newest_path(root, objects, system_id, &read, &mut report) {
        let size = archive_id.map_or(crate::format::MAX_SEGMENT_SIZE, |id| id.segment_size);
        let off = crate::archive::retain_on_path(&mut segs, &path, size);
        if off > 0 {
            report.notes.push(format!(
                "{off} segment(s) of earlier timelines lie past where timeline {} left them (an old primary's, archived before the promotion was known): not on the newest timeline, not checked",
                path.timeline
            ));
        }
    }
    if let (Some(id), Some((first_held, _, _))) = (&archive_id, segs.first()) {
        check_first_segment(id, first_held, &mut report);
    }
    let sizes: std::collections::HashMap<PathBuf, u64> = segs
        .iter()
        .map(|(_, _, o)| (root.join(&o.name), o.size))
        .collect();
    let files: Vec<(SegmentName, PathBuf)> = segs
        .iter()
        .map(|(n, _, o)| (*n, root.join(&o.name)))
        .collect();
    // Without a readable identity, no segment may be longer than the largest segment size.
    let segment_size = archive_id.map_or(crate::format::MAX_SEGMENT_SIZE, |id| id.segment_size);
    verify_segments(&files, identity, &mut report, |p, bytes| {
        let name = p
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_string();
        let c = parse_object_name(&name).map_or(Compression::None, |(_, c)| c);
        let len = sizes.get(p).copied().unwrap_or(0);
        check_object_len(p, c, len, segment_size)?;
        let data = read(&name)?;
        *bytes = decode_object(p, c, data, segment_size)?;
        Ok(None)
    })?;
    report.ok = report.errors.is_empty();
    Ok(report)
}

/// Checks every history file of the archive (a damaged one, or one of a system other than the
/// identity's `system_id`, is an error naming it) and returns the newest one's path; None when
/// the archive holds none (one timeline) or the newest is damaged.
fn newest_path(
    root: &Path,
    objects: &[ObjectInfo],
    system_id: Option<uuid::Uuid>,
    read: &impl Fn(&str) -> Result<Vec<u8>>,
    report: &mut VerifyReport,
) -> Option<crate::timeline::History> {
    let mut newest = None;
    for t in crate::archive::history::history_timelines(objects) {
        let name = crate::archive::history_object_name(t);
        let path = root.join(&name);
        let decoded = read(&name).and_then(|b| match system_id {
            Some(id) => crate::archive::history::decode_archive_history(&path, &b, t, id),
            // Without a readable identity the file can only be checked on its own.
            None => crate::history::decode_history(&path, &b, t),
        });
        newest = match decoded {
            Ok(f) => Some(crate::timeline::History::of(&f)),
            Err(e) => {
                report.errors.push(VerifyIssue {
                    segment: name,
                    offset: 0,
                    lsn: Lsn(0),
                    reason: e.to_string(),
                });
                None
            }
        };
    }
    newest
}

/// An archive of layout version 2 holds every segment from the one its identity names: a
/// missing first segment is damage, as a gap is (segments before it were set aside above).
fn check_first_segment(id: &ArchiveIdentity, first_held: &SegmentName, report: &mut VerifyReport) {
    let Some(begin) = id.first_segment else {
        return;
    };
    let begin_name = SegmentName::new(first_held.timeline, begin, SegmentFileKind::Sealed);
    let lsn = SegmentNo(begin)
        .start_lsn(id.segment_size)
        .unwrap_or_default();
    if first_held.segment_no.0 > begin {
        let last_missing = SegmentName::new(
            first_held.timeline,
            first_held.segment_no.0 - 1,
            SegmentFileKind::Sealed,
        );
        report.errors.push(VerifyIssue {
            segment: begin_name.to_string(),
            offset: 0,
            lsn,
            reason: format!(
                "segment {begin_name} is missing: the archive begins at it ({IDENTITY_NAME} first_segment {begin}), but its first segment is {first_held} (missing: {begin_name} to {last_missing})"
            ),
        });
    }
}
