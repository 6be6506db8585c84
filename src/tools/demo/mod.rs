//! `walship demo`: the whole system on loopback in a scratch directory. A writer appends a mixed
//! workload to a primary, `serve` ships sealed segments to a standby, an archiver pushes them to
//! an archive; midway the writer is killed with SIGKILL and restarted (recovery); at the end the
//! archive is restored into a new directory and the primary, the standby and the restored copy
//! are verified and compared record by record. Every component is the real `walship` binary,
//! started as a child process.
//!
//! Here: the demo's run from start to end; `procs.rs`: starting and stopping the children;
//! `view.rs`: the live view; `workload.rs`: the writer's transactions.

mod archive_target;
mod procs;
mod view;
pub mod workload;

use std::collections::HashSet;
use std::fs;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use walship::consumers::ConsumerRegistry;
use walship::error::{Error, IoContext, Result};
use walship::{DataDir, Entry, Lsn, Wal, WalOptions, WalReader};

use procs::{path_str, read_listen_addr, run_to_end, start_writer, Proc};
use view::{positions, view_lines, View};
use workload::MixedWorkload;

/// Segment size of the demo's primary: small, so that segments seal, ship and archive often.
const DEMO_SEGMENT_SIZE: &str = "1MiB";
/// Transactions per second the demo writer aims for: enough to see everything move, not so many
/// that a laptop's disk fills.
const WRITER_TX_PER_SEC: u64 = 1500;

/// How the demo runs.
#[derive(Clone, Debug)]
pub struct DemoOptions {
    /// Scratch directory (created; kept afterwards).
    pub dir: PathBuf,
    /// How long the writer runs.
    pub seconds: u64,
    /// The walship binary that runs each component.
    pub exe: PathBuf,
    /// Redraw a live table (on a terminal) rather than print periodic lines.
    pub live: bool,
    /// Archive to this S3 URL (`s3://BUCKET/PREFIX`, empty) rather than to a directory in
    /// `dir`.
    pub archive_to: Option<String>,
}

/// One check the demo made.
#[derive(Clone, Debug)]
pub struct Check {
    pub name: String,
    pub passed: bool,
    pub detail: String,
}

/// What the demo saw.
#[derive(Clone, Debug, Default)]
pub struct DemoSummary {
    pub checks: Vec<Check>,
    pub records: u64,
    pub bytes: u64,
    pub commits_acked: u64,
    pub writer_seconds: f64,
    pub max_standby_lag: u64,
    pub max_archive_lag: u64,
    pub end_lsn: u64,
}

impl DemoSummary {
    pub fn passed(&self) -> bool {
        !self.checks.is_empty() && self.checks.iter().all(|c| c.passed)
    }
}

/// Commits the writers acknowledged as durable.
#[derive(Default)]
struct Acked {
    ends: std::sync::Mutex<Vec<u64>>,
    count: AtomicU64,
    last: AtomicU64,
}

impl Acked {
    fn record(&self, end: u64) {
        if let Ok(mut v) = self.ends.lock() {
            v.push(end);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.last.fetch_max(end, Ordering::Relaxed);
    }
}

/// Runs the demo, writing progress to `out`. Returns the summary (check `passed()`), or an error
/// when the demo itself could not run.
pub fn run(opts: &DemoOptions, out: &mut dyn Write) -> Result<DemoSummary> {
    let root = &opts.dir;
    fs::create_dir_all(root).ctx(|| format!("create {}", root.display()))?;
    let primary = root.join("primary");
    let standby = root.join("standby");
    let archive = root.join("archive");
    let restored = root.join("restored");
    let logs = root.join("logs");
    let archive_at = archive_target::choose(opts.archive_to.as_deref(), &archive)?;
    let archive_t = archive_at.target.as_str();
    for d in [&primary, &standby, &restored] {
        if d.exists() {
            return Err(Error::InvalidArgument(format!(
                "{} already exists: give the demo an empty or new directory",
                d.display()
            )));
        }
    }
    fs::create_dir_all(&logs).ctx(|| format!("create {}", logs.display()))?;
    let exe = &opts.exe;
    let mut view = View {
        live: opts.live,
        drawn: 0,
        last_plain: None,
    };
    let mut summary = DemoSummary::default();

    let _ = writeln!(
        out,
        "walship demo in {} (kept afterwards; component logs in {})",
        root.display(),
        logs.display()
    );
    run_to_end(
        exe,
        &[
            "init",
            path_str(&primary)?,
            "--segment-size",
            DEMO_SEGMENT_SIZE,
        ],
        &logs,
        "init",
    )?;
    view.event(
        out,
        &format!(
            "initialized the primary {} ({DEMO_SEGMENT_SIZE} segments)",
            primary.display()
        ),
    );

    let mut serve = Proc::spawn(
        "serve",
        exe,
        &["serve", path_str(&primary)?, "--listen", "127.0.0.1:0"],
        &logs,
        true,
    )?;
    let addr = read_listen_addr(&mut serve)?;
    view.event(out, &format!("serve is shipping sealed segments on {addr}"));
    let mut standby_proc = Proc::spawn(
        "standby",
        exe,
        &["standby", path_str(&standby)?, "--primary", &addr],
        &logs,
        false,
    )?;
    view.event(
        out,
        &format!("a standby receives them into {}", standby.display()),
    );
    let mut archiver = Proc::spawn(
        "archive",
        exe,
        &["archive", path_str(&primary)?, "--to", archive_t],
        &logs,
        false,
    )?;
    view.event(
        out,
        &format!(
            "an archiver pushes them to {archive_t}{}",
            if archive_at.remote {
                " (an S3-compatible store)"
            } else {
                ""
            }
        ),
    );

    let acked = Arc::new(Acked::default());
    let mut writer = start_writer(opts, &primary, &logs, 0, &acked)?;
    view.event(out, &format!("a writer appends transactions (tx_begin, insert, update, delete, tx_commit), about {WRITER_TX_PER_SEC}/s, each commit durable"));

    let start = Instant::now();
    let total = Duration::from_secs(opts.seconds.max(2));
    let kill_at = total / 2;
    let mut killed = false;
    let mut generation = 0;
    while start.elapsed() < total {
        std::thread::sleep(Duration::from_millis(250));
        let p = positions(&primary, &standby, &acked);
        summary.max_standby_lag = summary
            .max_standby_lag
            .max(p.sealed.saturating_sub(p.standby_applied));
        summary.max_archive_lag = summary
            .max_archive_lag
            .max(p.sealed.saturating_sub(p.archived));
        view.show(
            out,
            &view_lines(start.elapsed().as_secs_f64(), &p, "running"),
        );
        if let Some(status) = writer.exited() {
            return Err(Error::Other(format!(
                "the writer exited unexpectedly ({status}); see {}",
                logs.join("writer.log").display()
            )));
        }
        if !killed && start.elapsed() >= kill_at {
            killed = true;
            let before = acked.last.load(Ordering::Relaxed);
            writer.kill();
            view.event(
                out,
                &format!(
                    "killed the writer with SIGKILL after its durable commit at {}",
                    Lsn(before)
                ),
            );
            generation += 1;
            writer = start_writer(opts, &primary, &logs, generation, &acked)?;
            view.event(out, "restarted it: recovery kept the valid prefix (see logs/writer.log), appending goes on");
        }
    }
    writer.kill();
    summary.writer_seconds = start.elapsed().as_secs_f64();
    summary.commits_acked = acked.count.load(Ordering::Relaxed);
    view.event(
        out,
        "stopped the writer (SIGKILL again); sealing the primary's last segment",
    );
    run_to_end(exe, &["seal", path_str(&primary)?], &logs, "seal")?;

    // Wait for the standby and the archiver to take everything.
    let final_status = walship::status::status(&primary)?;
    let end = final_status.flush_lsn.0;
    summary.end_lsn = end;
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut p = positions(&primary, &standby, &acked);
    while Instant::now() < deadline
        && (p.standby_applied < end || p.standby_flushed < end || p.archived < end)
    {
        view.show(
            out,
            &view_lines(start.elapsed().as_secs_f64(), &p, "catching up"),
        );
        std::thread::sleep(Duration::from_millis(200));
        p = positions(&primary, &standby, &acked);
    }
    view.show(
        out,
        &view_lines(start.elapsed().as_secs_f64(), &p, "caught up"),
    );
    view.event(out, "stopping serve, standby and archiver");
    for proc in [&mut serve, &mut standby_proc, &mut archiver] {
        proc.stop(Duration::from_secs(10));
    }
    let mut check = |name: &str, passed: bool, detail: String| {
        summary.checks.push(Check {
            name: name.to_string(),
            passed,
            detail,
        });
    };
    check(
        "standby caught up",
        p.standby_flushed == end && p.standby_applied == end,
        format!(
            "primary flush_lsn {}, standby flushed {} applied {}",
            end,
            Lsn(p.standby_flushed),
            Lsn(p.standby_applied)
        ),
    );
    check(
        "archive caught up",
        p.archived == end,
        format!("archived through {}", Lsn(p.archived)),
    );

    view.event(
        out,
        &format!(
            "restoring the archive {archive_t} into {}",
            restored.display()
        ),
    );
    let restore_ok = run_to_end(
        exe,
        &["restore", archive_t, path_str(&restored)?],
        &logs,
        "restore",
    );
    check(
        "restore from the archive",
        restore_ok.is_ok(),
        restore_ok
            .err()
            .map(|e| e.to_string())
            .unwrap_or_else(|| "ok".into()),
    );

    for (name, dir) in [
        ("verify primary", &primary),
        ("verify standby", &standby),
        ("verify archive", &archive),
        ("verify restored copy", &restored),
    ] {
        let dir = if name == "verify archive" {
            archive_t
        } else {
            path_str(dir)?
        };
        let r = run_to_end(exe, &["verify", dir], &logs, "verify");
        check(
            name,
            r.is_ok(),
            r.err()
                .map(|e| e.to_string())
                .unwrap_or_else(|| "clean".into()),
        );
    }

    let prim = digest(&primary)?;
    summary.records = prim.records;
    summary.bytes = prim.bytes;
    for (name, dir) in [("standby", &standby), ("restored copy", &restored)] {
        match digest(dir) {
            Ok(d) => check(
                &format!("{name} holds the primary's records"),
                d.records == prim.records && d.hash == prim.hash && d.end == prim.end,
                format!(
                    "{} records to {} (primary: {} to {})",
                    d.records,
                    Lsn(d.end),
                    prim.records,
                    Lsn(prim.end)
                ),
            ),
            Err(e) => check(
                &format!("{name} holds the primary's records"),
                false,
                e.to_string(),
            ),
        }
    }
    let acked_ends = acked.ends.lock().map(|v| v.clone()).unwrap_or_default();
    let missing = acked_ends.iter().filter(|e| !prim.ends.contains(e)).count();
    check(
        "every durable commit survived the SIGKILLs",
        missing == 0 && !acked_ends.is_empty(),
        format!(
            "{} commits acknowledged, {missing} missing",
            acked_ends.len()
        ),
    );
    Ok(summary)
}

/// What a directory's records add up to.
struct Digest {
    records: u64,
    bytes: u64,
    end: u64,
    hash: u64,
    ends: HashSet<u64>,
}

fn digest(dir: &Path) -> Result<Digest> {
    let mut r = WalReader::open(dir, Lsn(0))?;
    let mut d = Digest {
        records: 0,
        bytes: 0,
        end: 0,
        hash: 0xcbf2_9ce4_8422_2325,
        ends: HashSet::new(),
    };
    while let Some(rec) = r.next_record()? {
        d.records += 1;
        d.bytes += rec.end_lsn.0 - rec.lsn.0;
        d.end = rec.end_lsn.0;
        d.ends.insert(rec.end_lsn.0);
        // FNV-1a over (lsn, crc): the record CRC covers the header fields and the payload.
        for b in rec
            .lsn
            .0
            .to_le_bytes()
            .into_iter()
            .chain(rec.crc.to_le_bytes())
        {
            d.hash = (d.hash ^ b as u64).wrapping_mul(0x100_0000_01b3);
        }
    }
    Ok(d)
}

/// The demo's writer: appends generated transactions, each durable at its commit, and prints
/// each commit's end LSN once durable. Runs until killed.
pub fn run_writer(dir: &Path, seed: u64, first_tx: u64) -> Result<()> {
    let wal = Wal::open(
        dir,
        WalOptions {
            max_segment_age: Some(Duration::from_secs(1)),
            ..WalOptions::default()
        },
    )?;
    let mut gen = MixedWorkload::new(seed, first_tx);
    let stdout = std::io::stdout();
    let start = Instant::now();
    let mut done = 0u64;
    loop {
        let tx = gen.next_transaction();
        let entries: Vec<Entry<'_>> = tx
            .iter()
            .map(|e| Entry::new(e.entry_type, Some(e.tx_id), &e.payload))
            .collect();
        let appended = wal.append_batch(&entries)?;
        if let Some(last) = appended.last() {
            wal.wait_durable(last.end_lsn)?;
            let mut o = stdout.lock();
            writeln!(o, "{}", last.end_lsn.0)
                .and_then(|_| o.flush())
                .ctx(|| "write to stdout".to_string())?;
        }
        done += 1;
        let due = Duration::from_micros(done * 1_000_000 / WRITER_TX_PER_SEC);
        if let Some(ahead) = due.checked_sub(start.elapsed()) {
            std::thread::sleep(ahead);
        }
    }
}
