//! Restore: rebuild a data directory from an archive, up to the end or to a point in time.
//!
//! Two passes. The first fetches (several segments ahead, in parallel) and checks every
//! segment up to the target (identity, every record and checksum, the chain, gaps), finds where
//! the cut falls, and keeps each checked segment, written once and fsynced while later ones
//! download, in a staging directory beside the destination (`.walship-restore-*`, removed at
//! the end), so that each object is fetched once. Nothing is written to the destination until
//! this pass has passed, and a failure names the first missing or damaged segment. The second
//! writes the new directory from the staged files: segments wholly before the cut sealed
//! (renamed into place), the segment the cut falls in as the open segment (a full-size,
//! zero-filled file holding its bytes up to the cut), one fsync of `wal/` and `state/`, and the
//! control file last, so an interrupted restore never leaves something that opens as a store.
//!
//! Here: the options and pass one (the plan); `fetch.rs`: pass one's fetch, check and stage
//! pipeline; `write.rs`: the destination's check and pass two (writing the data directory);
//! `timings.rs`: where the time went.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Serialize;

use super::{
    blocking, check_object_len, check_segment_bytes, decode_object, joined, segment_objects,
    ArchiveIdentity, ArchiveStore, CheckedSegment, Compression, IDENTITY_NAME,
};
use crate::error::{Error, Result};
use crate::format::{SegmentFileKind, SegmentName};
use crate::Lsn;

mod fetch;
mod timings;
mod write;

use fetch::Fetcher;
use timings::Clock;
pub use timings::RestoreTimings;
use write::{check_apart, check_destination, write};

/// Where a restore stops.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum RestoreTarget {
    /// Everything archived.
    #[default]
    End,
    /// Exactly the records whose end LSN is at most this.
    Lsn(Lsn),
    /// The records up to the first one whose timestamp (microseconds since the Unix epoch) is
    /// after this: with a clock that never steps back, exactly those stamped at or before it.
    Time(i64),
}

impl std::fmt::Display for RestoreTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RestoreTarget::End => f.write_str("the end of the archive"),
            RestoreTarget::Lsn(l) => write!(f, "the target LSN {l}"),
            RestoreTarget::Time(t) => write!(f, "the target time {}", fmt_time(*t)),
        }
    }
}

impl RestoreTarget {
    /// True for the first record to leave out.
    fn cuts(self, r: &crate::format::record::RecordRef<'_>) -> bool {
        match self {
            RestoreTarget::End => false,
            RestoreTarget::Lsn(l) => r.end_lsn() > l,
            RestoreTarget::Time(t) => r.header.timestamp_us > t,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RestorePhase {
    Verify,
    Write,
}

/// Reported after each segment of each pass.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RestoreProgress {
    pub phase: RestorePhase,
    pub done: u64,
    pub total: u64,
    pub bytes: u64,
}

pub type ProgressFn = Arc<dyn Fn(RestoreProgress) + Send + Sync>;

#[derive(Clone)]
pub struct RestoreOptions {
    pub target: RestoreTarget,
    /// Replace a walship data directory already at the destination.
    pub force: bool,
    /// Segments fetched and checked ahead of the one being used.
    pub fetch_ahead: usize,
    /// The timeline whose history the restore follows through an archive holding several.
    pub timeline: super::TimelineChoice,
    pub progress: Option<ProgressFn>,
}

impl Default for RestoreOptions {
    fn default() -> Self {
        RestoreOptions {
            target: RestoreTarget::End,
            force: false,
            fetch_ahead: 4,
            timeline: super::TimelineChoice::Latest,
            progress: None,
        }
    }
}

/// What a restore wrote.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RestoreReport {
    pub system_id: String,
    /// The timeline the restored directory is on: that of its newest segment.
    pub timeline: u32,
    /// Sealed segments written.
    pub sealed_segments: u64,
    /// The segment the cut fell in, written as the open segment.
    pub open_segment: Option<String>,
    pub records: u64,
    /// Where the next record will go: the end of the last record restored.
    pub end_lsn: Lsn,
    /// Segment bytes written (the open segment counted up to the cut).
    pub bytes: u64,
    /// Where the time went.
    pub timings: RestoreTimings,
}

struct Planned {
    name: SegmentName,
    object: String,
    seal_checksum: u32,
    /// `Some((offset, records kept))` for the segment the cut falls in.
    cut: Option<(usize, u64)>,
    records: u64,
    /// The checked segment's bytes, kept by pass one for pass two.
    staged: PathBuf,
    /// Its size in bytes.
    len: u64,
    /// Where its last record ends (its seal marker's LSN) when it is kept whole.
    seal_lsn: Lsn,
}

fn report_progress(opts: &RestoreOptions, phase: RestorePhase, done: u64, total: u64, bytes: u64) {
    if let Some(p) = &opts.progress {
        p(RestoreProgress {
            phase,
            done,
            total,
            bytes,
        });
    }
}

/// Restores the archive in `store` into a new data directory at `dest`.
pub async fn restore<S: ArchiveStore>(
    store: Arc<S>,
    dest: &Path,
    opts: RestoreOptions,
) -> Result<RestoreReport> {
    let mut clock = Clock::start();
    let loc = store.location();
    let identity = match store.get(IDENTITY_NAME).await? {
        Some(b) => ArchiveIdentity::decode(&b).map_err(|reason| Error::Corrupt {
            file: PathBuf::from(&loc).join(IDENTITY_NAME),
            offset: 0,
            lsn: Lsn(0),
            reason,
        })?,
        None => {
            return Err(Error::InvalidArgument(format!(
                "{loc}: not a walship archive (no {IDENTITY_NAME} file)"
            )))
        }
    };
    // An archive that followed a promotion holds segments of several timelines: restore goes
    // along one timeline's history (by default the newest; on it, the switch segment rather
    // than the old timeline's copy of it). A timeline the archive does not hold is refused
    // before anything is created.
    let (path, histories) =
        super::history::history_chain_of(&*store, opts.timeline, identity.system_id).await?;
    if let Some(root) = store.local_root() {
        check_apart(root, dest)?;
    }
    let destination = check_destination(dest, opts.force)?;
    let created = !dest.exists();
    crate::datadir::create_private_dir(dest)?;
    let stage = staging_dir(dest)?;
    let restored = async {
        let plan = plan(&store, &identity, &path, &opts, stage.path(), &mut clock).await?;
        write(
            &loc,
            dest,
            &identity,
            &histories,
            &path,
            &plan,
            &destination,
            &opts,
            clock,
        )
        .await
    }
    .await;
    drop(stage);
    if restored.is_err() && created {
        // Only while it is empty: what a failed write pass left is left for a rerun to see.
        let _ = std::fs::remove_dir(dest);
    }
    restored
}

/// The prefix of a staging directory's name: then the pid of the restore that made it.
const STAGING_PREFIX: &str = ".walship-restore-";

/// A fresh staging directory inside `dest` (on its file system, a mount point's included, so
/// that staged segments move into place), removed when dropped. Those a killed restore left
/// there (their process gone) are removed first.
fn staging_dir(dest: &Path) -> Result<tempfile::TempDir> {
    if let Ok(entries) = std::fs::read_dir(dest) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let pid = name
                .strip_prefix(STAGING_PREFIX)
                .and_then(|rest| rest.split('-').next())
                .and_then(|p| p.parse::<i32>().ok());
            if pid.is_some_and(|p| !crate::fsutil::process_alive(p)) {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
    tempfile::Builder::new()
        .prefix(&format!("{STAGING_PREFIX}{}-", std::process::id()))
        .tempdir_in(dest)
        .map_err(|e| {
            Error::io(
                format!("create a staging directory in {}", dest.display()),
                e,
            )
        })
}

/// Pass one: checks everything up to the target and decides what to write.
async fn plan<S: ArchiveStore>(
    store: &Arc<S>,
    identity: &ArchiveIdentity,
    path: &crate::timeline::History,
    opts: &RestoreOptions,
    stage: &Path,
    clock: &mut Clock,
) -> Result<Vec<Planned>> {
    clock.timings.prepare_us = clock.lap();
    let loc = store.location();
    let objects = store.list().await?;
    let mut segs = segment_objects(&objects);
    // Segments off the path (an old timeline's past its switch, its copy of a switch segment)
    // are not this restore's.
    super::retain_on_path(&mut segs, path, identity.segment_size);
    if segs.is_empty() {
        return Err(Error::InvalidArgument(format!(
            "{loc}: the archive holds no segments"
        )));
    }
    for w in segs.windows(2) {
        if w[0].0.segment_no == w[1].0.segment_no {
            return Err(Error::Corrupt {
                file: PathBuf::from(&loc).join(&w[1].2.name),
                offset: 0,
                lsn: w[1]
                    .0
                    .segment_no
                    .start_lsn_saturating(identity.segment_size),
                reason: format!("segment stored twice ({} and {})", w[0].2.name, w[1].2.name),
            });
        }
    }
    // An object too large to be a segment is refused before it is fetched.
    for (_, c, o) in &segs {
        check_object_len(
            &PathBuf::from(&loc).join(&o.name),
            *c,
            o.size,
            identity.segment_size,
        )?;
    }
    // The archive holds every segment from the one it begins at: restoring from a later one
    // would silently leave out the records before it. Segments before it are what a pruning
    // that stopped half-way left: no restore uses them.
    if let Some(begin) = identity.first_segment {
        segs.retain(|(n, _, _)| n.segment_no.0 >= begin);
        match segs.first() {
            Some((first, _, o)) if first.segment_no.0 != begin => {
                let want = SegmentName::new(first.timeline, begin, SegmentFileKind::Sealed);
                return Err(Error::Corrupt {
                    file: PathBuf::from(&loc).join(want.to_string()),
                    offset: 0,
                    lsn: Lsn(begin.saturating_mul(identity.segment_size)),
                    reason: format!("segment {want} is missing from the archive: it begins there ({IDENTITY_NAME} first_segment {begin}), but its first segment is {}", o.name),
                });
            }
            Some(_) => {}
            None => {
                return Err(Error::InvalidArgument(format!(
                    "{loc}: the archive holds no segments from the one it begins at ({begin}) on"
                )))
            }
        }
    }
    let items: Vec<_> = segs
        .iter()
        .map(|(n, c, o)| (*n, o.name.clone(), *c))
        .collect();
    let total = items.len() as u64;
    clock.timings.list_us = clock.lap();
    let mut f = Fetcher::new(
        store.clone(),
        items.clone(),
        *identity,
        opts.target,
        opts.fetch_ahead,
        stage.to_path_buf(),
        clock.sums.clone(),
    );
    let mut plan: Vec<Planned> = Vec::new();
    let mut bytes_done = 0u64;
    let mut last_end = 0u64;
    let mut last_ts = None;
    while let Some(r) = f.next().await {
        let (i, len, checked) = r?;
        let (name, object, _) = items[i].clone();
        let staged = stage.join(name.to_string());
        if let Some(prev) = plan.last() {
            if name.segment_no.0 != prev.name.segment_no.next().0 {
                let missing = SegmentName::new(
                    prev.name.timeline,
                    prev.name.segment_no.next().0,
                    SegmentFileKind::Sealed,
                );
                return Err(Error::Corrupt {
                    file: PathBuf::from(&loc).join(missing.to_string()),
                    offset: 0,
                    lsn: missing.segment_no.start_lsn_saturating(identity.segment_size),
                    reason: format!(
                        "segment {missing} is missing from the archive ({} is followed by {object})",
                        prev.object
                    ),
                });
            }
            if checked.header.prev_checksum != Some(prev.seal_checksum) {
                return Err(Error::Corrupt {
                    file: PathBuf::from(&loc).join(&object),
                    offset: 0,
                    lsn: checked.header.start_lsn(),
                    reason: format!(
                        "chain broken: {object} does not follow {} (it expects previous checksum {}, that segment has {:08x})",
                        prev.object,
                        checked.header.prev_checksum.map_or("none".into(), |c| format!("{c:08x}")),
                        prev.seal_checksum
                    ),
                });
            }
        }
        bytes_done += len;
        report_progress(opts, RestorePhase::Verify, i as u64 + 1, total, bytes_done);
        let seal_checksum = checked.seal.segment_checksum;
        match checked.cut {
            Some((_, 0)) if !plan.is_empty() => return Ok(plan),
            // A target before the first record of an archive that does not begin at the start
            // of the log: the records before it were never archived or were pruned.
            Some((_, 0)) if name.segment_no.0 > 0 => {
                return Err(Error::InvalidArgument(format!(
                    "{} is before the archive's first record: the archive begins at {object} (LSN {}), and the records before it are not in it; nothing was written",
                    opts.target,
                    checked.header.start_lsn()
                )))
            }
            Some(cut) => {
                plan.push(Planned {
                    name,
                    object,
                    seal_checksum,
                    cut: Some(cut),
                    records: cut.1,
                    staged,
                    len,
                    seal_lsn: checked.header.start_lsn() + cut.0 as u64,
                });
                return Ok(plan);
            }
            None => {
                if checked.seal.record_count > 0 {
                    last_end = checked.seal_lsn().0;
                }
                last_ts = checked.last_timestamp_us.or(last_ts);
                plan.push(Planned {
                    name,
                    object,
                    seal_checksum,
                    cut: None,
                    records: checked.seal.record_count,
                    staged,
                    len,
                    seal_lsn: checked.seal_lsn(),
                });
            }
        }
    }
    let reached = match opts.target {
        RestoreTarget::End => true,
        RestoreTarget::Lsn(l) => l.0 <= last_end,
        RestoreTarget::Time(_) => false,
    };
    if !reached {
        let when = last_ts.map_or("no records".into(), |t| {
            format!("last record at {}", fmt_time(t))
        });
        return Err(Error::InvalidArgument(format!(
            "the archive ends at LSN {} ({when}), before the requested target: it cannot show that no later record belongs before the target; nothing was written (restore without --until-lsn/--until-time to take everything archived)",
            Lsn(last_end)
        )));
    }
    Ok(plan)
}

pub(crate) fn fmt_time(us: i64) -> String {
    chrono::DateTime::from_timestamp_micros(us)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true))
        .unwrap_or_else(|| us.to_string())
}
