//! The archive across a failover, through the real binary: a primary archives, its standby is
//! promoted to timeline 2 and archives into the same archive (history file first, then its
//! switch segment and timeline 2's segments); the old primary's segments past the switch point
//! are refused as what they are; a second promotion of the same timeline is refused by the
//! archive before anything is stored.

use std::path::{Path, PathBuf};

mod common;
use common::{copy_tree, p, seal, text, walship, write_records};

/// Every object of a directory archive: name and bytes, in name order.
fn objects(arc: &Path) -> Vec<(String, Vec<u8>)> {
    let mut v: Vec<(String, Vec<u8>)> = std::fs::read_dir(arc)
        .expect("list archive")
        .map(|e| e.expect("entry"))
        .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
        .map(|e| {
            (
                e.file_name().into_string().expect("utf-8"),
                std::fs::read(e.path()).expect("read object"),
            )
        })
        .collect();
    v.sort();
    v
}

fn archive_once(data: &Path, arc: &Path) -> std::process::Output {
    walship(&["archive", p(data), "--to", p(arc), "--once"])
}

fn sealed(dir: &Path) -> Vec<String> {
    common::sealed_files(dir)
}

/// A primary that archived into `arc`, and its standby killed while its copy of the primary's
/// open segment held records (the primary's serve stopped too).
fn primary_and_standby(root: &Path, arc: &Path) -> (PathBuf, PathBuf) {
    let primary = root.join("primary");
    let sb = root.join("standby");
    common::streamed_then_stopped(&primary, &sb, root, "primary");
    let out = archive_once(&primary, arc);
    assert!(out.status.success(), "{}", text(&out));
    (primary, sb)
}

fn promote(dir: &Path) {
    let out = walship(&["promote", p(dir)]);
    assert!(out.status.success(), "{}", text(&out));
}

/// `walship restore ARC DEST ARGS...`, which must succeed; its output.
fn restore(arc: &Path, dest: &Path, args: &[&str]) -> std::process::Output {
    let mut all = vec!["restore", p(arc), p(dest)];
    all.extend_from_slice(args);
    let out = walship(&all);
    assert!(out.status.success(), "{}", text(&out));
    out
}

/// Every record's payload in the directory, in order.
fn payloads(dir: &Path) -> Vec<Vec<u8>> {
    common::read_all(dir)
        .expect("read the records")
        .into_iter()
        .map(|r| r.payload)
        .collect()
}

/// The switch point a timeline-2 history file names.
fn switch_lsn(history: &[u8]) -> walship::Lsn {
    walship::format::history::HistoryFile::decode(history, "00000002.history")
        .expect("history")
        .last_switch()
        .expect("a switch")
        .lsn
}

#[test]
fn a_promoted_standby_archives_its_timeline_into_its_old_primarys_archive() {
    let t = tempfile::tempdir().expect("tempdir");
    let arc = t.path().join("archive");
    let (primary, sb) = primary_and_standby(t.path(), &arc);
    promote(&sb);
    // The old primary goes on writing past the switch point and archives it before anything
    // says there was a switch: the archive takes it (timeline 1 is all it knows).
    write_records(&primary, 1200, "old");
    seal(&primary);
    let out = archive_once(&primary, &arc);
    assert!(out.status.success(), "{}", text(&out));

    // The new primary writes on timeline 2 and archives into the same archive.
    write_records(&sb, 1200, "new");
    seal(&sb);
    let out = archive_once(&sb, &arc);
    assert!(out.status.success(), "{}", text(&out));
    let held = objects(&arc);
    let hist = std::fs::read(sb.join("wal/00000002.history")).expect("history");
    let switch = switch_lsn(&hist);
    assert!(
        held.iter()
            .any(|(n, b)| n == "00000002.history" && *b == hist),
        "the history file, byte for byte: {:?}",
        held.iter().map(|(n, _)| n).collect::<Vec<_>>()
    );
    let new_sealed = sealed(&sb);
    assert!(new_sealed.iter().any(|n| n.starts_with("00000002")));
    for name in &new_sealed {
        let local = std::fs::read(sb.join("wal").join(name)).expect("sealed");
        assert!(
            held.iter().any(|(n, b)| n == name && *b == local),
            "{name} archived byte for byte"
        );
    }
    // The old primary's segments past the switch stay under their own (timeline 1) names.
    for name in sealed(&primary) {
        assert!(held.iter().any(|(n, _)| *n == name), "{name} kept");
    }

    // More from the old primary: a segment of timeline 1 past the switch point is refused as
    // what it is, and the archive is left as it was.
    write_records(&primary, 1200, "older");
    seal(&primary);
    let before = objects(&arc);
    let out = archive_once(&primary, &arc);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let said = text(&out);
    let refused = sealed(&primary)
        .into_iter()
        .find(|n| said.contains(n.as_str()))
        .unwrap_or_else(|| panic!("the refusal names a segment: {said}"));
    assert!(refused.starts_with("00000001"), "{said}");
    assert!(
        said.contains("timeline 1 past its switch point") && said.contains("old primary"),
        "{said}"
    );
    assert_eq!(objects(&arc), before, "the archive changed");

    // The new primary goes on archiving.
    write_records(&sb, 1200, "newer");
    seal(&sb);
    let out = archive_once(&sb, &arc);
    assert!(out.status.success(), "{}", text(&out));
    for name in sealed(&sb) {
        assert!(arc.join(&name).is_file(), "{name}");
    }

    // verify takes the archive along the newest history too.
    let v = walship(&["verify", p(&arc)]);
    assert!(v.status.success(), "{}", text(&v));

    // Restore goes along the newest history: timeline 1 up to the switch segment, then
    // timeline 2 (not the old primary's copy of the switch segment, nor its segments past it).
    let restored = t.path().join("restored");
    restore(&arc, &restored, &[]);
    assert!(
        payloads(&restored) == payloads(&sb),
        "restored equals the new primary"
    );
    assert_eq!(common::status(&restored)["timeline"].as_u64(), Some(2));
    assert_eq!(
        std::fs::read(restored.join("wal/00000002.history")).expect("history"),
        hist
    );
    let v = walship(&["verify", p(&restored)]);
    assert!(v.status.success(), "{}", text(&v));
    // dump reads the archive along the same history: it prints what it prints of the restored
    // directory, the switch included (not the old primary's records past it).
    let of_archive = common::ok(&["dump", p(&arc), "--json"]);
    assert_eq!(of_archive, common::ok(&["dump", p(&restored), "--json"]));
    assert!(
        of_archive.contains("\"event\":\"timeline_switch\""),
        "{of_archive}"
    );
    // `--timeline 2` names that same newest timeline.
    let on2 = t.path().join("on-timeline-2");
    let out = restore(&arc, &on2, &["--timeline", "2"]);
    assert!(
        payloads(&on2) == payloads(&sb),
        "--timeline 2 equals latest"
    );
    assert!(text(&out).contains("on timeline 2"), "{}", text(&out));

    // `--timeline 1`: the old primary's timeline, past the switch point as far as it was
    // archived, and a directory of timeline 1 without the later history.
    let on1 = t.path().join("on-timeline-1");
    let out = restore(&arc, &on1, &["--timeline", "1", "--json"]);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    assert_eq!(report["timeline"].as_u64(), Some(1), "{report}");
    let old = payloads(&primary);
    let got = payloads(&on1);
    let switch_records = common::read_all(&sb)
        .expect("records")
        .into_iter()
        .filter(|r| r.end_lsn <= switch)
        .count();
    assert!(
        got.len() > switch_records && old.starts_with(&got),
        "timeline 1 restored past the switch point: {} records of the old primary's {}, {switch_records} up to the switch",
        got.len(),
        old.len()
    );
    assert!(
        got.iter().any(|r| r.starts_with(b"old-")),
        "records the old primary wrote after the switch"
    );
    assert_eq!(common::status(&on1)["timeline"].as_u64(), Some(1));
    assert!(!on1.join("wal/00000002.history").exists());

    // A timeline the archive does not hold: exit 2, naming what it holds, nothing created.
    for (arg, said) in [
        ("3", "no timeline 3"),
        ("0", "invalid timeline"),
        ("newest", "invalid timeline"),
    ] {
        let dest = t.path().join(format!("on-timeline-{arg}"));
        let before = std::fs::read_dir(t.path()).expect("list").count();
        let out = walship(&["restore", p(&arc), p(&dest), "--timeline", arg]);
        assert_eq!(out.status.code(), Some(2), "{}", text(&out));
        assert!(text(&out).contains(said), "{arg}: {}", text(&out));
        if arg == "3" {
            assert!(text(&out).contains("timelines 1, 2"), "{}", text(&out));
        }
        assert!(!dest.exists(), "{arg}: {} created", dest.display());
        assert_eq!(
            std::fs::read_dir(t.path()).expect("list").count(),
            before,
            "{arg}: nothing created beside it"
        );
    }

    // status tells the archive's newest timeline, its history, and what lies off it.
    let st: serde_json::Value =
        serde_json::from_str(&common::ok(&["status", p(&arc), "--json"])).expect("json");
    assert_eq!(st["timeline"].as_u64(), Some(2), "{st}");
    assert_eq!(st["history_files"], serde_json::json!([2]), "{st}");
    assert_eq!(
        st["timeline_parents"],
        serde_json::json!([{"timeline": 1, "switch_lsn": switch.0}]),
        "{st}"
    );
    assert!(st["off_path_segments"].as_u64() > Some(0), "{st}");
    let newest = st["newest"].as_str().expect("newest");
    assert!(newest.starts_with("00000002"), "{st}");
    let human = common::ok(&["status", p(&arc)]);
    assert!(
        human.contains("timeline: 2")
            && human.contains(&format!("timeline_parent: 1 left at {switch}")),
        "{human}"
    );

    // To a point before the switch: timeline 1's records only, and a directory of timeline 1,
    // also when the point lies inside the switch segment (the log then ends on timeline 1, and
    // what is written next is timeline 1's: no switch in it, no timeline 2 history).
    let size = 64 * 1024;
    let before: Vec<walship::WalRecord> = common::read_all(&sb)
        .expect("records")
        .into_iter()
        .filter(|r| r.end_lsn <= switch)
        .collect();
    let in_switch = before
        .iter()
        .rev()
        .nth(1)
        .filter(|r| r.lsn.0 / size == switch.0 / size)
        .expect("records of the switch segment before the switch point")
        .end_lsn;
    let earlier = before.iter().nth_back(40).expect("records").end_lsn;
    for (i, early) in [in_switch, earlier].into_iter().enumerate() {
        let before_switch = t.path().join(format!("before-switch-{i}"));
        let until = early.to_string();
        restore(&arc, &before_switch, &["--until-lsn", &until]);
        let want: Vec<Vec<u8>> = before
            .iter()
            .filter(|r| r.end_lsn <= early)
            .map(|r| r.payload.clone())
            .collect();
        assert!(
            payloads(&before_switch) == want,
            "the records up to {until}"
        );
        assert_eq!(
            common::status(&before_switch)["timeline"].as_u64(),
            Some(1),
            "{until}"
        );
        assert!(!before_switch.join("wal/00000002.history").exists());
        write_records(&before_switch, 300, "after-restore");
        let v = walship(&["verify", p(&before_switch)]);
        assert!(v.status.success(), "{until}: {}", text(&v));
        let dumped = common::ok(&["dump", p(&before_switch)]);
        assert!(!dumped.contains("timeline switch"), "{until}");
        assert!(sealed(&before_switch)
            .iter()
            .all(|n| n.starts_with("00000001")));
    }

    // Pruning finds the kept point along the newest timeline too. Kept from a time when only
    // the old primary was writing (past the switch, off the newest path): the restore points
    // of timeline 2 at that time lie before the switch, so nothing from there on is removed,
    // and a restore to that time still gives exactly timeline 2's records stamped by then.
    let at = common::read_all(&primary)
        .expect("records")
        .into_iter()
        .filter(|r| r.payload.starts_with(b"old-") && r.lsn.0 / size > switch.0 / size)
        .nth(20)
        .expect("old-timeline records past the switch segment")
        .timestamp_us;
    let when = chrono::DateTime::from_timestamp_micros(at)
        .expect("time")
        .to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    let out = walship(&["archive-prune", p(&arc), "--keep-since", &when, "--json"]);
    assert!(out.status.success(), "{}", text(&out));
    let pr: serde_json::Value = serde_json::from_slice(&out.stdout).expect("json");
    let first = pr["first_segment"].as_u64().expect("first_segment");
    assert!(first <= switch.0 / size, "{pr}");
    let pruned = t.path().join("after-prune");
    restore(&arc, &pruned, &["--until-time", &when]);
    let want: Vec<Vec<u8>> = common::read_all(&sb)
        .expect("records")
        .into_iter()
        .filter(|r| r.timestamp_us <= at && r.lsn.0 >= first * size)
        .map(|r| r.payload)
        .collect();
    assert!(!want.is_empty() && payloads(&pruned) == want, "{pr}");

    // A damaged history file in the archive is found by verify, named.
    let h = arc.join("00000002.history");
    let mut b = std::fs::read(&h).expect("history");
    let last = b.len() - 1;
    b[last / 2] ^= 0x04;
    std::fs::write(&h, &b).expect("damage");
    let v = walship(&["verify", p(&arc)]);
    assert_eq!(v.status.code(), Some(1), "{}", text(&v));
    assert!(text(&v).contains("00000002.history"), "{}", text(&v));
}

#[test]
fn a_second_promotion_of_the_same_timeline_is_refused_by_the_archive() {
    let t = tempfile::tempdir().expect("tempdir");
    let arc = t.path().join("archive");
    let (_primary, sb) = primary_and_standby(t.path(), &arc);
    // Two copies of the standby, both promoted: two timelines 2 (their switch times differ).
    let twin = t.path().join("twin");
    copy_tree(&sb, &twin);
    promote(&sb);
    std::thread::sleep(std::time::Duration::from_millis(5));
    promote(&twin);
    write_records(&sb, 1200, "one");
    seal(&sb);
    write_records(&twin, 1200, "two");
    seal(&twin);
    let out = archive_once(&sb, &arc);
    assert!(out.status.success(), "{}", text(&out));
    let before = objects(&arc);
    let out = archive_once(&twin, &arc);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let said = text(&out);
    assert!(
        said.contains("split brain") && said.contains("timeline 2"),
        "{said}"
    );
    assert_eq!(objects(&arc), before, "the archive changed");
}

/// A standby promoted when it holds nothing past its newest sealed segment (its primary sealed
/// and stopped, as in a planned switchover): timeline 2 begins with the next segment, whose
/// first position is the switch point, so the sealed segment stays timeline 1's on every
/// path. The new primary then continues its old primary's archive, a restore of it equals the
/// new primary, and the old primary, which wrote into that next segment on timeline 1, is
/// rewound from the archive to exactly the records before the switch.
#[test]
fn a_promotion_at_a_sealed_segments_end_begins_timeline_2_with_the_next_segment() {
    let t = tempfile::tempdir().expect("tempdir");
    let (primary, sb, arc) = (
        t.path().join("primary"),
        t.path().join("standby"),
        t.path().join("archive"),
    );
    common::init(&primary);
    write_records(&primary, 1500, "a");
    seal(&primary);
    let (mut srv, addr) = common::serve(
        &primary,
        "127.0.0.1:0",
        &common::NET,
        &t.path().join("serve.log"),
    );
    let mut s = common::standby(&sb, &addr, &[], &t.path().join("standby.log"));
    common::wait_caught_up(&primary, &sb);
    s.kill();
    srv.kill();
    let out = archive_once(&primary, &arc);
    assert!(out.status.success(), "{}", text(&out));
    let before = payloads(&primary);

    // A second standby, as the first one is now: it follows the promoted one.
    let other = t.path().join("other");
    copy_tree(&sb, &other);
    promote(&sb);
    let switch = switch_lsn(&std::fs::read(sb.join("wal/00000002.history")).expect("history"));
    let size = 64 * 1024;
    let newest_sealed = sealed(&sb)
        .iter()
        .filter_map(|n| u64::from_str_radix(&n[8..24], 16).ok())
        .max()
        .expect("a sealed segment");
    assert_eq!(
        switch.0,
        (newest_sealed + 1) * size,
        "the switch point is the first position of the segment after the newest sealed one"
    );

    // The old primary goes on writing on timeline 1, into that next segment.
    write_records(&primary, 300, "old");
    // The new primary serves before its first write; the other standby follows it onto
    // timeline 2. Then it writes, seals and archives into the old primary's archive.
    let (mut srv, addr) = common::serve(
        &sb,
        "127.0.0.1:0",
        &common::NET,
        &t.path().join("serve-new.log"),
    );
    let mut follower = common::standby(&other, &addr, &[], &t.path().join("other.log"));
    write_records(&sb, 1200, "new");
    seal(&sb);
    common::wait_caught_up(&sb, &other);
    follower.kill();
    srv.kill();
    assert_eq!(common::status(&other)["timeline"].as_u64(), Some(2));
    let out = archive_once(&sb, &arc);
    assert!(out.status.success(), "{}", text(&out));
    assert!(sealed(&sb)
        .iter()
        .any(|n| n.starts_with(&format!("00000002{:016X}", newest_sealed + 1))));
    let v = walship(&["verify", p(&arc)]);
    assert!(v.status.success(), "{}", text(&v));
    let restored = t.path().join("restored");
    restore(&arc, &restored, &["--timeline", "latest"]);
    assert!(
        payloads(&restored) == payloads(&sb),
        "restored equals the new primary"
    );
    assert!(
        payloads(&other) == payloads(&sb),
        "the other standby holds the new primary"
    );

    // The old primary is rewound from the archive: the next segment, all past the switch
    // point, is set aside whole; what is left is exactly what it had before the promotion.
    let out = walship(&["rewind", p(&primary), "--source", p(&arc)]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(payloads(&primary) == before, "cut back to the switch point");
    let aside: Vec<String> = std::fs::read_dir(primary.join("setaside"))
        .expect("setaside/")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        aside
            .iter()
            .any(|n| n.starts_with(&format!("00000001{:016X}", newest_sealed + 1))),
        "{aside:?}"
    );
}

/// A history file copied in from another system (another cluster's promotion) is no history
/// of this archive: restore, verify, status, archive-prune and the archiver each refuse it,
/// naming the object and both systems, and change nothing.
#[test]
fn a_history_file_of_another_system_is_refused_by_every_reader() {
    let t = tempfile::tempdir().expect("tempdir");
    let (x, arc) = (t.path().join("x"), t.path().join("archive"));
    common::init(&x);
    write_records(&x, 3000, "x");
    seal(&x);
    let out = archive_once(&x, &arc);
    assert!(out.status.success(), "{}", text(&out));
    let (y, ysb) = (t.path().join("y"), t.path().join("y-standby"));
    common::streamed_then_stopped(&y, &ysb, t.path(), "y");
    promote(&ysb);
    std::fs::copy(
        ysb.join("wal/00000002.history"),
        arc.join("00000002.history"),
    )
    .expect("copy the history file");
    let id = |d: &Path| {
        common::status(d)["system_id"]
            .as_str()
            .expect("system_id")
            .to_string()
    };
    let (xid, yid) = (id(&x), id(&ysb));
    assert_ne!(xid, yid);
    let refused = |out: &std::process::Output, what: &str| {
        let said = text(out);
        assert_eq!(out.status.code(), Some(1), "{what}: {said}");
        assert!(
            said.contains("00000002.history") && said.contains(&xid) && said.contains(&yid),
            "{what} names the object and both systems: {said}"
        );
    };
    let before = objects(&arc);

    let dest = t.path().join("restored");
    let out = walship(&["restore", p(&arc), p(&dest)]);
    refused(&out, "restore");
    assert!(!dest.exists(), "restore created {}", dest.display());
    // Along timeline 1, which needs no history file, as well.
    let out = walship(&["restore", p(&arc), p(&dest), "--timeline", "1"]);
    refused(&out, "restore --timeline 1");
    assert!(!dest.exists(), "restore created {}", dest.display());
    refused(&walship(&["verify", p(&arc)]), "verify");
    refused(&walship(&["status", p(&arc)]), "status");
    let out = walship(&["archive-prune", p(&arc), "--keep-since", "0/00010000"]);
    refused(&out, "archive-prune");
    // The archiver does not take the foreign promotion for its own primary's successor.
    write_records(&x, 100, "more");
    seal(&x);
    let out = archive_once(&x, &arc);
    refused(&out, "archive");
    assert!(!text(&out).contains("rewind"), "{}", text(&out));
    assert_eq!(objects(&arc), before, "the archive changed");

    // Without the stray file the archive is whole again.
    std::fs::remove_file(arc.join("00000002.history")).expect("remove");
    let out = archive_once(&x, &arc);
    assert!(out.status.success(), "{}", text(&out));
    restore(&arc, &dest, &[]);
    assert!(payloads(&dest) == payloads(&x), "restored equals x");
}

/// An archive that lost the history file of a timeline whose segments it holds is damage to
/// every reader (named, never a silent restore of the first timeline only), and the archiver
/// of that timeline's primary stores it again, a running one at its next pass.
#[test]
fn a_history_file_lost_from_the_archive_is_damage_to_readers_and_stored_again() {
    let t = tempfile::tempdir().expect("tempdir");
    let arc = t.path().join("archive");
    let (_primary, sb) = primary_and_standby(t.path(), &arc);
    promote(&sb);
    write_records(&sb, 1200, "new");
    seal(&sb);
    let out = archive_once(&sb, &arc);
    assert!(out.status.success(), "{}", text(&out));
    let hist = arc.join("00000002.history");
    let held = std::fs::read(&hist).expect("history archived");
    std::fs::remove_file(&hist).unwrap();
    let dest = t.path().join("restored");
    for args in [
        vec!["verify", p(&arc)],
        vec!["restore", p(&arc), p(&dest)],
        vec!["restore", p(&arc), p(&dest), "--timeline", "1"],
        vec!["dump", p(&arc)],
        vec!["status", p(&arc)],
        vec!["archive-prune", p(&arc), "--keep-since", "0/00010000"],
    ] {
        let out = walship(&args);
        let said = text(&out);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {said}");
        assert!(
            said.contains("00000002.history") && said.contains("holds segments of timeline 2"),
            "{args:?}: {said}"
        );
        assert!(!dest.exists(), "{args:?} wrote the destination");
    }

    // A running archiver of the new primary stores it again at its next pass.
    let log = t.path().join("archiver.log");
    let archiver = common::spawn(
        &["archive", p(&sb), "--to", p(&arc), "--rescan-secs", "1"],
        &log,
    );
    // Once it has read the file back (removed sooner, its check would find it gone).
    common::wait_until("the history file stored again", || {
        hist.exists() && archiver.log().contains("history file archived")
    });
    std::fs::remove_file(&hist).unwrap();
    write_records(&sb, 600, "newer");
    seal(&sb);
    let deadline = std::time::Instant::now() + common::WAIT;
    while !hist.exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "the history file was not stored again; the archiver's log:\n{}",
            archiver.log()
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(std::fs::read(&hist).unwrap(), held);
    common::wait_until("the new segment archived", || {
        sealed(&sb).iter().all(|n| arc.join(n).exists())
    });
    restore(&arc, &dest, &[]);
    assert!(
        payloads(&dest) == payloads(&sb),
        "restored equals the new primary"
    );
}
