//! Restore's second pass and its destination: the check of what the destination holds before
//! anything is fetched, and the writing of the new data directory.

use std::os::unix::fs::FileExt;

use super::*;
use crate::datadir::DataDir;
use crate::error::IoContext;
use crate::format::segment_header::SEGMENT_HEADER_LEN;
use crate::format::SegmentHeader;
use crate::fsutil::fsync_dir;
use crate::segment_file::create_reserved;

/// Refuses a destination that holds the archive `root` (replacing it would remove the archive
/// being restored from) or lies inside it (the new directory would sit among its objects).
pub(super) fn check_apart(root: &Path, dest: &Path) -> Result<()> {
    let d = crate::archive::store::resolve(dest)?;
    let why = if root.starts_with(&d) {
        "the archive is inside the destination, and restoring there would remove it"
    } else if d.starts_with(root) {
        "the destination is inside the archive"
    } else {
        return Ok(());
    };
    Err(Error::InvalidArgument(format!(
        "cannot restore the archive {} into {}: {why}; nothing was changed. Restore into a directory apart from the archive",
        root.display(),
        dest.display()
    )))
}

/// Checks the destination before anything is fetched: missing or empty is fine; a walship data
/// directory is replaced only with `force`; anything else is refused. Returns what it holds,
/// to be found the same once restore holds its lock.
pub(super) fn check_destination(dest: &Path, force: bool) -> Result<Destination> {
    let entries = match std::fs::read_dir(dest) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Destination::default()),
        Err(e) => return Err(Error::io(format!("list {}", dest.display()), e)),
    };
    let mut found = Vec::new();
    for e in entries {
        let e = e.ctx(|| format!("list {}", dest.display()))?;
        // A lone lock file holds no data (a command refused or stopped leaves it), and
        // staging directories are restore's own.
        let name = e.file_name();
        if name != "LOCK" && !name.to_string_lossy().starts_with(super::STAGING_PREFIX) {
            found.push(e.file_name());
        }
    }
    if found.is_empty() {
        return Ok(Destination::default());
    }
    if !force {
        return Err(Error::InvalidArgument(format!(
            "{} is not empty; restore writes a new data directory (use --force to replace a walship data directory there)",
            dest.display()
        )));
    }
    let ours = ["control", "LOCK", "wal", "state"];
    if let Some(other) = found
        .iter()
        .find(|n| !ours.iter().any(|o| n.as_os_str() == *o))
    {
        return Err(Error::InvalidArgument(format!(
            "{} holds {:?}, which is not part of a walship data directory; --force replaces only a data directory, so nothing was removed",
            dest.display(),
            other
        )));
    }
    // What --force replaces must be shown to be walship's: its control file reads as one, or,
    // with none (a restore killed in its second pass), `wal/` holds only segments and history
    // files and `state/` nothing.
    let dd = DataDir::new(dest);
    let control = match dd.read_control() {
        Ok(_) => Some(
            std::fs::read(dd.control_path())
                .ctx(|| format!("read {}", dd.control_path().display()))?,
        ),
        Err(_) if !dd.control_path().exists() && only_restored_files(&dd) => None,
        Err(e) => {
            return Err(Error::InvalidArgument(format!(
                "{} is not a walship data directory ({e}); --force replaces only a data directory, so nothing was removed",
                dest.display()
            )))
        }
    };
    // The control file goes first, so an interrupted clear never leaves a directory that opens.
    let to_clear = ["control", "wal", "state"]
        .iter()
        .map(|n| dest.join(n))
        .filter(|p| p.exists())
        .collect();
    Ok(Destination { to_clear, control })
}

/// Whether `dd` holds what a restore stopped before its control file leaves: in `wal/` only
/// segment and history files (and temporaries), and nothing in `state/`.
fn only_restored_files(dd: &DataDir) -> bool {
    let names = |d: PathBuf| -> Option<Vec<String>> {
        match std::fs::read_dir(&d) {
            Ok(r) => r
                .map(|e| e.ok().map(|e| e.file_name().to_string_lossy().into_owned()))
                .collect(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Some(Vec::new()),
            Err(_) => None,
        }
    };
    let walship_file = |n: &String| {
        SegmentName::parse(n).is_some()
            || crate::format::history::parse_history_file_name(n).is_some()
            || (n.starts_with('.') && n.ends_with(".tmp"))
    };
    names(dd.wal_dir()).is_some_and(|w| w.iter().all(walship_file))
        && names(dd.state_dir()).is_some_and(|s| s.is_empty())
}

/// What the destination held when restore began: what it replaces (`--force`), and the bytes
/// of the control file of the data directory there, which must still be there to be replaced.
#[derive(Debug, Default, PartialEq, Eq)]
pub(super) struct Destination {
    to_clear: Vec<PathBuf>,
    control: Option<Vec<u8>>,
}

/// Pass two: writes the data directory from the segments pass one fetched, checked and
/// staged (each staged file already durable: here it is only renamed into `wal/`, and `wal/`
/// fsynced once at the end).
#[allow(clippy::too_many_arguments)]
pub(super) async fn write(
    loc: &str,
    dest: &Path,
    identity: &ArchiveIdentity,
    histories: &[(u32, Vec<u8>)],
    history: &crate::timeline::History,
    plan: &[Planned],
    destination: &Destination,
    opts: &RestoreOptions,
    mut clock: Clock,
) -> Result<RestoreReport> {
    clock.timings.fetch_check_stage_us = clock.lap();
    crate::datadir::create_private_dir(dest)?;
    let dir = DataDir::new(dest);
    // Keeps a writer from opening the directory while it is replaced and rebuilt.
    let _lock = dir.lock()?;
    // Checked again under the lock: another process (a second restore, an `init`) may have
    // written into the destination while this one read the archive.
    if check_destination(dest, opts.force).ok().as_ref() != Some(destination) {
        return Err(Error::InvalidArgument(format!(
            "{} changed while restore read the archive (another process wrote into it); nothing was written",
            dest.display()
        )));
    }
    for p in &destination.to_clear {
        if p.is_dir() {
            std::fs::remove_dir_all(p).ctx(|| format!("remove {}", p.display()))?;
        } else {
            std::fs::remove_file(p).ctx(|| format!("remove {}", p.display()))?;
        }
        fsync_dir(dest)?;
    }
    let wal = dir.wal_dir();
    for d in [wal.clone(), dir.state_dir()] {
        std::fs::create_dir_all(&d).ctx(|| format!("create {}", d.display()))?;
    }
    // The timeline of the newest segment restored, with the history files that lead to it:
    // the directory is on that timeline as the original was. A cut inside a switch segment
    // before its switch point ends the log on the timeline the switch left: the next record
    // written there is that timeline's, not the new one's (whose history says it began later).
    let timeline = plan.last().map_or(identity.timeline, |p| match p.cut {
        Some(_) => history.timeline_of(p.seal_lsn),
        None => p.name.timeline,
    });
    let mut report = RestoreReport {
        system_id: identity.system_id.to_string(),
        timeline,
        sealed_segments: 0,
        open_segment: None,
        records: 0,
        end_lsn: Lsn::ZERO,
        bytes: 0,
        timings: RestoreTimings::default(),
    };
    let total = plan.len() as u64;
    for (i, p) in plan.iter().enumerate() {
        let staged = p.staged.clone();
        let len = std::fs::metadata(&staged)
            .ctx(|| format!("stat {}", staged.display()))?
            .len();
        if len != p.len {
            return Err(Error::Corrupt {
                file: PathBuf::from(loc).join(&p.object),
                offset: 0,
                lsn: p
                    .name
                    .segment_no
                    .start_lsn_saturating(identity.segment_size),
                reason: format!(
                    "its staged copy {} changed between the check and the copy",
                    staged.display()
                ),
            });
        }
        report.records += p.records;
        match p.cut {
            None => {
                let path = wal.join(p.name.to_string());
                report.bytes += p.len;
                // Pass one made the staged bytes durable; the rename is made durable by the
                // fsync of `wal/` below, before the control file.
                std::fs::rename(&staged, &path)
                    .ctx(|| format!("rename {} to {}", staged.display(), path.display()))?;
                crate::sync_point!("restore::placed");
                report.sealed_segments += 1;
                report.end_lsn = p.seal_lsn;
            }
            Some((off, _)) => {
                let name = SegmentName::new(timeline, p.name.segment_no.0, SegmentFileKind::Open);
                let path = wal.join(name.to_string());
                let size = identity.segment_size;
                report.bytes += off as u64;
                blocking(move || {
                    let bytes =
                        std::fs::read(&staged).ctx(|| format!("read {}", staged.display()))?;
                    let mut part = bytes
                        .get(..off)
                        .ok_or_else(|| {
                            Error::Other(format!("{}: shorter than its cut", staged.display()))
                        })?
                        .to_vec();
                    // The switch segment cut before its switch point: its header names the
                    // timeline the log now ends on.
                    retitle(&mut part, timeline, &staged)?;
                    write_file(&path, &part, Some(size))
                })
                .await?;
                report.open_segment = Some(name.to_string());
                report.end_lsn = p.seal_lsn;
            }
        }
        report_progress(opts, RestorePhase::Write, i as u64 + 1, total, report.bytes);
    }
    for (t, bytes) in histories.iter().filter(|(t, _)| *t <= timeline) {
        write_file(&dir.history_path(*t), bytes, None)?;
    }
    fsync_dir(&wal)?;
    fsync_dir(&dir.state_dir())?;
    // Last: the control file makes it a data directory.
    let mut control = identity.to_control();
    control.identity.timeline = timeline;
    DataDir::create_with_identity(dest, &control)?;
    clock.timings.write_us = clock.lap();
    report.timings = clock.finish();
    Ok(report)
}

/// Writes a segment file under a temporary name, fsyncs it and renames it into place. With
/// `full_size` the file first gets that many bytes reserved the way the writer reserves a
/// segment (an open segment, which the writer maps whole).
fn write_file(path: &Path, bytes: &[u8], full_size: Option<u64>) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("segment");
    let tmp = dir.join(format!(".{name}.tmp"));
    let f = match full_size {
        Some(size) => create_reserved(&tmp, size)?,
        None => std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
            .ctx(|| format!("create {}", tmp.display()))?,
    };
    f.write_all_at(bytes, 0)
        .ctx(|| format!("write {}", tmp.display()))?;
    f.sync_all().ctx(|| format!("fsync {}", tmp.display()))?;
    std::fs::rename(&tmp, path).ctx(|| format!("rename {} to {}", tmp.display(), path.display()))
}

/// Sets the timeline in the header at the start of `segment` (read from `file`) to `timeline`,
/// when it names another.
fn retitle(segment: &mut [u8], timeline: u32, file: &Path) -> Result<()> {
    let mut header = SegmentHeader::decode(segment).map_err(|reason| Error::Corrupt {
        file: file.to_path_buf(),
        offset: 0,
        lsn: Lsn(0),
        reason,
    })?;
    if header.timeline != timeline {
        header.timeline = timeline;
        segment[..SEGMENT_HEADER_LEN].copy_from_slice(&header.encode());
    }
    Ok(())
}
