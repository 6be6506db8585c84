//! The demo's last act, a failover: the old primary writes records no standby receives and is
//! lost; the synchronous standby is promoted to timeline 2 and serves; the asynchronous
//! standby is pointed at it and follows it onto timeline 2; a writer commits on the new
//! primary; the archiver, pointed at it, continues the archive, which restored along the newest
//! timeline equals the new primary; the old primary, refused as diverged, is rewound and follows the new one; then every
//! commit acknowledged since the demo began must be on the new timeline.
//! It measures how long the promotion took, how long until the new primary accepted a durable
//! write, and how long until the other standby held that write.

use super::*;

/// Records the old primary writes after its standbys stopped: on no standby, so that the old
/// primary has diverged from the timeline the promotion makes.
const DIVERGED_RECORDS: usize = 50;
/// How long the writer commits on the new primary.
const NEW_WRITER_MS: u64 = 1500;
/// The name the old primary follows the new one by.
const OLD_NAME: &str = "old-primary";

/// How the old primary's rejoining went.
struct Rejoined {
    /// The exit code of its first attempt to follow (refused: it diverged).
    refused_code: Option<i32>,
    /// What `walship rewind` said first.
    rewound: String,
    /// It followed the new primary to its end after the rewind.
    followed: bool,
}

/// What the failover measured.
#[derive(Clone, Debug, Default)]
pub struct FailoverFigures {
    /// `walship promote` from start to exit.
    pub promote_ms: u128,
    /// From `walship promote` starting to a `walship write --durable` on the promoted
    /// directory returning.
    pub accepted_ms: u128,
    /// From then to the other standby holding that write on the new timeline (starting
    /// `serve` on the new primary and the standby included).
    pub followed_ms: u128,
    /// Where the new timeline begins.
    pub switch_lsn: u64,
}

/// The directories and the commits the failover works with.
pub(super) struct Failover<'a> {
    pub(super) opts: &'a DemoOptions,
    /// The lost primary.
    pub(super) old: &'a Path,
    /// The standby promoted (the synchronous one: it holds every acknowledged commit).
    pub(super) promoted: &'a Path,
    /// The standby pointed at the new primary.
    pub(super) other: &'a Path,
    pub(super) logs: &'a Path,
    pub(super) acked: &'a Arc<Acked>,
    /// The archive the lost primary's archiver filled (a directory or a URL).
    pub(super) archive: &'a str,
    /// Where the archive is restored along the newest timeline.
    pub(super) restored: &'a Path,
}

/// Runs the failover after the rest of the demo stopped every process; adds its checks.
pub(super) fn run(
    f: &Failover<'_>,
    view: &mut View,
    out: &mut dyn Write,
    checks: &mut Vec<Check>,
) -> Result<FailoverFigures> {
    let exe = &f.opts.exe;
    let mut figures = FailoverFigures::default();
    let lines: String = (0..DIVERGED_RECORDS)
        .map(|i| format!("old primary, cut off, record {i}\n"))
        .collect();
    run_with_input(
        exe,
        &["write", path_str(f.old)?, "--durable"],
        lines.as_bytes(),
        f.logs,
        "failover",
    )?;
    view.event(
        out,
        &format!("failover: the primary writes {DIVERGED_RECORDS} records no standby receives, then is lost; promoting standby `{SYNC_NAME}`"),
    );

    let t0 = Instant::now();
    let said = run_with_input(
        exe,
        &["promote", path_str(f.promoted)?],
        b"",
        f.logs,
        "failover",
    )?;
    figures.promote_ms = t0.elapsed().as_millis();
    let first = run_with_input(
        exe,
        &["write", path_str(f.promoted)?, "--durable"],
        b"first commit on the new timeline\n",
        f.logs,
        "failover",
    )?;
    figures.accepted_ms = t0.elapsed().as_millis();
    let first_lsn: Lsn = first.trim().parse().map_err(|e| {
        Error::Other(format!(
            "`walship write` printed {first:?}, not an LSN: {e}"
        ))
    })?;
    let control = DataDir::new(f.promoted).read_control()?;
    let history = DataDir::new(f.promoted).read_history_file(control.timeline, &control)?;
    figures.switch_lsn = history.last_switch().map_or(0, |s| s.lsn.0);
    view.event(
        out,
        &format!(
            "{} in {} ms; it took a durable write {} ms after the promotion began",
            said.lines().next().unwrap_or("promoted").trim(),
            figures.promote_ms,
            figures.accepted_ms
        ),
    );

    let mut serve = Proc::spawn(
        "serve-new-primary",
        exe,
        &[
            "serve",
            path_str(f.promoted)?,
            "--listen",
            "127.0.0.1:0",
            "--sync",
            &format!("FIRST 1 ({ASYNC_NAME})"),
            "--sync-level",
            "remote_flush",
        ],
        f.logs,
        true,
    )?;
    let t1 = Instant::now();
    let addr = read_listen_addr(&mut serve)?;
    let mut other = Proc::spawn(
        "standby-async-follows",
        exe,
        &[
            "standby",
            path_str(f.other)?,
            "--primary",
            &addr,
            "--name",
            ASYNC_NAME,
        ],
        f.logs,
        false,
    )?;
    wait_for(
        &format!(
            "standby `{ASYNC_NAME}` to follow the new primary onto timeline {}",
            control.timeline
        ),
        || held(f.other).is_ok_and(|(tl, end)| tl == control.timeline && end > first_lsn.0),
    )?;
    figures.followed_ms = t1.elapsed().as_millis();
    view.event(
        out,
        &format!(
            "standby `{ASYNC_NAME}`, pointed at it ({addr}), follows it onto timeline {}: it held that write {} ms after `serve` started on the new primary",
            control.timeline, figures.followed_ms
        ),
    );

    // Commits on the new primary, each acknowledged once `async` has it.
    let before = f.acked.count.load(Ordering::Relaxed);
    let (mut writer, writer_out) = start_writer(f.opts, f.promoted, f.logs, 2, f.acked)?;
    std::thread::sleep(Duration::from_millis(NEW_WRITER_MS));
    writer.kill();
    let _ = writer_out.join();
    run_to_end(exe, &["seal", path_str(f.promoted)?], f.logs, "seal")?;
    let end = walship::status::status(f.promoted)?.flush_lsn.0;
    let caught_up = wait_for(&format!("standby `{ASYNC_NAME}` to catch up"), || {
        walship::status::status(f.other)
            .is_ok_and(|s| s.flush_lsn.0 >= end && s.applied_lsn.is_some_and(|a| a.0 >= end))
    });
    let new_commits = f.acked.count.load(Ordering::Relaxed) - before;
    view.event(
        out,
        &format!("a writer committed {new_commits} transactions on the new primary, each acknowledged once `{ASYNC_NAME}` had it"),
    );
    // The archiver, pointed at the new primary, continues the same archive: the history file,
    // then timeline 2's segments; restored along the newest timeline, it is the new primary.
    let archived = run_to_end(
        exe,
        &[
            "archive",
            path_str(f.promoted)?,
            "--to",
            f.archive,
            "--once",
        ],
        f.logs,
        "archive-new-primary",
    )
    .and_then(|()| {
        run_to_end(
            exe,
            &[
                "restore",
                f.archive,
                path_str(f.restored)?,
                "--timeline",
                "latest",
            ],
            f.logs,
            "restore-latest",
        )
    });
    view.event(
        out,
        &format!(
            "the archiver, pointed at the new primary, continues {} on timeline {}; restored along the newest timeline into {}",
            f.archive,
            control.timeline,
            f.restored.display()
        ),
    );
    let rejoined = rejoin_old(f, &addr, end)?;
    view.event(
        out,
        &format!(
            "the old primary, pointed at the new one, was refused (exit {}: it holds records past the switch point); {}; then it followed the new primary onto timeline {}",
            rejoined.refused_code.map_or("-".to_string(), |c| c.to_string()),
            rejoined.rewound,
            control.timeline
        ),
    );
    for p in [&mut serve, &mut other] {
        p.stop(Duration::from_secs(10));
    }

    let mut check = |name: &str, passed: bool, detail: String| {
        checks.push(Check {
            name: name.to_string(),
            passed,
            detail,
        });
    };
    let new = digest(f.promoted)?;
    let acked = f.acked.ends.lock().map(|v| v.clone()).unwrap_or_default();
    let missing = acked.iter().filter(|e| !new.ends.contains(e)).count();
    check(
        "failover: every acknowledged commit is on the new timeline",
        missing == 0 && new_commits > 0 && !acked.is_empty(),
        format!(
            "{} commits acknowledged ({new_commits} on the new primary), {missing} missing from timeline {} (begun at {})",
            acked.len(),
            control.timeline,
            Lsn(figures.switch_lsn)
        ),
    );
    let followed = digest(f.other).and_then(|d| {
        Ok((
            d.records == new.records && d.hash == new.hash && d.end == new.end,
            walship::status::status(f.other)?.timeline,
            d.records,
        ))
    });
    check(
        &format!("failover: standby {ASYNC_NAME} follows the new primary"),
        caught_up.is_ok()
            && followed
                .as_ref()
                .is_ok_and(|(same, tl, _)| *same && *tl == control.timeline),
        match followed {
            Ok((_, tl, n)) => format!(
                "timeline {tl}, {n} records (new primary: {} to {})",
                new.records,
                Lsn(new.end)
            ),
            Err(e) => e.to_string(),
        },
    );
    let restored = archived.and_then(|()| {
        let d = digest(f.restored)?;
        Ok((d, walship::status::status(f.restored)?.timeline))
    });
    check(
        "failover: the archive follows the new primary, and restores to it",
        restored.as_ref().is_ok_and(|(d, tl)| {
            d.records == new.records && d.hash == new.hash && d.end == new.end && *tl == control.timeline
        }),
        match restored {
            Ok((d, tl)) => format!(
                "restored with --timeline latest: timeline {tl}, {} records to {} (new primary: {} to {})",
                d.records,
                Lsn(d.end),
                new.records,
                Lsn(new.end)
            ),
            Err(e) => e.to_string(),
        },
    );
    let old_now = digest(f.old);
    check(
        "failover: the old primary, refused until rewound, follows the new primary",
        rejoined.refused_code == Some(1)
            && rejoined.followed
            && old_now
                .as_ref()
                .is_ok_and(|d| d.hash == new.hash && d.records == new.records),
        match old_now {
            Ok(d) => format!(
                "refused with exit {}, rewound, then {} records (new primary: {})",
                rejoined
                    .refused_code
                    .map_or("-".to_string(), |c| c.to_string()),
                d.records,
                new.records
            ),
            Err(e) => e.to_string(),
        },
    );
    let v = run_to_end(exe, &["verify", path_str(f.promoted)?], f.logs, "verify");
    check(
        "failover: verify the new primary",
        v.is_ok(),
        v.err()
            .map(|e| e.to_string())
            .unwrap_or_else(|| "clean".into()),
    );
    Ok(figures)
}

/// Polls `ready` every 50 ms for up to 60 s.
fn wait_for(what: &str, mut ready: impl FnMut() -> bool) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !ready() {
        if Instant::now() >= deadline {
            return Err(Error::Other(format!("timed out waiting for {what}")));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// A directory's timeline and where the records it holds end, read from its files: sealed
/// segments, an open segment, and a standby's copy of its primary's open segment.
fn held(dir: &Path) -> Result<(u32, u64)> {
    let dd = DataDir::new(dir);
    let control = dd.read_control()?;
    let names = dd.list_segments()?;
    let mut end = walship::sealed_set::newest_sealed_end(&dd, &names, &control)?.0;
    for n in names.iter().filter(|n| {
        matches!(
            n.kind,
            walship::format::SegmentFileKind::Open | walship::format::SegmentFileKind::Partial
        )
    }) {
        // Renamed meanwhile (sealed): counted at the next look.
        let Ok(bytes) = walship::reader::read_segment(&dd.segment_path(n)) else {
            continue;
        };
        let Ok(mut scan) = walship::decoder::SegmentScanner::new(&bytes) else {
            continue; // no header yet
        };
        for r in scan.by_ref() {
            end = end.max(r.end_lsn().0);
        }
    }
    Ok((control.timeline, end))
}

/// The old primary rejoins: pointed at the new primary it is refused (it diverged), `walship
/// rewind` sets its records past the switch point aside, then it follows the new primary.
/// Returns what it printed for the demo's lines and whether each step went as it should.
fn rejoin_old(f: &Failover<'_>, addr: &str, end: u64) -> Result<Rejoined> {
    let exe = &f.opts.exe;
    let follow = |name: &'static str| -> Result<Proc> {
        Proc::spawn(
            name,
            exe,
            &[
                "standby",
                path_str(f.old)?,
                "--primary",
                addr,
                "--name",
                OLD_NAME,
            ],
            f.logs,
            false,
        )
    };
    let mut first = follow("old-primary-refused")?;
    let mut refused = None;
    wait_for("the old primary's first attempt to follow to end", || {
        refused = first.exited();
        refused.is_some()
    })?;
    let refused_code = refused.and_then(|s| s.code());
    let rewound = run_with_input(
        exe,
        &["rewind", path_str(f.old)?, "--source", addr],
        b"",
        f.logs,
        "rewind",
    )?;
    let mut again = follow("old-primary-follows")?;
    let followed = wait_for("the rewound old primary to follow the new one", || {
        held(f.old).is_ok_and(|(tl, e)| tl > 1 && e >= end)
            && walship::status::status(f.old)
                .is_ok_and(|s| s.applied_lsn.is_some_and(|a| a.0 >= end))
    });
    again.stop(Duration::from_secs(10));
    Ok(Rejoined {
        refused_code,
        rewound: rewound
            .lines()
            .next()
            .unwrap_or_default()
            .trim()
            .to_string(),
        followed: followed.is_ok(),
    })
}
