//! `walship status --watch`: a block of plain lines per refresh when not on a terminal, the
//! view redrawn in place under a pseudo-terminal, rates from one refresh to the next.

use std::process::Command;

mod common;
use common::{code, init, ok, p, run, stdout, text, walship, write_records};

const REDRAW: &str = "\x1b[H\x1b[2J";

/// The lines of each refresh's block (blocks are separated by an empty line).
fn blocks(out: &str) -> Vec<Vec<&str>> {
    out.split("\n\n")
        .filter(|b| !b.trim().is_empty())
        .map(|b| b.lines().collect())
        .collect()
}

#[test]
fn without_a_terminal_each_refresh_is_a_block_of_plain_lines() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("d");
    init(&dir);
    write_records(&dir, 20, "w");
    let flush = common::status(&dir)["flush_lsn"].as_u64().unwrap();
    let out = ok(&[
        "status",
        p(&dir),
        "--watch",
        "--interval",
        "50ms",
        "--count",
        "3",
    ]);
    assert!(!out.contains('\x1b'), "no escape codes in a pipe: {out:?}");
    let b = blocks(&out);
    assert_eq!(b.len(), 3, "one block per refresh: {out}");
    for block in &b {
        assert!(block[0].contains("primary, timeline 1"), "{block:?}");
        let want = format!("flush {}", walship::Lsn(flush));
        assert!(block[1].starts_with(&want), "{block:?} (want {want})");
        assert!(block.iter().any(|l| l.starts_with("standby ")), "{block:?}");
        assert!(
            block.iter().any(|l| l.starts_with("retained ")),
            "{block:?}"
        );
    }
    // No rate before a second refresh; nothing written between refreshes after it.
    assert!(b[0][1].ends_with("writing -"), "{:?}", b[0][1]);
    assert!(b[2][1].ends_with("writing 0 B/s"), "{:?}", b[2][1]);
}

#[test]
fn the_writing_rate_follows_what_is_written_between_refreshes() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("d");
    init(&dir);
    let mut watch = Command::new(common::bin())
        .args([
            "status",
            p(&dir),
            "--watch",
            "--interval",
            "200ms",
            "--count",
            "4",
        ])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Write until the view has ended, so that every interval sees records arrive.
    let mut i = 0;
    while watch.try_wait().unwrap().is_none() {
        write_records(&dir, 50, &format!("r{i}"));
        i += 1;
    }
    let out = watch.wait_with_output().unwrap();
    assert!(out.status.success());
    let out = String::from_utf8(out.stdout).unwrap();
    let rates: Vec<&str> = blocks(&out)
        .iter()
        .skip(1)
        .map(|b| b[1].rsplit("writing ").next().unwrap_or(""))
        .collect();
    assert!(
        rates.iter().any(|r| r.ends_with("/s") && *r != "0 B/s"),
        "some refresh saw bytes written: {rates:?}"
    );
}

#[test]
fn under_a_pseudo_terminal_the_view_is_redrawn_in_place() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("d");
    init(&dir);
    write_records(&dir, 5, "w");
    // util-linux `script` runs the command on a new pseudo-terminal and copies what it shows.
    let cmd = format!(
        "{} status {} --watch --interval 50ms --count 2",
        common::bin(),
        p(&dir)
    );
    let o = run_script(&cmd);
    let out = stdout(&o);
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(
        out.matches(REDRAW).count(),
        2,
        "redrawn at each refresh: {out:?}"
    );
    assert!(out.contains("primary, timeline 1"), "{out:?}");
}

fn run_script(cmd: &str) -> std::process::Output {
    Command::new("script")
        .args(["-q", "-e", "-c", cmd, "/dev/null"])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("util-linux `script` runs")
}

#[test]
fn watch_refuses_an_archive_and_json() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("d");
    init(&dir);
    write_records(&dir, 5, "w");
    common::seal(&dir);
    let arc = t.path().join("arc");
    let a = common::archive_once(&dir, &arc, &[]);
    assert!(a.status.success(), "{}", text(&a));
    let o = walship(&["status", p(&arc), "--watch"]);
    assert_eq!(code(&o), 2, "{}", text(&o));
    assert!(text(&o).contains("is an archive"), "{}", text(&o));
    let o = run(&["status", p(&dir), "--watch", "--json"], b"");
    assert_eq!(code(&o), 2, "{}", text(&o));
    let o = run(&["status", p(&dir), "--count", "2"], b"");
    assert_eq!(code(&o), 2, "--count needs --watch: {}", text(&o));
}

/// The archiver's line says how far it is behind what is sealed (archives take sealed segments
/// only), not behind the open segment's records: an archiver with every sealed segment is
/// behind by nothing.
#[test]
fn an_archiver_with_every_sealed_segment_is_behind_by_nothing() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("d");
    init(&dir);
    write_records(&dir, 600, "s");
    common::seal(&dir);
    let arc = t.path().join("arc");
    assert!(common::archive_once(&dir, &arc, &[]).status.success());
    write_records(&dir, 50, "open");
    let out = ok(&["status", p(&dir), "--watch", "--count", "1"]);
    let line = out
        .lines()
        .find(|l| l.contains("archiver"))
        .unwrap_or_else(|| panic!("an archiver line: {out}"));
    assert!(line.contains("behind by 0 B"), "{line}");
}

/// A standby's rate is measured between the times its slot was saved, not between refreshes:
/// `serve` saves a slot at most once a second, and refreshes more often than that must not
/// show no progress and then twice the true rate, in turn.
#[test]
fn a_standbys_rate_holds_steady_when_refreshes_come_faster_than_its_slot_is_saved() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use walship::consumers::{ConsumerKind, ConsumerRecord, ConsumerRegistry};
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("d");
    init(&dir);
    let reg = ConsumerRegistry::new(&walship::DataDir::new(&dir));
    // One MiB flushed per second of the slot's own contact times, saved once a second.
    let saved = |i: i64| ConsumerRecord {
        applied_lsn: Some(walship::Lsn(i as u64 * 1_048_576)),
        last_contact_us: Some(walship::now_us()),
        name: Some("s1".into()),
        ..ConsumerRecord::new(
            "slot-1",
            ConsumerKind::Standby,
            walship::Lsn(i as u64 * 1_048_576),
        )
    };
    reg.save(&saved(0)).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let saver = {
        let (reg, stop) = (reg.clone(), stop.clone());
        std::thread::spawn(move || {
            let start = std::time::Instant::now();
            let mut i = 1i64;
            while !stop.load(Ordering::Relaxed) {
                // Each save at a whole second of the test, so contact times are a second apart.
                let due = std::time::Duration::from_secs(i as u64);
                if let Some(wait) = due.checked_sub(start.elapsed()) {
                    std::thread::sleep(wait);
                }
                reg.save(&saved(i)).unwrap();
                i += 1;
            }
        })
    };
    let out = ok(&[
        "status",
        p(&dir),
        "--watch",
        "--interval",
        "300ms",
        "--count",
        "14",
    ]);
    stop.store(true, Ordering::Relaxed);
    saver.join().unwrap();
    // The rate is the line's last column: "-", or a figure and a unit per second.
    let rates: Vec<Option<f64>> = blocks(&out)
        .iter()
        .filter_map(|b| b.iter().find(|l| l.starts_with("s1 ")))
        .map(|l| {
            let mut last = l.split_whitespace().rev();
            let (unit, figure) = (last.next().unwrap(), last.next().unwrap());
            let scale = match unit {
                "-" => return None,
                "B/s" => 1.0,
                "KiB/s" => 1024.0,
                "MiB/s" => 1_048_576.0,
                _ => panic!("no rate at the end of {l:?}"),
            };
            Some(figure.parse::<f64>().unwrap() * scale / 1_048_576.0)
        })
        .collect();
    assert_eq!(rates.len(), 14, "{out}");
    // Once two saves have been seen, every refresh shows about one MiB a second (the contact
    // times are the saver's clock readings, a few milliseconds off whole seconds).
    let shown: Vec<f64> = rates.iter().flatten().copied().collect();
    assert!(shown.len() >= 6, "{rates:?}");
    assert!(
        shown.iter().all(|mib| (0.9..=1.1).contains(mib)),
        "{rates:?}"
    );
    // And none is shown before a second save was read.
    assert!(rates[0].is_none(), "{rates:?}");
}
