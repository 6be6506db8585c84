//! The `ship` scenario: a shipper and a standby on loopback in one process. Measures the time
//! from sealing a segment to the standby's applied position reaching its end, and the catch-up
//! throughput for a backlog of sealed segments; against copying the same files over one plain
//! loopback TCP connection into fresh files, each fsynced before the receiver acknowledges.
//! `stream_latency`: the time from a record's durable acknowledgement on the primary to the
//! standby's flushed position passing it, while the segment stays open; `stream_latency_loaded`:
//! the same while another thread appends durable records without pause (its records go the same
//! way; segments fill and are sealed as they would). The shipper learns the durable position as
//! `walship serve` does, from `state/flush_position` through inotify.

use std::fs::File;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::hist::Histogram;
use super::{ratio, scratch, BenchConfig, BenchResult};
use walship::error::IoContext;
use walship::format::record::SEAL_LEN;
use walship::replication::tls::{ClientTlsFiles, ServerTlsFiles};
use walship::replication::{
    CheckingApplicator, ReplError, Shipper, ShipperConfig, Standby, StandbyConfig,
};
use walship::{DataDir, Entry, EntryType, Error, Lsn, Result, Wal, WalOptions};

/// Longest wait for the standby to reach a position before the run is called failed.
const WAIT_LIMIT: Duration = Duration::from_secs(120);

fn repl(e: ReplError) -> Error {
    match e {
        ReplError::Store(e) => e,
        e => Error::Other(format!("replication: {e}")),
    }
}

/// Fills the open segment to within one batch of its end with records, makes them durable,
/// and returns how many records it appended. The caller seals.
fn fill_segment(wal: &Wal, batch: &[Entry<'_>], batch_bytes: u64, seg: u64) -> Result<u64> {
    let mut records = 0;
    loop {
        let used = wal.write_lsn().0 % seg;
        if records > 0 && used + batch_bytes + SEAL_LEN as u64 + 4096 > seg {
            break;
        }
        wal.append_batch(batch)?;
        records += batch.len() as u64;
    }
    wal.sync()?;
    Ok(records)
}

/// The baseline's receiving end: for each file, a u64 length then the bytes, written into a
/// fresh file, fsynced, removed again (only the copy is timed), then one byte of acknowledgement.
fn baseline_receiver(listener: TcpListener, dir: PathBuf) -> Result<()> {
    let (mut s, _) = listener
        .accept()
        .ctx(|| "accept the baseline copy".into())?;
    let mut buf = vec![0u8; 1 << 20];
    let mut n = 0u64;
    loop {
        let mut len = [0u8; 8];
        match s.read_exact(&mut len) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(()),
            Err(e) => return Err(Error::io("read the baseline copy", e)),
        }
        let mut left = u64::from_le_bytes(len);
        let path = dir.join(format!("copy-{n}"));
        n += 1;
        let mut f = File::create(&path).ctx(|| format!("create {}", path.display()))?;
        while left > 0 {
            let want = buf.len().min(left as usize);
            let got = s
                .read(&mut buf[..want])
                .ctx(|| "read the baseline copy".into())?;
            if got == 0 {
                return Err(Error::Other("the baseline copy ended early".into()));
            }
            f.write_all(&buf[..got])
                .ctx(|| format!("write {}", path.display()))?;
            left -= got as u64;
        }
        f.sync_all().ctx(|| format!("fsync {}", path.display()))?;
        drop(f);
        s.write_all(&[1]).ctx(|| "acknowledge the copy".into())?;
        std::fs::remove_file(&path).ctx(|| format!("remove {}", path.display()))?;
    }
}

/// Plain loopback TCP copy + fsync: one connection, files sent one after another.
struct BaselineCopy {
    stream: TcpStream,
    receiver: std::thread::JoinHandle<Result<()>>,
}

impl BaselineCopy {
    fn start(dir: &Path) -> Result<BaselineCopy> {
        std::fs::create_dir_all(dir).ctx(|| format!("create {}", dir.display()))?;
        let listener =
            TcpListener::bind("127.0.0.1:0").ctx(|| "listen for the baseline copy".into())?;
        let addr = listener
            .local_addr()
            .ctx(|| "address of the baseline listener".into())?;
        let d = dir.to_path_buf();
        let receiver = std::thread::spawn(move || baseline_receiver(listener, d));
        let stream = TcpStream::connect(addr).ctx(|| "connect the baseline copy".into())?;
        stream
            .set_nodelay(true)
            .ctx(|| "set TCP_NODELAY on the baseline copy".into())?;
        Ok(BaselineCopy { stream, receiver })
    }

    /// Sends the files, each acknowledged once fsynced on the other side; returns the time.
    fn copy(&mut self, files: &[PathBuf]) -> Result<Duration> {
        let t0 = Instant::now();
        for p in files {
            let mut f = File::open(p).ctx(|| format!("open {}", p.display()))?;
            let len = f.metadata().ctx(|| format!("stat {}", p.display()))?.len();
            self.stream
                .write_all(&len.to_le_bytes())
                .ctx(|| "send the baseline copy".into())?;
            std::io::copy(&mut f, &mut self.stream).ctx(|| "send the baseline copy".into())?;
            let mut ack = [0u8; 1];
            self.stream
                .read_exact(&mut ack)
                .ctx(|| "wait for the baseline acknowledgement".into())?;
        }
        Ok(t0.elapsed())
    }

    fn finish(self) -> Result<()> {
        drop(self.stream);
        self.receiver
            .join()
            .map_err(|_| Error::Other("the baseline receiver panicked".into()))?
    }
}

/// Polls until the standby has applied everything below `lsn`.
fn wait_applied(standby: &Standby, lsn: u64) -> Result<()> {
    let deadline = Instant::now() + WAIT_LIMIT;
    loop {
        let st = standby.state();
        if st.applied_lsn >= Lsn(lsn) {
            return Ok(());
        }
        if !standby.is_running() || Instant::now() > deadline {
            return Err(Error::Other(format!(
                "the standby stopped at applied position {} before {lsn}{}",
                st.applied_lsn,
                st.last_error.map(|e| format!(": {e}")).unwrap_or_default()
            )));
        }
        std::thread::sleep(Duration::from_micros(100));
    }
}

/// Spins (yielding) until the standby has flushed everything below `lsn`.
fn wait_flushed(standby: &Standby, lsn: u64) -> Result<()> {
    let deadline = Instant::now() + WAIT_LIMIT;
    loop {
        let st = standby.state();
        if st.flushed_lsn >= Lsn(lsn) {
            return Ok(());
        }
        if !standby.is_running() || Instant::now() > deadline {
            return Err(Error::Other(format!(
                "the standby stopped at flushed position {} before {lsn}{}",
                st.flushed_lsn,
                st.last_error.map(|e| format!(": {e}")).unwrap_or_default()
            )));
        }
        std::thread::yield_now();
    }
}

/// Sealed segment files of `data`, oldest first, from segment `from` on.
fn sealed_files(data: &Path, from: u64) -> Result<Vec<PathBuf>> {
    let dd = DataDir::new(data);
    let mut v: Vec<_> = dd
        .list_segments()?
        .into_iter()
        .filter(|n| n.kind == walship::format::SegmentFileKind::Sealed && n.segment_no.0 >= from)
        .map(|n| dd.segment_path(&n))
        .collect();
    v.sort();
    Ok(v)
}

/// Runs the `ship` scenario: returns the `ship_catchup` and `ship_latency` results.
/// The `ship` scenario; with `cfg.tls`, run again over TLS and compared with the plain run.
pub fn run_ship(cfg: &BenchConfig) -> Result<Vec<BenchResult>> {
    let mut out = measure(cfg, None)?;
    let Some(dir) = &cfg.tls else {
        return Ok(out);
    };
    let tls = measure(cfg, Some(dir))?;
    let (plain, over) = (&out[..3], &tls[..3]);
    let catch = BenchResult {
        scenario: "ship_catchup_tls",
        baseline_mb_per_s: plain[0].mb_per_s,
        baseline_records_per_s: plain[0].records_per_s,
        ratio: ratio(over[0].mb_per_s, plain[0].mb_per_s),
        ..over[0].clone()
    };
    let lat = over[1].latency_against("ship_latency_tls", &plain[1]);
    let stream = over[2].latency_against("stream_latency_tls", &plain[2]);
    out.extend([catch, lat, stream]);
    Ok(out)
}

/// One run of the scenario, over TLS with the certificates in `tls`.
fn measure(cfg: &BenchConfig, tls: Option<&Path>) -> Result<Vec<BenchResult>> {
    let tmp = scratch(&cfg.dir)?;
    let data = tmp.path().join("primary");
    let standby_dir = tmp.path().join("standby");
    let seg = cfg.segment_size;
    let segments = cfg.segments.max(1);
    DataDir::init(&data, seg)?;
    let wal = Wal::open(&data, WalOptions::default())?;
    let payload = vec![0x5Au8; cfg.record_size.min(wal.max_payload())];
    let per_batch = ((seg / 8) / cfg.record_len() as u64).clamp(1, 1024) as usize;
    let batch: Vec<Entry<'_>> = (0..per_batch)
        .map(|_| Entry::new(EntryType::Insert, None, &payload))
        .collect();
    let batch_bytes = (cfg.record_len() * per_batch) as u64;

    // The backlog, sealed before anything ships.
    let first = wal.write_lsn().0 / seg;
    let mut backlog_records = 0;
    for _ in 0..segments {
        backlog_records += fill_segment(&wal, &batch, batch_bytes, seg)?;
        wal.seal()?;
    }
    let backlog_end = wal.flush_lsn().0;
    let backlog = sealed_files(&data, first)?;
    let backlog_bytes: u64 = backlog
        .iter()
        .map(|p| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0))
        .sum();

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .ctx(|| "start the async runtime".into())?;
    let mut sc = ShipperConfig::new(&data, "127.0.0.1:0");
    sc.tls = tls.map(|d| ServerTlsFiles {
        cert: d.join("primary.crt"),
        key: d.join("primary.key"),
        client_ca: None,
    });
    let mut shipper = rt.block_on(Shipper::start(sc)).map_err(repl)?;
    let addr = shipper.local_addr().to_string();
    let mut stc = StandbyConfig::new(&standby_dir, addr);
    stc.tls = tls.map(|d| ClientTlsFiles {
        ca: Some(d.join("ca.crt")),
        server_name: Some("localhost".into()),
        ..ClientTlsFiles::default()
    });

    // Catch-up: a new standby starts with the whole backlog waiting.
    let t0 = Instant::now();
    let mut standby = rt
        .block_on(Standby::start(stc, CheckingApplicator::default()))
        .map_err(repl)?;
    wait_applied(&standby, backlog_end)?;
    let catchup = t0.elapsed();

    let mut copy = BaselineCopy::start(&tmp.path().join("baseline"))?;
    let base_catchup = copy.copy(&backlog)?;

    // Latency: seal one filled segment at a time; the baseline copies that same file right after.
    let mut lat = Histogram::default();
    let mut base_lat = Histogram::default();
    let (mut lat_sum, mut base_sum) = (Duration::ZERO, Duration::ZERO);
    let (mut lat_records, mut lat_bytes) = (0u64, 0u64);
    for _ in 0..segments {
        lat_records += fill_segment(&wal, &batch, batch_bytes, seg)?;
        let t = Instant::now();
        let name = wal
            .seal()?
            .ok_or_else(|| Error::Other("sealing a filled segment sealed nothing".into()))?;
        wait_applied(&standby, wal.flush_lsn().0)?;
        let d = t.elapsed();
        lat.record(d);
        lat_sum += d;
        let file = DataDir::new(&data).segment_path(&name);
        lat_bytes += std::fs::metadata(&file)
            .ctx(|| format!("stat {}", file.display()))?
            .len();
        let b = copy.copy(std::slice::from_ref(&file))?;
        base_lat.record(b);
        base_sum += b;
    }
    copy.finish()?;

    // Streaming: one durable record at a time, the segment left open.
    let stream_records = 200u64.min(seg / cfg.record_len() as u64 / 2);
    let (stream, stream_sum, _) = stream_phase(&wal, &standby, &batch[0], stream_records, false)?;
    // The same under load: records measured one at a time among a writer's stream.
    let loaded_records = 500u64;
    let (loaded, loaded_sum, load) = stream_phase(&wal, &standby, &batch[0], loaded_records, true)?;
    rt.block_on(standby.stop(Duration::from_secs(10)))
        .map_err(repl)?;
    rt.block_on(shipper.stop(Duration::from_secs(10)));
    drop(wal);

    let catch = BenchResult {
        segments: Some(backlog.len() as u64),
        ..BenchResult::timed(
            "ship_catchup",
            cfg.record_size,
            "each",
            backlog_records,
            backlog_bytes,
            catchup,
            base_catchup,
        )
    };
    let latency = BenchResult {
        p50_us: lat.quantile_us(0.5),
        p99_us: lat.quantile_us(0.99),
        p999_us: lat.quantile_us(0.999),
        max_us: lat.max_us(),
        baseline_p50_us: base_lat.quantile_us(0.5),
        baseline_p99_us: base_lat.quantile_us(0.99),
        // A time: baseline / walship, so that higher is still better.
        ratio: ratio(base_lat.quantile_us(0.5), lat.quantile_us(0.5)),
        segments: Some(segments),
        ..BenchResult::timed(
            "ship_latency",
            cfg.record_size,
            "each",
            lat_records,
            lat_bytes,
            lat_sum,
            base_sum,
        )
    };
    let streamed = BenchResult {
        p50_us: stream.quantile_us(0.5),
        p99_us: stream.quantile_us(0.99),
        p999_us: stream.quantile_us(0.999),
        max_us: stream.max_us(),
        ..BenchResult::timed(
            "stream_latency",
            cfg.record_size,
            "each",
            stream_records,
            stream_records * cfg.record_len() as u64,
            stream_sum,
            Duration::ZERO,
        )
    };
    let loaded = BenchResult {
        p50_us: loaded.quantile_us(0.5),
        p99_us: loaded.quantile_us(0.99),
        p999_us: loaded.quantile_us(0.999),
        max_us: loaded.max_us(),
        // Throughput here is the load's: every record appended during the phase.
        ..BenchResult::timed(
            "stream_latency_loaded",
            cfg.record_size,
            "each",
            loaded_records + load,
            (loaded_records + load) * cfg.record_len() as u64,
            loaded_sum,
            Duration::ZERO,
        )
    };
    // No baseline for these.
    let no_baseline = |r: BenchResult| BenchResult {
        baseline_records_per_s: 0.0,
        baseline_mb_per_s: 0.0,
        ratio: 0.0,
        ..r
    };
    Ok(vec![
        catch,
        latency,
        no_baseline(streamed),
        no_baseline(loaded),
    ])
}

/// Appends `samples` durable records one at a time and times each from its durable
/// acknowledgement to the standby's flushed position passing it. With `load`, another thread
/// appends durable records without pause meanwhile. Returns the times, the phase's length,
/// and how many records the load appended.
fn stream_phase(
    wal: &Wal,
    standby: &Standby,
    entry: &Entry<'_>,
    samples: u64,
    load: bool,
) -> Result<(Histogram, Duration, u64)> {
    use std::sync::atomic::{AtomicBool, Ordering};
    let stop = AtomicBool::new(false);
    let t0 = Instant::now();
    std::thread::scope(|sc| {
        let loader = load.then(|| {
            sc.spawn(|| -> Result<u64> {
                let mut n = 0;
                while !stop.load(Ordering::Relaxed) {
                    wal.append_durable(entry)?;
                    n += 1;
                }
                Ok(n)
            })
        });
        let mut hist = Histogram::default();
        let measured = (|| -> Result<()> {
            for _ in 0..samples {
                let a = wal.append_durable(entry)?;
                let t = Instant::now();
                wait_flushed(standby, a.end_lsn.0)?;
                hist.record(t.elapsed());
            }
            Ok(())
        })();
        stop.store(true, Ordering::Relaxed);
        let loaded = match loader {
            Some(h) => h
                .join()
                .map_err(|_| Error::Other("the load thread panicked".into()))??,
            None => 0,
        };
        measured?;
        Ok((hist, t0.elapsed(), loaded))
    })
}
