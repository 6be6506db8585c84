//! Removing old history from an archive (`walship archive-prune`): every segment that no
//! restore to the kept point or any later one needs, in a directory or an object store alike.
//!
//! A restore to a point needs the segment holding the last record at or before it, and every
//! segment after that one; so does a restore to any later point. Pruning finds that segment
//! (the new beginning), records it in the identity file (replaced at once), and only then
//! removes the segments before it, oldest first. Readers skip segments before the beginning
//! the identity file names, so the archive is whole at every step and a pruning that stopped
//! half-way is finished by running it again. The identity file is never removed, nor any
//! segment from the new beginning on.

use std::path::PathBuf;
use std::sync::Arc;

use super::{
    blocking, check_segment_bytes, decode_object, segment_objects, ArchiveIdentity, ArchiveStore,
    CheckedSegment, Compression, ObjectInfo, IDENTITY_NAME,
};
use crate::error::{Error, Result};
use crate::format::{SegmentFileKind, SegmentName};
use crate::Lsn;

/// The oldest restore point to keep.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeepSince {
    /// Restores to this LSN and later (as `restore --until-lsn`: records ending at or before
    /// it).
    Lsn(Lsn),
    /// Restores to this time and later (as `restore --until-time`: records stamped at or
    /// before it), in microseconds since the Unix epoch.
    TimeUs(i64),
}

/// What pruning did, or would do with `dry_run`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PruneReport {
    pub location: String,
    pub dry_run: bool,
    /// The segment the archive began at before.
    pub first_segment_before: u64,
    /// The segment it begins at now (or would).
    pub first_segment: u64,
    /// The objects removed (or that would be), oldest first.
    pub removed: Vec<ObjectInfo>,
    /// Segments kept, from the new beginning on.
    pub kept_segments: u64,
}

impl PruneReport {
    pub fn removed_bytes(&self) -> u64 {
        self.removed.iter().map(|o| o.size).sum()
    }
}

/// Removes from the archive every segment that no restore to `keep` or later needs (with
/// `dry_run`, only says which). A point before the archive's first record or after its last
/// is refused, as restore refuses it, and nothing changes.
pub async fn prune<S: ArchiveStore>(
    store: &Arc<S>,
    keep: KeepSince,
    dry_run: bool,
) -> Result<PruneReport> {
    let loc = store.location();
    // Prunings of one directory archive run one at a time: two that read the identity file
    // together would let the one keeping more write last, moving the beginning back over
    // segments the other removed.
    let _serial = match store.local_root() {
        Some(root) => Some(lock_dir(root)?),
        None => None,
    };
    let objects = store.list().await?;
    let identity = read_identity(&**store, &objects).await?;
    let Some(begin) = identity.first_segment else {
        return Err(Error::Refused(format!(
            "{loc}: an archive of layout version 1 does not record the segment it begins at, so it cannot be pruned; start a new archive and remove this one whole when no restore point in it is needed"
        )));
    };
    let all = segment_objects(&objects);
    // The kept point is found along the newest timeline's history, as restore finds it; an
    // earlier timeline's segments past its switch point are kept (a restore along that
    // timeline still reads them) unless they lie before the new beginning.
    super::history::timeline_without_history(&store.location(), &objects)?;
    let path = super::history::newest_history(&**store, identity.system_id).await?;
    let mut on_path = all.clone();
    super::retain_on_path(&mut on_path, &path, identity.segment_size);
    let held: Vec<_> = on_path
        .iter()
        .filter(|(n, _, _)| n.segment_no.0 >= begin)
        .collect();
    let Some((newest_name, newest_c, newest_o)) = held.last() else {
        return Err(Error::InvalidArgument(format!(
            "{loc}: the archive holds no segments, so there is nothing to prune"
        )));
    };
    let reader = Reader {
        store: store.clone(),
        identity,
    };
    let newest = reader
        .check(*newest_name, &newest_o.name, *newest_c, None)
        .await?;
    let first_segment = match keep {
        KeepSince::Lsn(l) => {
            keep_for_lsn(&reader, &held, begin, (*newest_name, &newest), l).await?
        }
        KeepSince::TimeUs(t) => keep_for_time(&reader, &held, (*newest_name, &newest), t).await?,
    };
    let removed: Vec<ObjectInfo> = all
        .iter()
        .filter(|(n, _, _)| n.segment_no.0 < first_segment)
        .map(|(_, _, o)| o.clone())
        .collect();
    let kept_segments = held
        .iter()
        .filter(|(n, _, _)| n.segment_no.0 >= first_segment)
        .count() as u64;
    if !dry_run {
        // Read again: the beginning never moves back, whoever moved it meanwhile (an object
        // store has no lock to serialize prunings; this narrows the window to one request).
        let now = read_identity(&**store, &store.list().await?).await?;
        if first_segment > now.first_segment.unwrap_or(begin) {
            let moved = ArchiveIdentity {
                first_segment: Some(first_segment),
                ..identity
            };
            store
                .replace(IDENTITY_NAME, Arc::new(moved.encode()))
                .await?;
            tracing::info!(archive = %loc, from = begin, to = first_segment, "the archive begins at a later segment");
        }
        for o in &removed {
            store.delete(&o.name).await?;
            tracing::info!(archive = %loc, object = %o.name, "removed");
        }
    }
    Ok(PruneReport {
        location: loc,
        dry_run,
        first_segment_before: begin,
        first_segment,
        removed,
        kept_segments,
    })
}

/// An exclusive flock on the directory `root` itself (no file is made in the archive), held
/// while the returned descriptor is open.
fn lock_dir(root: &std::path::Path) -> Result<std::fs::File> {
    use std::os::fd::AsRawFd;
    let dir =
        std::fs::File::open(root).map_err(|e| Error::io(format!("open {}", root.display()), e))?;
    // SAFETY: flock on a descriptor we own.
    if unsafe { libc::flock(dir.as_raw_fd(), libc::LOCK_EX) } != 0 {
        let e = std::io::Error::last_os_error();
        return Err(Error::io(format!("lock {}", root.display()), e));
    }
    Ok(dir)
}

async fn read_identity<S: ArchiveStore>(
    store: &S,
    objects: &[ObjectInfo],
) -> Result<ArchiveIdentity> {
    let loc = store.location();
    let file = PathBuf::from(&loc).join(IDENTITY_NAME);
    let missing = || {
        Error::InvalidArgument(format!(
            "{loc}: not an archive (no {IDENTITY_NAME}); nothing was removed"
        ))
    };
    if !objects.iter().any(|o| o.name == IDENTITY_NAME) {
        return Err(missing());
    }
    let data = store.get(IDENTITY_NAME).await?.ok_or_else(missing)?;
    ArchiveIdentity::decode(&data).map_err(|reason| Error::Corrupt {
        file,
        offset: 0,
        lsn: Lsn(0),
        reason,
    })
}

/// Reads and checks archived segments.
struct Reader<S> {
    store: Arc<S>,
    identity: ArchiveIdentity,
}

use crate::format::record::RecordRef;

type Cut = Box<dyn Fn(&RecordRef<'_>) -> bool + Send>;

impl<S: ArchiveStore> Reader<S> {
    /// Fetches a segment and checks every byte; `cut` marks the first record past the point.
    async fn check(
        &self,
        name: SegmentName,
        object: &str,
        c: Compression,
        cut: Option<Cut>,
    ) -> Result<CheckedSegment> {
        let loc = self.store.location();
        let file = PathBuf::from(&loc).join(object);
        let data = self
            .store
            .get(object)
            .await?
            .ok_or_else(|| Error::Corrupt {
                file: file.clone(),
                offset: 0,
                lsn: Lsn(0),
                reason: "vanished from the archive while it was pruned".into(),
            })?;
        let identity = self.identity;
        blocking(move || {
            let bytes = decode_object(&file, c, data, identity.segment_size)?;
            let cut: Option<&dyn Fn(&RecordRef<'_>) -> bool> = match &cut {
                Some(f) => Some(&**f),
                None => None,
            };
            check_segment_bytes(&file, &name, &bytes, &identity, cut)
        })
        .await
    }
}

type Held<'a> = [&'a (SegmentName, Compression, ObjectInfo)];

fn before_beginning(what: String, first: SegmentName) -> Error {
    Error::InvalidArgument(format!(
        "{what} is before the archive's first record (its first segment is {first}): no restore to it is possible, so it cannot be kept; nothing was removed"
    ))
}

fn after_end(what: String, end: String) -> Error {
    Error::InvalidArgument(format!(
        "{what} is after the archive's last record ({end}): a restore to it would be refused, so it cannot be the oldest point kept; nothing was removed"
    ))
}

/// The segment holding the last record ending at or before `l`.
async fn keep_for_lsn<S: ArchiveStore>(
    reader: &Reader<S>,
    held: &Held<'_>,
    begin: u64,
    (newest_name, newest): (SegmentName, &CheckedSegment),
    l: Lsn,
) -> Result<u64> {
    let size = reader.identity.segment_size;
    let first = held[0].0;
    if l > newest.seal_lsn() {
        return Err(after_end(
            format!("LSN {l}"),
            format!("LSN {}, in {newest_name}", newest.seal_lsn()),
        ));
    }
    let s = l.0 / size;
    if s < begin {
        return Err(before_beginning(format!("LSN {l}"), first));
    }
    let Some((name, c, o)) = held.iter().find(|(n, _, _)| n.segment_no.0 == s) else {
        return Err(Error::Corrupt {
            file: PathBuf::from(reader.store.location())
                .join(SegmentName::new(first.timeline, s, SegmentFileKind::Sealed).to_string()),
            offset: 0,
            lsn: l,
            reason: "missing from the archive, which must hold every segment from the one it begins at: run `walship verify` on it".into(),
        });
    };
    let checked = reader
        .check(
            *name,
            &o.name,
            *c,
            Some(Box::new(move |r: &RecordRef<'_>| r.end_lsn() > l)),
        )
        .await?;
    match checked.cut {
        // No record of this segment ends at or before the point: the one before holds the last.
        Some((_, 0)) if s == begin => Err(before_beginning(format!("LSN {l}"), first)),
        Some((_, 0)) => Ok(s - 1),
        _ => Ok(s),
    }
}

/// The segment holding the last record stamped at or before `t`: the newest whose first record
/// is (found by bisection; timestamps follow the writer's clock, as restore assumes).
async fn keep_for_time<S: ArchiveStore>(
    reader: &Reader<S>,
    held: &Held<'_>,
    (newest_name, newest): (SegmentName, &CheckedSegment),
    t: i64,
) -> Result<u64> {
    let when = format!("time {}", super::restore::fmt_time(t));
    if let Some(last) = newest.last_timestamp_us {
        if t > last {
            return Err(after_end(
                when,
                format!(
                    "stamped {}, in {newest_name}",
                    super::restore::fmt_time(last)
                ),
            ));
        }
    }
    let (mut lo, mut hi) = (0usize, held.len());
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        let (name, c, o) = held[mid];
        let checked = reader
            .check(
                *name,
                &o.name,
                *c,
                Some(Box::new(move |r: &RecordRef<'_>| r.header.timestamp_us > t)),
            )
            .await?;
        // A segment without records counts as after the point: it keeps more, never less.
        let starts_at_or_before = match checked.cut {
            Some((_, n)) => n > 0,
            None => checked.last_timestamp_us.is_some(),
        };
        if starts_at_or_before {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    if lo == 0 {
        return Err(before_beginning(when, held[0].0));
    }
    Ok(held[lo - 1].0.segment_no.0)
}
