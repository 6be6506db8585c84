//! `walship demo`: the whole system on loopback in a scratch directory. A writer appends a mixed
//! workload to a primary, `serve` streams it to two standbys, `sync` (the primary's policy waits
//! for it before a commit is acknowledged) and `async`, an archiver pushes sealed segments to an
//! archive; midway the writer is killed with SIGKILL and restarted (recovery), and what each
//! standby held at that moment is compared with what the writer had acknowledged; at the end the
//! archive is restored into a new directory and the primary, the standbys and the restored copy
//! are verified and compared record by record. It ends with a failover: the synchronous standby
//! is promoted to a new timeline, the asynchronous one follows it, a writer commits on it, the
//! archiver continues the archive from it (restored along the newest timeline, it equals the
//! new primary), and every commit acknowledged since the start must be on the new timeline. Every component is the
//! real `walship` binary, started as a child process.
//!
//! Here: the demo's run from start to end; `procs.rs`: starting and stopping the children;
//! `view.rs`: the live view; `workload.rs`: the writer's transactions; `writer.rs`: the writer
//! process; `digest.rs`: comparing copies; `sync_check.rs`: the synchronous standby's check at
//! the SIGKILL; `failover.rs`: the closing failover.

mod archive_target;
mod digest;
mod failover;
mod procs;
mod sync_check;
mod view;
pub mod workload;
mod writer;

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

use digest::digest;
pub use failover::FailoverFigures;
use procs::{path_str, read_listen_addr, run_to_end, run_with_input, start_writer, Proc};
use sync_check::{ASYNC_NAME, SYNC_NAME};
use view::{positions, view_lines, View};
use workload::MixedWorkload;
pub use writer::run_writer;

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
    /// Bytes the asynchronous standby was behind the primary when the writer was killed.
    pub async_lag_at_kill: Option<u64>,
    pub end_lsn: u64,
    /// What the closing failover measured (absent when it could not run).
    pub failover: Option<FailoverFigures>,
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
    // Its own directory, empty or new: the demo makes several data directories there.
    if let Ok(mut entries) = fs::read_dir(root) {
        if entries.next().is_some() {
            return Err(Error::InvalidArgument(format!(
                "{} is not empty: give the demo an empty or new directory",
                root.display()
            )));
        }
    }
    fs::create_dir_all(root).ctx(|| format!("create {}", root.display()))?;
    let primary = root.join("primary");
    let standby = root.join("standby-sync");
    let standby_async = root.join("standby-async");
    let archive = root.join("archive");
    let restored = root.join("restored");
    let restored_latest = root.join("restored-latest");
    let logs = root.join("logs");
    let archive_at = archive_target::choose(opts.archive_to.as_deref(), &archive)?;
    let archive_t = archive_at.target.as_str();
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
        &[
            "serve",
            path_str(&primary)?,
            "--listen",
            "127.0.0.1:0",
            "--sync",
            &format!("FIRST 1 ({SYNC_NAME})"),
            "--sync-level",
            "remote_flush",
        ],
        &logs,
        true,
    )?;
    let addr = read_listen_addr(&mut serve)?;
    view.event(
        out,
        &format!(
            "serve streams the log on {addr}; its policy: FIRST 1 ({SYNC_NAME}), remote_flush"
        ),
    );
    let mut standby_proc = Proc::spawn(
        "standby-sync",
        exe,
        &[
            "standby",
            path_str(&standby)?,
            "--primary",
            &addr,
            "--name",
            SYNC_NAME,
        ],
        &logs,
        false,
    )?;
    let mut async_proc = Proc::spawn(
        "standby-async",
        exe,
        &[
            "standby",
            path_str(&standby_async)?,
            "--primary",
            &addr,
            "--name",
            ASYNC_NAME,
        ],
        &logs,
        false,
    )?;
    view.event(
        out,
        &format!(
            "standby `{SYNC_NAME}` (synchronous: commits wait until it has them on disk) receives into {}, standby `{ASYNC_NAME}` (asynchronous) into {}",
            standby.display(),
            standby_async.display()
        ),
    );
    let standbys = [
        (SYNC_NAME, standby.as_path()),
        (ASYNC_NAME, standby_async.as_path()),
    ];
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
    let (mut writer, mut writer_out) = start_writer(opts, &primary, &logs, 0, &acked)?;
    view.event(out, &format!("a writer appends transactions (tx_begin, insert, update, delete, tx_commit), about {WRITER_TX_PER_SEC}/s, each commit acknowledged once durable here and on `{SYNC_NAME}`"));

    let start = Instant::now();
    let total = Duration::from_secs(opts.seconds.max(2));
    let kill_at = total / 2;
    let mut killed = false;
    let mut generation = 0;
    let mut moment = None;
    while start.elapsed() < total {
        std::thread::sleep(Duration::from_millis(250));
        let p = positions(&primary, &standbys, &acked);
        for s in &p.standbys {
            summary.max_standby_lag = summary
                .max_standby_lag
                .max(p.sealed.saturating_sub(s.applied));
        }
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
            let m = sync_check::kill_writer_frozen(
                &mut writer,
                writer_out,
                &standby_proc,
                &async_proc,
                &primary,
                &acked,
            );
            view.event(
                out,
                &format!(
                    "killed the writer with SIGKILL after its acknowledged commit at {}",
                    Lsn(m.acked.iter().copied().max().unwrap_or(0))
                ),
            );
            view.event(out, &sync_check::async_lag_line(&m));
            moment = Some(m);
            generation += 1;
            (writer, writer_out) = start_writer(opts, &primary, &logs, generation, &acked)?;
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
    let behind = |p: &view::Positions| {
        p.archived < end
            || p.standbys
                .iter()
                .any(|s| s.applied < end || s.flushed < end)
    };
    let mut p = positions(&primary, &standbys, &acked);
    while Instant::now() < deadline && behind(&p) {
        view.show(
            out,
            &view_lines(start.elapsed().as_secs_f64(), &p, "catching up"),
        );
        std::thread::sleep(Duration::from_millis(200));
        p = positions(&primary, &standbys, &acked);
    }
    view.show(
        out,
        &view_lines(start.elapsed().as_secs_f64(), &p, "caught up"),
    );
    view.event(out, "stopping serve, standby and archiver");
    drop(writer_out);
    for proc in [
        &mut serve,
        &mut standby_proc,
        &mut async_proc,
        &mut archiver,
    ] {
        proc.stop(Duration::from_secs(10));
    }
    let mut check = |name: &str, passed: bool, detail: String| {
        summary.checks.push(Check {
            name: name.to_string(),
            passed,
            detail,
        });
    };
    for s in &p.standbys {
        check(
            &format!("standby {} caught up", s.name),
            s.flushed == end && s.applied == end,
            format!(
                "primary flush_lsn {}, standby flushed {} applied {}",
                end,
                Lsn(s.flushed),
                Lsn(s.applied)
            ),
        );
    }
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
        ("verify standby sync", &standby),
        ("verify standby async", &standby_async),
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
    for (name, dir) in [
        ("standby sync", &standby),
        ("standby async", &standby_async),
        ("restored copy", &restored),
    ] {
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
    match moment
        .as_ref()
        .map(|m| (m, sync_check::acked_on_sync_standby(&standby, m)))
    {
        Some((m, r)) => {
            let ok = r.is_ok();
            check(
                "every commit acknowledged before the SIGKILL is on the synchronous standby",
                ok,
                r.unwrap_or_else(|e| e.to_string()),
            );
            summary.async_lag_at_kill = Some(m.primary_flushed.saturating_sub(m.async_flushed));
        }
        None => check(
            "every commit acknowledged before the SIGKILL is on the synchronous standby",
            false,
            "the writer was never killed".into(),
        ),
    }

    let act = failover::Failover {
        opts,
        old: &primary,
        promoted: &standby,
        other: &standby_async,
        logs: &logs,
        acked: &acked,
        archive: archive_t,
        restored: &restored_latest,
    };
    summary.failover = Some(failover::run(&act, &mut view, out, &mut summary.checks)?);
    Ok(summary)
}
