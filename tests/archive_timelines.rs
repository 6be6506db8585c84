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
    let payloads = |dir: &Path| -> Vec<Vec<u8>> {
        common::read_all(dir)
            .expect("read the records")
            .into_iter()
            .map(|r| r.payload)
            .collect()
    };
    let restored = t.path().join("restored");
    let out = walship(&["restore", p(&arc), p(&restored)]);
    assert!(out.status.success(), "{}", text(&out));
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

    // To a point before the switch: timeline 1's records only, and a directory of timeline 1.
    let switch = walship::format::history::HistoryFile::decode(&hist, "00000002.history")
        .expect("history")
        .last_switch()
        .expect("a switch")
        .lsn;
    let early = common::read_all(&sb)
        .expect("records")
        .into_iter()
        .filter(|r| r.end_lsn <= switch)
        .nth_back(40)
        .expect("records before the switch")
        .end_lsn;
    let before_switch = t.path().join("before-switch");
    let until = early.to_string();
    let out = walship(&["restore", p(&arc), p(&before_switch), "--until-lsn", &until]);
    assert!(out.status.success(), "{}", text(&out));
    let want: Vec<Vec<u8>> = common::read_all(&sb)
        .expect("records")
        .into_iter()
        .filter(|r| r.end_lsn <= early)
        .map(|r| r.payload)
        .collect();
    assert!(
        payloads(&before_switch) == want,
        "the records up to {until}"
    );
    let timeline = common::status(&before_switch)["timeline"].as_u64();
    let in_switch_segment = early.0 / (64 * 1024) == switch.0 / (64 * 1024);
    assert_eq!(timeline, Some(if in_switch_segment { 2 } else { 1 }));

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
