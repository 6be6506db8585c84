//! The `workload` scenario: W clients replay a trace, each taking whole transactions and
//! waiting for durability at each commit, first through [`Wal`], then through a plain file with
//! write + fdatasync and the same group commit.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::baseline::RawLog;
use super::hist::Histogram;
use super::trace::{TraceRecord, Unit};
use super::{mb_per_s, ratio, scratch, BenchConfig, BenchResult};
use walship::format::record::encoded_len;
use walship::{Entry, EntryType, Result, Wal};

/// Trace records replayed by default: about a third of the PostgreSQL trace, some 13,000
/// transactions, a few seconds per side.
pub const DEFAULT_TRACE_RECORDS: usize = 80_000;

pub(super) struct Replay {
    elapsed: Duration,
    commits: u64,
    commit: Histogram,
    append: Histogram,
    syncs: u64,
    sealed: u64,
    recycled: u64,
}

/// The two sides of the comparison: what a client calls.
trait Log: Send + Sync {
    fn append(&self, r: &TraceRecord, payload: &[u8]) -> Result<u64>;
    fn wait_durable(&self, end: u64) -> Result<()>;
}

impl Log for Wal {
    fn append(&self, r: &TraceRecord, payload: &[u8]) -> Result<u64> {
        let tx = (r.tx_id != 0).then_some(r.tx_id);
        Ok(Wal::append(self, &Entry::new(r.entry_type, tx, payload))?
            .end_lsn
            .0)
    }
    fn wait_durable(&self, end: u64) -> Result<()> {
        Wal::wait_durable(self, walship::Lsn(end))
    }
}

struct RawSide {
    log: RawLog,
    buf: Vec<u8>,
}

impl Log for RawSide {
    fn append(&self, r: &TraceRecord, _payload: &[u8]) -> Result<u64> {
        self.log.append(&self.buf[..encoded_len(r.len as usize)])
    }
    fn wait_durable(&self, end: u64) -> Result<()> {
        self.log.wait_durable(end)
    }
}

fn replay<L: Log + 'static>(log: Arc<L>, units: Arc<Vec<Unit>>, clients: usize) -> Result<Replay> {
    let max_len = units
        .iter()
        .flat_map(|u| u.records.iter())
        .map(|r| r.len as usize)
        .max()
        .unwrap_or(0);
    let next = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let mut handles = Vec::new();
    for _ in 0..clients.max(1) {
        let (log, units, next) = (log.clone(), units.clone(), next.clone());
        handles.push(std::thread::spawn(
            move || -> Result<(Histogram, Histogram)> {
                let payload = vec![0x3Cu8; max_len];
                let (mut commit, mut append) = (Histogram::default(), Histogram::default());
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    let Some(unit) = units.get(i) else { break };
                    for r in &unit.records {
                        let t0 = Instant::now();
                        let end = log.append(r, &payload[..r.len as usize])?;
                        append.record(t0.elapsed());
                        if r.entry_type == EntryType::TxCommit {
                            log.wait_durable(end)?;
                            commit.record(t0.elapsed());
                        }
                    }
                }
                Ok((commit, append))
            },
        ));
    }
    let (mut commit, mut append) = (Histogram::default(), Histogram::default());
    for h in handles {
        let (c, a) = h
            .join()
            .map_err(|_| walship::Error::Other("a replay client panicked".into()))??;
        commit.merge(&c);
        append.merge(&a);
    }
    Ok(Replay {
        elapsed: start.elapsed(),
        commits: commit.count(),
        commit,
        append,
        syncs: 0,
        sealed: 0,
        recycled: 0,
    })
}

/// Replays `records` with `cfg.writers` clients through walship and through the baseline.
/// The writer with a commit that also waits for a synchronous policy's confirmation.
struct Committing {
    wal: Arc<Wal>,
    waiter: Option<walship::replication::synchronous::SyncWaiter>,
}

impl Log for Committing {
    fn append(&self, r: &TraceRecord, payload: &[u8]) -> Result<u64> {
        Log::append(&*self.wal, r, payload)
    }
    fn wait_durable(&self, end: u64) -> Result<()> {
        self.wal.wait_durable(walship::Lsn(end))?;
        if let Some(w) = &self.waiter {
            w.wait_blocking(walship::Lsn(end), Some(Duration::from_secs(60)))
                .map_err(|e| walship::Error::Other(format!("waiting for the standby: {e}")))?;
        }
        Ok(())
    }
}

/// Replays `records` into `wal` with `clients` clients, each commit waiting for local
/// durability and then, with a waiter, for the policy's confirmation.
pub(super) fn replay_committing(
    wal: Arc<Wal>,
    records: &[TraceRecord],
    clients: usize,
    waiter: Option<walship::replication::synchronous::SyncWaiter>,
) -> Result<Replay> {
    let units = Arc::new(super::trace::units(records));
    replay(Arc::new(Committing { wal, waiter }), units, clients)
}

/// A replay's figures (no baseline).
pub(super) fn result_of(cfg: &BenchConfig, records: &[TraceRecord], w: &Replay) -> BenchResult {
    let payload_bytes: u64 = records.iter().map(|r| r.len as u64).sum();
    let n = records.len() as u64;
    BenchResult {
        scenario: "workload",
        writers: cfg.writers,
        record_size: (payload_bytes / n.max(1)) as usize,
        durability: "group",
        records: n,
        seconds: w.elapsed.as_secs_f64(),
        records_per_s: n as f64 / w.elapsed.as_secs_f64().max(1e-9),
        transactions_per_s: Some(w.commits as f64 / w.elapsed.as_secs_f64().max(1e-9)),
        mb_per_s: mb_per_s(payload_bytes, w.elapsed),
        p50_us: w.commit.quantile_us(0.5),
        p99_us: w.commit.quantile_us(0.99),
        p999_us: w.commit.quantile_us(0.999),
        max_us: w.commit.max_us(),
        append_p50_us: w.append.quantile_us(0.5),
        append_p99_us: w.append.quantile_us(0.99),
        append_p999_us: w.append.quantile_us(0.999),
        ..BenchResult::default()
    }
}

pub fn run_workload(cfg: &BenchConfig, records: &[TraceRecord]) -> Result<BenchResult> {
    let tmp = scratch(&cfg.dir)?;
    let units = Arc::new(super::trace::units(records));
    let payload_bytes: u64 = records.iter().map(|r| r.len as u64).sum();
    let disk_bytes: u64 = records
        .iter()
        .map(|r| encoded_len(r.len as usize) as u64)
        .sum();

    let wal = Arc::new(super::bench_wal(&tmp, cfg)?);
    // Warm-up, not counted: opens the first segment.
    wal.append_durable(&Entry::new(EntryType::Checkpoint, None, b"warm-up"))?;
    let before = wal.stats();
    let checkpointer = super::recycle::checkpointing(&wal, cfg.recycle);
    let w = replay(wal.clone(), units.clone(), cfg.writers);
    super::recycle::stop(checkpointer)?;
    let mut w = w?;
    let after = wal.stats();
    w.syncs = after.syncs - before.syncs;
    w.sealed = after.segments_sealed - before.segments_sealed;
    w.recycled = after.segments_recycled - before.segments_recycled;
    drop(wal);
    std::fs::remove_dir_all(tmp.path().join("data")).ok();

    let max_len = records.iter().map(|r| r.len as usize).max().unwrap_or(0);
    let raw = Arc::new(RawSide {
        log: RawLog::create(&tmp.path().join("baseline.raw"), disk_bytes)?,
        buf: vec![0xA5u8; encoded_len(max_len)],
    });
    let b = replay(raw.clone(), units, cfg.writers)?;

    let tps = w.commits as f64 / w.elapsed.as_secs_f64().max(1e-9);
    let base_tps = b.commits as f64 / b.elapsed.as_secs_f64().max(1e-9);
    let n = records.len() as u64;
    Ok(BenchResult {
        syncs: w.syncs,
        records_per_sync: n as f64 / w.syncs.max(1) as f64,
        segments_sealed: w.sealed,
        baseline_records_per_s: n as f64 / b.elapsed.as_secs_f64().max(1e-9),
        baseline_mb_per_s: mb_per_s(payload_bytes, b.elapsed),
        baseline_p50_us: b.commit.quantile_us(0.5),
        baseline_p99_us: b.commit.quantile_us(0.99),
        ratio: ratio(tps, base_tps),
        recycle: Some(cfg.recycle),
        segments_recycled: Some(w.recycled),
        ..result_of(cfg, records, &w)
    })
}
