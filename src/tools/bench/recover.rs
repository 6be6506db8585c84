//! The `recover` scenario: build a store, reopen it (recovery), then scan every segment in
//! order with the check `walship verify` runs (every record, seal markers and checksums), with
//! the files in the page cache; against reading the same files with plain `read` + CRC.

use std::path::PathBuf;
use std::time::Instant;

use super::baseline::read_and_crc;
use super::{scratch, BenchConfig, BenchResult};
use walship::format::{SegmentFileKind, SegmentName};
use walship::reader::read_segment_hashed;
use walship::verify::{verify_segments, VerifyReport};
use walship::{DataDir, Entry, EntryType, Result, Wal, WalOptions};

/// Checks the segments the way `walship verify` does, with the same code: every record, and
/// for a sealed segment the seal marker and its whole-segment checksum. Returns the records
/// they hold; any problem found is an error.
fn scan_segments(files: &[(SegmentName, PathBuf)]) -> Result<u64> {
    let mut report = VerifyReport::default();
    verify_segments(files, None, &mut report, |p, b| {
        read_segment_hashed(p, b).map(Some)
    })?;
    match report.errors.first() {
        None => Ok(report.records),
        Some(issue) => Err(walship::Error::Corrupt {
            file: files
                .iter()
                .find(|(n, _)| n.to_string() == issue.segment)
                .map_or_else(PathBuf::new, |(_, p)| p.clone()),
            offset: issue.offset,
            lsn: issue.lsn,
            reason: issue.reason.clone(),
        }),
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
        // As many records as `--size` holds (at least one), in batches of up to 1,024.
        let mut left = cfg.store_size.div_ceil(cfg.record_len() as u64).max(1);
        while left > 0 {
            let n = left.min(batch.len() as u64);
            wal.append_batch(&batch[..n as usize])?;
            left -= n;
        }
        wal.sync()?;
        // Dropped without sealing: recovery has an open segment to scan, as after a crash.
    }

    let t0 = Instant::now();
    let wal = Wal::open(&data, WalOptions::default())?;
    let recovery = t0.elapsed();
    drop(wal);

    let mut segments: Vec<(SegmentName, PathBuf)> = DataDir::new(&data)
        .list_segments()?
        .into_iter()
        .filter(|n| matches!(n.kind, SegmentFileKind::Sealed | SegmentFileKind::Open))
        .map(|n| (n, DataDir::new(&data).segment_path(&n)))
        .collect();
    segments.sort_by(|a, b| a.1.cmp(&b.1));
    let files: Vec<PathBuf> = segments.iter().map(|(_, p)| p.clone()).collect();
    let bytes: u64 = files
        .iter()
        .map(|p| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0))
        .sum();

    // Warm pass of the baseline first, so both reads find every file in the page cache.
    read_and_crc(&files)?;
    let t1 = Instant::now();
    let records = scan_segments(&segments)?;
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
