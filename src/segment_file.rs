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

/// Creates `path` as a zero-filled file of `size` bytes with real blocks, synced. On failure
/// (ENOSPC included) the partial file is removed.
pub fn prepare_file(path: &Path, size: u64) -> Result<()> {
    let result = (|| -> Result<()> {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)
            .ctx(|| format!("create {}", path.display()))?;
        crate::fault!("segment::prepare", e => crate::Error::io(format!("zero-fill {}", path.display()), e));
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
                write_out(&f, done - FILL_WRITEBACK_STEP, FILL_WRITEBACK_STEP)
                    .ctx(|| format!("write back {}", path.display()))?;
            }
        }
        f.sync_data().ctx(|| format!("fsync {}", path.display()))
    })();
    if result.is_err() {
        let _ = fs::remove_file(path);
    }
    result
}

/// The open segment, mapped read-write.
pub struct ActiveSegment {
    pub name: SegmentName,
    pub path: PathBuf,
    pub file: File,
    map: MmapRaw,
    pub start_lsn: u64,
}

impl ActiveSegment {
    /// Maps an existing, fully allocated segment file of `size` bytes.
    pub fn map(path: PathBuf, name: SegmentName, size: u64) -> Result<ActiveSegment> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .ctx(|| format!("open {}", path.display()))?;
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
        let map = MmapOptions::new()
            .len(size as usize)
            .map_raw(&file)
            .ctx(|| format!("mmap {}", path.display()))?;
        // Keep page-cache folios at 4 KiB so each sync writes only what changed.
        map.advise(Advice::Random)
            .ctx(|| format!("madvise {}", path.display()))?;
        Ok(ActiveSegment {
            start_lsn: name.segment_no * size,
            name,
            path,
            file,
            map,
        })
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
