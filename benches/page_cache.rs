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

fn zero_filled(path: &Path) -> File {
    let f = zero_filled::zero_filled(path, FILE as u64).expect("create the scratch file");
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
fn run(v: Variant, dir: &Path, size: usize, records: usize) -> f64 {
    let path = dir.join("page-cache-bench.bin");
    let f = zero_filled(&path);
    let record: Vec<u8> = (0..size).map(|i| (i * 7 + 3) as u8).collect();
    // Records spread over the file so that a run never writes the same page twice.
    let step = (FILE / records).max(size) / 4096 * 4096;
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

fn main() {
    let dir = std::env::var("PAGE_CACHE_DIR").unwrap_or_else(|_| "/var/tmp".into());
    let dir = tempfile::tempdir_in(&dir).expect("scratch directory");
    let records = env_or("RECORDS", 48);
    let rounds = env_or("ROUNDS", 3);
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
        let mut per: Vec<Vec<f64>> = vec![Vec::new(); variants.len()];
        for _ in 0..rounds {
            for (k, v) in variants.iter().enumerate() {
                per[k].push(run(*v, dir.path(), size, records));
            }
        }
        let median = |xs: &[f64]| {
            let mut s = xs.to_vec();
            s.sort_by(f64::total_cmp);
            s[s.len() / 2]
        };
        let base = median(&per[0]);
        for (k, v) in variants.iter().enumerate() {
            let m = median(&per[k]);
            let each: Vec<String> = per[k]
                .iter()
                .zip(&per[0])
                .map(|(x, b)| format!("{:.2}", b / x))
                .collect();
            println!(
                "{size:<8} {:<23} {:>9.3}  {:.2} [{}]",
                v.name(),
                m * 1e3,
                base / m,
                each.join(" ")
            );
        }
    }
}
