//! Warnings in the log, once per episode, each read from a real child process's log: a
//! `walship write` whose group-commit syncs are made slow by a failpoint that sleeps
//! (`FAILPOINTS`); a `walship serve` whose standby is stopped while the primary writes on (the
//! standby behind, and holding retained WAL near the cap), then started again; a `walship
//! archive` whose archive (a small tmpfs) is filled up, then freed.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::time::Duration;

mod common;
use common::mount::{self, Mount};
use common::{
    init, p, seal, serve, spawn, spawn_piped, standby, status, wait_until, walship, write_records,
};

/// How many lines of `log` contain `what`.
fn count(log: &str, what: &str) -> usize {
    log.lines().filter(|l| l.contains(what)).count()
}

/// Checks an episode in `log`: its subject warned exactly once (a WARN line), its end logged
/// exactly once, after the warning.
fn one_episode(log: &str, subject: &str) {
    let warn = format!("{subject}: ");
    let end = format!("{subject}: back within the threshold after ");
    let lines: Vec<&str> = log.lines().filter(|l| l.contains(&warn)).collect();
    assert_eq!(
        lines.len(),
        2,
        "one warning and one end for {subject:?}:\n{log}"
    );
    assert!(
        lines[0].contains("WARN") && lines[0].contains("not logged again"),
        "the warning first, at WARN level:\n{log}"
    );
    assert!(lines[1].contains(&end), "then its end:\n{log}");
}

/// The standby's applied position as the primary's status shows it.
fn applied(dir: &Path) -> Option<u64> {
    status(dir)["standbys"]
        .as_array()
        .and_then(|v| v.first())
        .and_then(|s| s["applied_lsn"].as_u64())
}

/// Each line written and waited for (its LSN printed once durable) is one group-commit sync:
/// syncs 1-2 slow, 3-5 fast, 6-7 slow, then fast. Two episodes: two warnings, two ends.
#[test]
fn a_slow_sync_is_logged_once_per_episode() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("d");
    init(&dir);
    let log = t.path().join("write.log");
    let mut w = spawn_piped(
        &["write", p(&dir), "--durable", "--warn-slow-sync", "500ms"],
        &[(
            "FAILPOINTS",
            "wal::group_commit::sync=2*sleep(1500)->3*off->2*sleep(1500)->off",
        )],
        &log,
    );
    let mut stdin = w.child.stdin.take().unwrap();
    let mut stdout = BufReader::new(w.child.stdout.take().unwrap());
    for i in 0..10 {
        writeln!(stdin, "line {i}").unwrap();
        stdin.flush().unwrap();
        let mut lsn = String::new();
        stdout.read_line(&mut lsn).unwrap();
        assert!(!lsn.trim().is_empty(), "no LSN for line {i}: {}", w.log());
    }
    drop(stdin);
    assert_eq!(w.wait_exit(), 0, "{}", w.log());
    let text = w.log();
    let warnings: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("slow sync: an msync"))
        .collect();
    assert_eq!(warnings.len(), 2, "one warning per episode:\n{text}");
    assert!(
        warnings
            .iter()
            .all(|l| l.contains("WARN") && l.contains("not logged again")),
        "logged as warnings:\n{text}"
    );
    let ends = text
        .lines()
        .filter(|l| l.contains("slow sync: back within the threshold after"))
        .count();
    assert_eq!(ends, 2, "each episode's end logged:\n{text}");
    // The order: warning, end, warning, end.
    let order: Vec<bool> = text
        .lines()
        .filter_map(|l| {
            if l.contains("slow sync: an msync") {
                Some(true)
            } else if l.contains("slow sync: back within") {
                Some(false)
            } else {
                None
            }
        })
        .collect();
    assert_eq!(order, [true, false, true, false], "{text}");
}

/// Without a slow sync nothing is logged: the failpoint's sleep stays below the bound.
#[test]
fn syncs_within_the_bound_are_not_logged() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("d");
    init(&dir);
    let log = t.path().join("write.log");
    let mut w = spawn_piped(
        &["write", p(&dir), "--durable", "--warn-slow-sync", "5s"],
        &[("FAILPOINTS", "wal::group_commit::sync=3*sleep(50)->off")],
        &log,
    );
    let mut stdin = w.child.stdin.take().unwrap();
    let mut stdout = BufReader::new(w.child.stdout.take().unwrap());
    for i in 0..5 {
        writeln!(stdin, "line {i}").unwrap();
        stdin.flush().unwrap();
        let mut lsn = String::new();
        stdout.read_line(&mut lsn).unwrap();
    }
    drop(stdin);
    assert_eq!(w.wait_exit(), 0, "{}", w.log());
    assert!(!w.log().contains("slow sync"), "{}", w.log());
}

/// A standby stopped while the primary writes on falls behind by more than
/// --warn-standby-lag and, once a checkpoint passes it, holds back more than 80 % of
/// --max-retained: `serve` warns of each once, checking every second for several seconds while
/// both last (the primary writing more meanwhile), and logs each end once the standby, started
/// again, has caught up.
#[test]
fn a_stopped_standby_is_warned_about_once_per_episode() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("p");
    let sdir = t.path().join("s");
    init(&dir);
    write_records(&dir, 100, "a");
    let log = t.path().join("serve.log");
    let (srv, addr) = serve(
        &dir,
        "127.0.0.1:0",
        &[
            "--warn-standby-lag",
            "64KiB",
            "--warn-standby-lag-time",
            "60m",
            "--max-retained",
            "256KiB",
        ],
        &log,
    );
    let slog = t.path().join("s.log");
    let mut sb = standby(&sdir, &addr, &["--name", "s1"], &slog);
    let flush = status(&dir)["flush_lsn"].as_u64().unwrap();
    wait_until("the standby caught up", || applied(&dir) == Some(flush));
    sb.kill();
    // About 5 segments of 64 KiB: the standby is behind by more than 64 KiB, and once the
    // checkpoint passes them it alone holds back 4 of them (the newest is always kept), over
    // 80 % of 256 KiB.
    write_records(&dir, 5200, "b");
    seal(&dir);
    let flush = status(&dir)["flush_lsn"].as_u64().unwrap();
    let out = walship(&["checkpoint", p(&dir), "--lsn", &flush.to_string()]);
    assert!(out.status.success(), "{out:?}");
    wait_until("both warnings", || {
        let l = srv.log();
        l.contains("standby s1 behind: applied") && l.contains("retained WAL near the cap: ")
    });
    // Several checks while both last, the lag growing: no new line.
    for i in 0..3 {
        write_records(&dir, 100, &format!("c{i}"));
        std::thread::sleep(Duration::from_millis(1100));
    }
    let l = srv.log();
    assert_eq!(count(&l, "standby s1 behind: "), 1, "{l}");
    assert_eq!(count(&l, "retained WAL near the cap: "), 1, "{l}");
    let sb = standby(&sdir, &addr, &["--name", "s1"], &slog);
    let flush = status(&dir)["flush_lsn"].as_u64().unwrap();
    wait_until("the standby caught up again", || {
        applied(&dir) == Some(flush)
    });
    wait_until("both ends logged", || {
        let l = srv.log();
        l.contains("standby s1 behind: back within the threshold after")
            && l.contains("back within the threshold after")
            && count(&l, "retained WAL near the cap: ") == 2
    });
    drop(sb);
    let l = srv.log();
    one_episode(&l, "standby s1 behind");
    let retained: Vec<&str> = l
        .lines()
        .filter(|x| x.contains("retained WAL near the cap: "))
        .collect();
    assert!(
        retained[0].contains("WARN") && retained[0].contains("of --max-retained 262144 bytes"),
        "{l}"
    );
    assert!(
        retained[1].contains("back within the threshold after"),
        "{l}"
    );
}

/// An archiver whose archive fills up falls behind by more than --warn-lag: it warns once
/// although each retried pass finds it behind, and logs the end once the space is freed and
/// it caught up. Needs root for the tmpfs (skipped otherwise).
#[test]
fn an_archiver_behind_is_warned_about_once_per_episode() {
    let Some(m) = mount::or_skip(Mount::tmpfs("1m")) else {
        return;
    };
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("p");
    let arc = m.point.join("arc");
    init(&dir);
    write_records(&dir, 100, "a");
    seal(&dir);
    let log = t.path().join("archive.log");
    let archiver = spawn(
        &[
            "archive",
            p(&dir),
            "--to",
            p(&arc),
            "--rescan-secs",
            "1",
            "--warn-lag",
            "100KiB",
            "--warn-lag-time",
            "60m",
        ],
        &log,
    );
    wait_until("the first pass", || {
        archiver.log().contains("archive pass done")
    });
    // Fill the archive's file system.
    let filler = m.point.join("filler");
    {
        let mut f = std::fs::File::create(&filler).unwrap();
        let chunk = vec![7u8; 4096];
        while f.write_all(&chunk).is_ok() {}
    }
    write_records(&dir, 4200, "b");
    seal(&dir);
    wait_until("the warning", || {
        archiver.log().contains("archiver behind: ")
    });
    // Passes keep failing (retried with backoff) while it is behind.
    wait_until("retried passes", || {
        count(&archiver.log(), "archive pass failed") >= 4
    });
    assert_eq!(
        count(&archiver.log(), "archiver behind: "),
        1,
        "{}",
        archiver.log()
    );
    std::fs::remove_file(&filler).unwrap();
    wait_until("the end of the episode", || {
        archiver
            .log()
            .contains("archiver behind: back within the threshold after")
    });
    let sealed = status(&dir)["sealed_lsn"].as_u64().unwrap();
    let archived = status(&dir)["retention"]["consumers"]
        .as_array()
        .and_then(|v| v.iter().find(|c| c["id"] == "archiver"))
        .and_then(|c| c["position"].as_u64());
    assert_eq!(archived, Some(sealed));
    one_episode(&archiver.log(), "archiver behind");
}
