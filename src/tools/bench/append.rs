//! The `append` scenario: W threads append records of S bytes through [`Wal`], then the baseline
//! writes the same number of records of the same on-disk length with plain write + fdatasync
//! from one thread, and (`group`, W > 1) the same W threads write them through a plain file's
//! group commit.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::baseline::{sequential, BaselineRun, RawLog, SyncEvery};
use super::hist::Histogram;
use super::{
    mb_per_s, per_mib, per_s, ratio, recycle, scratch, thread_cpu, thread_faults, BenchConfig,
    BenchResult, Durability, Limit,
};
use walship::{Entry, EntryType, Result, Wal, WalStats};

/// Bytes a default-sized run writes at most (keeps a run well under a minute and the disk
/// footprint modest).
const DEFAULT_MAX_BYTES: u64 = 512 << 20;
/// Records the one-sync-per-record baseline of a `group` run writes at most.
const EACH_BASELINE_MAX: u64 = 5_000;
/// Alternating rounds of walship and baseline in one run.
const ROUNDS: u64 = 4;

fn merge_base(acc: &mut Option<BaselineRun>, b: BaselineRun) {
    match acc {
        Some(a) => a.add(b),
        None => *acc = Some(b),
    }
}

fn default_records(cfg: &BenchConfig) -> u64 {
    let n: u64 = match cfg.durability {
        Durability::Each => 10_000,
        Durability::Group => 100_000,
        Durability::None => 2_000_000,
    };
    let by_bytes = DEFAULT_MAX_BYTES / cfg.record_len() as u64;
    n.min(by_bytes).max(16)
}

/// What the timed writer threads call: walship, or the plain file with the same group commit.
trait Target: Send + Sync + 'static {
    /// Appends one record; returns the position to wait for.
    fn append(&self) -> Result<u64>;
    fn wait_durable(&self, end: u64) -> Result<()>;
}

struct WalTarget {
    wal: Arc<Wal>,
    payload: Vec<u8>,
}

impl Target for WalTarget {
    fn append(&self) -> Result<u64> {
        let e = Entry::new(EntryType::Insert, None, &self.payload);
        Ok(self.wal.append(&e)?.end_lsn.0)
    }
    fn wait_durable(&self, end: u64) -> Result<()> {
        self.wal.wait_durable(walship::Lsn(end))
    }
}

/// How a group-commit baseline's file is made: written with `pwrite` or through a mapping.
type RawLogCreate = fn(&std::path::Path, u64) -> Result<RawLog>;

/// The group-commit baseline: `RawLog`, the same records at walship's on-disk length.
struct RawTarget {
    log: RawLog,
    record: Vec<u8>,
}

impl Target for RawTarget {
    fn append(&self) -> Result<u64> {
        self.log.append(&self.record)
    }
    fn wait_durable(&self, end: u64) -> Result<()> {
        self.log.wait_durable(end)
    }
}

/// What the writer threads of one round measured.
struct Driven {
    records: u64,
    elapsed: Duration,
    append: Histogram,
    ack: Histogram,
    cpu: Duration,
    /// Minor page faults of the writer threads.
    faults: u64,
    /// Group-commit leaders' syncs in the run, and the time they took in all.
    syncs: u64,
    sync_time: Duration,
}

impl Driven {
    fn add(&mut self, o: Driven) {
        self.records += o.records;
        self.elapsed += o.elapsed;
        self.append.merge(&o.append);
        self.ack.merge(&o.ack);
        self.cpu += o.cpu;
        self.faults += o.faults;
        self.syncs += o.syncs;
        self.sync_time += o.sync_time;
    }

    /// The mean sync, and the mean time between syncs; `None` without syncs.
    fn mean_sync_us(&self) -> Option<f64> {
        (self.syncs > 0).then(|| self.sync_time.as_secs_f64() * 1e6 / self.syncs as f64)
    }

    fn mean_sync_gap_us(&self) -> Option<f64> {
        (self.syncs > 0).then(|| {
            self.elapsed.saturating_sub(self.sync_time).as_secs_f64() * 1e6 / self.syncs as f64
        })
    }
}

struct WalRun {
    run: Driven,
    stats: WalStats,
    /// `none` only: the `Wal::sync` after the appends that writes every record back.
    final_sync: Duration,
}

/// Appends `limit` worth of records to `target` with `cfg.writers` threads, each waiting for
/// its own record as `cfg.durability` says.
fn drive<T: Target>(target: &Arc<T>, cfg: &BenchConfig, limit: Limit) -> Result<Driven> {
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
        let target = target.clone();
        let claimed = claimed.clone();
        let each_lock = each_lock.clone();
        let durability = cfg.durability;
        handles.push(std::thread::spawn(
            move || -> Result<(Histogram, Histogram, Duration, u64)> {
                let cpu0 = thread_cpu();
                let faults0 = thread_faults();
                let mut append = Histogram::default();
                let mut ack = Histogram::default();
                loop {
                    if claimed.fetch_add(1, Ordering::Relaxed) >= max {
                        break;
                    }
                    let t0 = Instant::now();
                    let _each = (durability == Durability::Each)
                        .then(|| each_lock.lock().unwrap_or_else(|p| p.into_inner()));
                    let end = target.append()?;
                    let t1 = Instant::now();
                    append.record(t1 - t0);
                    let done = if durability == Durability::None {
                        t1
                    } else {
                        target.wait_durable(end)?;
                        let t2 = Instant::now();
                        ack.record(t2 - t0);
                        t2
                    };
                    if deadline.is_some_and(|d| done >= d) {
                        break;
                    }
                }
                Ok((
                    append,
                    ack,
                    thread_cpu().saturating_sub(cpu0),
                    thread_faults().saturating_sub(faults0),
                ))
            },
        ));
    }
    let mut append = Histogram::default();
    let mut ack = Histogram::default();
    let mut first_err = None;
    let mut cpu = Duration::ZERO;
    let mut faults = 0;
    for h in handles {
        match h.join() {
            Ok(Ok((a, k, c, f))) => {
                append.merge(&a);
                ack.merge(&k);
                cpu += c;
                faults += f;
            }
            Ok(Err(e)) => first_err = first_err.or(Some(e)),
            Err(_) => {
                first_err = first_err.or(Some(walship::Error::Other(
                    "a bench writer panicked".into(),
                )))
            }
        }
    }
    let elapsed = start.elapsed();
    if let Some(e) = first_err {
        return Err(e);
    }
    Ok(Driven {
        records: append.count(),
        elapsed,
        append,
        ack,
        cpu,
        faults,
        syncs: 0,
        sync_time: Duration::ZERO,
    })
}

/// Appends `limit` worth of records through `wal` with `cfg.writers` threads.
fn run_wal(wal: &Arc<WalTarget>, cfg: &BenchConfig, limit: Limit) -> Result<WalRun> {
    let before = wal.wal.stats();
    let mut run = drive(wal, cfg, limit)?;
    let after = wal.wal.stats();
    let stats = WalStats {
        syncs: after.syncs - before.syncs,
        sync_us: after.sync_us - before.sync_us,
        records_appended: after.records_appended - before.records_appended,
        segments_sealed: after.segments_sealed - before.segments_sealed,
        segments_recycled: after.segments_recycled - before.segments_recycled,
        rotation_waits: after.rotation_waits - before.rotation_waits,
        rotation_wait_us: after.rotation_wait_us - before.rotation_wait_us,
        seal_bound_waits: after.seal_bound_waits - before.seal_bound_waits,
        seal_bound_wait_us: after.seal_bound_wait_us - before.seal_bound_wait_us,
    };
    run.syncs = stats.syncs;
    run.sync_time = Duration::from_micros(stats.sync_us);
    Ok(WalRun {
        run,
        stats,
        final_sync: Duration::ZERO,
    })
}

impl WalRun {
    fn add(&mut self, o: WalRun) {
        self.run.add(o.run);
        self.final_sync += o.final_sync;
        self.stats.syncs += o.stats.syncs;
        self.stats.sync_us += o.stats.sync_us;
        self.stats.records_appended += o.stats.records_appended;
        self.stats.segments_sealed += o.stats.segments_sealed;
        self.stats.segments_recycled += o.stats.segments_recycled;
        self.stats.rotation_waits += o.stats.rotation_waits;
        self.stats.rotation_wait_us += o.stats.rotation_wait_us;
        self.stats.seal_bound_waits += o.stats.seal_bound_waits;
        self.stats.seal_bound_wait_us += o.stats.seal_bound_wait_us;
    }

    fn records_per_sync(&self) -> f64 {
        self.run.records as f64 / self.stats.syncs.max(1) as f64
    }
}

/// Runs the `append` scenario and its same-run baseline. The run is split into rounds that
/// alternate walship and the baseline, so that the disk's drift over time (its speed changes
/// by 2x or more within a minute on a shared virtual disk) falls on both alike.
pub fn run_append(cfg: &BenchConfig) -> Result<BenchResult> {
    let tmp = scratch(&cfg.dir)?;
    let limit = cfg.limit.unwrap_or(Limit::Records(default_records(cfg)));
    let round_limit = match limit {
        Limit::Records(n) => Limit::Records(n.div_ceil(ROUNDS)),
        Limit::Time(t) => Limit::Time(t / ROUNDS as u32),
    };
    let wal = Arc::new(super::bench_wal(&tmp, cfg)?);
    let target = Arc::new(WalTarget {
        wal: wal.clone(),
        payload: vec![0x5Au8; cfg.record_size],
    });
    // Warm-up, not counted: opens the first segment so the preparer starts on the next one.
    target.append().and_then(|end| target.wait_durable(end))?;
    let stats0 = wal.stats();
    let len = cfg.record_len();
    let mut w: Option<WalRun> = None;
    let mut base: Option<BaselineRun> = None;
    let mut each_base: Option<BaselineRun> = None;
    let mut group_base: Option<Driven> = None;
    let mut mapped_group_base: Option<Driven> = None;
    let mut done = 0;
    for _ in 0..ROUNDS {
        let this = match (limit, round_limit) {
            (Limit::Records(n), Limit::Records(r)) => Limit::Records(r.min(n - done)),
            (_, l) => l,
        };
        if this == Limit::Records(0) {
            break;
        }
        let checkpointer = recycle::checkpointing(&wal, cfg.recycle);
        let r = run_wal(&target, cfg, this);
        recycle::stop(checkpointer)?;
        let mut r = r?;
        if cfg.durability == Durability::None {
            // Timed apart, like the baseline's final fdatasync, and done before the baseline
            // runs so that it does not share the disk with walship's write-back.
            let s0 = Instant::now();
            wal.sync()?;
            r.final_sync = s0.elapsed();
        }
        done += r.run.records;
        let every = match cfg.durability {
            Durability::Each => SyncEvery::Record,
            Durability::Group => SyncEvery::Batch(r.records_per_sync().round().max(1.0) as u64),
            Durability::None => SyncEvery::Never,
        };
        let b = sequential(tmp.path(), len, r.run.records, every)?;
        if cfg.durability == Durability::Group {
            let n = r.run.records.min(EACH_BASELINE_MAX / ROUNDS);
            let e = sequential(tmp.path(), len, n, SyncEvery::Record)?;
            merge_base(&mut each_base, e);
        }
        if cfg.durability == Durability::Group && cfg.writers > 1 {
            let kinds: [(RawLogCreate, _); 2] = [
                (RawLog::create, &mut group_base),
                (RawLog::create_mapped, &mut mapped_group_base),
            ];
            for (create, acc) in kinds {
                let raw = Arc::new(RawTarget {
                    log: create(
                        &tmp.path().join("group-baseline.raw"),
                        len as u64 * r.run.records,
                    )?,
                    record: vec![0xA5u8; len],
                });
                let mut g = drive(&raw, cfg, Limit::Records(r.run.records))?;
                (g.syncs, g.sync_time) = raw.log.syncs();
                match acc {
                    Some(a) => a.add(g),
                    None => *acc = Some(g),
                }
            }
        }
        merge_base(&mut base, b);
        match &mut w {
            Some(acc) => acc.add(r),
            None => w = Some(r),
        }
    }
    wal.sync()?;
    // Segment files prepared from the pool since timing started (each round's own count would
    // miss a preparation that finished between rounds).
    let recycled = wal.stats().segments_recycled - stats0.segments_recycled;
    drop(target);
    drop(wal);
    let (Some(w), Some(base)) = (w, base) else {
        return Err(walship::Error::InvalidArgument(
            "nothing to run: no records".into(),
        ));
    };
    let records_per_sync = w.records_per_sync();
    let lat = if cfg.durability == Durability::None {
        &w.run.append
    } else {
        &w.run.ack
    };
    let rps = w.run.records as f64 / w.run.elapsed.as_secs_f64().max(1e-9);
    let sync_ref = each_base.as_ref().unwrap_or(&base);
    let has_syncs = cfg.durability != Durability::None;
    Ok(BenchResult {
        scenario: "append",
        writers: cfg.writers,
        record_size: cfg.record_size,
        durability: cfg.durability.name(),
        records: w.run.records,
        seconds: w.run.elapsed.as_secs_f64(),
        records_per_s: rps,
        transactions_per_s: None,
        mb_per_s: mb_per_s(w.run.records * cfg.record_size as u64, w.run.elapsed),
        p50_us: lat.quantile_us(0.5),
        p99_us: lat.quantile_us(0.99),
        p999_us: lat.quantile_us(0.999),
        max_us: lat.max_us(),
        append_p50_us: w.run.append.quantile_us(0.5),
        append_p99_us: w.run.append.quantile_us(0.99),
        append_p999_us: w.run.append.quantile_us(0.999),
        syncs: w.stats.syncs,
        records_per_sync,
        mean_sync_us: w.run.mean_sync_us(),
        mean_sync_gap_us: w.run.mean_sync_gap_us(),
        segments_sealed: w.stats.segments_sealed,
        baseline_records_per_s: base.records_per_s(),
        baseline_mb_per_s: mb_per_s(base.records * cfg.record_size as u64, base.elapsed),
        baseline_p50_us: base.latency.quantile_us(0.5),
        baseline_p99_us: base.latency.quantile_us(0.99),
        ratio: ratio(rps, base.records_per_s()),
        each_baseline_records_per_s: each_base.as_ref().map(|b| b.records_per_s()),
        ratio_to_each_baseline: each_base.as_ref().map(|b| ratio(rps, b.records_per_s())),
        ratio_written_back: (cfg.durability == Durability::None).then(|| {
            ratio(
                per_s(w.run.records, w.run.elapsed + w.final_sync),
                per_s(base.records, base.elapsed + base.final_sync),
            )
        }),
        baseline_sync_p50_us: has_syncs.then(|| sync_ref.sync_latency.quantile_us(0.5)),
        baseline_sync_p99_us: has_syncs.then(|| sync_ref.sync_latency.quantile_us(0.99)),
        baseline_sync_p999_us: has_syncs.then(|| sync_ref.sync_latency.quantile_us(0.999)),
        writer_cpu_s: Some(w.run.cpu.as_secs_f64()),
        baseline_cpu_s: Some(base.cpu.as_secs_f64()),
        writer_faults_per_mib: Some(per_mib(w.run.faults, w.run.records * len as u64)),
        baseline_faults_per_mib: Some(per_mib(base.faults, base.records * len as u64)),
        recycle: Some(cfg.recycle),
        segments_recycled: Some(recycled),
        rotation_waits: has_syncs.then_some(w.stats.rotation_waits),
        rotation_wait_ms: has_syncs.then(|| w.stats.rotation_wait_us as f64 / 1e3),
        seal_bound_waits: Some(w.stats.seal_bound_waits),
        seal_bound_wait_ms: Some(w.stats.seal_bound_wait_us as f64 / 1e3),
        bytes_written: Some(w.run.records * len as u64),
        group_baseline_records_per_s: group_base.as_ref().map(|g| per_s(g.records, g.elapsed)),
        group_baseline_p50_us: group_base.as_ref().map(|g| g.ack.quantile_us(0.5)),
        group_baseline_p99_us: group_base.as_ref().map(|g| g.ack.quantile_us(0.99)),
        group_baseline_p999_us: group_base.as_ref().map(|g| g.ack.quantile_us(0.999)),
        group_baseline_cpu_s: group_base.as_ref().map(|g| g.cpu.as_secs_f64()),
        group_baseline_syncs: group_base.as_ref().map(|g| g.syncs),
        group_baseline_mean_sync_us: group_base.as_ref().and_then(Driven::mean_sync_us),
        group_baseline_mean_sync_gap_us: group_base.as_ref().and_then(Driven::mean_sync_gap_us),
        ratio_to_group_baseline: group_base
            .as_ref()
            .map(|g| ratio(rps, per_s(g.records, g.elapsed))),
        mapped_group_baseline_records_per_s: mapped_group_base
            .as_ref()
            .map(|g| per_s(g.records, g.elapsed)),
        mapped_group_baseline_p99_us: mapped_group_base.as_ref().map(|g| g.ack.quantile_us(0.99)),
        mapped_group_baseline_p999_us: mapped_group_base.as_ref().map(|g| g.ack.quantile_us(0.999)),
        mapped_group_baseline_syncs: mapped_group_base.as_ref().map(|g| g.syncs),
        mapped_group_baseline_mean_sync_us: mapped_group_base
            .as_ref()
            .and_then(Driven::mean_sync_us),
        mapped_group_baseline_mean_sync_gap_us: mapped_group_base
            .as_ref()
            .and_then(Driven::mean_sync_gap_us),
        ratio_to_mapped_group_baseline: mapped_group_base
            .as_ref()
            .map(|g| ratio(rps, per_s(g.records, g.elapsed))),
        ..BenchResult::default()
    })
}
