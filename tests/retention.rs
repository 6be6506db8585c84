//! Retention: `checkpoint` never removes a segment a registered consumer still needs, always
//! keeps what the writer's recovery needs, and the cap marks a lagging consumer lost.

use std::path::Path;

mod common;
use common::{archive_once, consumer, names, p, text, walship, SEG};

use proptest::prelude::*;
use walship::consumers::{ConsumerKind, ConsumerRegistry};
use walship::retention::{checkpoint, report, RetentionOptions};
use walship::{DataDir, Entry, EntryType, Lsn, Wal, WalOptions, WalReader};

/// (segment number, seal LSN) of every sealed segment on disk.
fn sealed(dir: &Path) -> Vec<(u64, u64)> {
    let mut v: Vec<(u64, u64)> = std::fs::read_dir(dir.join("wal"))
        .unwrap()
        .filter_map(|e| {
            let e = e.unwrap();
            let n = e.file_name().to_string_lossy().into_owned();
            let hex = n.strip_suffix(".wal")?;
            let no = u64::from_str_radix(&hex[8..], 16).ok()?;
            Some((no, no * SEG + e.metadata().unwrap().len() - 64))
        })
        .collect();
    v.sort();
    v
}

/// Every record from `from` on, read through the files a consumer would read.
fn readable_from(dir: &Path, from: u64) -> Vec<u64> {
    let mut r = WalReader::open(dir, Lsn(from)).unwrap();
    let mut out = Vec::new();
    while let Some(x) = r.next_record().unwrap() {
        out.push(x.lsn.0);
    }
    out
}

#[derive(Clone, Debug)]
enum Op {
    Append {
        count: u16,
        size: u16,
    },
    Seal,
    /// Move consumer `who` forward to a record end chosen by `frac` between its position and
    /// the flushed end.
    Advance {
        who: usize,
        frac: f64,
    },
    Checkpoint {
        frac: f64,
        cap: Option<u8>,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (1u16..60, 0u16..3000).prop_map(|(count, size)| Op::Append { count, size }),
        1 => Just(Op::Seal),
        3 => (0usize..3, 0.0f64..=1.0).prop_map(|(who, frac)| Op::Advance { who, frac }),
        3 => (0.0f64..=1.0, prop::option::weighted(0.2, 1u8..6))
            .prop_map(|(frac, cap)| Op::Checkpoint { frac, cap }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn retention_never_removes_what_a_registered_consumer_needs(ops in prop::collection::vec(op(), 1..40)) {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("d");
        DataDir::init(&root, SEG).unwrap();
        let dir = DataDir::new(&root);
        let reg = ConsumerRegistry::new(&dir);
        let ids = ["archiver", "standby-a", "standby-b"];
        let kinds = [ConsumerKind::Archiver, ConsumerKind::Standby, ConsumerKind::Standby];
        for (id, kind) in ids.iter().zip(kinds) {
            reg.save(&consumer(id, kind, 0)).unwrap();
        }
        let wal = Wal::open(&root, WalOptions::default()).unwrap();
        // Every record written so far: (lsn, end).
        let mut recs: Vec<(u64, u64)> = Vec::new();
        let mut ckpt = 0u64;
        for op in ops {
            match op {
                Op::Append { count, size } => {
                    let payload = vec![0xA5u8; size as usize];
                    for _ in 0..count {
                        let a = wal.append(&Entry::new(EntryType::Insert, None, &payload)).unwrap();
                        recs.push((a.lsn.0, a.end_lsn.0));
                    }
                }
                Op::Seal => { wal.seal().unwrap(); }
                Op::Advance { who, frac } => {
                    let flushed = wal.sync().unwrap().0;
                    let mut c = reg.get(ids[who]).unwrap().unwrap();
                    let ends: Vec<u64> = recs.iter().map(|r| r.1)
                        .filter(|&e| e >= c.position.0 && e <= flushed).collect();
                    if !ends.is_empty() {
                        c.position = Lsn(ends[((ends.len() - 1) as f64 * frac) as usize]);
                        reg.save(&c).unwrap();
                    }
                }
                Op::Checkpoint { frac, cap } => {
                    // A checkpoint names a durable position: past flush_lsn it is refused.
                    let lsn = (wal.sync().unwrap().0 as f64 * frac) as u64;
                    ckpt = ckpt.max(lsn);
                    // Sealed names follow in the background; checkpoint waits for them too.
                    wal.wait_sealed_names().unwrap();
                    let before = sealed(&root);
                    let consumers_before = reg.list().unwrap();
                    let opts = RetentionOptions { max_retained: cap.map(|c| c as u64 * SEG), ..RetentionOptions::default() };
                    let r = wal.checkpoint(Lsn(lsn), &opts).unwrap();
                    prop_assert_eq!(r.checkpoint_lsn.0, ckpt);
                    let after = sealed(&root);
                    let consumers = reg.list().unwrap();
                    // Only the cap may mark a consumer lost, and only those it names.
                    for (b, a) in consumers_before.iter().zip(&consumers) {
                        if a.lost && !b.lost {
                            prop_assert!(cap.is_some());
                            prop_assert!(r.marked_lost.contains(&a.id));
                        }
                    }
                    let floor = consumers.iter().filter(|c| !c.lost)
                        .map(|c| c.position.0).min().unwrap_or(u64::MAX);
                    let newest = before.last().copied();
                    for s in &before {
                        let needed = s.1 > floor || s.1 > ckpt || Some(*s) == newest;
                        let kept = after.contains(s);
                        // Never removes what is needed; removes everything else.
                        prop_assert_eq!(kept, needed, "segment {:?} floor {} ckpt {}", s, floor, ckpt);
                    }
                    // Every consumer not lost can still read everything from its position.
                    // (Seals become durable in the background: read flush_lsn once.)
                    let flushed = wal.flush_lsn().0;
                    for c in consumers.iter().filter(|c| !c.lost) {
                        let want: Vec<u64> = recs.iter().map(|r| r.0)
                            .filter(|&l| l >= c.position.0 && l < flushed).collect();
                        let got: Vec<u64> = readable_from(&root, c.position.0).into_iter()
                            .filter(|&l| l < flushed).collect();
                        prop_assert_eq!(got, want, "consumer {}", c.id);
                    }
                }
            }
        }
        // The writer reopens after any sequence and continues where the log ended.
        let end = wal.write_lsn();
        wal.sync().unwrap();
        drop(wal);
        let wal = Wal::open(&root, WalOptions::default()).unwrap();
        prop_assert_eq!(wal.write_lsn(), end);
        let a = wal.append(&Entry::new(EntryType::Insert, None, b"after")).unwrap();
        prop_assert!(a.lsn >= end);
    }
}

fn filled(root: &Path, segments: u64) -> Wal {
    DataDir::init(root, SEG).unwrap();
    let wal = Wal::open(root, WalOptions::default()).unwrap();
    let payload = vec![1u8; 1000];
    while wal.write_lsn().0 < segments * SEG {
        wal.append(&Entry::new(EntryType::Update, None, &payload))
            .unwrap();
    }
    wal.seal().unwrap();
    wal
}

#[test]
fn the_cap_marks_a_consumer_lost_and_frees_the_space() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("d");
    let wal = filled(&root, 10);
    let dir = DataDir::new(&root);
    let reg = ConsumerRegistry::new(&dir);
    let end = wal.flush_lsn().0;
    reg.save(&consumer("standby-slow", ConsumerKind::Standby, SEG + 10))
        .unwrap();
    reg.save(&consumer("standby-fast", ConsumerKind::Standby, end))
        .unwrap();
    // Without a cap the slow standby holds everything from its position.
    let r = checkpoint(&dir, Lsn(end), &RetentionOptions::default()).unwrap();
    assert_eq!(r.removed, vec!["000000010000000000000000.wal".to_string()]);
    assert_eq!(r.held_by, vec!["standby-slow".to_string()]);
    let held = report(&dir).unwrap();
    let slow = held
        .consumers
        .iter()
        .find(|c| c.id == "standby-slow")
        .unwrap();
    assert!(slow.holds_retention && !slow.lost);
    assert!(slow.needs_bytes > 8 * (SEG - 100));

    // The cap through the command line: the slow one is marked lost, logged, and released.
    let out = walship(&["checkpoint", p(&root), "--max-retained", "128KiB", "--json"]);
    assert!(out.status.success(), "{}", text(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["marked_lost"], serde_json::json!(["standby-slow"]));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("ERROR"),
        "{}",
        text(&out)
    );
    assert_eq!(v["retained_segments"], 1, "{v}");
    assert_eq!(sealed(&root).len(), 1);
    assert!(reg.get("standby-slow").unwrap().unwrap().lost);
    let rep = report(&dir).unwrap();
    assert_eq!(rep.held_by, vec!["newest_segment".to_string()]);
    let slow = rep
        .consumers
        .iter()
        .find(|c| c.id == "standby-slow")
        .unwrap();
    assert!(slow.lost && !slow.holds_retention && slow.needs_bytes == 0);
    // The fast standby can still read everything it has not taken (nothing), and the writer
    // continues.
    let a = wal
        .append(&Entry::new(EntryType::Insert, None, b"more"))
        .unwrap();
    assert!(a.lsn.0 >= end);
}

#[test]
fn a_lost_archiver_refuses_to_run_until_dropped() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("d");
    let wal = filled(&root, 2);
    let old_arc = t.path().join("old-arc");
    let out = archive_once(&root, &old_arc, &[]);
    assert!(out.status.success(), "{}", text(&out));
    let payload = vec![2u8; 1000];
    while wal.write_lsn().0 < 5 * SEG {
        wal.append(&Entry::new(EntryType::Update, None, &payload))
            .unwrap();
    }
    wal.seal().unwrap();
    let end = wal.flush_lsn().0;
    drop(wal);
    let dir = DataDir::new(&root);
    let reg = ConsumerRegistry::new(&dir);
    let mut a = reg.get("archiver").unwrap().unwrap();
    a.lost = true;
    reg.save(&a).unwrap();
    // Its own archive is refused until it is dropped...
    let out = archive_once(&root, &old_arc, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("--drop-consumer archiver"),
        "{}",
        text(&out)
    );
    // ...while another archive registers on its own and starts at the oldest segment there.
    let arc = t.path().join("arc");
    let out = archive_once(&root, &arc, &[]);
    assert!(out.status.success(), "{}", text(&out));
    let out = walship(&[
        "checkpoint",
        p(&root),
        "--drop-consumer",
        "archiver",
        "--lsn",
        &end.to_string(),
    ]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(reg.get("archiver").unwrap().is_none());
    assert_eq!(sealed(&root).len(), 1);
    // The old archive would get a hole: refused, unchanged.
    let before = names(&old_arc);
    let out = archive_once(&root, &old_arc, &[]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert!(
        text(&out).contains("removed from the data directory before they were archived"),
        "{}",
        text(&out)
    );
    let after = names(&old_arc);
    assert_eq!(before, after);
    reg.remove("archiver").unwrap();
    // A fresh archive starts at the oldest segment still there.
    let out = archive_once(&root, &t.path().join("arc2"), &[]);
    assert!(out.status.success(), "{}", text(&out));
    let out = walship(&["checkpoint", p(&root), "--drop-consumer", "nobody"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
}

#[test]
fn an_archiver_behind_holds_its_segments_and_releases_them_once_it_pushed() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("d");
    let wal = filled(&root, 5);
    let end = wal.flush_lsn().0;
    let arc = t.path().join("arc");
    // Registered but nothing archived yet: checkpoint removes nothing.
    let dir = DataDir::new(&root);
    ConsumerRegistry::new(&dir)
        .save(&consumer("archiver", ConsumerKind::Archiver, 0))
        .unwrap();
    let r = wal
        .checkpoint(Lsn(end), &RetentionOptions::default())
        .unwrap();
    assert!(r.removed.is_empty());
    assert_eq!(r.held_by, vec!["archiver".to_string()]);
    let n = sealed(&root).len();
    let out = archive_once(&root, &arc, &[]);
    assert!(out.status.success(), "{}", text(&out));
    // The archiver's position is now the end: all but the newest go.
    let r = wal
        .checkpoint(Lsn(end), &RetentionOptions::default())
        .unwrap();
    assert_eq!(r.removed.len(), n - 1);
    // The archive still restores everything.
    let dest = t.path().join("restored");
    let out = walship(&["restore", arc.to_str().unwrap(), dest.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(
        readable_from(&dest, 0).len() as u64,
        wal.stats().records_appended
    );
}

/// The retention state file's checkpoint, if any.
fn stored_checkpoint(root: &Path) -> Option<u64> {
    let b = std::fs::read(root.join("state").join("retention.json")).ok()?;
    let v: serde_json::Value = serde_json::from_slice(&b).unwrap();
    v["checkpoint_lsn"].as_u64()
}

#[test]
fn a_checkpoint_past_the_end_of_the_wal_is_refused_and_changes_nothing() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("d");
    let wal = filled(&root, 3);
    // Records in the open segment too, some of them not synced.
    for i in 0..5u8 {
        wal.append(&Entry::new(EntryType::Insert, None, &[i; 100]))
            .unwrap();
    }
    let flushed = wal.sync().unwrap();
    let tail = wal
        .append(&Entry::new(EntryType::Insert, None, b"not yet durable"))
        .unwrap();
    let before = sealed(&root);
    // Through the library: past flush_lsn (by one byte, by a segment, at the very top).
    let durable = wal.flush_lsn();
    for lsn in [durable.0 + 1, tail.end_lsn.0, durable.0 + SEG, u64::MAX] {
        if lsn <= wal.flush_lsn().0 {
            continue; // the background sync got there first
        }
        let err = wal
            .checkpoint(Lsn(lsn), &RetentionOptions::default())
            .expect_err("past flush_lsn");
        let msg = err.to_string();
        assert!(msg.contains(&Lsn(lsn).to_string()), "{msg}");
        assert!(msg.contains("flush_lsn"), "{msg}");
        assert!(matches!(err, walship::Error::InvalidArgument(_)), "{err:?}");
    }
    assert_eq!(sealed(&root), before);
    assert_eq!(stored_checkpoint(&root), None);
    // At the durable end it is taken, and it is the highest one can go.
    let r = wal
        .checkpoint(flushed, &RetentionOptions::default())
        .unwrap();
    assert_eq!(r.checkpoint_lsn, flushed);
    let end = wal.sync().unwrap();
    drop(wal);

    // Through the command line, without a writer: the end is the last record on disk.
    let ckpt_before = stored_checkpoint(&root);
    let segs_before = sealed(&root);
    for lsn in [
        format!("{}", end.0 + 8),
        Lsn(end.0 + SEG).to_string(),
        "FFFFFFFF/FFFFFFFF".to_string(),
    ] {
        let out = walship(&["checkpoint", p(&root), "--lsn", &lsn]);
        assert_eq!(out.status.code(), Some(2), "{lsn}: {}", text(&out));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.contains("past the end of the WAL") && err.contains(&end.to_string()),
            "{lsn}: {err}"
        );
        assert_eq!(err.lines().count(), 1, "{err}");
        assert_eq!(stored_checkpoint(&root), ckpt_before);
        assert_eq!(sealed(&root), segs_before);
    }
    // A refused checkpoint drops no consumer either.
    let dir = DataDir::new(&root);
    let reg = ConsumerRegistry::new(&dir);
    reg.save(&consumer("standby-a", ConsumerKind::Standby, 0))
        .unwrap();
    let out = walship(&[
        "checkpoint",
        p(&root),
        "--drop-consumer",
        "standby-a",
        "--lsn",
        "FFFFFFFF/FFFFFFFF",
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    assert!(reg.get("standby-a").unwrap().is_some());
    // Exactly at the end it is taken; a later write lets it go further.
    let out = walship(&["checkpoint", p(&root), "--lsn", &end.to_string(), "--json"]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(stored_checkpoint(&root), Some(end.0));
    let out = walship(&["checkpoint", p(&root), "--lsn", &(end.0 + 48).to_string()]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let wal = Wal::open(&root, WalOptions::default()).unwrap();
    let a = wal
        .append_durable(&Entry::new(EntryType::Insert, None, b"x"))
        .unwrap();
    drop(wal);
    let out = walship(&["checkpoint", p(&root), "--lsn", &a.end_lsn.to_string()]);
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(stored_checkpoint(&root), Some(a.end_lsn.0));
}

#[test]
fn a_checkpoint_at_a_seal_is_within_the_wal() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("d");
    let wal = filled(&root, 2);
    let end = wal.flush_lsn();
    drop(wal);
    // Only sealed segments and an empty open one (or none): the end is the newest seal's LSN.
    let newest = *sealed(&root).last().unwrap();
    assert!(end.0 >= newest.1, "{end} {newest:?}");
    let out = walship(&["checkpoint", p(&root), "--lsn", &newest.1.to_string()]);
    assert!(out.status.success(), "{}", text(&out));
    let out = walship(&["checkpoint", p(&root), "--lsn", &(newest.1 + 1).to_string()]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
}

/// Writes 6 sealed segments and the open one through the library: (records, end LSN of
/// segment 0, end LSN of segment 3).
fn six_sealed_segments(dir: &Path) -> (usize, u64, u64) {
    let wal = Wal::open(dir, WalOptions::default()).unwrap();
    let mut n = 0;
    while wal.stats().segments_sealed < 6 {
        wal.append(&Entry::new(EntryType::Insert, Some(n), &[b'r'; 100]))
            .unwrap();
        n += 1;
    }
    wal.sync().unwrap();
    drop(wal);
    let seals = sealed(dir);
    (n as usize, seals[0].1 + 64, seals[3].1 + 64)
}

/// Runs `walship ARGS` (a `dump`), lets it block on its full stdout pipe while it holds the
/// first segment in memory, runs `change`, then reads what it printed: (exit code, stdout,
/// stderr).
fn dump_blocked_while(dir: &Path, args: &[&str], change: impl FnOnce()) -> (i32, String, String) {
    use std::io::Read;
    let log = dir.parent().unwrap().join("dump.log");
    let mut dump = common::spawn(args, &log);
    std::thread::sleep(std::time::Duration::from_millis(500));
    change();
    let mut out = String::new();
    dump.child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    (dump.wait_exit(), out, dump.log())
}

/// A `dump` (another process) still reading when `checkpoint` releases the segments ahead of
/// it, removed or kept for reuse, is told that retention released them (exit 2), not that the
/// log is damaged; what it printed is the log's prefix. A segment missing where retention
/// cannot have released it (older ones kept, or past the checkpoint) stays damage (exit 1).
#[test]
fn a_reader_overtaken_by_retention_is_told_so_and_a_hole_is_still_damage() {
    for (max_recycled, follow) in [("0", false), ("4", false), ("4", true), ("0", true)] {
        let (_tmp, dir) = common::new_dir();
        let (_, seg0_end, seg3_end) = six_sealed_segments(&dir);
        let mut args = vec!["dump", p(&dir), "--json"];
        if follow {
            args.push("--follow");
        }
        let (code, out, err) = dump_blocked_while(&dir, &args, || {
            let cp = walship(&[
                "checkpoint",
                p(&dir),
                "--lsn",
                &seg3_end.to_string(),
                "--max-recycled",
                max_recycled,
            ]);
            assert!(cp.status.success(), "{}", text(&cp));
        });
        assert_eq!(code, 2, "recycled {max_recycled}, follow {follow}: {err}");
        assert!(
            err.contains(
                "000000010000000000000001.wal: released by retention while it was being read"
            ) && err.contains(&format!("the checkpoint, {}", Lsn(seg3_end)))
                && err.contains("the oldest segment it holds now is 000000010000000000000004.wal"),
            "{err}"
        );
        assert!(!err.contains("missing"), "{err}");
        let lsns: Vec<u64> = out
            .lines()
            .map(|l| {
                serde_json::from_str::<serde_json::Value>(l).unwrap()["lsn"]
                    .as_u64()
                    .unwrap()
            })
            .collect();
        assert!(
            !lsns.is_empty() && lsns[0] == 80 && *lsns.last().unwrap() < seg0_end,
            "{lsns:?}"
        );
        assert!(
            lsns.windows(2).all(|w| w[1] - w[0] == lsns[1] - lsns[0]),
            "not a prefix: {lsns:?}"
        );
    }

    // Holes retention did not make stay damage: one below the checkpoint with older segments
    // kept (a consumer holds them), and the same shape as above with no checkpoint past them.
    let (_tmp, dir) = common::new_dir();
    let (_, _, seg3_end) = six_sealed_segments(&dir);
    let seg = |no: u64| common::seg_path(&dir, no, walship::format::SegmentFileKind::Sealed);
    let dd = DataDir::new(&dir);
    ConsumerRegistry::new(&dd)
        .save(&consumer("holder", ConsumerKind::Standby, 0))
        .unwrap();
    let opts = RetentionOptions {
        max_retained: None,
        max_recycled: 0,
    };
    checkpoint(&dd, Lsn(seg3_end), &opts).unwrap();
    std::fs::remove_file(seg(2)).unwrap();
    let out = walship(&["dump", p(&dir)]);
    assert_eq!(common::code(&out), 1, "{}", text(&out));
    assert!(
        text(&out).contains("segment number 2 is missing"),
        "{}",
        text(&out)
    );

    let (_tmp, dir) = common::new_dir();
    six_sealed_segments(&dir);
    let seg = |no: u64| common::seg_path(&dir, no, walship::format::SegmentFileKind::Sealed);
    let (code, _, err) = dump_blocked_while(&dir, &["dump", p(&dir)], || {
        for no in [0, 1] {
            std::fs::remove_file(seg(no)).unwrap();
        }
    });
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("segment number 1 is missing"), "{err}");
}

/// Checkpoints run at once (separate processes, each its own LSN) leave the remembered
/// checkpoint at the highest of them: it never moves back below what was removed.
#[test]
fn a_writer_starting_while_checkpoints_release_segments_starts() {
    // Recovery lists wal/ and then reads each file; a checkpoint in another process (it takes
    // no lock) releases old segments in between, removed or recycled.
    for max_recycled in ["0", "2"] {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("d");
        let wal = filled(&root, 120);
        let end = wal.write_lsn().0;
        drop(wal);
        let stop = std::sync::atomic::AtomicBool::new(false);
        let failures: Vec<String> = std::thread::scope(|sc| {
            let checkpoints = sc.spawn(|| {
                for i in 1..=120u64 {
                    if stop.load(std::sync::atomic::Ordering::Relaxed) {
                        break;
                    }
                    let lsn = (end * i / 120).to_string();
                    let out = walship(&[
                        "checkpoint",
                        p(&root),
                        "--lsn",
                        &lsn,
                        "--max-recycled",
                        max_recycled,
                    ]);
                    assert!(out.status.success(), "{}", text(&out));
                }
            });
            let mut failures = Vec::new();
            for i in 0..40 {
                let out =
                    common::run_with(&["write", p(&root)], format!("x{i}\n").as_bytes(), |_| {});
                if !out.status.success() {
                    failures.push(text(&out));
                }
            }
            stop.store(true, std::sync::atomic::Ordering::Relaxed);
            checkpoints.join().unwrap();
            failures
        });
        assert!(
            failures.is_empty(),
            "max-recycled {max_recycled}: {failures:#?}"
        );
        let v = walship(&["verify", p(&root)]);
        assert!(v.status.success(), "{}", text(&v));
    }
}

#[test]
fn checkpoints_racing_leave_the_highest_and_never_move_back() {
    for round in 0..6 {
        let (_tmp, dir) = common::new_dir();
        six_sealed_segments(&dir);
        let seals = sealed(&dir);
        // Highest first: a lower one that read the remembered checkpoint before the highest
        // wrote it would write last.
        let lsns: Vec<String> = (1..=12u64)
            .rev()
            .map(|k| (seals[4].1 + 64) * k / 12)
            .map(|l| l.to_string())
            .collect();
        let children: Vec<_> = lsns
            .iter()
            .map(|l| {
                std::process::Command::new(common::bin())
                    .args(["checkpoint", p(&dir), "--lsn", l, "--max-recycled", "0"])
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::null())
                    .spawn()
                    .unwrap()
            })
            .collect();
        for mut c in children {
            assert!(c.wait().unwrap().success(), "round {round}");
        }
        let highest = seals[4].1 + 64;
        let stored: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join("state/retention.json")).unwrap())
                .unwrap();
        assert_eq!(
            stored["checkpoint_lsn"].as_u64(),
            Some(highest),
            "round {round}"
        );
    }
}

/// `dump --start` before the oldest segment a directory still holds is refused (exit 2), saying
/// where its records begin and that retention released the ones before, instead of starting
/// later without a word; from that point on it prints.
#[test]
fn dump_from_a_position_retention_released_says_so() {
    let (_tmp, dir) = common::new_dir();
    let (_, _, seg3_end) = six_sealed_segments(&dir);
    let opts = RetentionOptions {
        max_retained: None,
        max_recycled: 0,
    };
    checkpoint(&DataDir::new(&dir), Lsn(seg3_end), &opts).unwrap();
    let begins = Lsn(4 * SEG);
    for follow in [false, true] {
        let mut args = vec!["dump", p(&dir), "--start", "0/00000050"];
        if follow {
            args.push("--follow");
        }
        let out = walship(&args);
        assert_eq!(out.status.code(), Some(2), "{}", text(&out));
        assert!(
            text(&out).contains(&format!(
                "the log here begins with segment 000000010000000000000004.wal, at {begins}, and retention released"
            )),
            "{}",
            text(&out)
        );
        assert!(out.stdout.is_empty());
    }
    let out = walship(&[
        "dump",
        p(&dir),
        "--start",
        &begins.to_string(),
        "--limit",
        "1",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        text(&out).contains(&format!("lsn: {}", Lsn(begins.0 + 80))),
        "{}",
        text(&out)
    );
}
