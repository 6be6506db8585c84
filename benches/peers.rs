//! (Longer than 500 lines: one harness drives every engine through the same rows and baseline;
//! split, each engine's driver would drift from the rows it must match.)
//!
//! walship beside two other Rust write-ahead logs, okaywal and raft-engine, through the same
//! workloads as `walship bench --scenario append` and against the same same-run baseline: plain
//! `write` into a file zero-filled ahead with 4 KiB writes, with `fdatasync` after every record
//! (one writer) or after every `k` records, `k` being the records walship fitted in one sync in
//! the same run (several writers); buffered `write` with no sync for the no-sync rows.
//!
//! `cargo bench --bench peers [-- FILTER...]`; FILTER picks rows whose name contains it
//! ("durable", "4096", "W16", "nosync"). Environment: `PEERS_DIR` (where to run, default the
//! current directory: put it on the disk being judged, never a tmpfs), `PEERS_RUNS` (runs per
//! row, default 3; the table shows the median ratio and every run's).
//!
//! Durable means each writer waits for its own record to be durable before the next: walship
//! `append` + `wait_durable`, okaywal `EntryWriter::commit`, raft-engine `Subject::write(.., true)`.
//! No sync: walship `append` back to back, okaywal one entry of many chunks, raft-engine
//! `Subject::write(.., false)`; each ends with one sync (for raft-engine a final batch written
//! with sync, since its `Subject::sync()` writes nothing and so never syncs), untimed in the
//! no-sync row and counted in the row after it ("written back"): a buffered `write` leaves all
//! of its write-back for that sync, while walship writes sealed segments back as it goes.
//!
//! Device writes per record come from the block device's counters (`/sys/dev/block/M:N/stat`),
//! which count every write request the run caused, the file system's metadata included.
//!
//! walship runs in its steady state, with recycled segment files (`PEERS_RECYCLE=0` turns that
//! off): before timing, it writes and releases enough segments to fill its pool of recycled
//! files (untimed, and their device writes not counted), and starts timing in a recycled file;
//! while timed, a thread checkpoints at the durable position every 100 ms, so that sealed
//! segments return to the pool, as an application's checkpoints would.

use std::error::Error;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use walship::format::record::encoded_len;
use walship::retention::RetentionOptions;
use walship::{DataDir, Entry, EntryType, Wal, WalOptions};

#[path = "common/zero_filled.rs"]
mod zero_filled;
use zero_filled::zero_filled;

type Res<T> = Result<T, Box<dyn Error + Send + Sync>>;

/// Segment size of walship's data directory (`walship bench`'s default).
const SEGMENT_SIZE: u64 = 16 << 20;

#[derive(Clone, Copy)]
struct Row {
    writers: usize,
    size: usize,
    durable: bool,
    records: u64,
}

impl Row {
    fn name(&self) -> String {
        let mode = if self.durable { "durable" } else { "nosync" };
        format!("{mode} W{} {}B", self.writers, self.size)
    }
}

const ROWS: &[Row] = &[
    Row {
        writers: 1,
        size: 128,
        durable: true,
        records: 2_000,
    },
    Row {
        writers: 4,
        size: 128,
        durable: true,
        records: 6_000,
    },
    Row {
        writers: 16,
        size: 128,
        durable: true,
        records: 16_000,
    },
    Row {
        writers: 1,
        size: 4096,
        durable: true,
        records: 2_000,
    },
    Row {
        writers: 4,
        size: 4096,
        durable: true,
        records: 6_000,
    },
    Row {
        writers: 16,
        size: 4096,
        durable: true,
        records: 12_000,
    },
    Row {
        writers: 1,
        size: 128,
        durable: false,
        records: 300_000,
    },
    Row {
        writers: 1,
        size: 4096,
        durable: false,
        records: 30_000,
    },
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Subject {
    Baseline,
    Walship,
    Okaywal,
    RaftEngine,
}

const ENGINES: [Subject; 4] = [
    Subject::Baseline,
    Subject::Walship,
    Subject::Okaywal,
    Subject::RaftEngine,
];

/// What one engine did in one run of one row.
#[derive(Clone, Default)]
struct Measured {
    records_per_s: f64,
    /// No-sync rows: records/s with the final sync that writes them all back counted.
    written_back_per_s: f64,
    p99_us: f64,
    device_writes: u64,
    /// walship only: records per sync, which sets the baseline's batch for `W > 1`.
    records_per_sync: f64,
    /// Device writes of an untimed setup inside the engine's run, not counted.
    setup_writes: u64,
}

/// A run's result for every engine.
type RunResult = Vec<(Subject, Measured)>;

fn main() -> Res<()> {
    let filters: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let dir = PathBuf::from(std::env::var("PEERS_DIR").unwrap_or_else(|_| ".".into()));
    let runs: usize = match std::env::var("PEERS_RUNS") {
        Ok(v) => v.parse().map_err(|e| format!("PEERS_RUNS={v}: {e}"))?,
        Err(_) => 3,
    };
    std::fs::create_dir_all(&dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
    let disk = DiskCounter::for_dir(&dir);
    println!(
        "# records/s as a ratio to the same-run baseline, median of {runs} (each run's ratio in brackets); \
         p99 of the durable acknowledgement in µs; device writes per record ({})",
        disk.as_ref().map_or("no device counters found".into(), |d| d.path.display().to_string())
    );
    println!(
        "| row | baseline rec/s | walship | okaywal 0.3.1 | raft-engine 0.4.2 | p99 µs base / walship / okaywal / raft | dev writes/rec base / walship / okaywal / raft |"
    );
    println!("|---|---|---|---|---|---|---|");
    for row in ROWS {
        let name = row.name();
        if !filters.is_empty() && !filters.iter().any(|f| name.contains(f.as_str())) {
            continue;
        }
        let mut results: Vec<RunResult> = Vec::new();
        for run in 0..runs {
            results.push(run_row(&dir, row, run, disk.as_ref())?);
        }
        print_row(&row.name(), row, &results, |m| m.records_per_s);
        if !row.durable {
            print_row(
                &format!("{}, written back", row.name()),
                row,
                &results,
                |m| m.written_back_per_s,
            );
        }
    }
    Ok(())
}

/// One run of `row`: walship first (its records per sync set the baseline's batch), then the
/// others in an order that rotates with `run`, so that the disk's drift falls on all alike.
fn run_row(dir: &Path, row: &Row, run: usize, disk: Option<&DiskCounter>) -> Res<RunResult> {
    let mut out = Vec::new();
    let w = measure(dir, row, Subject::Walship, 1.0, disk)?;
    let batch = w.records_per_sync;
    out.push((Subject::Walship, w));
    let mut rest = vec![Subject::Baseline, Subject::Okaywal, Subject::RaftEngine];
    let n = rest.len();
    rest.rotate_left(run % n);
    for e in rest {
        out.push((e, measure(dir, row, e, batch, disk)?));
    }
    Ok(out)
}

fn measure(
    dir: &Path,
    row: &Row,
    engine: Subject,
    batch: f64,
    disk: Option<&DiskCounter>,
) -> Res<Measured> {
    let scratch = tempfile::Builder::new()
        .prefix("peers-")
        .tempdir_in(dir)
        .map_err(|e| format!("scratch directory in {}: {e}", dir.display()))?;
    let payload = Arc::new(payload(row.size));
    let before = disk.map(|d| d.writes()).transpose()?;
    let mut m = match engine {
        Subject::Baseline => baseline(scratch.path(), row, batch)?,
        Subject::Walship => walship(scratch.path(), row, &payload, disk)?,
        Subject::Okaywal => okaywal(scratch.path(), row, &payload)?,
        Subject::RaftEngine => raft_engine(scratch.path(), row, &payload)?,
    };
    if let (Some(d), Some(b)) = (disk, before) {
        m.device_writes = d.writes()?.saturating_sub(b).saturating_sub(m.setup_writes);
    }
    Ok(m)
}

/// Incompressible bytes (raft-engine compresses large batches).
fn payload(size: usize) -> Vec<u8> {
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    (0..size)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Runs `row.records` operations over `row.writers` threads; `op` does one and returns once it
/// is acknowledged. Returns records/s and the acknowledgement latencies' p99.
fn drive<F>(row: &Row, op: F) -> Res<(f64, f64)>
where
    F: Fn(usize, u64) -> Res<()> + Send + Sync + 'static,
{
    let op = Arc::new(op);
    let next = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut handles = Vec::new();
    for t in 0..row.writers {
        let (op, next, max) = (op.clone(), next.clone(), row.records);
        handles.push(std::thread::spawn(move || -> Res<Vec<u32>> {
            let mut lat = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= max {
                    return Ok(lat);
                }
                let t0 = Instant::now();
                op(t, i)?;
                lat.push(t0.elapsed().as_micros().min(u32::MAX as u128) as u32);
            }
        }));
    }
    let mut all = Vec::new();
    for h in handles {
        all.extend(h.join().map_err(|_| "a writer thread panicked")??);
    }
    let elapsed = start.elapsed();
    Ok((row.records as f64 / elapsed.as_secs_f64(), p99(&mut all)))
}

fn p99(lat: &mut [u32]) -> f64 {
    if lat.is_empty() {
        return 0.0;
    }
    lat.sort_unstable();
    lat[((lat.len() - 1) as f64 * 0.99) as usize] as f64
}

/// Plain `write` of walship's on-disk record length into a zero-filled file, one writer, with
/// `fdatasync` every `batch` records (none while timed for the no-sync rows).
fn baseline(dir: &Path, row: &Row, batch: f64) -> Res<Measured> {
    let len = encoded_len(row.size);
    let path = dir.join("baseline.raw");
    let file = zero_filled(&path, len as u64 * row.records)
        .map_err(|e| format!("create {}: {e}", path.display()))?;
    let buf = vec![0xA5u8; len];
    let every = if row.durable {
        batch.round().max(1.0) as u64
    } else {
        u64::MAX
    };
    let mut lat = Vec::with_capacity(row.records as usize);
    let mut pending = Vec::new();
    let mut f = &file;
    let start = Instant::now();
    for i in 0..row.records {
        // No clock read per record without sync: nothing is acknowledged to time.
        let t0 = row.durable.then(Instant::now);
        f.write_all(&buf)?;
        let Some(t0) = t0 else {
            continue;
        };
        pending.push(t0);
        if (i + 1) % every == 0 || i + 1 == row.records {
            file.sync_data()?;
            let done = Instant::now();
            lat.extend(pending.drain(..).map(|t| (done - t).as_micros() as u32));
        }
    }
    let elapsed = start.elapsed();
    file.sync_data()?;
    Ok(Measured {
        records_per_s: row.records as f64 / elapsed.as_secs_f64(),
        written_back_per_s: row.records as f64 / start.elapsed().as_secs_f64(),
        p99_us: p99(&mut lat),
        ..Measured::default()
    })
}

fn walship(
    dir: &Path,
    row: &Row,
    payload: &Arc<Vec<u8>>,
    disk: Option<&DiskCounter>,
) -> Res<Measured> {
    let data = dir.join("data");
    DataDir::init(&data, SEGMENT_SIZE)?;
    let wal = Arc::new(Wal::open(&data, WalOptions::default())?);
    let recycle = std::env::var("PEERS_RECYCLE").map_or(true, |v| v != "0");
    let setup_start = disk.map(|d| d.writes()).transpose()?;
    if recycle {
        fill_pool(&wal, payload)?;
    }
    // Opens the first segment so that the preparer starts on the next, as `walship bench` does.
    wal.append_durable(&Entry::new(EntryType::Insert, None, payload))?;
    if recycle {
        // That segment was prepared before the pool was filled: start in the next, recycled.
        wal.seal()?;
        wal.append_durable(&Entry::new(EntryType::Insert, None, payload))?;
        wal.sync()?;
    }
    let setup_writes = match (disk, setup_start) {
        (Some(d), Some(b)) => d.writes()?.saturating_sub(b),
        _ => 0,
    };
    let before = wal.stats();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let checkpointer = recycle.then(|| {
        let (w, stop) = (wal.clone(), stop.clone());
        std::thread::spawn(move || -> Res<()> {
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(std::time::Duration::from_millis(100));
                w.checkpoint(w.flush_lsn(), &RetentionOptions::default())?;
            }
            Ok(())
        })
    });
    let driven = if row.durable {
        let (w, p) = (wal.clone(), payload.clone());
        drive(row, move |_, _| {
            let a = w.append(&Entry::new(EntryType::Insert, None, &p))?;
            w.wait_durable(a.end_lsn)?;
            Ok(())
        })
    } else {
        // One writer appending back to back, timed as a whole like okaywal's chunks and the
        // baseline's writes: no acknowledgement to time per record.
        let start = Instant::now();
        let appended = (0..row.records).try_for_each(|_| {
            wal.append(&Entry::new(EntryType::Insert, None, payload))
                .map(drop)
        });
        let elapsed = start.elapsed();
        appended
            .map(|()| (row.records as f64 / elapsed.as_secs_f64(), 0.0))
            .map_err(Into::into)
    };
    stop.store(true, Ordering::Relaxed);
    if let Some(h) = checkpointer {
        h.join().map_err(|_| "the checkpoint thread panicked")??;
    }
    let (rps, p99) = driven?;
    let after = wal.stats();
    let syncs = after.syncs - before.syncs;
    let s0 = Instant::now();
    wal.sync()?;
    let written_back_per_s = written_back(row, rps, s0);
    if std::env::var_os("PEERS_VERBOSE").is_some() {
        eprintln!(
            "walship {}: {} segments sealed, {} recycled files reused",
            row.name(),
            after.segments_sealed - before.segments_sealed,
            after.segments_recycled - before.segments_recycled
        );
    }
    Ok(Measured {
        records_per_s: rps,
        written_back_per_s,
        p99_us: p99,
        records_per_sync: row.records as f64 / syncs.max(1) as f64,
        setup_writes,
        ..Measured::default()
    })
}

/// Writes and releases enough segments to fill the pool of recycled files, untimed.
fn fill_pool(wal: &Wal, payload: &[u8]) -> Res<()> {
    let per_segment = SEGMENT_SIZE / encoded_len(payload.len()) as u64;
    // The pool keeps as many files as a checkpoint releases: 16 segments, more than the
    // timed part fills between two of its checkpoints.
    let segments = 16;
    for _ in 0..segments * per_segment + 1 {
        wal.append(&Entry::new(EntryType::Insert, None, payload))?;
    }
    wal.seal()?;
    wal.sync()?;
    wal.checkpoint(wal.flush_lsn(), &RetentionOptions::default())?;
    Ok(())
}

fn okaywal(dir: &Path, row: &Row, payload: &Arc<Vec<u8>>) -> Res<Measured> {
    let wal = okaywal::WriteAheadLog::recover(dir.join("okaywal"), okaywal::LogVoid)?;
    if !row.durable {
        // One entry of many chunks: okaywal syncs only at a commit.
        let mut entry = wal.begin_entry()?;
        let start = Instant::now();
        for _ in 0..row.records {
            entry.write_chunk(payload)?;
        }
        let elapsed = start.elapsed();
        entry.commit()?;
        let written_back = start.elapsed();
        wal.shutdown()?;
        return Ok(Measured {
            records_per_s: row.records as f64 / elapsed.as_secs_f64(),
            written_back_per_s: row.records as f64 / written_back.as_secs_f64(),
            ..Measured::default()
        });
    }
    let (w, p) = (wal.clone(), payload.clone());
    let (rps, p99) = drive(row, move |_, _| {
        let mut entry = w.begin_entry()?;
        entry.write_chunk(&p)?;
        entry.commit()?;
        Ok(())
    })?;
    wal.shutdown()?;
    Ok(Measured {
        records_per_s: rps,
        p99_us: p99,
        ..Measured::default()
    })
}

fn raft_engine(dir: &Path, row: &Row, payload: &Arc<Vec<u8>>) -> Res<Measured> {
    let cfg = raft_engine::Config {
        dir: dir.join("raft-engine").to_string_lossy().into_owned(),
        ..raft_engine::Config::default()
    };
    let engine = Arc::new(raft_engine::Engine::open(cfg)?);
    let (e, p, durable) = (engine.clone(), payload.clone(), row.durable);
    let (rps, p99) = drive(row, move |t, i| {
        let mut batch = raft_engine::LogBatch::default();
        // Keys repeat so that the memtable stays small; every put is still written to the log.
        batch.put(t as u64 + 1, (i % 1024).to_be_bytes().to_vec(), p.to_vec())?;
        e.write(&mut batch, durable)?;
        Ok(())
    })?;
    // The final durable marker: `Subject::sync()` writes an empty batch, which never syncs.
    let s0 = Instant::now();
    let mut marker = raft_engine::LogBatch::default();
    marker.put(u64::MAX, b"end".to_vec(), vec![1])?;
    engine.write(&mut marker, true)?;
    Ok(Measured {
        records_per_s: rps,
        written_back_per_s: written_back(row, rps, s0),
        p99_us: p99,
        ..Measured::default()
    })
}

/// Records/s of a run timed at `rps`, with the final sync begun at `sync_start` counted.
fn written_back(row: &Row, rps: f64, sync_start: Instant) -> f64 {
    let timed = row.records as f64 / rps.max(1e-9);
    row.records as f64 / (timed + sync_start.elapsed().as_secs_f64())
}

/// The write counter of the block device holding a directory.
struct DiskCounter {
    path: PathBuf,
}

impl DiskCounter {
    fn for_dir(dir: &Path) -> Option<DiskCounter> {
        let dev = std::fs::metadata(dir).ok()?.dev();
        let (major, minor) = (libc::major(dev), libc::minor(dev));
        let path = PathBuf::from(format!("/sys/dev/block/{major}:{minor}/stat"));
        path.exists().then_some(DiskCounter { path })
    }

    /// Write requests completed (the fifth field of the stat file).
    fn writes(&self) -> Res<u64> {
        let s = std::fs::read_to_string(&self.path)
            .map_err(|e| format!("read {}: {e}", self.path.display()))?;
        let field = s
            .split_whitespace()
            .nth(4)
            .ok_or_else(|| format!("{}: fewer than 5 fields", self.path.display()))?;
        Ok(field
            .parse()
            .map_err(|e| format!("{}: {field}: {e}", self.path.display()))?)
    }
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        0.0
    } else {
        v[v.len() / 2]
    }
}

/// One line of the table: `rate` of each engine as a ratio to the baseline's.
fn print_row(name: &str, row: &Row, results: &[RunResult], rate: fn(&Measured) -> f64) {
    let get = |r: &RunResult, e: Subject| {
        r.iter()
            .find(|(x, _)| *x == e)
            .map(|(_, m)| m.clone())
            .unwrap_or_default()
    };
    let base_rps = median(
        results
            .iter()
            .map(|r| rate(&get(r, Subject::Baseline)))
            .collect(),
    );
    let mut cells = vec![name.to_string(), format!("{base_rps:.0}")];
    for e in [Subject::Walship, Subject::Okaywal, Subject::RaftEngine] {
        let ratios: Vec<f64> = results
            .iter()
            .map(|r| rate(&get(r, e)) / rate(&get(r, Subject::Baseline)).max(1e-9))
            .collect();
        let each: Vec<String> = ratios.iter().map(|x| format!("{x:.2}")).collect();
        cells.push(format!(
            "{:.2} [{}]",
            median(ratios.clone()),
            each.join(" ")
        ));
    }
    let per_engine = |f: &dyn Fn(&Measured) -> f64| -> String {
        ENGINES
            .iter()
            .map(|e| {
                format!(
                    "{:.0}",
                    median(results.iter().map(|r| f(&get(r, *e))).collect())
                )
            })
            .collect::<Vec<_>>()
            .join(" / ")
    };
    cells.push(if row.durable {
        per_engine(&|m| m.p99_us)
    } else {
        "-".into()
    });
    let records = row.records as f64;
    cells.push(
        ENGINES
            .iter()
            .map(|e| {
                let v = median(
                    results
                        .iter()
                        .map(|r| get(r, *e).device_writes as f64 / records)
                        .collect(),
                );
                format!("{v:.2}")
            })
            .collect::<Vec<_>>()
            .join(" / "),
    );
    println!("| {} |", cells.join(" | "));
}
