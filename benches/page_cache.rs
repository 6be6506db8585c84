//! What the kernel charges a durable append through a shared file mapping, apart from walship:
//! the same records made durable four ways on one file system, each as a median time per
//! record and as a ratio to the first (a plain `pwrite` + `fdatasync` into a zero-filled file,
//! walship bench's baseline).
//!
//! - `pwrite`: `pwrite` + `fdatasync` into a zero-filled file (page-cache folios as `write`
//!   makes them: large ones).
//! - `pwrite, 4 KiB folios`: the same into a file mapped with `MADV_RANDOM` and faulted in
//!   with `MADV_POPULATE_WRITE`, as walship prepares a segment (one 4 KiB folio per page,
//!   each mapped writable).
//! - `mmap`: the record copied into that mapping, then `msync(MS_SYNC)` of its range: what
//!   walship's writer does.
//! - `mmap, default advice`: the same without `MADV_RANDOM` (faults may create large folios,
//!   so a sync writes whole folios, not only the pages that changed).
//!
//! Each variant runs RECORDS records (default 48) of each size in SIZES (default 4096 and
//! 1048576 bytes: whole pages, so that no `pwrite` reads a block before writing it) into a fresh 64 MiB zero-filled file in PAGE_CACHE_DIR (default /var/tmp),
//! written and synced, then dropped from the page cache; the variants alternate, ROUNDS times
//! (default 3), and the medians are printed.
//!
//! `PACKED=1` writes the records back to back instead, as a log does (sizes need not be whole
//! pages then): each record begins in the page the last sync wrote back, which a mapping must
//! fault writable again. The plain `pwrite` variant then keeps the zero-filled file's pages
//! cached, as `walship bench`'s baseline does, so that no `pwrite` reads a block first.
//!
//! `NOSYNC=1` measures appends without sync instead, BYTES (default 64 MiB) of records of the
//! first size in SIZES (default 4136, a 4 KiB payload with walship's header) written back to
//! back, each variant into a fresh file, ROUNDS times alternating; printed as MB/s and as a
//! ratio to the first:
//!
//! - `write`: buffered `write` into an empty file, walship bench's no-sync baseline.
//! - `mmap, populated first`: a copy into a mapping of a file reserved with `fallocate`,
//!   `MADV_RANDOM`, every page faulted in beforehand (`MADV_POPULATE_WRITE`, untimed): what a
//!   writer gets when its prefault keeps ahead.
//! - `mmap, faulted by the writer`: the same mapping not populated: each page's first store
//!   faults, and the fault allocates, zeroes and maps one 4 KiB page-cache folio.
//! - `mmap, writer populates 64K`: the same, the writer itself populating the next 64 KiB
//!   whenever a record would reach past what it populated: a writer that catches up with its
//!   prefault and faults ahead in steps rather than page by page.
//! - `populate, reserved blocks`: `MADV_POPULATE_WRITE` alone over such a fresh mapping: the
//!   rate at which a prefault thread can prepare a new segment.
//! - `populate, cached pages`: the same over a file whose pages are already cached (written
//!   and synced through a mapping, then mapped again): a recycled segment whose pages stayed
//!   in the cache.
//!
//! Run: `cargo bench --bench page_cache`

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::time::Instant;

use memmap2::{Advice, MmapMut};

#[path = "common/zero_filled.rs"]
mod zero_filled;

const FILE: usize = 64 << 20;

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn zero_filled(path: &Path, keep_cached: bool) -> File {
    let f = zero_filled::zero_filled(path, FILE as u64).expect("create the scratch file");
    if keep_cached {
        return f;
    }
    // Drop the cached pages: the zeros were written in large folios, which a mapping would
    // keep using (a sync then writes a whole folio). Every variant starts from an empty cache.
    use std::os::fd::AsRawFd;
    // SAFETY: a plain syscall on an open descriptor; it only drops clean cached pages.
    let rc = unsafe { libc::posix_fadvise(f.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    assert_eq!(rc, 0, "posix_fadvise");
    f
}

fn mapped(f: &File, random: bool) -> MmapMut {
    // SAFETY: the file is this bench's own scratch file, mapped once and not truncated.
    let m = unsafe { MmapMut::map_mut(f) }.expect("map");
    if random {
        m.advise(Advice::Random).expect("MADV_RANDOM");
    }
    m.advise(Advice::PopulateWrite)
        .expect("MADV_POPULATE_WRITE");
    m
}

#[derive(Clone, Copy)]
enum Variant {
    Pwrite,
    PwriteSmallFolios,
    Mmap,
    MmapDefaultAdvice,
}

impl Variant {
    fn name(self) -> &'static str {
        match self {
            Variant::Pwrite => "pwrite",
            Variant::PwriteSmallFolios => "pwrite, 4 KiB folios",
            Variant::Mmap => "mmap",
            Variant::MmapDefaultAdvice => "mmap, default advice",
        }
    }
}

/// Median seconds per durable record.
fn run(v: Variant, dir: &Path, size: usize, records: usize, packed: bool) -> f64 {
    let path = dir.join("page-cache-bench.bin");
    let f = zero_filled(&path, packed && matches!(v, Variant::Pwrite));
    let record: Vec<u8> = (0..size).map(|i| (i * 7 + 3) as u8).collect();
    // Unless packed, records spread over the file so that a run never writes the same page
    // twice.
    let step = if packed {
        size
    } else {
        (FILE / records).max(size) / 4096 * 4096
    };
    let mut times = Vec::with_capacity(records);
    let mut map = match v {
        Variant::Pwrite => None,
        Variant::PwriteSmallFolios | Variant::Mmap => Some(mapped(&f, true)),
        Variant::MmapDefaultAdvice => Some(mapped(&f, false)),
    };
    for i in 0..records {
        let off = i * step;
        if off + size > FILE {
            break;
        }
        let t = Instant::now();
        match (v, map.as_mut()) {
            (Variant::Pwrite | Variant::PwriteSmallFolios, _) => {
                f.write_all_at(&record, off as u64).expect("pwrite");
                f.sync_data().expect("fdatasync");
            }
            (_, Some(m)) => {
                m[off..off + size].copy_from_slice(&record);
                m.flush_range(off, size).expect("msync");
            }
            (_, None) => unreachable!("a mapping variant without its mapping"),
        }
        times.push(t.elapsed().as_secs_f64());
    }
    drop(map);
    drop(f);
    let _ = std::fs::remove_file(&path);
    times.sort_by(f64::total_cmp);
    times[times.len() / 2]
}

#[derive(Clone, Copy)]
enum NoSync {
    Write,
    MmapPopulated,
    MmapFaulted,
    MmapStepped,
    PopulateReserved,
    PopulateCached,
}

impl NoSync {
    fn name(self) -> &'static str {
        match self {
            NoSync::Write => "write",
            NoSync::MmapPopulated => "mmap, populated first",
            NoSync::MmapFaulted => "mmap, faulted by the writer",
            NoSync::MmapStepped => "mmap, writer populates 64K",
            NoSync::PopulateReserved => "populate, reserved blocks",
            NoSync::PopulateCached => "populate, cached pages",
        }
    }
}

/// A fresh file of `bytes` reserved with `fallocate` (as walship reserves a new segment).
fn reserved(path: &Path, bytes: usize) -> File {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .expect("create the scratch file");
    use std::os::fd::AsRawFd;
    // SAFETY: a plain syscall on an open descriptor.
    let rc = unsafe { libc::fallocate(f.as_raw_fd(), 0, 0, bytes as libc::off_t) };
    assert_eq!(rc, 0, "fallocate");
    f
}

/// Seconds for one no-sync variant over `bytes` of `size`-byte records (for the populate
/// variants: the populate alone).
fn run_nosync(v: NoSync, dir: &Path, size: usize, bytes: usize) -> f64 {
    let path = dir.join("page-cache-nosync.bin");
    let record: Vec<u8> = (0..size).map(|i| (i * 7 + 3) as u8).collect();
    let n = bytes / size;
    let copy_all = |m: &mut MmapMut| {
        let t = Instant::now();
        for i in 0..n {
            m[i * size..(i + 1) * size].copy_from_slice(&record);
        }
        t.elapsed().as_secs_f64()
    };
    let map_random = |f: &File| {
        // SAFETY: the file is this bench's own scratch file, mapped once and not truncated.
        let m = unsafe { MmapMut::map_mut(f) }.expect("map");
        m.advise(Advice::Random).expect("MADV_RANDOM");
        m
    };
    let populate = |m: &MmapMut| {
        let t = Instant::now();
        m.advise(Advice::PopulateWrite)
            .expect("MADV_POPULATE_WRITE");
        t.elapsed().as_secs_f64()
    };
    let secs = match v {
        NoSync::Write => {
            let mut f = File::create(&path).expect("create the scratch file");
            use std::io::Write;
            let t = Instant::now();
            for _ in 0..n {
                f.write_all(&record).expect("write");
            }
            t.elapsed().as_secs_f64()
        }
        NoSync::MmapPopulated => {
            let f = reserved(&path, bytes);
            let mut m = map_random(&f);
            populate(&m);
            copy_all(&mut m)
        }
        NoSync::MmapFaulted => {
            let f = reserved(&path, bytes);
            copy_all(&mut map_random(&f))
        }
        NoSync::MmapStepped => {
            let f = reserved(&path, bytes);
            let mut m = map_random(&f);
            let t = Instant::now();
            let mut ready = 0;
            for i in 0..n {
                let end = (i + 1) * size;
                if end > ready {
                    let from = ready;
                    ready = (end + (64 << 10)).next_multiple_of(4096).min(m.len());
                    m.advise_range(Advice::PopulateWrite, from, ready - from)
                        .expect("MADV_POPULATE_WRITE");
                }
                m[i * size..end].copy_from_slice(&record);
            }
            t.elapsed().as_secs_f64()
        }
        NoSync::PopulateReserved => populate(&map_random(&reserved(&path, bytes))),
        NoSync::PopulateCached => {
            let f = reserved(&path, bytes);
            {
                let mut m = map_random(&f);
                populate(&m);
                copy_all(&mut m);
                m.flush().expect("msync");
            }
            populate(&map_random(&f))
        }
    };
    let _ = std::fs::remove_file(&path);
    secs
}

fn nosync_main(dir: &Path, rounds: usize) {
    let size = std::env::var("SIZES")
        .ok()
        .and_then(|s| s.split(',').next().and_then(|x| x.trim().parse().ok()))
        .unwrap_or(4136);
    let bytes = env_or("BYTES", 64 << 20) / size * size;
    let variants = [
        NoSync::Write,
        NoSync::MmapPopulated,
        NoSync::MmapFaulted,
        NoSync::MmapStepped,
        NoSync::PopulateReserved,
        NoSync::PopulateCached,
    ];
    let per = alternate(&variants, rounds, |v| run_nosync(v, dir, size, bytes));
    println!("no sync, {bytes} bytes of {size}-byte records");
    println!("variant                        MB/s   us/page  ratio_to_write (rounds)");
    for (v, (m, ratio, each)) in variants.iter().zip(against_first(&per)) {
        println!(
            "{:<28} {:>7.0}  {:>7.2}  {ratio:.2} [{each}]",
            v.name(),
            bytes as f64 / m / 1e6,
            m * 1e6 / (bytes as f64 / 4096.0),
        );
    }
}

/// Runs every variant `rounds` times, alternating; each variant's seconds in round order.
fn alternate<V: Copy>(
    variants: &[V],
    rounds: usize,
    mut run: impl FnMut(V) -> f64,
) -> Vec<Vec<f64>> {
    let mut per: Vec<Vec<f64>> = vec![Vec::new(); variants.len()];
    for _ in 0..rounds {
        for (k, v) in variants.iter().enumerate() {
            per[k].push(run(*v));
        }
    }
    per
}

/// For each variant: its median, the first variant's median over it, and that ratio round by
/// round.
fn against_first(per: &[Vec<f64>]) -> Vec<(f64, f64, String)> {
    let median = |xs: &[f64]| {
        let mut s = xs.to_vec();
        s.sort_by(f64::total_cmp);
        s[s.len() / 2]
    };
    let base = median(&per[0]);
    per.iter()
        .map(|xs| {
            let m = median(xs);
            let each: Vec<String> = xs
                .iter()
                .zip(&per[0])
                .map(|(x, b)| format!("{:.2}", b / x))
                .collect();
            (m, base / m, each.join(" "))
        })
        .collect()
}

fn main() {
    let dir = std::env::var("PAGE_CACHE_DIR").unwrap_or_else(|_| "/var/tmp".into());
    let dir = tempfile::tempdir_in(&dir).expect("scratch directory");
    let records = env_or("RECORDS", 48);
    let rounds = env_or("ROUNDS", 3);
    if env_or("NOSYNC", 0) != 0 {
        return nosync_main(dir.path(), rounds);
    }
    let packed = env_or("PACKED", 0) != 0;
    let sizes: Vec<usize> = std::env::var("SIZES")
        .ok()
        .map(|s| s.split(',').filter_map(|x| x.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![4096, 1 << 20]);
    let variants = [
        Variant::Pwrite,
        Variant::PwriteSmallFolios,
        Variant::Mmap,
        Variant::MmapDefaultAdvice,
    ];
    println!("size     variant                 median_ms  ratio_to_pwrite (rounds)");
    for &size in &sizes {
        let per = alternate(&variants, rounds, |v| {
            run(v, dir.path(), size, records, packed)
        });
        for (v, (m, ratio, each)) in variants.iter().zip(against_first(&per)) {
            println!(
                "{size:<8} {:<23} {:>9.3}  {ratio:.2} [{each}]",
                v.name(),
                m * 1e3
            );
        }
    }
}
