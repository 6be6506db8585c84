//! The `sync` scenario: what synchronous replication costs a commit. A writer, a shipper in
//! its process (the durable position handed over directly) and one standby named `s1` on
//! loopback, all on this machine. For each level (`local`: the standby streams but nobody waits
//! for it; `remote_write`, `remote_flush`, `remote_apply` with the policy `FIRST 1 (s1)`), W = 1
//! and 16 writers each append records of S bytes and wait for their own: durable locally, then
//! confirmed by the policy. Every level has a fresh primary and standby; `local` of the same run
//! is the baseline of each ratio. With a trace (`--workload`), the trace is also replayed by W
//! clients, each commit waiting for local durability and then (`remote_flush`) for the
//! standby, against the same replay at `local`.
//!
//! `remote_apply` confirms a record only once its segment is sealed and applied on the
//! standby (standbys apply whole segments): the writer here seals a segment after
//! [`APPLY_SEAL_AGE`] at most, so its figures are bounded by that age.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::hist::Histogram;
use super::trace::TraceRecord;
use super::{ratio, scratch, BenchConfig, BenchResult, Limit};
use walship::error::IoContext;
use walship::replication::synchronous::{SyncConfig, SyncLevel, SyncPolicy, SyncWaiter};
use walship::replication::{
    CheckingApplicator, ReplError, Shipper, ShipperConfig, Standby, StandbyConfig,
};
use walship::{DataDir, Entry, EntryType, Error, Lsn, Result, Wal, WalOptions};

/// The longest a commit may wait for the standby before the run is called failed.
const CONFIRM_LIMIT: Duration = Duration::from_secs(60);

/// The primary's maximum segment age for `remote_apply` (and only there).
pub const APPLY_SEAL_AGE: Duration = Duration::from_millis(20);

/// How long each (level, W) run lasts unless `--seconds` says.
const DEFAULT_RUN: Duration = Duration::from_secs(3);

fn repl(e: ReplError) -> Error {
    match e {
        ReplError::Store(e) => e,
        e => Error::Other(format!("replication: {e}")),
    }
}

fn level_name(level: Option<SyncLevel>) -> &'static str {
    level.map_or("local", SyncLevel::as_str)
}

/// A commit: durable locally, then (with a waiter) confirmed by the policy.
fn commit(wal: &Wal, waiter: Option<&SyncWaiter>, end: Lsn) -> Result<()> {
    wal.wait_durable(end)?;
    if let Some(w) = waiter {
        w.wait_blocking(end, Some(CONFIRM_LIMIT))
            .map_err(|e| Error::Other(format!("waiting for the standby: {e}")))?;
    }
    Ok(())
}

/// One primary with its shipper and one standby `s1`, at one level.
struct Pair {
    wal: Arc<Wal>,
    shipper: Shipper,
    standby: Standby,
    waiter: Option<SyncWaiter>,
    rt: tokio::runtime::Runtime,
}

impl Pair {
    fn start(cfg: &BenchConfig, tmp: &std::path::Path, level: Option<SyncLevel>) -> Result<Pair> {
        let name = level_name(level);
        let data = tmp.join(format!("primary-{name}"));
        DataDir::init(&data, cfg.segment_size)?;
        let wal = Arc::new(Wal::open(
            &data,
            WalOptions {
                max_segment_age: (level == Some(SyncLevel::RemoteApply)).then_some(APPLY_SEAL_AGE),
                segment_fill: cfg.segment_fill,
                ..WalOptions::default()
            },
        )?);
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .ctx(|| "start the async runtime".into())?;
        let mut sc = ShipperConfig::new(&data, "127.0.0.1:0");
        sc.flush_watch = Some(wal.flush_watch());
        if let Some(level) = level {
            let policy: SyncPolicy = "FIRST 1 (s1)"
                .parse()
                .map_err(|e| Error::Other(format!("the bench's policy: {e}")))?;
            sc.sync = Some(SyncConfig {
                policy,
                level,
                timeout: None,
            });
        }
        let shipper = rt.block_on(Shipper::start(sc)).map_err(repl)?;
        let mut stc = StandbyConfig::new(
            tmp.join(format!("standby-{name}")),
            shipper.local_addr().to_string(),
        );
        stc.name = Some("s1".into());
        let standby = rt
            .block_on(Standby::start(stc, CheckingApplicator::default()))
            .map_err(repl)?;
        let waiter = shipper.sync_waiter();
        let pair = Pair {
            wal,
            shipper,
            standby,
            waiter,
            rt,
        };
        // The standby is connected and confirming before anything is timed.
        let a = pair
            .wal
            .append_durable(&Entry::new(EntryType::Checkpoint, None, b"warm-up"))?;
        pair.caught_up(a.end_lsn)?;
        commit(&pair.wal, pair.waiter.as_ref(), a.end_lsn)?;
        Ok(pair)
    }

    /// Waits until the standby has flushed everything below `lsn`.
    fn caught_up(&self, lsn: Lsn) -> Result<()> {
        let deadline = Instant::now() + CONFIRM_LIMIT;
        loop {
            let st = self.standby.state();
            if st.flushed_lsn >= lsn {
                return Ok(());
            }
            if !self.standby.is_running() || Instant::now() > deadline {
                return Err(Error::Other(format!(
                    "the standby stopped at flushed position {} before {lsn}{}",
                    st.flushed_lsn,
                    st.last_error.map(|e| format!(": {e}")).unwrap_or_default()
                )));
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    fn stop(self) -> Result<()> {
        let Pair {
            wal,
            mut shipper,
            mut standby,
            rt,
            ..
        } = self;
        rt.block_on(standby.stop(Duration::from_secs(10)))
            .map_err(repl)?;
        rt.block_on(shipper.stop(Duration::from_secs(10)));
        drop(wal);
        Ok(())
    }
}

/// What W writers did in one run.
struct Run {
    records: u64,
    elapsed: Duration,
    hist: Histogram,
}

/// W writers append records of S bytes for `length`, each committing its own.
fn writers(pair: &Pair, cfg: &BenchConfig, w: usize, length: Duration) -> Result<Run> {
    let payload = vec![0x6Bu8; cfg.record_size.min(pair.wal.max_payload())];
    let stop = AtomicBool::new(false);
    let start = Instant::now();
    let hists = std::thread::scope(|sc| {
        let handles: Vec<_> = (0..w)
            .map(|_| {
                sc.spawn(|| -> Result<Histogram> {
                    let mut h = Histogram::default();
                    let entry = Entry::new(EntryType::Insert, None, &payload);
                    while !stop.load(Ordering::Relaxed) {
                        let t0 = Instant::now();
                        let a = pair.wal.append(&entry)?;
                        commit(&pair.wal, pair.waiter.as_ref(), a.end_lsn)?;
                        h.record(t0.elapsed());
                    }
                    Ok(h)
                })
            })
            .collect();
        while start.elapsed() < length && handles.iter().all(|h| !h.is_finished()) {
            std::thread::sleep(Duration::from_millis(5));
        }
        stop.store(true, Ordering::Relaxed);
        handles
            .into_iter()
            .map(|h| {
                h.join()
                    .map_err(|_| Error::Other("a writer thread panicked".into()))?
            })
            .collect::<Result<Vec<_>>>()
    })?;
    let elapsed = start.elapsed();
    let mut hist = Histogram::default();
    for h in &hists {
        hist.merge(h);
    }
    Ok(Run {
        records: hist.count(),
        elapsed,
        hist,
    })
}

fn result(
    scenario: &'static str,
    cfg: &BenchConfig,
    w: usize,
    level: Option<SyncLevel>,
    run: &Run,
) -> BenchResult {
    let secs = run.elapsed.as_secs_f64().max(1e-9);
    BenchResult {
        scenario,
        writers: w,
        record_size: cfg.record_size,
        durability: level_name(level),
        records: run.records,
        seconds: secs,
        records_per_s: run.records as f64 / secs,
        mb_per_s: (run.records * cfg.record_size as u64) as f64 / 1e6 / secs,
        p50_us: run.hist.quantile_us(0.5),
        p99_us: run.hist.quantile_us(0.99),
        p999_us: run.hist.quantile_us(0.999),
        max_us: run.hist.max_us(),
        ..BenchResult::default()
    }
}

/// Runs the `sync` scenario: one `sync` result per level and W (ratios to `local` of the same
/// W), and with a trace one `sync_workload` result for `local` and one for `remote_flush`.
pub fn run_sync(cfg: &BenchConfig, trace: Option<&[TraceRecord]>) -> Result<Vec<BenchResult>> {
    let tmp = scratch(&cfg.dir)?;
    let length = match cfg.limit {
        Some(Limit::Time(d)) => d,
        _ => DEFAULT_RUN,
    };
    let levels = [
        None,
        Some(SyncLevel::RemoteWrite),
        Some(SyncLevel::RemoteFlush),
        Some(SyncLevel::RemoteApply),
    ];
    let mut out: Vec<BenchResult> = Vec::new();
    let mut workload: Vec<BenchResult> = Vec::new();
    for level in levels {
        let pair = Pair::start(cfg, tmp.path(), level)?;
        for w in [1usize, 16] {
            let run = writers(&pair, cfg, w, length)?;
            out.push(result("sync", cfg, w, level, &run));
        }
        if let Some(records) =
            trace.filter(|_| matches!(level, None | Some(SyncLevel::RemoteFlush)))
        {
            let r = super::workload::replay_committing(
                pair.wal.clone(),
                records,
                cfg.writers,
                pair.waiter.clone(),
            )?;
            let mut b = super::workload::result_of(cfg, records, &r);
            b.scenario = "sync_workload";
            b.durability = level_name(level);
            workload.push(b);
        }
        pair.stop()?;
    }
    // Ratios to `local` of the same W (and of the same trace replay).
    let local: Vec<(usize, f64, f64, f64)> = out
        .iter()
        .filter(|r| r.durability == "local")
        .map(|r| (r.writers, r.records_per_s, r.p50_us, r.p99_us))
        .collect();
    for r in out.iter_mut() {
        if let Some(&(_, rps, p50, p99)) = local.iter().find(|l| l.0 == r.writers) {
            r.baseline_records_per_s = rps;
            r.baseline_p50_us = p50;
            r.baseline_p99_us = p99;
            r.ratio = ratio(r.records_per_s, rps);
        }
    }
    if let Some(base) = workload.first().cloned() {
        for r in workload.iter_mut() {
            let (t, bt) = (
                r.transactions_per_s.unwrap_or(0.0),
                base.transactions_per_s.unwrap_or(0.0),
            );
            r.baseline_records_per_s = base.records_per_s;
            r.baseline_p50_us = base.p50_us;
            r.baseline_p99_us = base.p99_us;
            r.ratio = ratio(t, bt);
        }
    }
    out.extend(workload);
    Ok(out)
}
