//! Warnings in the log, once per episode: a real `walship write` child process whose
//! group-commit syncs are made slow by a failpoint that sleeps (`FAILPOINTS`), its log read.

use std::io::{BufRead, BufReader, Write};

mod common;
use common::{init, p, spawn_piped};

/// Each line written and waited for (its LSN printed once durable) is one group-commit sync:
/// syncs 1-2 slow, 3-5 fast, 6-7 slow, then fast. Two episodes: two warnings, two ends.
#[test]
fn a_slow_sync_is_logged_once_per_episode() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("d");
    init(&dir);
    let log = t.path().join("write.log");
    let mut w = spawn_piped(
        &["write", p(&dir), "--durable", "--warn-slow-sync", "100ms"],
        &[(
            "FAILPOINTS",
            "wal::group_commit::sync=2*sleep(300)->3*off->2*sleep(300)->off",
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
