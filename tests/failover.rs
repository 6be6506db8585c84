//! The failover drill, with real processes on loopback: a primary (`serve --sync 'FIRST 1
//! (a)'`, a writer acknowledging each record with `write --durable --wait-sync`, an archiver),
//! standbys `a` and `b` (each through the test proxy, so that the test can cut them off), then
//! the primary side SIGKILLed after it wrote records the standbys never received. Standby `a`
//! is promoted, serves, and `b` follows it onto timeline 2; every acknowledged record is on
//! `a`'s timeline and on `b`; `a`'s archiver continues the archive, and a restore from it
//! along the newest timeline equals `a`. The old primary, which diverged, is refused by `a`, naming the
//! switch point, and nothing in it changes; `walship rewind` sets its diverged records aside,
//! and it follows `a`. A second promotion of timeline 2 (a copy of `b` made before it followed
//! `a`) is refused by `a`'s standby, and nothing of it is stored there.
//!
//! A planned switchover loses nothing, and its old primary follows the new one at once.
//!
//! Every wait polls with a deadline; no sleep is an assertion. The drill prints how long the
//! promotion took, how long until the new primary accepted a durable write, and how long until
//! the other standby followed it (figures, not assertions).

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

mod common;
use common::proxy::{Proxy, ProxyMode};
use common::{
    init, ok, p, read_all, serve, spawn, spawn_piped, status, text, wait_until, Proc, NET,
};
use walship::format::history::HistoryFile;
use walship::format::SegmentFileKind;
use walship::{DataDir, Lsn};

/// A long-running `walship write DIR --durable [--wait-sync]`, fed lines `TAG-NNNNNN` one by
/// one; the LSN it prints for each line is collected once printed (acknowledged), in order, so
/// the k-th LSN is line k's.
struct Writer {
    proc: Proc,
    stop: Arc<AtomicBool>,
    acked: Arc<Mutex<Vec<u64>>>,
    threads: Vec<JoinHandle<()>>,
    tag: String,
}

impl Writer {
    /// Feeds `limit` lines (without end when `None`), then keeps its input open until killed.
    fn start(dir: &Path, tag: &str, wait_sync: bool, limit: Option<usize>, log: &Path) -> Writer {
        let mut args = vec!["write", p(dir), "--durable"];
        if wait_sync {
            args.push("--wait-sync");
        }
        let mut proc = spawn_piped(&args, &[], log);
        let mut stdin = proc.child.stdin.take().expect("stdin");
        let stdout = proc.child.stdout.take().expect("stdout");
        let stop = Arc::new(AtomicBool::new(false));
        let acked: Arc<Mutex<Vec<u64>>> = Arc::default();
        let (s2, a2, t2) = (stop.clone(), acked.clone(), tag.to_string());
        let feeder = std::thread::spawn(move || {
            let mut i = 0usize;
            while !s2.load(Ordering::Relaxed) {
                if limit.is_some_and(|l| i >= l) {
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                }
                if stdin
                    .write_all(format!("{t2}-{i:06}\n").as_bytes())
                    .and_then(|_| stdin.flush())
                    .is_err()
                {
                    return;
                }
                i += 1;
                std::thread::sleep(Duration::from_micros(200));
            }
        });
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { return };
                let lsn: Lsn = line.trim().parse().expect("an LSN per line");
                a2.lock().expect("acked").push(lsn.0);
            }
        });
        Writer {
            proc,
            stop,
            acked,
            threads: vec![feeder, reader],
            tag: tag.to_string(),
        }
    }

    fn count(&self) -> usize {
        self.acked.lock().expect("acked").len()
    }

    /// SIGKILL; returns every acknowledged record as (LSN, payload).
    fn kill(mut self) -> Vec<(u64, String)> {
        self.proc.kill();
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            t.join().expect("writer thread");
        }
        let acked = self.acked.lock().expect("acked").clone();
        acked
            .into_iter()
            .enumerate()
            .map(|(k, lsn)| (lsn, format!("{}-{k:06}", self.tag)))
            .collect()
    }
}

/// Where the records a directory holds end, and its timeline, from its files alone: sealed
/// segments, an open segment, and a standby's copy of its primary's open segment
/// (`.wal.partial`), each read up to its last valid record.
fn held(dir: &Path) -> (u32, u64) {
    let dd = DataDir::new(dir);
    let control = dd.read_control().expect("control file");
    let names = dd.list_segments().expect("list segments");
    let mut end = walship::sealed_set::newest_sealed_end(&dd, &names, &control)
        .expect("sealed end")
        .0;
    for n in names
        .iter()
        .filter(|n| matches!(n.kind, SegmentFileKind::Open | SegmentFileKind::Partial))
    {
        let Ok(bytes) = walship::reader::read_segment(&dd.segment_path(n)) else {
            continue; // renamed meanwhile (sealed): counted on the next look
        };
        let Ok(mut scan) = walship::decoder::SegmentScanner::new(&bytes) else {
            continue; // no header yet
        };
        for r in scan.by_ref() {
            end = end.max(r.end_lsn().0);
        }
    }
    (control.timeline, end)
}

/// Every record a standby holds as LSN → (payload, timeline of its segment), its copy of the
/// primary's open segment included (read as an open segment from a copy of its directory).
fn records_of_standby(sb: &Path, scratch: &Path) -> std::collections::HashMap<u64, (String, u32)> {
    common::copy_tree(sb, scratch);
    for e in std::fs::read_dir(scratch.join("wal")).expect("wal/") {
        let path = e.expect("entry").path();
        let name = path
            .file_name()
            .expect("name")
            .to_string_lossy()
            .to_string();
        if let Some(stem) = name.strip_suffix(".wal.partial") {
            std::fs::rename(&path, scratch.join("wal").join(format!("{stem}.wal.open")))
                .expect("rename");
        }
    }
    let _ = std::fs::remove_file(scratch.join("state").join("standby.json"));
    by_lsn(scratch)
}

/// Every record of a directory as LSN → (payload, timeline of its segment).
fn by_lsn(dir: &Path) -> std::collections::HashMap<u64, (String, u32)> {
    read_all(dir)
        .unwrap_or_else(|e| panic!("read {}: {e}", dir.display()))
        .into_iter()
        .map(|r| {
            (
                r.lsn.0,
                (
                    String::from_utf8_lossy(&r.payload).into_owned(),
                    r.segment.timeline,
                ),
            )
        })
        .collect()
}

/// The switch point of a directory's timeline 2.
fn switch_point(dir: &Path) -> u64 {
    let b = std::fs::read(dir.join("wal/00000002.history")).expect("history file");
    HistoryFile::decode(&b, "00000002.history")
        .expect("a valid history")
        .last_switch()
        .expect("a switch")
        .lsn
        .0
}

/// A standby's flushed position as its primary's slot last recorded it.
fn slot_flushed(primary: &Path, name: &str) -> u64 {
    status(primary)["standbys"]
        .as_array()
        .and_then(|a| a.iter().find(|s| s["name"] == name))
        .and_then(|s| s["flushed_lsn"].as_u64())
        .unwrap_or(0)
}

/// Every file under `dir/wal` with its bytes: what "nothing changed" compares.
fn segments(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir.join("wal"))
        .expect("wal/")
        .map(|e| e.expect("entry"))
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                std::fs::read(e.path()).expect("read"),
            )
        })
        .collect();
    v.sort();
    v
}

fn assert_all_on(
    what: &str,
    acked: &[(u64, String)],
    recs: &std::collections::HashMap<u64, (String, u32)>,
) {
    for (lsn, payload) in acked {
        match recs.get(lsn) {
            Some((got, _)) => assert_eq!(got, payload, "{what}: record at {}", Lsn(*lsn)),
            None => panic!(
                "{what}: the acknowledged record {payload} at {} is missing ({} records there)",
                Lsn(*lsn),
                recs.len()
            ),
        }
    }
}

/// Starts a standby named `name` on `dir` following `primary`.
fn standby_named(dir: &Path, primary: &str, name: &str, log: &Path) -> Proc {
    common::standby(dir, primary, &["--name", name], log)
}

struct Dirs {
    root: PathBuf,
}

impl Dirs {
    fn d(&self, n: &str) -> PathBuf {
        self.root.join(n)
    }
    fn log(&self, n: &str) -> PathBuf {
        self.root.join(format!("{n}.log"))
    }
}

#[test]
fn failover_drill_promote_a_standby_the_other_follows_the_old_primary_and_a_second_promotion_are_refused(
) {
    let t = tempfile::tempdir().expect("tempdir");
    let x = Dirs {
        root: t.path().to_path_buf(),
    };
    let (old, a, b, arch) = (x.d("primary"), x.d("a"), x.d("b"), x.d("archive"));
    init(&old);

    // The primary side: serve with a synchronous policy that waits for `a`, an archiver.
    let mut sync = vec!["--sync", "FIRST 1 (a)"];
    sync.extend_from_slice(&NET);
    let (mut serve_old, addr_old) = serve(&old, "127.0.0.1:0", &sync, &x.log("serve-old"));
    let (pa, pb) = (
        Proxy::to(&addr_old, ProxyMode::default()),
        Proxy::to(&addr_old, ProxyMode::default()),
    );
    let mut sa = standby_named(&a, &pa.addr, "a", &x.log("a"));
    let mut sb = standby_named(&b, &pb.addr, "b", &x.log("b"));
    let mut archiver = spawn(
        &["archive", p(&old), "--to", p(&arch), "--rescan-secs", "1"],
        &x.log("archive-old"),
    );

    // Records acknowledged once durable here and on `a`: a few segments' worth.
    let w = Writer::start(&old, "acked", true, None, &x.log("writer"));
    wait_until("2500 acknowledged records", || w.count() >= 2500);

    // `b` is cut off first; `a` then gets past everything `b` can have (the primary's durable
    // position now bounds what was shipped to `b`), and more is acknowledged. Whether `b`'s
    // copy of the open segment is of the segment where timeline 2 will begin depends on the
    // moment: either way it follows.
    pb.paused.store(true, Ordering::SeqCst);
    let b_bound = status(&old)["flush_lsn"].as_u64().expect("flush_lsn");
    wait_until("a past what b can hold", || {
        slot_flushed(&old, "a") > b_bound
    });
    let n = w.count();
    wait_until("more records acknowledged", || w.count() >= n + 200);

    // `a` is cut off too: what the primary writes from now on reaches no standby.
    pa.paused.store(true, Ordering::SeqCst);
    let acked = w.kill();
    // What `a` can hold is bounded by the primary's durable position now. The old primary
    // writes on, durably but unacknowledged by any standby, until it sealed a segment past
    // that bound: past any switch point `a` can make.
    let a_bound = status(&old)["flush_lsn"].as_u64().expect("flush_lsn");
    let d = Writer::start(&old, "diverged", false, None, &x.log("writer-diverged"));
    wait_until("the old primary to seal past what a can hold", || {
        d.count() > 0 && status(&old)["sealed_lsn"].as_u64() > Some(a_bound)
    });
    // SIGKILL the primary side: the writer and serve (and the primary's archiver with it).
    let _ = d.kill();
    serve_old.kill();
    archiver.kill();
    // Nothing held back by the paused proxies reaches a standby: their connections are cut.
    pa.cut();
    pb.cut();
    let old_end = status(&old)["flush_lsn"].as_u64().expect("flush_lsn");
    let old_sealed_end = status(&old)["sealed_lsn"].as_u64().expect("sealed_lsn");

    // `b` stops following the lost primary; a copy of it as it is now is kept for the
    // split-brain case below.
    sb.kill();
    let b_copy = x.d("b-copy");
    common::copy_tree(&b, &b_copy);

    // Promote `a` while its standby still runs (cut off from the lost primary): `walship
    // promote` asks it to finish, and it exits 0.
    let t0 = Instant::now();
    let out = ok(&["promote", p(&a)]);
    let promoted = t0.elapsed();
    assert!(out.contains("timeline 2 begins at"), "{out}");
    assert_eq!(sa.wait_exit(), 0, "{}", sa.log());
    let first = common::run(&["write", p(&a), "--durable"], b"first on timeline 2\n");
    assert!(first.status.success(), "{}", text(&first));
    let accepted = t0.elapsed();
    let first_lsn: Lsn = common::stdout(&first).trim().parse().expect("an LSN");

    let switch = switch_point(&a);
    assert!(
        acked.iter().all(|(lsn, _)| *lsn < switch),
        "every acknowledged record lies before the switch point {}",
        Lsn(switch)
    );
    assert!(
        old_end > switch,
        "the old primary wrote past the switch point {} (to {}): it diverged",
        Lsn(switch),
        Lsn(old_end)
    );
    let (_, b_end) = held(&b);
    assert!(
        b_end < switch,
        "b ({}) is behind a's switch point {}",
        Lsn(b_end),
        Lsn(switch)
    );

    // `a` serves; `b` follows it onto timeline 2.
    let mut sync_a = vec!["--sync", "FIRST 1 (b)"];
    sync_a.extend_from_slice(&NET);
    let t1 = Instant::now();
    let (_serve_a, addr_a) = serve(&a, "127.0.0.1:0", &sync_a, &x.log("serve-a"));
    let mut sb = standby_named(&b, &addr_a, "b", &x.log("b-follows-a"));
    let want = first_lsn.0 + 1;
    wait_until("b to follow a onto timeline 2", || {
        let (tl, end) = held(&b);
        tl == 2 && end >= want
    });
    let followed = t1.elapsed();
    eprintln!(
        "failover: promote {} ms; promote start to a durable write on the new primary {} ms; then serve started and the other standby holding that write on timeline 2 {} ms",
        promoted.as_millis(),
        accepted.as_millis(),
        followed.as_millis()
    );

    // More acknowledged records, now confirmed by `b`.
    let after = write_acknowledged(&a, "after", 1500);
    assert_eq!(after.len(), 1500);
    common::seal(&a);
    common::wait_caught_up(&a, &b);

    // Every acknowledged record is on a's timeline and on b, with its payload; those written
    // since the promotion are in segments of timeline 2; the common past is the old primary's.
    let on_a = by_lsn(&a);
    assert_all_on("a", &acked, &on_a);
    assert_all_on("a", &after, &on_a);
    assert!(after.iter().all(|(lsn, _)| on_a[lsn].1 == 2));
    let on_b = records_of_standby(&b, &x.d("b-read"));
    assert_all_on("b", &acked, &on_b);
    assert_all_on("b", &after, &on_b);
    let on_old = by_lsn(&old);
    for (lsn, r) in on_a.iter().filter(|(lsn, _)| **lsn < switch) {
        assert_eq!(
            on_old.get(lsn).map(|o| &o.0),
            Some(&r.0),
            "at {}",
            Lsn(*lsn)
        );
    }
    assert!(
        on_old.values().any(|(p, _)| p.starts_with("diverged-")),
        "the old primary holds the records no standby received"
    );
    assert_eq!(status(&b)["timeline"].as_u64(), Some(2));
    let v = common::walship(&["verify", p(&b)]);
    assert!(v.status.success(), "{}", text(&v));

    // `a`'s archiver continues the lost primary's archive on timeline 2 (whatever the lost
    // primary's archiver pushed before the kill included); a restore along the newest
    // timeline equals `a`, record for record and timeline for timeline.
    let out = common::walship(&["archive", p(&a), "--to", p(&arch), "--once"]);
    assert!(out.status.success(), "{}", text(&out));
    let restored = x.d("restored");
    let out = common::walship(&["restore", p(&arch), p(&restored), "--timeline", "latest"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        by_lsn(&restored) == on_a,
        "the restore along the newest timeline equals a"
    );
    assert_eq!(status(&restored)["timeline"].as_u64(), Some(2));

    // The old primary comes back: it diverged (its sealed segments go past the switch point),
    // so `a` refuses it in the handshake, naming the switch point, and nothing in it changes.
    // (The drill makes it diverge by more than a segment: a divergence that lies only inside
    // its open segment is noticed later, by the standby comparing that segment with the new
    // primary's copy, after it already wrote the new timeline into the control file and the
    // history file beside the segments.)
    assert!(
        old_sealed_end > switch,
        "the old primary sealed past the switch point"
    );
    let before = segments(&old);
    let control = std::fs::read(old.join("control")).expect("control");
    let mut back = standby_named(&old, &addr_a, "old", &x.log("old-follows-a"));
    let code = back.wait_exit();
    let said = back.log();
    assert_ne!(code, 0, "{said}");
    assert!(
        said.contains(&format!("past the switch point {}", Lsn(switch)))
            && said.contains("diverged"),
        "{said}"
    );
    assert!(
        segments(&old) == before,
        "the old primary's segments changed"
    );
    assert!(
        std::fs::read(old.join("control")).expect("control") == control,
        "the old primary's control file changed"
    );
    assert!(!old.join("wal/00000002.history").exists());

    // `rewind` sets its records past the switch point aside and cuts it back to the switch
    // point; then it follows `a` onto timeline 2 and holds everything `a` has.
    let rewound = ok(&["rewind", p(&old), "--source", &addr_a]);
    assert!(
        rewound.contains(&format!("timeline 1 was left at {}", Lsn(switch))),
        "{rewound}"
    );
    assert!(
        std::fs::read_dir(old.join("setaside"))
            .expect("setaside/")
            .any(|e| e
                .expect("entry")
                .file_name()
                .to_string_lossy()
                .contains(".diverged-")),
        "the diverged records are kept in setaside/"
    );
    let mut back = standby_named(&old, &addr_a, "old", &x.log("old-follows-a-rewound"));
    let more = common::run(&["write", p(&a), "--durable"], b"after the rewind\n");
    assert!(more.status.success(), "{}", text(&more));
    common::seal(&a);
    common::wait_caught_up(&a, &old);
    assert_eq!(status(&old)["timeline"].as_u64(), Some(2));
    let on_old = records_of_standby(&old, &x.d("old-read"));
    assert_all_on("the rewound old primary", &acked, &on_old);
    assert_all_on("the rewound old primary", &after, &on_old);
    assert!(
        !on_old.values().any(|(p, _)| p.starts_with("diverged-")),
        "no diverged record is read as the log any more"
    );
    back.kill();

    // Split brain: the copy of `b` taken before it followed `a` is promoted too: a second
    // timeline 2, from another switch point. It takes writes and serves; `b`, on a's
    // timeline 2, refuses it and stores nothing of it.
    let out = ok(&["promote", p(&b_copy)]);
    assert!(out.contains("timeline 2 begins at"), "{out}");
    assert_ne!(switch_point(&b_copy), switch);
    common::write_records(&b_copy, 1200, "split");
    let (_serve_c, addr_c) = serve(&b_copy, "127.0.0.1:0", &NET, &x.log("serve-copy"));
    sb.kill();
    let before = segments(&b);
    let mut wrong = standby_named(&b, &addr_c, "b", &x.log("b-to-copy"));
    let code = wrong.wait_exit();
    assert_ne!(code, 0, "{}", wrong.log());
    assert!(wrong.log().contains("split brain"), "{}", wrong.log());
    assert!(
        segments(&b) == before,
        "b stored something of the second timeline 2"
    );
}

/// A planned switchover with no data loss: writes stop, the last segment is sealed, the
/// standby holds everything, the primary's `serve` stops, the standby is promoted and serves,
/// and the old primary follows it as a standby at once (it holds nothing past the switch
/// point); writes go on on the new primary and reach the old one.
#[test]
fn a_planned_switchover_loses_nothing_and_the_old_primary_follows_without_a_rewind() {
    let t = tempfile::tempdir().expect("tempdir");
    let x = Dirs {
        root: t.path().to_path_buf(),
    };
    let (old, new) = (x.d("primary"), x.d("standby"));
    init(&old);
    let mut sync = vec!["--sync", "FIRST 1 (s)"];
    sync.extend_from_slice(&NET);
    let (mut serve_old, addr_old) = serve(&old, "127.0.0.1:0", &sync, &x.log("serve-old"));
    let mut s = standby_named(&new, &addr_old, "s", &x.log("standby"));
    let w = Writer::start(&old, "before", true, None, &x.log("writer"));
    wait_until("2000 acknowledged records", || w.count() >= 2000);

    // 1. Stop writing; seal; wait until the standby holds the old primary's end.
    let acked = w.kill();
    common::seal(&old);
    let end = status(&old)["flush_lsn"].as_u64().expect("flush_lsn");
    wait_until("the standby to hold the primary's end", || {
        held(&new).1 >= end
    });
    // 2. Stop the primary's serve, then the standby; promote it; it serves.
    serve_old.kill();
    s.kill();
    let out = ok(&["promote", p(&new)]);
    // The standby holds nothing past the old primary's last sealed segment: timeline 2 begins
    // with the next segment, at its first position.
    let size = 64 * 1024;
    assert!(
        out.contains(&format!(
            "timeline 2 begins at {}",
            Lsn((end / size + 1) * size)
        )),
        "{out}"
    );
    let mut sync_new = vec!["--sync", "FIRST 1 (old)"];
    sync_new.extend_from_slice(&NET);
    let (_serve_new, addr_new) = serve(&new, "127.0.0.1:0", &sync_new, &x.log("serve-new"));
    // 3. The old primary follows the new one, with no rewind.
    let _back = standby_named(&old, &addr_new, "old", &x.log("old-follows"));
    let after = write_acknowledged(&new, "after", 1500);
    common::seal(&new);
    common::wait_caught_up(&new, &old);
    assert_eq!(status(&old)["role"], "standby");
    assert_eq!(status(&old)["timeline"].as_u64(), Some(2));
    let on_new = by_lsn(&new);
    assert_all_on("the new primary", &acked, &on_new);
    assert_all_on("the new primary", &after, &on_new);
    let on_old = records_of_standby(&old, &x.d("old-read"));
    assert_all_on("the old primary", &acked, &on_old);
    assert_all_on("the old primary", &after, &on_old);
    assert_eq!(on_old.len(), on_new.len());
}

/// Writes `n` records `PREFIX-NNNNNN` into `dir` with `write --durable --wait-sync`, each
/// acknowledged, and returns each one's LSN with its text.
fn write_acknowledged(dir: &Path, prefix: &str, n: usize) -> Vec<(u64, String)> {
    let lines: String = (0..n).map(|i| format!("{prefix}-{i:06}\n")).collect();
    let out = common::run(
        &["write", p(dir), "--durable", "--wait-sync"],
        lines.as_bytes(),
    );
    assert!(out.status.success(), "{}", text(&out));
    common::stdout(&out)
        .lines()
        .enumerate()
        .map(|(k, l)| {
            (
                l.trim().parse::<Lsn>().expect("LSN").0,
                format!("{prefix}-{k:06}"),
            )
        })
        .collect()
}
