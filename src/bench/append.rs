//! The `append` scenario: W threads append records of S bytes through [`Wal`], then the baseline
//! writes the same number of records of the same on-disk length with plain write + fdatasync.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::baseline::{sequential, SyncEvery};
use super::hist::Histogram;
use super::{mb_per_s, ratio, scratch, BenchConfig, BenchResult, Durability, Limit};
use crate::{DataDir, Entry, EntryType, Result, Wal, WalOptions, WalStats};

/// Bytes a default-sized run writes at most (keeps a run well under a minute and the disk
/// footprint modest).
const DEFAULT_MAX_BYTES: u64 = 512 << 20;
/// Records the one-sync-per-record baseline of a `group` run writes at most.
const EACH_BASELINE_MAX: u64 = 5_000;

fn default_records(cfg: &BenchConfig) -> u64 {
    let n: u64 = match cfg.durability {
        Durability::Each => 20_000,
        Durability::Group => 100_000,
        Durability::None => 2_000_000,
    };
    let by_bytes = DEFAULT_MAX_BYTES / cfg.record_len() as u64;
    n.min(by_bytes).max(16)
}

struct WalRun {
    records: u64,
    elapsed: Duration,
    append: Histogram,
    ack: Histogram,
    stats: WalStats,
}

fn run_wal(cfg: &BenchConfig, root: &std::path::Path, limit: Limit) -> Result<WalRun> {
    let data = root.join("data");
    DataDir::init(&data, cfg.segment_size)?;
    let wal = Arc::new(Wal::open(&data, WalOptions::default())?);
    let payload = vec![0x5Au8; cfg.record_size];
    // Warm-up, not counted: opens the first segment so the preparer starts on the next one.
    wal.append_durable(&Entry::new(EntryType::Insert, None, &payload))?;
    let before = wal.stats();
    let claimed = Arc::new(AtomicU64::new(0));
    let each_lock = Arc::new(Mutex::new(()));
    let start = Instant::now();
    let deadline = match limit {
        Limit::Time(t) => Some(start + t),
        Limit::Records(_) => None,
    };
    let max = match limit {
        Limit::Records(n) => n,
        Limit::Time(_) => u64::MAX,
    };
    let mut handles = Vec::new();
    for _ in 0..cfg.writers.max(1) {
        let wal = wal.clone();
        let claimed = claimed.clone();
        let each_lock = each_lock.clone();
        let payload = payload.clone();
        let durability = cfg.durability;
        handles.push(std::thread::spawn(
            move || -> Result<(Histogram, Histogram)> {
                let mut append = Histogram::default();
                let mut ack = Histogram::default();
                let entry = Entry::new(EntryType::Insert, None, &payload);
                loop {
                    if claimed.fetch_add(1, Ordering::Relaxed) >= max {
                        break;
                    }
                    let t0 = Instant::now();
                    let _each = (durability == Durability::Each)
                        .then(|| each_lock.lock().unwrap_or_else(|p| p.into_inner()));
                    let a = wal.append(&entry)?;
                    let t1 = Instant::now();
                    append.record(t1 - t0);
                    let done = if durability == Durability::None {
                        t1
                    } else {
                        wal.wait_durable(a.end_lsn)?;
                        let t2 = Instant::now();
                        ack.record(t2 - t0);
                        t2
                    };
                    if deadline.is_some_and(|d| done >= d) {
                        break;
                    }
                }
                Ok((append, ack))
            },
        ));
    }
    let mut append = Histogram::default();
    let mut ack = Histogram::default();
    let mut first_err = None;
    for h in handles {
        match h.join() {
            Ok(Ok((a, k))) => {
                append.merge(&a);
                ack.merge(&k);
            }
            Ok(Err(e)) => first_err = first_err.or(Some(e)),
            Err(_) => {
                first_err =
                    first_err.or(Some(crate::Error::Other("a bench writer panicked".into())))
            }
        }
    }
    let elapsed = start.elapsed();
    if let Some(e) = first_err {
        return Err(e);
    }
    wal.sync()?;
    let after = wal.stats();
    Ok(WalRun {
        records: append.count(),
        elapsed,
        append,
        ack,
        stats: WalStats {
            syncs: after.syncs - before.syncs,
            records_appended: after.records_appended - before.records_appended,
            segments_sealed: after.segments_sealed - before.segments_sealed,
        },
    })
}

/// Runs the `append` scenario and its same-run baseline.
pub fn run_append(cfg: &BenchConfig) -> Result<BenchResult> {
    let tmp = scratch(&cfg.dir)?;
    let limit = cfg.limit.unwrap_or(Limit::Records(default_records(cfg)));
    let w = run_wal(cfg, tmp.path(), limit)?;
    std::fs::remove_dir_all(tmp.path().join("data")).ok();
    let records_per_sync = if w.stats.syncs > 0 {
        w.records as f64 / w.stats.syncs as f64
    } else {
        w.records as f64
    };
    let len = cfg.record_len();
    let every = match cfg.durability {
        Durability::Each => SyncEvery::Record,
        Durability::Group => SyncEvery::Batch(records_per_sync.round().max(1.0) as u64),
        Durability::None => SyncEvery::Never,
    };
    let base = sequential(tmp.path(), len, w.records, every)?;
    let each_base = if cfg.durability == Durability::Group {
        Some(sequential(
            tmp.path(),
            len,
            w.records.min(EACH_BASELINE_MAX),
            SyncEvery::Record,
        )?)
    } else {
        None
    };
    let lat = if cfg.durability == Durability::None {
        &w.append
    } else {
        &w.ack
    };
    let rps = w.records as f64 / w.elapsed.as_secs_f64().max(1e-9);
    let sync_ref = each_base.as_ref().unwrap_or(&base);
    let has_syncs = cfg.durability != Durability::None;
    Ok(BenchResult {
        scenario: "append",
        writers: cfg.writers,
        record_size: cfg.record_size,
        durability: cfg.durability.name(),
        records: w.records,
        seconds: w.elapsed.as_secs_f64(),
        records_per_s: rps,
        transactions_per_s: None,
        mb_per_s: mb_per_s(w.records * cfg.record_size as u64, w.elapsed),
        p50_us: lat.quantile_us(0.5),
        p99_us: lat.quantile_us(0.99),
        p999_us: lat.quantile_us(0.999),
        max_us: lat.max_us(),
        append_p50_us: w.append.quantile_us(0.5),
        append_p99_us: w.append.quantile_us(0.99),
        append_p999_us: w.append.quantile_us(0.999),
        syncs: w.stats.syncs,
        records_per_sync,
        segments_sealed: w.stats.segments_sealed,
        baseline_records_per_s: base.records_per_s(),
        baseline_mb_per_s: mb_per_s(base.records * cfg.record_size as u64, base.elapsed),
        baseline_p50_us: base.latency.quantile_us(0.5),
        baseline_p99_us: base.latency.quantile_us(0.99),
        ratio: ratio(rps, base.records_per_s()),
        each_baseline_records_per_s: each_base.as_ref().map(|b| b.records_per_s()),
        ratio_to_each_baseline: each_base.as_ref().map(|b| ratio(rps, b.records_per_s())),
        baseline_sync_p50_us: has_syncs.then(|| sync_ref.sync_latency.quantile_us(0.5)),
        baseline_sync_p99_us: has_syncs.then(|| sync_ref.sync_latency.quantile_us(0.99)),
        ..BenchResult::default()
    })
}
