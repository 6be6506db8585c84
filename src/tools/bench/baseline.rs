//! The machine's own limits, measured in the same run on the same directory and bytes: plain
//! `write` + `fdatasync` into an ordinary file, zero-filled ahead with 4 KiB writes like a
//! walship segment (overwriting written blocks needs no metadata update at sync time, the faster
//! case on ext4), so a ratio of 1.0 against it is earned.

use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use super::hist::Histogram;
use walship::error::{IoContext, Result};
use walship::segment_file::prepare_file;

/// A preallocated, zero-filled file written sequentially; removed when dropped.
pub struct RawFile {
    file: File,
    path: PathBuf,
}

impl RawFile {
    /// Creates `path` zero-filled to at least `size` bytes (rounded up to 4 KiB) and synced.
    pub fn create(path: &Path, size: u64) -> Result<RawFile> {
        prepare_file(path, size.div_ceil(4096).max(1) * 4096)?;
        let file = OpenOptions::new()
            .write(true)
            .open(path)
            .ctx(|| format!("open {}", path.display()))?;
        Ok(RawFile {
            file,
            path: path.to_path_buf(),
        })
    }

    fn write(&mut self, buf: &[u8]) -> Result<()> {
        self.file
            .write_all(buf)
            .ctx(|| format!("write {}", self.path.display()))
    }

    fn sync(&self) -> Result<()> {
        self.file
            .sync_data()
            .ctx(|| format!("fdatasync {}", self.path.display()))
    }
}

impl Drop for RawFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// How the single baseline writer syncs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SyncEvery {
    /// fdatasync after every write.
    Record,
    /// fdatasync after every `n` writes.
    Batch(u64),
    /// No fdatasync until the end (not timed).
    Never,
}

/// What one baseline run measured.
pub struct BaselineRun {
    pub records: u64,
    pub elapsed: Duration,
    /// Per record: from its write until it is durable (until written for `Never`).
    pub latency: Histogram,
    /// Each fdatasync alone.
    pub sync_latency: Histogram,
    pub syncs: u64,
    /// CPU time of the writing thread over `elapsed`.
    pub cpu: Duration,
    /// Minor page faults of the writing thread over `elapsed`.
    pub faults: u64,
    /// `Never` only: the fdatasync after `elapsed` that writes every record back.
    pub final_sync: Duration,
}

impl BaselineRun {
    /// Adds another run's counts (rounds of one measurement).
    pub fn add(&mut self, o: BaselineRun) {
        self.records += o.records;
        self.elapsed += o.elapsed;
        self.final_sync += o.final_sync;
        self.latency.merge(&o.latency);
        self.sync_latency.merge(&o.sync_latency);
        self.syncs += o.syncs;
        self.cpu += o.cpu;
        self.faults += o.faults;
    }

    pub fn records_per_s(&self) -> f64 {
        self.records as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// One writer writes `records` blocks of `record_len` bytes with plain `write`, syncing as told.
pub fn sequential(
    dir: &Path,
    record_len: usize,
    records: u64,
    every: SyncEvery,
) -> Result<BaselineRun> {
    let mut f = RawFile::create(&dir.join("baseline.raw"), record_len as u64 * records)?;
    let buf = vec![0xA5u8; record_len];
    let mut latency = Histogram::default();
    let mut sync_latency = Histogram::default();
    let mut pending: Vec<Instant> = Vec::new();
    let batch = match every {
        SyncEvery::Record => 1,
        SyncEvery::Batch(n) => n.max(1),
        SyncEvery::Never => u64::MAX,
    };
    let mut syncs = 0;
    let cpu0 = super::thread_cpu();
    let faults0 = super::thread_faults();
    let start = Instant::now();
    for i in 0..records {
        let t0 = Instant::now();
        f.write(&buf)?;
        if every == SyncEvery::Never {
            latency.record(t0.elapsed());
            continue;
        }
        pending.push(t0);
        if (i + 1) % batch == 0 || i + 1 == records {
            let s0 = Instant::now();
            f.sync()?;
            let done = Instant::now();
            sync_latency.record(done - s0);
            syncs += 1;
            for t in pending.drain(..) {
                latency.record(done - t);
            }
        }
    }
    let elapsed = start.elapsed();
    let cpu = super::thread_cpu().saturating_sub(cpu0);
    let faults = super::thread_faults().saturating_sub(faults0);
    let final_sync = if every == SyncEvery::Never {
        let s0 = Instant::now();
        f.sync()?;
        s0.elapsed()
    } else {
        Duration::ZERO
    };
    Ok(BaselineRun {
        records,
        elapsed,
        latency,
        sync_latency,
        syncs,
        cpu,
        faults,
        final_sync,
    })
}

/// A shared log over a plain file for many threads, with group commit as the writer does it:
/// appends are ordered under a lock; a waiter finds its bytes already durable, or waits while
/// a leader syncs, or becomes the leader: it syncs everything written so far without the
/// lock, then wakes the waiters, each of which is covered or leads the next sync.
///
/// Written with `pwrite` + `fdatasync`, or ([`RawLog::create_mapped`]) copied into a shared
/// mapping of the file + `msync`, as walship writes: the same group commit through the
/// kernel's mapping path, so that what the mapping costs is measured apart from walship.
pub struct RawLog {
    file: RawFile,
    mapped: Option<memmap2::MmapRaw>,
    off: Mutex<u64>,
    turns: Mutex<Turns>,
    done: Condvar,
    written: AtomicU64,
    synced: AtomicU64,
    /// Leaders' syncs, counted and timed (nanoseconds in all).
    syncs: AtomicU64,
    sync_ns: AtomicU64,
}

#[derive(Default)]
struct Turns {
    leading: bool,
    waiting: usize,
}

impl RawLog {
    pub fn create(path: &Path, size: u64) -> Result<RawLog> {
        Ok(RawLog::over(RawFile::create(path, size)?, None))
    }

    /// The same log written through a shared mapping of the file, prepared as walship prepares
    /// a segment: the zero-filled file's cached pages dropped, then mapped with `MADV_RANDOM`
    /// and every page faulted in writable (one 4 KiB page-cache folio each, so an msync writes
    /// only the pages that changed).
    pub fn create_mapped(path: &Path, size: u64) -> Result<RawLog> {
        use std::os::fd::AsRawFd;
        let raw = RawFile::create(path, size)?;
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .ctx(|| format!("open {}", path.display()))?;
        // SAFETY: a plain syscall on an open descriptor; it only drops clean cached pages.
        unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
        let len = file
            .metadata()
            .ctx(|| format!("stat {}", path.display()))?
            .len();
        let map = walship::segment_file::map_segment(&file, path, len)?;
        map.advise(memmap2::Advice::PopulateWrite)
            .ctx(|| format!("fault in the pages of {}", path.display()))?;
        Ok(RawLog::over(raw, Some(map)))
    }

    fn over(file: RawFile, mapped: Option<memmap2::MmapRaw>) -> RawLog {
        RawLog {
            file,
            mapped,
            off: Mutex::new(0),
            turns: Mutex::new(Turns::default()),
            done: Condvar::new(),
            written: AtomicU64::new(0),
            synced: AtomicU64::new(0),
            syncs: AtomicU64::new(0),
            sync_ns: AtomicU64::new(0),
        }
    }

    /// Writes `buf` at the end of the log; returns the end offset.
    pub fn append(&self, buf: &[u8]) -> Result<u64> {
        let mut off = walship::sync::lock(&self.off);
        match &self.mapped {
            Some(map) => {
                let at = *off as usize;
                if at + buf.len() > map.len() {
                    return Err(walship::Error::InvalidArgument(format!(
                        "{} is full: {} bytes mapped",
                        self.file.path.display(),
                        map.len()
                    )));
                }
                // SAFETY: in bounds (checked above); the bytes past `off` are this caller's
                // alone while it holds the lock, and nobody reads them before it moves `off`.
                unsafe {
                    std::ptr::copy_nonoverlapping(buf.as_ptr(), map.as_mut_ptr().add(at), buf.len())
                };
            }
            None => self
                .file
                .file
                .write_all_at(buf, *off)
                .ctx(|| format!("write {}", self.file.path.display()))?,
        }
        *off += buf.len() as u64;
        self.written.store(*off, Ordering::Release);
        Ok(*off)
    }

    /// The leaders' syncs so far: how many, and the time they took in all.
    pub fn syncs(&self) -> (u64, Duration) {
        (
            self.syncs.load(Ordering::Relaxed),
            Duration::from_nanos(self.sync_ns.load(Ordering::Relaxed)),
        )
    }

    /// Returns once everything below `end` is durable.
    pub fn wait_durable(&self, end: u64) -> Result<()> {
        let mut t = walship::sync::lock(&self.turns);
        loop {
            if self.synced.load(Ordering::Acquire) >= end {
                return Ok(());
            }
            if !t.leading {
                break;
            }
            t.waiting += 1;
            t = self.done.wait(t).unwrap_or_else(|p| p.into_inner());
            t.waiting -= 1;
        }
        t.leading = true;
        drop(t);
        let w = self.written.load(Ordering::Acquire);
        let started = Instant::now();
        let r = match &self.mapped {
            Some(map) => {
                let from = self.synced.load(Ordering::Acquire);
                map.flush_range(from as usize, (w - from) as usize)
                    .ctx(|| format!("msync {}", self.file.path.display()))
            }
            None => self.file.sync(),
        };
        self.syncs.fetch_add(1, Ordering::Relaxed);
        self.sync_ns
            .fetch_add(started.elapsed().as_nanos() as u64, Ordering::Relaxed);
        if r.is_ok() {
            self.synced.fetch_max(w, Ordering::AcqRel);
        }
        let mut t = walship::sync::lock(&self.turns);
        t.leading = false;
        let waiting = t.waiting;
        drop(t);
        if waiting > 0 {
            self.done.notify_all();
        }
        r
    }
}

/// Reads every file with plain `read` into one reused buffer and CRCs it; returns the bytes read.
pub fn read_and_crc(files: &[PathBuf]) -> Result<u64> {
    let mut buf = Vec::new();
    let mut total = 0u64;
    let mut acc = 0u32;
    for p in files {
        let mut f = File::open(p).ctx(|| format!("open {}", p.display()))?;
        buf.clear();
        f.read_to_end(&mut buf)
            .ctx(|| format!("read {}", p.display()))?;
        acc ^= crc32fast::hash(&buf);
        total += buf.len() as u64;
    }
    std::hint::black_box(acc);
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn every_group_commit_waiter_returns_with_its_bytes_synced() {
        for mapped in [false, true] {
            group_commit_covers_every_waiter(mapped);
        }
    }

    fn group_commit_covers_every_waiter(mapped: bool) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log.raw");
        let create = if mapped {
            RawLog::create_mapped
        } else {
            RawLog::create
        };
        let log = Arc::new(create(&path, 8 * 200 * 64).unwrap());
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let log = log.clone();
                std::thread::spawn(move || {
                    for _ in 0..200 {
                        let end = log.append(&[7u8; 64]).unwrap();
                        log.wait_durable(end).unwrap();
                        assert!(log.synced.load(Ordering::Acquire) >= end);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(log.written.load(Ordering::Acquire), 8 * 200 * 64);
        assert_eq!(log.synced.load(Ordering::Acquire), 8 * 200 * 64);
        assert!(!walship::sync::lock(&log.turns).leading);
        assert_eq!(walship::sync::lock(&log.turns).waiting, 0);
        let bytes = std::fs::read(&path).unwrap();
        assert!(
            bytes[..8 * 200 * 64].iter().all(|&b| b == 7),
            "mapped: {mapped}"
        );
        // Full: a clear error, not a write past the end.
        if mapped {
            let e = log.append(&[7u8; 4096]).unwrap_err().to_string();
            assert!(e.contains("is full") && e.contains("log.raw"), "{e}");
        }
    }
}
