//! The load generator behind `walship bench`: drives the writer through the library and, in the
//! same run, measures the machine's own limit on the same directory and bytes, so that every
//! figure comes with a ratio that means something on a noisy, shared machine.
//!
//! Scenarios: `append` (W writers, records of S bytes, durability none / group / each),
//! `recover` (reopen and full scan of a store in the page cache, against plain read + CRC) and
//! `workload` (a recorded trace replayed by W clients that wait for durability at each commit,
//! against the same replay through write + fdatasync with the same group commit), and `ship` (a
//! shipper and a standby on loopback, against a plain TCP copy + fsync of the same files), and
//! `sync` (commits waiting for one synchronous standby at each level, against `local` in the
//! same run).

mod append;
pub mod baseline;
pub mod hist;
mod recover;
mod recycle;
mod ship;
mod sync;
pub mod trace;
mod workload;

pub use workload::DEFAULT_TRACE_RECORDS;

use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;

pub use append::run_append;
pub use recover::run_recover;
pub use ship::run_ship;
pub use sync::run_sync;
pub use workload::run_workload;

use walship::format::record::encoded_len;

/// When an append waits for durability.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Durability {
    /// Nobody waits; one sync at the end.
    None,
    /// Each writer waits for its record; concurrent writers share syncs.
    Group,
    /// Every append is synced alone.
    Each,
}

impl Durability {
    pub fn name(self) -> &'static str {
        match self {
            Durability::None => "none",
            Durability::Group => "group",
            Durability::Each => "each",
        }
    }
}

/// How long a run lasts.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Limit {
    Records(u64),
    Time(Duration),
}

/// What to run, shared by every scenario (each uses the fields it needs).
#[derive(Clone, Debug)]
pub struct BenchConfig {
    /// A scratch directory is made inside and removed afterwards.
    pub dir: PathBuf,
    pub writers: usize,
    pub record_size: usize,
    /// `None`: a default that keeps one scenario well under a minute.
    pub limit: Option<Limit>,
    pub durability: Durability,
    pub segment_size: u64,
    /// How the writer prepares new segment files (`append`, `workload`).
    pub segment_fill: walship::SegmentFill,
    /// `append`, `workload`: run the writer in its steady state, with segment files recycled
    /// (the pool filled before timing, a checkpoint every 100 ms while timed; `recycle.rs`).
    pub recycle: bool,
    /// `append`, `workload`: [`walship::WalOptions::max_unsynced_seal_bytes`].
    pub max_unsynced_seal: u64,
    /// Size of the store the `recover` scenario builds.
    pub store_size: u64,
    /// `ship`: sealed segments in the catch-up backlog, and segments timed one by one.
    pub segments: u64,
    /// `ship`: also measure over TLS, with the certificates of this directory (`ca.crt`, and
    /// `primary.crt` and `primary.key` for the name `localhost`).
    pub tls: Option<PathBuf>,
}

impl BenchConfig {
    /// Bytes one record of `record_size` takes on disk: what the baselines write per record.
    pub fn record_len(&self) -> usize {
        encoded_len(self.record_size)
    }
}

/// One result line. Keys are stable: scripts and docs rely on them.
#[derive(Clone, Debug, Default, Serialize)]
pub struct BenchResult {
    pub scenario: &'static str,
    pub writers: usize,
    pub record_size: usize,
    pub durability: &'static str,
    pub records: u64,
    pub seconds: f64,
    pub records_per_s: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub transactions_per_s: Option<f64>,
    /// Payload megabytes (10^6 bytes) per second; for `recover`, file bytes per second.
    pub mb_per_s: f64,
    /// Latency of the durable acknowledgement (of the append itself with durability `none`;
    /// of the commit for a workload; from seal to the standby's applied position for
    /// `ship_latency`).
    pub p50_us: f64,
    pub p99_us: f64,
    pub p999_us: f64,
    pub max_us: f64,
    /// Latency of the append call alone.
    pub append_p50_us: f64,
    pub append_p99_us: f64,
    pub append_p999_us: f64,
    pub syncs: u64,
    pub records_per_sync: f64,
    /// `append` with syncs: the mean time of a group-commit leader's sync, and the mean time
    /// between one sync's end and the next one's start (the timed run less the syncs, per
    /// sync): how long the disk waited for the writer. walship's finisher syncs sealed
    /// segments beside its leaders; those syncs are not counted, so they fall in the gap.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mean_sync_us: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mean_sync_gap_us: Option<f64>,
    pub segments_sealed: u64,
    pub baseline_records_per_s: f64,
    pub baseline_mb_per_s: f64,
    pub baseline_p50_us: f64,
    pub baseline_p99_us: f64,
    /// walship / baseline, higher is better; for `ship_latency` (a time) baseline / walship of
    /// the p50, so that higher is still better.
    pub ratio: f64,
    /// `group` only: the one-sync-per-record baseline and walship's ratio to it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub each_baseline_records_per_s: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ratio_to_each_baseline: Option<f64>,
    /// `none` only: the ratio with each side's write-back of its records counted (walship's
    /// `Wal::sync` after its appends, the baseline's fdatasync after its writes). The
    /// baseline's buffered `write` leaves all of its write-back for after the timed part;
    /// walship writes sealed segments back while it appends.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ratio_written_back: Option<f64>,
    /// A single fdatasync of the baseline (p50, p99, p99.9): the floor of a durable
    /// acknowledgement, and the device's own tail.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub baseline_sync_p50_us: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub baseline_sync_p99_us: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub baseline_sync_p999_us: Option<f64>,
    /// `append` only: CPU seconds the writer threads used (all of them), and the baseline
    /// writer; records per CPU second compare the two where cores are shared.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub writer_cpu_s: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub baseline_cpu_s: Option<f64>,
    /// `append` only: page faults the writer threads took (minor faults, `getrusage`), per MiB
    /// of records written, and the baseline writer's; faults the preparer's prefault makes
    /// ahead of the writer are not counted (they are not the writer's).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub writer_faults_per_mib: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub baseline_faults_per_mib: Option<f64>,
    /// `append`, `workload`: whether segment files were recycled, and how many of the timed
    /// part's segments were recycled files.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recycle: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub segments_recycled: Option<u64>,
    /// `append` with syncs: group-commit leaders that, their msync done, still waited for a
    /// rotation's work (the previous segment's seal marker or the new name made durable by the
    /// finisher), and the time they waited in all.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rotation_waits: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rotation_wait_ms: Option<f64>,
    /// `append`: rotations that waited because the sealed segments not yet durable had
    /// reached the writer's bound on them, and the time they waited in all; and the bytes the
    /// timed writers wrote (records with their headers).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seal_bound_waits: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seal_bound_wait_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes_written: Option<u64>,
    /// `append` with `group` and more than one writer: the same writer threads appending the
    /// same records to a plain file through a leader/follower group commit (`write` at a
    /// shared offset; a leader `fdatasync`s everything written so far for its followers):
    /// records/s, the acknowledgement's p50, p99 and p99.9 (one file, no rotation: its tail is
    /// the device's), its threads' CPU seconds, and walship's ratio to it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group_baseline_records_per_s: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group_baseline_p50_us: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group_baseline_p99_us: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group_baseline_p999_us: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group_baseline_cpu_s: Option<f64>,
    /// Its syncs, counted and timed as `mean_sync_us` and `mean_sync_gap_us` are for walship.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group_baseline_syncs: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group_baseline_mean_sync_us: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub group_baseline_mean_sync_gap_us: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ratio_to_group_baseline: Option<f64>,
    /// The same group commit written through a shared mapping (copy + `msync`, pages
    /// prepared as walship prepares a segment): records/s, p99, p99.9, and walship's ratio to
    /// it. What it adds to the plain group commit is the mapping's kernel cost, not walship's.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mapped_group_baseline_records_per_s: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mapped_group_baseline_p99_us: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mapped_group_baseline_p999_us: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mapped_group_baseline_syncs: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mapped_group_baseline_mean_sync_us: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mapped_group_baseline_mean_sync_gap_us: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ratio_to_mapped_group_baseline: Option<f64>,
    /// `recover` only: reopening the store (recovery) and the full scan, each timed alone.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recovery_ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scan_gb_per_s: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub baseline_gb_per_s: Option<f64>,
    /// `ship_*` only: segments shipped in the measurement.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub segments: Option<u64>,
}

impl BenchResult {
    /// A one-writer result whose `records` and `bytes` took `walship` here and `baseline` for
    /// the baseline: fills the rates and the throughput ratio; the caller adds the rest.
    pub fn timed(
        scenario: &'static str,
        record_size: usize,
        durability: &'static str,
        records: u64,
        bytes: u64,
        walship: Duration,
        baseline: Duration,
    ) -> BenchResult {
        let mb = mb_per_s(bytes, walship);
        let base_mb = mb_per_s(bytes, baseline);
        BenchResult {
            scenario,
            writers: 1,
            record_size,
            durability,
            records,
            seconds: walship.as_secs_f64(),
            records_per_s: per_s(records, walship),
            mb_per_s: mb,
            baseline_records_per_s: per_s(records, baseline),
            baseline_mb_per_s: base_mb,
            ratio: ratio(mb, base_mb),
            ..BenchResult::default()
        }
    }

    /// This result as `scenario`, its latency against `base`'s: the baseline p50 and p99 and
    /// the ratio of a time (baseline / this p50, so that higher is still better).
    pub fn latency_against(&self, scenario: &'static str, base: &BenchResult) -> BenchResult {
        BenchResult {
            scenario,
            baseline_p50_us: base.p50_us,
            baseline_p99_us: base.p99_us,
            ratio: ratio(base.p50_us, self.p50_us),
            ..self.clone()
        }
    }
}

pub use walship::thread_usage::{thread_cpu, thread_faults};

/// `faults` per MiB of `bytes`.
fn per_mib(faults: u64, bytes: u64) -> f64 {
    faults as f64 / (bytes as f64 / (1 << 20) as f64).max(1e-9)
}

fn per_s(n: u64, elapsed: Duration) -> f64 {
    n as f64 / elapsed.as_secs_f64().max(1e-9)
}

fn mb_per_s(bytes: u64, elapsed: Duration) -> f64 {
    bytes as f64 / 1e6 / elapsed.as_secs_f64().max(1e-9)
}

fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 {
        a / b
    } else {
        0.0
    }
}

/// A new data directory `data` in the scratch directory, open for writing as the run asks; with
/// `recycle`, its pool of recycled files filled and a recycled file next to be written.
fn bench_wal(scratch: &tempfile::TempDir, cfg: &BenchConfig) -> walship::Result<walship::Wal> {
    let data = scratch.path().join("data");
    walship::DataDir::init(&data, cfg.segment_size)?;
    let wal = walship::Wal::open(
        &data,
        walship::WalOptions {
            segment_fill: cfg.segment_fill,
            max_unsynced_seal_bytes: cfg.max_unsynced_seal,
            ..walship::WalOptions::default()
        },
    )?;
    if cfg.recycle {
        recycle::fill_pool(&wal, cfg.segment_size)?;
    }
    Ok(wal)
}

/// The scratch directories made so far: removed on an interrupt (a dropped one is gone already).
static SCRATCH: std::sync::Mutex<Vec<std::path::PathBuf>> = std::sync::Mutex::new(Vec::new());

/// A scratch directory inside `dir`, removed when dropped (and on an interrupt, see
/// [`remove_scratch_on_interrupt`]).
fn scratch(dir: &std::path::Path) -> walship::Result<tempfile::TempDir> {
    use walship::error::IoContext;
    let tmp = tempfile::Builder::new()
        .prefix("walship-bench-")
        .tempdir_in(dir)
        .ctx(|| format!("create a scratch directory in {}", dir.display()))?;
    walship::sync::lock(&SCRATCH).push(tmp.path().to_path_buf());
    Ok(tmp)
}

/// On SIGINT or SIGTERM, removes every scratch directory the runs made, then exits as the
/// signal would have (130, 143): a run of several GiB interrupted must not leave them behind.
pub fn remove_scratch_on_interrupt() {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(rt) = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    else {
        return;
    };
    // Registered here, before the runs start; waited for on a thread of its own.
    let signals = rt.block_on(async {
        Some((
            signal(SignalKind::interrupt()).ok()?,
            signal(SignalKind::terminate()).ok()?,
        ))
    });
    let Some((mut int, mut term)) = signals else {
        return;
    };
    std::thread::spawn(move || {
        let code = rt.block_on(async {
            tokio::select! {
                _ = int.recv() => 130,
                _ = term.recv() => 143,
            }
        });
        for d in walship::sync::lock(&SCRATCH).iter() {
            // The runs go on writing meanwhile: try again until it is gone.
            for _ in 0..100 {
                if std::fs::remove_dir_all(d).is_ok() || !d.exists() {
                    break;
                }
            }
        }
        eprintln!("walship: interrupted: the bench's scratch directories were removed");
        std::process::exit(code);
    });
}
