//! Segment files on disk: preparing them ahead (blocks allocated, pages faulted in) and mapping
//! the open one for writing.
//!
//! How a segment is prepared decides what a durable append costs. On ext4 with large page-cache
//! folios, `msync` writes back every folio it touches in full (up to 1-2 MiB), so a naive mapping
//! pays a megabyte per 4 KiB sync. `MADV_RANDOM` on the mapping makes every fault create a 4 KiB
//! folio, so each sync writes only the pages that changed. The writer reserves each new
//! segment's blocks with `fallocate` ([`SegmentFill::Reserve`], the default); with
//! [`SegmentFill::Zeros`] it also writes zeros over them ahead of use, so that a later sync
//! overwrites written blocks and records no metadata, where a reserved block is an unwritten
//! extent whose conversion costs the first sync that touches it another device write (3 device
//! writes per durable 4 KiB record instead of 2). Zeros cost the disk every byte twice, and a
//! writer that outruns the zero-filling waits for it at the rotation: measured here, no-sync
//! 4 KiB appends fell to a third and durable 1 MiB appends by a third, more than the durable
//! 4 KiB rows gained (docs/PERFORMANCE.md has the figures), so zeros are an option, not the
//! default.
//! A file system without `fallocate` gets zeros written instead ([`reserve_blocks`]). Either way every
//! block exists before the map does, so a store through it can never hit ENOSPC as SIGBUS.
//! `MADV_POPULATE_WRITE` then faults the pages in writable ahead of the writer, which otherwise
//! pays a fault (~3 µs here) on its first store to each page; it works down from the segment's
//! end and stops at the writer ([`Prefault`]).
//!
//! Pages nothing stores to again are unmapped before they are written back
//! ([`ActiveSegment::unmap_pages`]): the write-back of a mapped page write-protects it first, with
//! a TLB flush across the cores the process runs on, one page at a time.

use std::fs::{self, File, OpenOptions};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use memmap2::{Advice, MmapOptions, MmapRaw};

use crate::error::{IoContext, Result};
use crate::format::SegmentName;

/// Size of each zero-filling write: small writes create small page-cache folios.
const FILL_CHUNK: usize = 4096;

/// The page size the mapping's advice works in.
const PAGE: usize = 4096;

/// The zero-fill is written out in steps of this many bytes, each waited for, so that the disk
/// queue never holds more than a step of it: a durable append that syncs while the next segment
/// is being prepared waits behind at most one step, not a whole segment of zeros.
const FILL_WRITEBACK_STEP: usize = 1 << 20;

/// Writes `[from, from + len)` of `f` to disk and waits for it (no device flush: the final
/// fdatasync makes it durable).
fn write_out(f: &File, from: usize, len: usize) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: plain syscall on a descriptor we own.
    let r = unsafe {
        libc::sync_file_range(
            f.as_raw_fd(),
            from as libc::off64_t,
            len as libc::off64_t,
            libc::SYNC_FILE_RANGE_WAIT_BEFORE
                | libc::SYNC_FILE_RANGE_WRITE
                | libc::SYNC_FILE_RANGE_WAIT_AFTER,
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Writes `size` zeros into `f` from offset 0 in 4 KiB writes (small writes create small
/// page-cache folios), waiting for each MiB to reach the disk, then syncs.
fn zero_fill(f: &File, path: &Path, size: u64) -> Result<()> {
    use std::os::unix::fs::FileExt;
    let zeros = [0u8; FILL_CHUNK];
    let size = size as usize;
    let mut done = 0usize;
    while done < size {
        let n = (size - done).min(FILL_CHUNK);
        f.write_all_at(&zeros[..n], done as u64)
            .ctx(|| format!("zero-fill {}", path.display()))?;
        done += n;
        if done % FILL_WRITEBACK_STEP == 0 {
            write_out(f, done - FILL_WRITEBACK_STEP, FILL_WRITEBACK_STEP)
                .ctx(|| format!("write back {}", path.display()))?;
        }
    }
    f.sync_data().ctx(|| format!("fsync {}", path.display()))
}

/// Reserves `size` bytes of real blocks for `f`, the one way every segment file gets its space
/// (the writer's preparer and activation, restore): `fallocate`, which records unwritten extents
/// (they read as zeros) and writes no data; where the file system does not support it (FUSE,
/// NFS before 4.2, ext2), by writing zeros and syncing them, as etcd does. No sync after
/// `fallocate`: the writer's first sync of the segment writes the file's metadata with its data,
/// and the rename into place is synced with the directory. Only "not supported" falls back:
/// ENOSPC, EIO and every other error stay errors.
pub fn reserve_blocks(f: &File, path: &Path, size: u64) -> Result<()> {
    reserve_then(f, path, size, |_, _, _| Ok(()))
}

/// `fallocate`, then `after` on success; the zero-filling fallback where it is not supported.
fn reserve_then(
    f: &File,
    path: &Path,
    size: u64,
    after: fn(&File, &Path, u64) -> Result<()>,
) -> Result<()> {
    match fallocate(f, size) {
        Ok(()) => after(f, path, size),
        Err(e) if allocation_unsupported(&e) => {
            warn_zero_fill_once(path, &e);
            zero_fill(f, path, size)
        }
        Err(e) => Err(crate::Error::io(
            format!("allocate {size} bytes for {}", path.display()),
            e,
        )),
    }
}

/// Reserves the blocks as [`reserve_blocks`] does (so the file has its full size and blocks
/// from the start, and no space is an error here), then writes zeros over them with 4 KiB
/// writes and syncs: the extents become written, and later syncs overwrite them without a
/// metadata update. Interrupted, it leaves a full-size file of zeros.
fn reserve_and_zero(f: &File, path: &Path, size: u64) -> Result<()> {
    reserve_then(f, path, size, zero_fill)
}

/// `fallocate(f, 0, 0, size)`, retried when a signal interrupts it.
fn fallocate(f: &File, size: u64) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    crate::fault!("segment::fallocate");
    loop {
        // SAFETY: plain syscall on a descriptor we own.
        if unsafe { libc::fallocate(f.as_raw_fd(), 0, 0, size as libc::off64_t) } == 0 {
            return Ok(());
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// True for the errors by which a file system (or a sandbox filtering system calls) says it
/// has no `fallocate`: EOPNOTSUPP (the same number as ENOTSUP on Linux) and ENOSYS.
fn allocation_unsupported(e: &std::io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EOPNOTSUPP | libc::ENOSYS))
}

/// Logs once per process that segments are reserved by writing zeros: slower (every byte of
/// each new segment is written twice), and worth knowing when a rotation takes long.
fn warn_zero_fill_once(path: &Path, e: &std::io::Error) {
    use std::sync::atomic::{AtomicBool, Ordering};
    static WARNED: AtomicBool = AtomicBool::new(false);
    if !WARNED.swap(true, Ordering::Relaxed) {
        tracing::warn!(
            file = %path.display(),
            error = %e,
            "the file system does not support fallocate: reserving segment space by writing zeros"
        );
    }
}

/// Creates `path` and gives it `size` bytes with `allocate`. On failure (ENOSPC included) the
/// partial file is removed.
fn create_allocated(
    path: &Path,
    size: u64,
    allocate: fn(&File, &Path, u64) -> Result<()>,
) -> Result<File> {
    let result = (|| {
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)
            .ctx(|| format!("create {}", path.display()))?;
        crate::fault!("segment::prepare", e => crate::Error::io(format!("allocate {}", path.display()), e));
        allocate(&f, path, size)?;
        Ok(f)
    })();
    if result.is_err() {
        let _ = fs::remove_file(path);
    }
    result
}

/// Creates `path` as a zero-filled file of `size` bytes with written blocks, synced (the
/// benchmark's baseline file).
pub fn prepare_file(path: &Path, size: u64) -> Result<()> {
    create_allocated(path, size, zero_fill).map(drop)
}

/// Creates `path` with `size` bytes of blocks reserved by [`reserve_blocks`], for writing.
pub fn create_reserved(path: &Path, size: u64) -> Result<File> {
    create_allocated(path, size, reserve_blocks)
}

/// How the writer gives a new segment file its blocks.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum SegmentFill {
    /// `fallocate`, then zeros written over the blocks with 4 KiB writes and synced: later
    /// syncs overwrite written blocks.
    Zeros,
    /// `fallocate` (unwritten extents), zeros where the file system lacks it: quick to
    /// prepare, but the first sync of each block also converts its extent.
    #[default]
    Reserve,
}

/// A segment file made ready ahead of use: blocks allocated, mapped; see [`Prefault`] for
/// its pages.
pub struct PreparedSegment {
    pub path: PathBuf,
    file: File,
    map: Arc<SegmentMap>,
}

/// A segment's mapping and how far the writer has got in it, shared by the writer and the
/// segment's [`Prefault`], which never faults in a page the writer has reached.
struct SegmentMap {
    map: MmapRaw,
    /// The end of the writer's last store; the mapping's length once nothing stores to it again.
    writer_at: AtomicUsize,
}

impl SegmentMap {
    fn new(map: MmapRaw) -> Arc<SegmentMap> {
        Arc::new(SegmentMap {
            map,
            writer_at: AtomicUsize::new(0),
        })
    }

    fn len(&self) -> usize {
        self.map.len()
    }
}

/// Faults a prepared segment's pages in writable, so that the writer's first store to each
/// page costs no fault. It may run while the writer already uses the segment: faulting a page
/// in never changes its bytes. It works from the end of the segment down, a step at a time
/// ([`Prefault::step`]), and stops at the writer's position: a writer that outruns it (no
/// syncs, a fault costs about what the store does) faults its pages itself from the start,
/// while the prefault faults the others from the end: they meet once, within one step, and
/// every other page is faulted once, by one of them, on one of two cores.
pub struct Prefault {
    map: Arc<SegmentMap>,
    /// Pages from this offset to the end are done.
    done_from: usize,
}

impl Prefault {
    fn new(map: Arc<SegmentMap>) -> Prefault {
        let done_from = map.len();
        Prefault { map, done_from }
    }

    /// Faults in every page the writer has not reached.
    pub fn run(mut self) {
        while self.step(self.map.len()) {}
    }

    /// Faults in the next `len` bytes (at least a page) below what is done; false once every
    /// page the writer has not reached is done.
    pub fn step(&mut self, len: usize) -> bool {
        let frontier = self
            .map
            .writer_at
            .load(Ordering::Relaxed)
            .next_multiple_of(PAGE);
        let from = self
            .done_from
            .saturating_sub(len.max(PAGE))
            .max(frontier)
            .min(self.done_from);
        if from == self.done_from {
            return false;
        }
        if let Err(e) =
            self.map
                .map
                .advise_range(Advice::PopulateWrite, from, self.done_from - from)
        {
            // Best effort: kernels before 5.14 lack `MADV_POPULATE_WRITE`.
            tracing::debug!(error = %e, "prefaulting a segment's pages failed");
            self.done_from = 0;
            return false;
        }
        self.done_from = from;
        from > frontier
    }
}

impl PreparedSegment {
    /// Creates `path` with `size` bytes of blocks given as `fill` says, and maps it.
    pub fn create(path: PathBuf, size: u64, fill: SegmentFill) -> Result<PreparedSegment> {
        let allocate = match fill {
            SegmentFill::Zeros => reserve_and_zero,
            SegmentFill::Reserve => reserve_blocks,
        };
        let file = create_allocated(&path, size, allocate)?;
        Self::mapped(path, file, size)
    }

    /// Maps a prepared file found on disk (left by an earlier run).
    pub fn open(path: PathBuf, size: u64) -> Result<PreparedSegment> {
        let file = open_rw(&path)?;
        Self::mapped(path, file, size)
    }

    /// What faults this segment's pages in; run it off the append path.
    pub fn prefault(&self) -> Prefault {
        Prefault::new(self.map.clone())
    }

    pub(crate) fn mapped(path: PathBuf, file: File, size: u64) -> Result<PreparedSegment> {
        let map = SegmentMap::new(map_segment(&file, &path, size)?);
        Ok(PreparedSegment { path, file, map })
    }
}

fn open_rw(path: &Path) -> Result<File> {
    OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .ctx(|| format!("open {}", path.display()))
}

/// Maps `size` bytes of `file` read-write as the writer maps a segment: `MADV_RANDOM`, so that
/// faults create 4 KiB page-cache folios.
pub fn map_segment(file: &File, path: &Path, size: u64) -> Result<MmapRaw> {
    let map = MmapOptions::new()
        .len(size as usize)
        .map_raw(file)
        .ctx(|| format!("mmap {}", path.display()))?;
    // Keep page-cache folios at 4 KiB so each sync writes only what changed.
    map.advise(Advice::Random)
        .ctx(|| format!("madvise {}", path.display()))?;
    Ok(map)
}

/// The open segment, mapped read-write.
pub struct ActiveSegment {
    pub name: SegmentName,
    pub path: PathBuf,
    /// Private: every sync of it goes through [`ActiveSegment::synced`].
    file: File,
    map: Arc<SegmentMap>,
    pub start_lsn: crate::Lsn,
    /// Held for each sync of this file; holds the first failure (see [`ActiveSegment::synced`]).
    sync_failure: Mutex<Option<SyncFailure>>,
}

/// The first failed sync of a segment, replayed to every later one.
struct SyncFailure {
    what: &'static str,
    errno: Option<i32>,
    kind: std::io::ErrorKind,
    message: String,
}

impl SyncFailure {
    fn error(&self) -> std::io::Error {
        let cause = match self.errno {
            Some(n) => std::io::Error::from_raw_os_error(n).to_string(),
            None => self.message.clone(),
        };
        std::io::Error::new(
            self.kind,
            format!("an earlier {} of this file failed: {cause}", self.what),
        )
    }
}

impl ActiveSegment {
    /// Maps an existing, fully allocated open segment of `size` bytes whose records end at
    /// `used`, prefaulting the pages past them.
    pub fn map(path: PathBuf, name: SegmentName, size: u64, used: usize) -> Result<ActiveSegment> {
        let file = open_rw(&path)?;
        let len = file
            .metadata()
            .ctx(|| format!("stat {}", path.display()))?
            .len();
        if len != size {
            return Err(crate::Error::Corrupt {
                file: path,
                offset: len,
                lsn: name.segment_no.start_lsn_saturating(size),
                reason: format!("open segment is {len} bytes, expected the segment size {size}"),
            });
        }
        let start_lsn = name.start_lsn(size)?;
        let map = SegmentMap::new(map_segment(&file, &path, size)?);
        map.writer_at.store(used, Ordering::Relaxed);
        Prefault::new(map.clone()).run();
        Ok(ActiveSegment {
            start_lsn,
            name,
            path,
            file,
            map,
            sync_failure: Mutex::new(None),
        })
    }

    /// Takes over a prepared segment (mapping included) after it was renamed to `path`.
    pub fn from_prepared(prepared: PreparedSegment, path: PathBuf, name: SegmentName) -> Self {
        ActiveSegment {
            start_lsn: name
                .segment_no
                .start_lsn_saturating(prepared.map.len() as u64),
            name,
            path,
            file: prepared.file,
            map: prepared.map,
            sync_failure: Mutex::new(None),
        }
    }

    /// The mapped bytes `[off, off + len)` for writing.
    ///
    /// # Safety
    /// Only the holder of the writer's state lock may call this, for bytes past everything
    /// published, so no other reference to them exists.
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn slice_mut(&self, off: usize, len: usize) -> &mut [u8] {
        assert!(
            off + len <= self.map.len(),
            "write past the end of the segment"
        );
        self.map.writer_at.store(off + len, Ordering::Relaxed);
        std::slice::from_raw_parts_mut(self.map.map.as_mut_ptr().add(off), len)
    }

    /// The mapped bytes `[off, off + len)` for reading back what the writer wrote.
    ///
    /// # Safety
    /// Only the holder of the writer's state lock may call this, for bytes it has written and
    /// will not write again while the slice lives.
    pub unsafe fn written(&self, off: usize, len: usize) -> &[u8] {
        assert!(
            off + len <= self.map.len(),
            "read past the end of the segment"
        );
        std::slice::from_raw_parts(self.map.map.as_ptr().add(off), len)
    }

    /// Starts writing `[from, to)` back to disk without waiting (`sync_file_range` with
    /// `SYNC_FILE_RANGE_WRITE`). Makes nothing durable: it only lets a later msync find the
    /// pages already written. It does not take this file's write-back error (only a sync that
    /// waits does), so it runs beside the syncs; but an I/O error it meets itself is a failed
    /// sync of this file. A file system that cannot do it just loses the hint: `Ok`.
    pub fn start_writeback(&self, from: usize, to: usize) -> std::io::Result<()> {
        use std::os::fd::AsRawFd;
        if to <= from {
            return Ok(());
        }
        let start = || -> std::io::Result<()> {
            crate::fault!("segment::writeback");
            // SAFETY: plain syscall on a descriptor we own.
            let r = unsafe {
                libc::sync_file_range(
                    self.file.as_raw_fd(),
                    from as libc::off64_t,
                    (to - from) as libc::off64_t,
                    libc::SYNC_FILE_RANGE_WRITE,
                )
            };
            if r != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        };
        let Err(e) = start() else {
            return Ok(());
        };
        if matches!(
            e.raw_os_error(),
            Some(libc::EINVAL | libc::ESPIPE | libc::ENOSYS | libc::EOPNOTSUPP)
        ) {
            return Ok(());
        }
        self.synced("write-back", || Err(e))
    }

    /// Drops this mapping's page-table entries for the whole pages inside `[from, to)`. Their
    /// bytes and dirty state stay in the page cache (a shared file mapping loses nothing), and a
    /// later store or load just faults the page back in. Done before writing pages back that
    /// nothing will store to again: the kernel then write-protects no entry one page at a time,
    /// each with a TLB flush across every core running the writer (one zap flushes once).
    pub fn unmap_pages(&self, from: usize, to: usize) {
        let map = &self.map.map;
        let from = from.next_multiple_of(PAGE);
        let to = (to.min(self.map.len()) / PAGE) * PAGE;
        if to <= from {
            return;
        }
        // SAFETY: `MADV_DONTNEED` on a shared file mapping only drops page-table entries: the
        // pages stay in the page cache with their contents and dirty state, and any access
        // afterwards faults them back in. No reference into the range is invalidated.
        let r = unsafe {
            map.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, from, to - from)
        };
        if let Err(e) = r {
            tracing::debug!(error = %e, "dropping a segment's page-table entries failed");
        }
    }

    /// Nothing stores to this segment again (it is sealed): stops its prefault and drops every
    /// page-table entry before the sync that writes it back (see [`ActiveSegment::unmap_pages`]).
    pub fn retire(&self) {
        self.map.writer_at.store(self.map.len(), Ordering::Relaxed);
        self.unmap_pages(0, self.map.len());
    }

    /// Cuts the file to `len` bytes (a sealed segment, once nothing maps past `len`).
    pub fn truncate(&self, len: u64) -> std::io::Result<()> {
        self.file.set_len(len)
    }

    /// Writes `[from, to)` of the map to disk (msync); see [`ActiveSegment::synced`].
    pub fn sync_range(&self, from: usize, to: usize) -> std::io::Result<()> {
        if to <= from {
            return Ok(());
        }
        self.synced("msync", || {
            crate::fault!("segment::msync");
            self.map.map.flush_range(from, to - from)
        })
    }

    /// Writes the whole file and its metadata to disk (fsync); see [`ActiveSegment::synced`].
    pub fn sync_all(&self) -> std::io::Result<()> {
        self.synced("fsync", || {
            crate::fault!("wal::seal::fsync");
            self.file.sync_all()
        })
    }

    /// Runs one sync of this file, the only way its bytes are made durable. Syncs of one segment
    /// never overlap, and the first failure sticks: Linux reports a write-back error once per
    /// open file, to whichever sync asks first, and marks the failed pages clean. A second sync
    /// running beside the failed one, or after it, would succeed over pages that never reached
    /// the disk; here it gets the first failure instead.
    fn synced(
        &self,
        what: &'static str,
        sync: impl FnOnce() -> std::io::Result<()>,
    ) -> std::io::Result<()> {
        let mut failure = crate::sync::lock(&self.sync_failure);
        if let Some(f) = &*failure {
            return Err(f.error());
        }
        sync().inspect_err(|e| {
            *failure = Some(SyncFailure {
                what,
                errno: e.raw_os_error(),
                kind: e.kind(),
                message: e.to_string(),
            })
        })
    }
}

#[cfg(test)]
mod tests;
