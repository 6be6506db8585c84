//! Recycling segment files: a sealed segment that retention releases is kept, up to a bound,
//! and later reused as a new segment instead of a freshly created one (as PostgreSQL and okaywal
//! do). Its blocks are already written, so the writer's syncs overwrite written blocks and
//! record no metadata: on ext4 a sync that first touches a reserved (unwritten) block also
//! converts its extent, one more device write per durable record.
//!
//! The life of a recycled file, every step a rename or a write that recovery understands at
//! any point (FORMAT.md, "Recycled files"):
//!
//! 1. retention renames a released `N.wal` to `N.wal.prep` (its own number, below every live
//!    segment, a name no writer prepares): the pool. The pool keeps as many files as the
//!    checkpoint released ([`pool_target`], at most
//!    [`RetentionOptions::max_recycled`](crate::retention::RetentionOptions)); past that,
//!    released segments are removed, and so are the pool's highest-numbered files.
//! 2. the writer's preparer, asked for segment `M`, takes the lowest-numbered pool file,
//!    extends it to the segment size with reserved blocks, overwrites its header with zeros and
//!    syncs, then renames it to `M.wal.prep`: the prepared file for `M`.
//! 3. activation renames it to `M.wal.open` and writes the new header, as for any prepared
//!    file. Past the new log's end the file still holds the old records, which the decoder
//!    recognises as stale (`crate::decoder::stale_tail`).

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::datadir::DataDir;
use crate::error::{Error, IoContext, Result};
use crate::format::segment_header::SEGMENT_HEADER_LEN;
use crate::format::{SegmentFileKind, SegmentName};
use crate::segment_file::{reserve_blocks, PreparedSegment};

/// The most recycled files kept when nothing else is said: 64 segments, 1 GiB with the default
/// 16 MiB segments (PostgreSQL's default `max_wal_size`).
pub const DEFAULT_MAX_RECYCLED: usize = 64;

/// The pool keeps at least this many files (when the bound allows), however little a
/// checkpoint released: a few seconds of writing at the disk's speed with 16 MiB segments.
pub const MIN_RECYCLED: usize = 4;

/// How many recycled files the pool keeps after a checkpoint that released `released`
/// segments while the pool held `pooled`: as many as it released, at least [`MIN_RECYCLED`],
/// at most `max`. The writer will likely fill as many segments before the next checkpoint, so
/// that each of them is a recycled file, as PostgreSQL sizes its recycled segments by the
/// distance between checkpoints. A larger pool loses a tenth of its files per checkpoint
/// (rounded down), as PostgreSQL's estimate of that distance decays: a quiet interval between
/// bursts does not throw the files away, the files of a burst that does not come back do not
/// stay for ever, and no checkpoint removes many files at once (each removal frees blocks,
/// which a disk mounted with `discard` trims while the writer syncs).
pub fn pool_target(released: usize, pooled: usize, max: usize) -> usize {
    released
        .max(MIN_RECYCLED)
        .max(pooled - pooled / 10)
        .min(max)
}

/// Removes the files of `pool` beyond the first `keep`: the highest numbered go, the preparer
/// takes the lowest. A file the preparer took meanwhile (renamed) is no longer there and is
/// skipped. Returns the names removed; the caller syncs `wal/` afterwards.
pub fn trim_pool(dir: &DataDir, pool: &[SegmentName], keep: usize) -> Result<Vec<String>> {
    let mut removed = Vec::new();
    for name in pool.iter().skip(keep) {
        let path = dir.segment_path(name);
        crate::fault!("recycle::trim", e => Error::io(format!("remove {}", path.display()), e));
        match std::fs::remove_file(&path) {
            Ok(()) => removed.push(name.to_string()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io(format!("remove {}", path.display()), e)),
        }
    }
    Ok(removed)
}

/// The prepared files in `dir` other than `except`'s: the pool of recycled files, lowest
/// number first.
pub fn pool(dir: &DataDir, except: Option<u64>) -> Result<Vec<SegmentName>> {
    Ok(dir
        .list_segments()?
        .into_iter()
        .filter(|n| n.kind == SegmentFileKind::Prepared && Some(n.segment_no.0) != except)
        .collect())
}

/// Puts the released sealed segment `name` into the pool (renamed to its prepared name) when
/// the pool holds fewer than `max` files. Returns false when it did not (the caller removes
/// the segment instead). The caller syncs `wal/` afterwards.
pub fn release_into_pool(
    dir: &DataDir,
    name: &SegmentName,
    pooled: &mut usize,
    max: usize,
) -> Result<bool> {
    if *pooled >= max {
        return Ok(false);
    }
    let from = dir.segment_path(name);
    let to = dir.segment_path(&name.with_kind(SegmentFileKind::Prepared));
    if to.exists() {
        return Ok(false);
    }
    crate::fault!("recycle::release", e => Error::io(format!("rename {} to {}", from.display(), to.display()), e));
    match std::fs::rename(&from, &to) {
        Ok(()) => {
            *pooled += 1;
            Ok(true)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(true),
        Err(e) => Err(Error::io(
            format!("rename {} to {}", from.display(), to.display()),
            e,
        )),
    }
}

/// Makes the pool file `from` the prepared file `to` for a new segment of `size` bytes: blocks
/// reserved up to the full size, header overwritten with zeros, synced, renamed, mapped. The
/// old records stay. On failure the file stays in the pool (or is the prepared file, harmless):
/// recovery recognises it at every step.
pub fn reuse(from: &Path, to: PathBuf, size: u64) -> Result<PreparedSegment> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(from)
        .ctx(|| format!("open {}", from.display()))?;
    let len = file
        .metadata()
        .ctx(|| format!("stat {}", from.display()))?
        .len();
    if len > size {
        return Err(Error::Other(format!(
            "{} is {len} bytes, more than the segment size {size}: not reused",
            from.display()
        )));
    }
    // The pool name durable before the header is cleared: retention renames released segments
    // into the pool and syncs `wal/` afterwards, maybe in another process and not yet. Were the
    // rename undone by a power loss after the header was cleared, a sealed name would hold a
    // file recovery cannot read.
    if let Some(parent) = from.parent() {
        crate::fault!("recycle::pool_dir_fsync", e => Error::io(format!("fsync directory {}", parent.display()), e));
        crate::fsutil::fsync_dir(parent)?;
    }
    reserve_blocks(&file, from, size)?;
    crate::fault!("recycle::header", e => Error::io(format!("clear the header of {}", from.display()), e));
    file.write_all_at(&[0u8; SEGMENT_HEADER_LEN], 0)
        .ctx(|| format!("clear the header of {}", from.display()))?;
    file.sync_data()
        .ctx(|| format!("fsync {}", from.display()))?;
    if from != to {
        crate::fault!("recycle::rename", e => Error::io(format!("rename {} to {}", from.display(), to.display()), e));
        std::fs::rename(from, &to)
            .ctx(|| format!("rename {} to {}", from.display(), to.display()))?;
    }
    PreparedSegment::mapped(to, file, size)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pool_follows_what_a_checkpoint_released_within_its_bounds() {
        // As many as released, at least the floor, at most the bound.
        assert_eq!(pool_target(9, 0, 64), 9);
        assert_eq!(pool_target(1, 0, 64), MIN_RECYCLED);
        assert_eq!(pool_target(100, 0, 64), 64);
        assert_eq!(pool_target(9, 0, 2), 2);
        assert_eq!(pool_target(9, 40, 0), 0);
        // A pool larger than needed loses a tenth per checkpoint, rounded down.
        let mut pooled = 40;
        let mut seen = Vec::new();
        for _ in 0..8 {
            pooled = pool_target(0, pooled, 64);
            seen.push(pooled);
        }
        assert_eq!(seen, [36, 33, 30, 27, 25, 23, 21, 19]);
        assert_eq!(pool_target(0, 9, 64), 9);
        assert_eq!(pool_target(0, 10, 64), 9);
    }
}
