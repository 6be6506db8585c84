//! Segment files on disk: preparing them ahead (zero-filled, real blocks) and mapping the open
//! one for writing.
//!
//! How a segment is prepared decides what a durable append costs. On ext4 with large page-cache
//! folios, `msync` writes back every folio it touches in full (up to 1-2 MiB), so a naive mapping
//! pays a megabyte per 4 KiB sync. Zero-filling with 4 KiB writes leaves 4 KiB folios and written
//! extents (no metadata at sync time), and `MADV_RANDOM` on the mapping keeps faults from
//! creating large folios again. Zero-filled blocks also mean a store through the map can never
//! hit ENOSPC as SIGBUS: every block exists before the map does.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use memmap2::{Advice, MmapOptions, MmapRaw};

use crate::error::{IoContext, Result};
use crate::format::SegmentName;

/// Size of each zero-filling write: small writes create small page-cache folios.
const FILL_CHUNK: usize = 4096;

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

/// Writes `size` zeros into `f` in 4 KiB writes, waiting for each MiB to reach the disk.
fn zero_fill(mut f: &File, path: &Path, size: u64) -> Result<()> {
    let zeros = [0u8; FILL_CHUNK];
    let mut left = size as usize;
    let mut done = 0usize;
    while left > 0 {
        let n = left.min(FILL_CHUNK);
        f.write_all(&zeros[..n])
            .ctx(|| format!("zero-fill {}", path.display()))?;
        left -= n;
        done += n;
        if done % FILL_WRITEBACK_STEP == 0 {
            write_out(f, done - FILL_WRITEBACK_STEP, FILL_WRITEBACK_STEP)
                .ctx(|| format!("write back {}", path.display()))?;
        }
    }
    Ok(())
}

/// Creates `path` as a zero-filled file of `size` bytes with real blocks, synced. On failure
/// (ENOSPC included) the partial file is removed.
pub fn prepare_file(path: &Path, size: u64) -> Result<()> {
    let result = (|| -> Result<()> {
        let f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)
            .ctx(|| format!("create {}", path.display()))?;
        crate::fault!("segment::prepare", e => crate::Error::io(format!("zero-fill {}", path.display()), e));
        allocate(&f, path, size, Allocation::ZeroFill)
    })();
    if result.is_err() {
        let _ = fs::remove_file(path);
    }
    result
}

/// How a segment's blocks are allocated before it is mapped.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Allocation {
    /// Zeros written with 4 KiB writes and synced: written extents, so later syncs change no
    /// metadata, but every byte reaches the disk twice (zeros, then records).
    ZeroFill,
    /// `fallocate`: blocks reserved as unwritten extents that read as zeros; records reach the
    /// disk once, and each sync also records which blocks are now written.
    #[default]
    Fallocate,
}

/// Allocates `size` bytes for `f`. A zero-filled file is synced; an fallocated one needs no
/// sync of its own: the writer's first sync of the segment (its header) writes the file's
/// metadata along with its data, and the rename into place is synced with the directory.
fn allocate(f: &File, path: &Path, size: u64, how: Allocation) -> Result<()> {
    use std::os::fd::AsRawFd;
    match how {
        Allocation::ZeroFill => {
            zero_fill(f, path, size)?;
            f.sync_data().ctx(|| format!("fsync {}", path.display()))
        }
        Allocation::Fallocate => {
            // SAFETY: plain syscall on a descriptor we own.
            let r = unsafe { libc::fallocate(f.as_raw_fd(), 0, 0, size as libc::off64_t) };
            if r != 0 {
                return Err(crate::Error::io(
                    format!("allocate {} bytes for {}", size, path.display()),
                    std::io::Error::last_os_error(),
                ));
            }
            Ok(())
        }
    }
}

/// A segment file made ready ahead of use: blocks allocated, mapped; see [`Prefault`] for
/// its pages.
pub struct PreparedSegment {
    pub path: PathBuf,
    file: File,
    map: Arc<MmapRaw>,
}

/// Faults a prepared segment's pages in writable, so that the writer's first store to each
/// page costs no fault. It may run while the writer already uses the segment: faulting a page
/// in never changes its bytes.
pub struct Prefault(Arc<MmapRaw>);

impl Prefault {
    pub fn run(self) {
        prefault(&self.0, 0);
    }
}

impl PreparedSegment {
    /// Creates `path` with `size` bytes allocated `how`. On failure (ENOSPC included) the
    /// partial file is removed.
    pub fn create(path: PathBuf, size: u64, how: Allocation) -> Result<PreparedSegment> {
        let result = (|| {
            let f = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(true)
                .open(&path)
                .ctx(|| format!("create {}", path.display()))?;
            crate::fault!("segment::prepare", e => crate::Error::io(format!("allocate {}", path.display()), e));
            allocate(&f, &path, size, how)?;
            Ok(f)
        })();
        match result {
            Ok(file) => Self::mapped(path, file, size),
            Err(e) => {
                let _ = fs::remove_file(&path);
                Err(e)
            }
        }
    }

    /// Maps a prepared file found on disk (left by an earlier run).
    pub fn open(path: PathBuf, size: u64) -> Result<PreparedSegment> {
        let file = open_rw(&path)?;
        Self::mapped(path, file, size)
    }

    /// What faults this segment's pages in; run it off the append path.
    pub fn prefault(&self) -> Prefault {
        Prefault(self.map.clone())
    }

    fn mapped(path: PathBuf, file: File, size: u64) -> Result<PreparedSegment> {
        let map = Arc::new(map_segment(&file, &path, size)?);
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

fn map_segment(file: &File, path: &Path, size: u64) -> Result<MmapRaw> {
    let map = MmapOptions::new()
        .len(size as usize)
        .map_raw(file)
        .ctx(|| format!("mmap {}", path.display()))?;
    // Keep page-cache folios at 4 KiB so each sync writes only what changed.
    map.advise(Advice::Random)
        .ctx(|| format!("madvise {}", path.display()))?;
    Ok(map)
}

/// Faults the pages from `from` (rounded up to a page) to the end of `map` in writable, off the
/// writer's path: a first store through a shared file mapping otherwise takes a fault per page
/// (~1.6 µs each here). The pages become dirty zeros, which a later sync writes only where
/// records landed. Best effort: kernels before 5.14 lack `MADV_POPULATE_WRITE`.
fn prefault(map: &MmapRaw, from: usize) {
    let from = from.next_multiple_of(4096);
    if from >= map.len() {
        return;
    }
    if let Err(e) = map.advise_range(Advice::PopulateWrite, from, map.len() - from) {
        tracing::debug!(error = %e, "prefaulting a segment's pages failed");
    }
}

/// The open segment, mapped read-write.
pub struct ActiveSegment {
    pub name: SegmentName,
    pub path: PathBuf,
    pub file: File,
    map: Arc<MmapRaw>,
    pub start_lsn: u64,
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
                lsn: crate::Lsn(name.segment_no * size),
                reason: format!("open segment is {len} bytes, expected the segment size {size}"),
            });
        }
        let map = Arc::new(map_segment(&file, &path, size)?);
        prefault(&map, used);
        Ok(ActiveSegment {
            start_lsn: name.segment_no * size,
            name,
            path,
            file,
            map,
        })
    }

    /// Takes over a prepared segment (mapping included) after it was renamed to `path`.
    pub fn from_prepared(prepared: PreparedSegment, path: PathBuf, name: SegmentName) -> Self {
        ActiveSegment {
            start_lsn: name.segment_no * prepared.map.len() as u64,
            name,
            path,
            file: prepared.file,
            map: prepared.map,
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
        std::slice::from_raw_parts_mut(self.map.as_mut_ptr().add(off), len)
    }

    /// Starts writing `[from, to)` back to disk without waiting (`sync_file_range` with
    /// `SYNC_FILE_RANGE_WRITE`). Makes nothing durable: it only lets a later msync find the
    /// pages already written.
    pub fn start_writeback(&self, from: usize, to: usize) -> std::io::Result<()> {
        use std::os::fd::AsRawFd;
        if to <= from {
            return Ok(());
        }
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
    }

    /// Writes `[from, to)` of the map to disk (msync).
    pub fn sync_range(&self, from: usize, to: usize) -> std::io::Result<()> {
        if to <= from {
            return Ok(());
        }
        crate::fault!("segment::msync");
        self.map.flush_range(from, to - from)
    }
}
