//! The `recover` scenario: build a store, reopen it (recovery), then scan every segment in
//! order, checking every record, with the files in the page cache; against reading the same
//! files with plain `read` + CRC.

use std::time::Instant;

use super::baseline::read_and_crc;
use super::{scratch, BenchConfig, BenchResult};
use crate::decoder::{ScanEnd, SegmentScanner};
use crate::reader::read_segment_hashed;
use crate::{DataDir, Entry, EntryType, Lsn, Result, Wal, WalOptions};

/// Reads one segment into `bytes` (reused from segment to segment) and checks it the way
/// recovery and `verify` judge segments: every record, and for a sealed segment the seal marker
/// and its whole-segment checksum. Returns the records it holds.
fn scan_segment(path: &std::path::Path, bytes: &mut Vec<u8>) -> Result<u64> {
    let read = read_segment_hashed(path, bytes)?;
    let corrupt = |offset: usize, reason: String| crate::Error::Corrupt {
        file: path.to_path_buf(),
        offset: offset as u64,
        lsn: Lsn(0),
        reason,
    };
    let mut scanner = SegmentScanner::with_read_checksum(bytes, read).map_err(|r| corrupt(0, r))?;
    let mut records = 0u64;
    for r in scanner.by_ref() {
        std::hint::black_box(r.payload);
        records += 1;
    }
    match scanner.finish() {
        ScanEnd::Sealed { .. } | ScanEnd::Unwritten { .. } => Ok(records),
        ScanEnd::Invalid { offset, error } => Err(corrupt(offset, error.to_string())),
    }
}

/// Runs the `recover` scenario.
pub fn run_recover(cfg: &BenchConfig) -> Result<BenchResult> {
    let tmp = scratch(&cfg.dir)?;
    let data = tmp.path().join("data");
    DataDir::init(&data, cfg.segment_size)?;
    let payload = vec![0x6Bu8; cfg.record_size];
    {
        let wal = Wal::open(&data, WalOptions::default())?;
        let batch: Vec<Entry<'_>> = (0..1024)
            .map(|_| Entry::new(EntryType::Insert, None, &payload))
            .collect();
        let per_batch = (cfg.record_len() * batch.len()) as u64;
        for _ in 0..cfg.store_size.div_ceil(per_batch).max(1) {
            wal.append_batch(&batch)?;
        }
        wal.sync()?;
        // Dropped without sealing: recovery has an open segment to scan, as after a crash.
    }

    let t0 = Instant::now();
    let wal = Wal::open(&data, WalOptions::default())?;
    let recovery = t0.elapsed();
    drop(wal);

    let mut files: Vec<_> = DataDir::new(&data)
        .list_segments()?
        .into_iter()
        .filter(|n| {
            matches!(
                n.kind,
                crate::format::SegmentFileKind::Sealed | crate::format::SegmentFileKind::Open
            )
        })
        .map(|n| DataDir::new(&data).segment_path(&n))
        .collect();
    files.sort();
    let bytes: u64 = files
        .iter()
        .map(|p| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0))
        .sum();

    // Warm pass of the baseline first, so both reads find every file in the page cache.
    read_and_crc(&files)?;
    let t1 = Instant::now();
    let mut records = 0u64;
    let mut buf = Vec::new();
    for p in &files {
        records += scan_segment(p, &mut buf)?;
    }
    let scan = t1.elapsed();

    let t2 = Instant::now();
    read_and_crc(&files)?;
    let base = t2.elapsed();

    let r = BenchResult::timed(
        "recover",
        cfg.record_size,
        "none",
        records,
        bytes,
        scan,
        base,
    );
    Ok(BenchResult {
        recovery_ms: Some(recovery.as_secs_f64() * 1e3),
        scan_gb_per_s: Some(r.mb_per_s / 1e3),
        baseline_gb_per_s: Some(r.baseline_mb_per_s / 1e3),
        ..r
    })
}
