//! `bench`: the load generator and its same-run baselines.

use std::path::PathBuf;
use std::time::Duration;

use crate::tools::bench::{self, BenchConfig, BenchResult, Durability, Limit};
use clap::{Args, ValueEnum};

use super::{parse_size, CmdResult, Failure};

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum Scenario {
    /// W writers append records of S bytes.
    Append,
    /// Reopen a store and read every record back.
    Recover,
    /// A shipper and a standby on loopback: seal-to-applied latency and backlog catch-up.
    Ship,
    /// Commits waiting for one synchronous standby on loopback, each level against local.
    Sync,
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum DurabilityArg {
    None,
    Group,
    Each,
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum SegmentFillArg {
    /// Blocks reserved with fallocate, then zeros written over them ahead of use.
    Zeros,
    /// Blocks reserved with fallocate (unwritten extents; the writer's default).
    Reserve,
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum OnOff {
    On,
    Off,
}

/// Measure walship against this machine's own limits, in the same run.
#[derive(Args, Debug)]
#[command(
    after_help = "Every result comes with a baseline measured in the same run on the same directory and bytes: \
plain write + fdatasync into a zero-filled file (one sync per record for `each`, one per batch of the size walship \
reached for `group`, none for `none`), plain read + CRC for `recover`, or copying the same segment files over one \
loopback TCP connection into fresh files, each fsynced, for `ship`. `ratio` is walship / baseline, higher is better; \
for `ship_latency` (a time, seal to the standby's applied position) it is baseline / walship of the p50, so higher \
is still better.\n\n\
Examples:\n  walship bench --dir /var/tmp --durability each --record-size 128\n  \
walship bench --writers 16 --durability group --json\n  \
walship bench --scenario recover --size 512MiB\n  \
walship bench --scenario ship --segments 24 --record-size 4KiB\n  \
walship bench --workload pgbench-wal.tsv.gz --writers 4"
)]
pub struct BenchArgs {
    /// Where to run, an existing directory: a scratch directory is made inside and removed
    /// afterwards (also when the bench is interrupted with SIGINT or SIGTERM).
    #[arg(long, default_value = ".")]
    pub dir: PathBuf,
    #[arg(long, value_enum, default_value_t = Scenario::Append)]
    pub scenario: Scenario,
    /// Writer threads (clients for a workload).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub writers: u16,
    /// Payload bytes per record (KiB/MiB suffixes allowed).
    #[arg(long, default_value = "128", value_parser = parse_size)]
    pub record_size: u64,
    /// Records to append (trace records to replay for a workload); default depends on the run.
    #[arg(long, conflicts_with = "seconds")]
    pub records: Option<u64>,
    /// Append for this many seconds instead of a fixed count.
    #[arg(long)]
    pub seconds: Option<f64>,
    #[arg(long, value_enum, default_value_t = DurabilityArg::Group)]
    pub durability: DurabilityArg,
    /// Segment size of the data directory the bench creates.
    #[arg(long, default_value = "16MiB", value_parser = parse_size)]
    pub segment_size: u64,
    /// How the writer prepares new segment files (append and workload scenarios).
    #[arg(long, value_enum, default_value_t = SegmentFillArg::Reserve)]
    pub segment_fill: SegmentFillArg,
    /// Append and workload scenarios: recycle segment files as a deployment that checkpoints
    /// does (on: the pool of recycled files filled before timing, timing started in a recycled
    /// file, a checkpoint at the durable position every 100 ms while walship is timed; off:
    /// every segment a new file, as in a fresh data directory).
    #[arg(long, value_enum, default_value_t = OnOff::On)]
    pub recycle: OnOff,
    /// Append and workload scenarios: the writer's bound on sealed segments not yet durable
    /// (whole segments, at least two).
    #[arg(long, value_name = "SIZE", default_value = "256MiB", value_parser = parse_size)]
    pub max_unsynced_seal: u64,
    /// Size of the store built by the recover scenario.
    #[arg(long, default_value = "512MiB", value_parser = parse_size)]
    pub size: u64,
    /// Ship scenario: sealed segments in the catch-up backlog, and segments timed one by one.
    #[arg(long, default_value_t = 24, value_parser = clap::value_parser!(u64).range(1..=100_000))]
    pub segments: u64,
    /// Ship scenario: run it over TLS as well, in the same run, with the certificates of DIR:
    /// ca.crt, and primary.crt and primary.key for the name localhost (OPERATIONS.md shows
    /// how to make them). The TLS rows are compared with the plain ones.
    #[arg(long, value_name = "DIR")]
    pub tls: Option<PathBuf>,
    /// Replay a trace (tab-separated type, tx_id, len; plain or gzip) instead of fixed records;
    /// each client waits for durability at each tx_commit.
    #[arg(long)]
    pub workload: Option<PathBuf>,
    /// Print one JSON object per result.
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: BenchArgs) -> CmdResult {
    walship::format::check_segment_size(a.segment_size).map_err(Failure::Error)?;
    let limit = match (a.records, a.seconds) {
        (Some(0), _) => return Err(Failure::Error("--records must be at least 1".into())),
        (Some(n), _) => Some(Limit::Records(n)),
        // Past a week is a typo, and would overflow a Duration far out.
        (None, Some(s)) if !(s > 0.0 && s <= 604_800.0) => {
            return Err(Failure::Error(format!(
                "--seconds {s} is out of range: give a number of seconds above 0 and at most 604800 (a week)"
            )))
        }
        (None, Some(s)) => Some(Limit::Time(Duration::from_secs_f64(s))),
        (None, None) => None,
    };
    let cfg = BenchConfig {
        dir: a.dir.clone(),
        writers: a.writers as usize,
        record_size: usize::try_from(a.record_size)
            .map_err(|_| Failure::Error("--record-size is too large".into()))?,
        limit,
        durability: match a.durability {
            DurabilityArg::None => Durability::None,
            DurabilityArg::Group => Durability::Group,
            DurabilityArg::Each => Durability::Each,
        },
        segment_size: a.segment_size,
        segment_fill: match a.segment_fill {
            SegmentFillArg::Zeros => walship::SegmentFill::Zeros,
            SegmentFillArg::Reserve => walship::SegmentFill::Reserve,
        },
        recycle: a.recycle == OnOff::On,
        max_unsynced_seal: a.max_unsynced_seal,
        store_size: a.size,
        segments: a.segments,
        tls: a.tls.clone(),
    };
    let trace = match &a.workload {
        Some(path) => {
            if limit.is_some_and(|l| matches!(l, Limit::Time(_))) && a.scenario != Scenario::Sync {
                return Err(Failure::Error(
                    "--seconds does not apply to --workload: use --records".into(),
                ));
            }
            let n = a
                .records
                .map(|n| n as usize)
                .unwrap_or(bench::DEFAULT_TRACE_RECORDS);
            let records = bench::trace::load(path, Some(n))?;
            if records.is_empty() {
                return Err(Failure::Error(format!(
                    "{}: the trace holds no records",
                    path.display()
                )));
            }
            Some(records)
        }
        None => None,
    };
    // Checked after the arguments. A mistyped --dir must not become a new directory tree left behind.
    match std::fs::metadata(&a.dir) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => {
            return Err(Failure::Error(format!(
                "--dir {}: not a directory",
                a.dir.display()
            )))
        }
        Err(e) => {
            return Err(Failure::Error(format!(
            "--dir {}: {e} (the bench runs in a scratch directory it makes inside an existing one)",
            a.dir.display()
        )))
        }
    }
    bench::remove_scratch_on_interrupt();
    let results = match (a.scenario, &trace) {
        (Scenario::Sync, t) => bench::run_sync(&cfg, t.as_deref())?,
        (_, Some(records)) => vec![bench::run_workload(&cfg, records)?],
        (Scenario::Append, None) => vec![bench::run_append(&cfg)?],
        (Scenario::Recover, None) => vec![bench::run_recover(&cfg)?],
        (Scenario::Ship, None) => bench::run_ship(&cfg)?,
    };
    for r in &results {
        print(r, a.json)?;
    }
    Ok(())
}

fn print(r: &BenchResult, json: bool) -> CmdResult {
    if json {
        let line = serde_json::to_string(r).map_err(|e| Failure::Error(e.to_string()))?;
        println!("{line}");
        return Ok(());
    }
    match r.scenario {
        "ship_catchup" => {
            println!(
                "ship catch-up: {} segments, {} records of {} B: {:.2} s, {:.1} MB/s, {:.0} records/s",
                r.segments.unwrap_or(0), r.records, r.record_size, r.seconds, r.mb_per_s, r.records_per_s
            );
            println!(
                "baseline (TCP copy + fsync): {:.1} MB/s; ratio {:.2}",
                r.baseline_mb_per_s, r.ratio
            );
        }
        "ship_latency" => {
            println!(
                "ship latency, seal to applied: {} segments: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms ({:.1} MB/s)",
                r.segments.unwrap_or(0), r.p50_us / 1e3, r.p99_us / 1e3, r.max_us / 1e3, r.mb_per_s
            );
            println!(
                "baseline (TCP copy + fsync of one segment): p50 {:.1} ms, p99 {:.1} ms; ratio (baseline / walship p50) {:.2}",
                r.baseline_p50_us / 1e3, r.baseline_p99_us / 1e3, r.ratio
            );
        }
        "ship_catchup_tls" => {
            println!(
                "ship catch-up over TLS: {} segments: {:.2} s, {:.1} MB/s; plain {:.1} MB/s; ratio TLS / plain {:.2}",
                r.segments.unwrap_or(0), r.seconds, r.mb_per_s, r.baseline_mb_per_s, r.ratio
            );
        }
        "ship_latency_tls" => {
            println!(
                "ship latency over TLS, seal to applied: p50 {:.1} ms, p99 {:.1} ms; plain p50 {:.1} ms, p99 {:.1} ms",
                r.p50_us / 1e3, r.p99_us / 1e3, r.baseline_p50_us / 1e3, r.baseline_p99_us / 1e3
            );
        }
        "stream_latency_tls" => {
            println!(
                "stream latency over TLS: p50 {:.3} ms, p99 {:.3} ms; plain p50 {:.3} ms, p99 {:.3} ms (p50 +{:.3} ms)",
                r.p50_us / 1e3, r.p99_us / 1e3, r.baseline_p50_us / 1e3, r.baseline_p99_us / 1e3,
                (r.p50_us - r.baseline_p50_us) / 1e3
            );
        }
        "stream_latency" => {
            println!(
                "stream latency, durable on the primary to flushed on the standby (open segment): {} records of {} B: p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms",
                r.records, r.record_size, r.p50_us / 1e3, r.p99_us / 1e3, r.max_us / 1e3
            );
        }
        "stream_latency_loaded" => {
            println!(
                "stream latency under load, another writer appending durable records ({:.0} records/s of {} B): p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms",
                r.records_per_s, r.record_size, r.p50_us / 1e3, r.p99_us / 1e3, r.max_us / 1e3
            );
        }
        "sync" => {
            println!(
                "sync commit, level {}: {} writers, {} B records: {:.0} records/s, p50 {:.3} ms, p99 {:.3} ms; ratio to local {:.2}",
                r.durability, r.writers, r.record_size, r.records_per_s, r.p50_us / 1e3, r.p99_us / 1e3, r.ratio
            );
        }
        "sync_workload" => {
            println!(
                "sync commit, trace replay, level {}: {} clients: {:.0} transactions/s, commit p50 {:.3} ms, p99 {:.3} ms; ratio to local {:.2}",
                r.durability, r.writers, r.transactions_per_s.unwrap_or(0.0), r.p50_us / 1e3, r.p99_us / 1e3, r.ratio
            );
        }
        "recover" => {
            println!(
                "recover: {} records of {} B, {:.1} MB: recovery {:.1} ms; full scan {:.0} records/s, {:.2} GB/s",
                r.records,
                r.record_size,
                r.mb_per_s * r.seconds,
                r.recovery_ms.unwrap_or(0.0),
                r.records_per_s,
                r.scan_gb_per_s.unwrap_or(0.0)
            );
            println!(
                "baseline (read + CRC): {:.2} GB/s; ratio {:.2}",
                r.baseline_gb_per_s.unwrap_or(0.0),
                r.ratio
            );
        }
        scenario => {
            let what = if scenario == "workload" {
                format!(
                    "workload: {} clients, {} records (mean {} B): {:.0} transactions/s, {:.0} records/s, {:.1} MB/s",
                    r.writers,
                    r.records,
                    r.record_size,
                    r.transactions_per_s.unwrap_or(0.0),
                    r.records_per_s,
                    r.mb_per_s
                )
            } else {
                format!(
                    "append: {} writers, {} B records, durability {}: {} records in {:.2} s: {:.0} records/s, {:.1} MB/s",
                    r.writers, r.record_size, r.durability, r.records, r.seconds, r.records_per_s, r.mb_per_s
                )
            };
            println!("{what}");
            println!(
                "latency: p50 {:.1} us, p99 {:.1} us, p99.9 {:.1} us, max {:.1} us (append alone: p50 {:.2} us, p99 {:.2} us, p99.9 {:.2} us)",
                r.p50_us, r.p99_us, r.p999_us, r.max_us, r.append_p50_us, r.append_p99_us, r.append_p999_us
            );
            println!(
                "syncs: {} ({:.1} records per sync); segments sealed: {}; recycled files used: {}{}",
                r.syncs,
                r.records_per_sync,
                r.segments_sealed,
                r.segments_recycled.unwrap_or(0),
                if r.recycle == Some(false) { " (recycling off)" } else { "" }
            );
            if let (Some(n), Some(ms)) = (r.rotation_waits, r.rotation_wait_ms) {
                println!("leaders that waited for a rotation's work after their sync: {n}, {ms:.1} ms in all");
            }
            if let (Some(n), Some(ms), Some(b)) =
                (r.seal_bound_waits, r.seal_bound_wait_ms, r.bytes_written)
            {
                println!("rotations that waited at the bound on unsynced sealed segments: {n}, {ms:.1} ms in all ({:.1} MB written)", b as f64 / 1e6);
            }
            if let (Some(w), Some(b)) = (r.writer_faults_per_mib, r.baseline_faults_per_mib) {
                println!("page faults per MiB written: writers {w:.1}, baseline {b:.1}");
            }
            println!(
                "baseline (write + fdatasync): {:.0} records/s, {:.1} MB/s, p50 {:.1} us, p99 {:.1} us; ratio {:.2}",
                r.baseline_records_per_s, r.baseline_mb_per_s, r.baseline_p50_us, r.baseline_p99_us, r.ratio
            );
            if let (Some(e), Some(q)) = (r.each_baseline_records_per_s, r.ratio_to_each_baseline) {
                println!("one-sync-per-record baseline: {e:.0} records/s; ratio {q:.2}");
            }
            if let (Some(g), Some(p50), Some(p99), Some(p999), Some(q)) = (
                r.group_baseline_records_per_s,
                r.group_baseline_p50_us,
                r.group_baseline_p99_us,
                r.group_baseline_p999_us,
                r.ratio_to_group_baseline,
            ) {
                println!("group-commit baseline (the same threads, write + fdatasync): {g:.0} records/s, p50 {p50:.1} us, p99 {p99:.1} us, p99.9 {p999:.1} us; ratio {q:.2}");
            }
            if let (Some(g), Some(p99), Some(p999), Some(q)) = (
                r.mapped_group_baseline_records_per_s,
                r.mapped_group_baseline_p99_us,
                r.mapped_group_baseline_p999_us,
                r.ratio_to_mapped_group_baseline,
            ) {
                println!("the same group commit through a mapping (copy + msync): {g:.0} records/s, p99 {p99:.1} us, p99.9 {p999:.1} us; ratio {q:.2}");
            }
            if let (Some(sync), Some(gap)) = (r.mean_sync_us, r.mean_sync_gap_us) {
                let mut line = format!(
                    "mean sync and mean time between syncs: walship {sync:.1} us, {gap:.1} us"
                );
                for (name, s, g) in [
                    (
                        "group-commit baseline",
                        r.group_baseline_mean_sync_us,
                        r.group_baseline_mean_sync_gap_us,
                    ),
                    (
                        "through a mapping",
                        r.mapped_group_baseline_mean_sync_us,
                        r.mapped_group_baseline_mean_sync_gap_us,
                    ),
                ] {
                    if let (Some(s), Some(g)) = (s, g) {
                        line.push_str(&format!("; {name} {s:.1} us, {g:.1} us"));
                    }
                }
                println!("{line}");
            }
            if let (Some(p50), Some(p99), Some(p999)) = (
                r.baseline_sync_p50_us,
                r.baseline_sync_p99_us,
                r.baseline_sync_p999_us,
            ) {
                println!(
                    "a single fdatasync: p50 {p50:.1} us, p99 {p99:.1} us, p99.9 {p999:.1} us"
                );
            }
        }
    }
    Ok(())
}
