//! Retention: which sealed segments may be removed, and removing them.
//!
//! A sealed segment is removed only when the application's checkpoint and every registered
//! consumer (the archiver, each standby slot) not marked lost are past its end (the LSN of its
//! seal marker). The newest sealed segment is always kept: with no open segment it is what
//! tells the writer's recovery where the log ends. A cap bounds what one lagging consumer may
//! hold: a consumer that alone would keep more than the cap of removable WAL is marked lost,
//! logged at error level, and holds nothing from then on.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::consumers::{ConsumerKind, ConsumerRecord, ConsumerRegistry};
use crate::datadir::DataDir;
use crate::error::{Error, Result};
use crate::format::ControlFile;
use crate::fsutil::{fsync_dir, read_json, write_atomic};
use crate::log_ends::wal_ends;
use crate::sealed_set::{sealed_files, SealedFile as Sealed};
use crate::{Lsn, Wal};

/// Library options for [`checkpoint`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetentionOptions {
    /// The most removable WAL (bytes of sealed segments below the checkpoint) one consumer may
    /// hold back; past it the consumer is marked lost. `None`: no cap.
    pub max_retained: Option<u64>,
    /// The most released segment files kept for the writer to reuse as new segments
    /// (prepared files, see [`crate::recycling`]) instead of being removed. The pool keeps as
    /// many as a checkpoint released, at least [`crate::recycling::MIN_RECYCLED`], never more
    /// than this ([`crate::recycling::pool_target`]); 0 removes every released segment and the
    /// pool.
    pub max_recycled: usize,
}

impl Default for RetentionOptions {
    fn default() -> Self {
        RetentionOptions {
            max_retained: None,
            max_recycled: crate::recycling::DEFAULT_MAX_RECYCLED,
        }
    }
}

/// The checkpoint recorded in `state/retention.json`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct RetentionState {
    checkpoint_lsn: Lsn,
}

/// What one `checkpoint` call did.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct CheckpointReport {
    /// The checkpoint in force: the highest ever declared.
    pub checkpoint_lsn: Lsn,
    /// Released segments: removed, or kept for reuse (then also in `recycled`).
    pub removed: Vec<String>,
    pub removed_bytes: u64,
    /// The released segments kept for reuse, under their prepared names.
    pub recycled: Vec<String>,
    /// Recycled files removed because the pool held more than this checkpoint released
    /// ([`crate::recycling::pool_target`]).
    pub pool_removed: Vec<String>,
    pub retained_segments: u64,
    pub retained_bytes: u64,
    /// Consumers this call marked lost.
    pub marked_lost: Vec<String>,
    /// What keeps the oldest remaining sealed segment (`missing_from_archive` last when an
    /// archive that should hold it does not).
    pub held_by: Vec<String>,
    /// Segments kept because an archiver's position covers them but its archive does not hold
    /// them (the archive lost them): each entry names the segment and the archive.
    pub missing_from_archive: Vec<String>,
}

/// One consumer as retention sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ConsumerRetention {
    pub id: String,
    pub kind: ConsumerKind,
    pub position: Lsn,
    pub lost: bool,
    pub address: Option<String>,
    pub last_contact_us: Option<i64>,
    /// Bytes of sealed segments this consumer still needs (ending after its position).
    pub needs_bytes: u64,
    /// True when it is among what keeps the oldest sealed segment.
    pub holds_retention: bool,
}

/// Retention at a glance, for `walship status`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct RetentionReport {
    pub checkpoint_lsn: Lsn,
    pub sealed_segments: u64,
    pub sealed_bytes: u64,
    pub oldest_segment: Option<String>,
    pub consumers: Vec<ConsumerRetention>,
    /// What keeps the oldest sealed segment: "checkpoint", "newest_segment", or consumer ids.
    pub held_by: Vec<String>,
}

fn state_path(dir: &DataDir) -> PathBuf {
    dir.state_dir().join("retention.json")
}

fn load_state(dir: &DataDir) -> Result<RetentionState> {
    let path = state_path(dir);
    let invalid = |e| Error::corrupt_state(&path, "retention state", e);
    Ok(read_json(&path, invalid)?.unwrap_or_default())
}

/// The highest checkpoint ever declared for `dir` (0 when none was).
pub fn checkpoint_lsn(dir: &DataDir) -> Result<Lsn> {
    Ok(load_state(dir)?.checkpoint_lsn)
}

/// Why an archiver (not lost, with a recorded archive location) cannot be shown to hold `seg`
/// in its archive, one entry per such archiver. A segment counts as archived when its object
/// is in the archive directory under its final name (which only ever appears complete), and an
/// uncompressed object has the local file's size; an `s3://` archive is asked (with the AWS
/// environment of this process), and one that cannot be reached holds nothing for this purpose.
/// A segment before the one the archive begins at (its identity file's `first_segment`) was
/// pruned from it on purpose and counts as held.
/// An archiver registered without a location
/// (through the library) is trusted by its position alone.
fn missing_from_archives(
    seg: &Sealed,
    consumers: &[ConsumerRecord],
    control: &ControlFile,
) -> Vec<String> {
    use crate::archive::{object_name, Compression};
    let mut out = Vec::new();
    let not_held = |addr: &str, id: &str, why: Option<&str>| {
        format!(
            "{} is not in the archive {addr}{} although consumer {id} recorded it as archived",
            seg.name,
            why.map_or(String::new(), |w| format!(" ({w})"))
        )
    };
    for c in consumers
        .iter()
        .filter(|c| c.kind == ConsumerKind::Archiver && !c.lost)
    {
        let Some(addr) = c.address.as_deref() else {
            continue;
        };
        if addr.starts_with("s3://") {
            match crate::archive::s3::holds_segment_blocking(addr, seg.name, seg.size, control) {
                Ok(Ok(())) => {}
                Ok(Err(why)) => out.push(not_held(addr, &c.id, Some(&why))),
                Err(e) => out.push(format!(
                    "{}: cannot check that the archive {addr} holds it: {e}",
                    seg.name
                )),
            }
            continue;
        }
        let root = std::path::Path::new(addr);
        if !root.is_absolute() {
            out.push(format!(
                "{}: the archive location {addr:?} of consumer {} is not an absolute path, so {} cannot be found in it",
                seg.name, c.id, seg.name
            ));
            continue;
        }
        // Another system's archive holds none of this directory's segments, whatever their
        // names and sizes.
        let identity = std::fs::read(root.join(crate::archive::IDENTITY_NAME)).ok();
        if let Some(why) = crate::archive::identity::not_archive_of(identity.as_deref(), control) {
            out.push(not_held(addr, &c.id, Some(&why)));
            continue;
        }
        let raw = root.join(object_name(seg.name, Compression::None));
        let zst = root.join(object_name(seg.name, Compression::Zstd));
        // Under both names, the segment is damage a restore refuses: not held.
        if raw.exists() && zst.exists() {
            let why = twice(seg.name);
            out.push(not_held(addr, &c.id, Some(&why)));
            continue;
        }
        let held = std::fs::metadata(&raw).is_ok_and(|m| m.is_file() && m.len() == seg.size)
            || std::fs::metadata(&zst).is_ok_and(|m| m.is_file() && m.len() > 0)
            // Pruned: the archive begins after it.
            || identity.is_some_and(|id| {
                crate::archive::identity::begins_after(&id, seg.name.segment_no.0)
            });
        if !held {
            out.push(not_held(addr, &c.id, None));
        }
    }
    out
}

/// Why an archive holding `seg` under both names does not count as holding it.
pub(crate) fn twice(seg: crate::format::SegmentName) -> String {
    use crate::archive::{object_name, Compression};
    format!(
        "it is stored twice, as {} and {}, which a restore refuses",
        object_name(seg, Compression::None),
        object_name(seg, Compression::Zstd)
    )
}

/// What keeps `seg`: the checkpoint, being the newest sealed segment, or consumers.
fn holders(
    seg: &Sealed,
    newest: bool,
    checkpoint: Lsn,
    consumers: &[ConsumerRecord],
) -> Vec<String> {
    let mut out = Vec::new();
    if newest {
        out.push("newest_segment".to_string());
    }
    if seg.end > checkpoint {
        out.push("checkpoint".to_string());
    }
    out.extend(
        consumers
            .iter()
            .filter(|c| !c.lost && c.position < seg.end)
            .map(|c| c.id.clone()),
    );
    out
}

/// Declares WAL below `lsn` no longer needed by the application and removes the sealed segments
/// that every consumer not marked lost is past as well. Runs beside a writer and consumers in
/// other processes: it takes no lock and removes only sealed files. A checkpoint past the end
/// of the WAL on disk (the flush end of [`wal_ends`]) is refused: it could never be lowered again, and would
/// let retention remove segments the application still needs.
pub fn checkpoint(dir: &DataDir, lsn: Lsn, opts: &RetentionOptions) -> Result<CheckpointReport> {
    let control = dir.read_control()?;
    if lsn.0 > 0 {
        let (end, _) = wal_ends(dir, &control)?;
        refuse_past(lsn, end, "the end of the WAL on disk")?;
    }
    checkpoint_checked(dir, &control, lsn, opts)
}

/// Refuses a checkpoint past `end`; nothing is changed.
fn refuse_past(lsn: Lsn, end: Lsn, what: &str) -> Result<()> {
    if lsn > end {
        return Err(Error::InvalidArgument(format!(
            "checkpoint {lsn} is past {what}, {end}: a checkpoint must name a position the log has reached (it never moves back); nothing changed"
        )));
    }
    Ok(())
}

fn checkpoint_checked(
    dir: &DataDir,
    control: &ControlFile,
    lsn: Lsn,
    opts: &RetentionOptions,
) -> Result<CheckpointReport> {
    // One checkpoint at a time per directory (another process's included): two that read the
    // remembered checkpoint together would otherwise let the lower one write last, moving it
    // back below what the higher one already removed.
    let _serial =
        crate::datadir::open_flocked(&dir.state_dir().join("retention.lock"), libc::LOCK_EX)?;
    let mut state = load_state(dir)?;
    if lsn > state.checkpoint_lsn {
        state.checkpoint_lsn = lsn;
        let bytes = serde_json::to_vec_pretty(&state)
            .map_err(|e| Error::Other(format!("encode retention state: {e}")))?;
        write_atomic(&state_path(dir), &bytes)?;
    }
    let ckpt = state.checkpoint_lsn;
    let segs = sealed_files(dir, control.segment_size)?;
    let removable_by_checkpoint = removable_by(&segs, ckpt);
    let registry = ConsumerRegistry::new(dir);
    let mut consumers = registry.list()?;
    let mut report = CheckpointReport {
        checkpoint_lsn: ckpt,
        ..CheckpointReport::default()
    };
    if let Some(cap) = opts.max_retained {
        let held = |pos: Lsn| held(&removable_by_checkpoint, pos);
        for c in consumers.iter_mut().filter(|c| !c.lost) {
            if held(c.position) <= cap {
                continue;
            }
            // Re-read: the consumer may have moved on since the listing.
            let Some(fresh) = registry.get(&c.id)? else {
                continue;
            };
            let holding = held(fresh.position);
            if fresh.lost || holding <= cap {
                *c = fresh;
                continue;
            }
            // A mark of its own: a progress save racing with this one cannot undo it.
            let Some(fresh) = registry.mark_lost(&fresh.id)? else {
                continue;
            };
            tracing::error!(
                consumer = %fresh.id,
                kind = ?fresh.kind,
                position = %fresh.position,
                holding_bytes = holding,
                cap_bytes = cap,
                "consumer marked LOST: it would hold more WAL than the retention cap; it no longer holds WAL back and must be rebuilt (a standby re-cloned, an archive restarted)"
            );
            report.marked_lost.push(fresh.id.clone());
            *c = fresh;
        }
    }
    let floor = consumers
        .iter()
        .filter(|c| !c.lost)
        .map(|c| c.position)
        .min()
        .unwrap_or(Lsn(u64::MAX));
    // Recycled files waiting for reuse: prepared files below the newest sealed segment (the
    // writer's prepared file for its next segment is above it).
    let newest = segs.last().map_or(0, |s| s.name.segment_no.0);
    let pool: Vec<_> = crate::recycling::pool(dir, None)?
        .into_iter()
        .filter(|n| n.segment_no.0 < newest)
        .collect();
    let released = removable_by_checkpoint
        .iter()
        .take_while(|s| s.end <= floor)
        .count();
    let pool_target = crate::recycling::pool_target(released, pool.len(), opts.max_recycled);
    report.pool_removed = crate::recycling::trim_pool(dir, &pool, pool_target)?;
    let mut pooled = pool.len().min(pool_target);
    let mut removed_any = !report.pool_removed.is_empty();
    for s in removable_by_checkpoint.iter().take(released) {
        // The archiver's position says the segment is archived; its archive must show it.
        let missing = missing_from_archives(s, &consumers, control);
        if !missing.is_empty() {
            for m in &missing {
                tracing::error!(segment = %s.name, problem = %m, "kept a segment the archiver's position covers but its archive does not hold; run `walship archive` to push it again");
            }
            report.missing_from_archive = missing;
            break;
        }
        if crate::recycling::release_into_pool(dir, &s.name, &mut pooled, opts.max_recycled)? {
            report.recycled.push(
                s.name
                    .with_kind(crate::format::SegmentFileKind::Prepared)
                    .to_string(),
            );
        } else {
            match std::fs::remove_file(&s.path) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::io(format!("remove {}", s.path.display()), e)),
            }
        }
        removed_any = true;
        report.removed.push(s.name.to_string());
        report.removed_bytes += s.size;
    }
    if removed_any {
        fsync_dir(&dir.wal_dir())?;
        crate::metrics::library::library()
            .removed
            .inc_by(report.removed.len() as u64);
        tracing::info!(
            removed = report.removed.len(),
            recycled = report.recycled.len(),
            pool_removed = report.pool_removed.len(),
            bytes = report.removed_bytes,
            checkpoint = %ckpt,
            "removed sealed segments below the checkpoint"
        );
    }
    let kept = &segs[report.removed.len()..];
    report.retained_segments = kept.len() as u64;
    report.retained_bytes = kept.iter().map(|s| s.size).sum();
    if let Some(oldest) = kept.first() {
        report.held_by = holders(oldest, kept.len() == 1, ckpt, &consumers);
        if !report.missing_from_archive.is_empty() {
            // Kept because an archive that should hold it does not.
            report.held_by.push("missing_from_archive".to_string());
        }
    }
    Ok(report)
}

/// Every consumer, its position, whether it is lost, and what keeps the oldest sealed segment.
/// Reads only; safe beside a running writer.
pub fn report(dir: &DataDir) -> Result<RetentionReport> {
    let control = dir.read_control()?;
    let ckpt = load_state(dir)?.checkpoint_lsn;
    let segs = sealed_files(dir, control.segment_size)?;
    let consumers = ConsumerRegistry::new(dir).list()?;
    let held_by = segs
        .first()
        .map(|s| holders(s, segs.len() == 1, ckpt, &consumers))
        .unwrap_or_default();
    let list = consumers
        .iter()
        .map(|c| ConsumerRetention {
            id: c.id.clone(),
            kind: c.kind,
            position: c.position,
            lost: c.lost,
            address: c.address.clone(),
            last_contact_us: c.last_contact_us,
            needs_bytes: if c.lost {
                0
            } else {
                segs.iter()
                    .filter(|s| s.end > c.position)
                    .map(|s| s.size)
                    .sum()
            },
            holds_retention: held_by.contains(&c.id),
        })
        .collect();
    Ok(RetentionReport {
        checkpoint_lsn: ckpt,
        sealed_segments: segs.len() as u64,
        sealed_bytes: segs.iter().map(|s| s.size).sum(),
        oldest_segment: segs.first().map(|s| s.name.to_string()),
        consumers: list,
        held_by,
    })
}

/// The sealed segments the checkpoint alone would release (the newest sealed one is always
/// kept), oldest first.
fn removable_by(segs: &[Sealed], ckpt: Lsn) -> Vec<&Sealed> {
    segs.iter()
        .take(segs.len().saturating_sub(1))
        .take_while(|s| s.end <= ckpt)
        .collect()
}

/// Bytes of `removable` that a consumer at `position` holds back: what the cap bounds.
fn held(removable: &[&Sealed], position: Lsn) -> u64 {
    removable
        .iter()
        .filter(|s| s.end > position)
        .map(|s| s.size)
        .sum()
}

/// Each consumer not marked lost, with the bytes of sealed segments below the checkpoint it
/// alone holds back: what `--max-retained` ([`RetentionOptions::max_retained`]) caps at the
/// next checkpoint. Reads only; safe beside a running writer.
pub fn held_back(dir: &DataDir) -> Result<Vec<(String, u64)>> {
    let control = dir.read_control()?;
    let ckpt = load_state(dir)?.checkpoint_lsn;
    let segs = sealed_files(dir, control.segment_size)?;
    let removable = removable_by(&segs, ckpt);
    Ok(ConsumerRegistry::new(dir)
        .list()?
        .into_iter()
        .filter(|c| !c.lost)
        .map(|c| (c.id, held(&removable, c.position)))
        .collect())
}

/// Removes a consumer from the registry: it no longer holds WAL back. False when it was not
/// registered.
pub fn drop_consumer(dir: &DataDir, id: &str) -> Result<bool> {
    let dropped = ConsumerRegistry::new(dir).remove(id)?;
    if dropped {
        tracing::warn!(consumer = %id, "consumer dropped: it no longer holds WAL back");
    }
    Ok(dropped)
}

impl Wal {
    /// [`checkpoint`] on this writer's data directory, once every segment it has sealed has its
    /// sealed name. A checkpoint past [`Wal::flush_lsn`] is refused
    /// ([`Error::InvalidArgument`]): the application cannot have applied what is not durable.
    pub fn checkpoint(&self, lsn: Lsn, opts: &RetentionOptions) -> Result<CheckpointReport> {
        refuse_past(
            lsn,
            self.flush_lsn(),
            "the durable end of the WAL (flush_lsn)",
        )?;
        self.wait_sealed_names()?;
        let control = self.data_dir().read_control()?;
        checkpoint_checked(self.data_dir(), &control, lsn, opts)
    }
}
