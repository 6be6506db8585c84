//! Retention's decisions, one rule per test, through the library alone: which sealed segments a
//! checkpoint removes, what keeps the oldest one, how the slowest consumer and the cap decide,
//! and when an archiver's archive must show a segment before it goes. Each store is built with
//! known segment ends, so every boundary is checked exactly.

mod common;

use std::path::Path;

use walship::consumers::{ConsumerKind, ConsumerRegistry};
use walship::retention::{report, RetentionOptions};
use walship::{DataDir, Lsn};

use common::{consumer, sealed_store};

fn on_disk(root: &Path, names: &[String]) -> Vec<String> {
    names
        .iter()
        .filter(|n| root.join("wal").join(n).exists())
        .cloned()
        .collect()
}

fn strings(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

const NO_CAP: RetentionOptions = RetentionOptions {
    max_retained: None,
    max_recycled: walship::recycling::DEFAULT_MAX_RECYCLED,
};

#[test]
fn a_checkpoint_removes_exactly_the_segments_that_end_at_or_below_it() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("d");
    let (wal, names, ends) = sealed_store(&root, 4);

    // One short of segment 0's end: nothing goes, the checkpoint holds segment 0.
    let r = wal.checkpoint(Lsn(ends[0] - 1), &NO_CAP).unwrap();
    assert!(r.removed.is_empty(), "{r:?}");
    assert_eq!(r.held_by, strings(&["checkpoint"]));
    assert_eq!(r.retained_segments, 4);

    // At segment 1's end: segments 0 and 1 go, in order.
    let r = wal.checkpoint(Lsn(ends[1]), &NO_CAP).unwrap();
    assert_eq!(r.removed, names[..2].to_vec());
    assert_eq!(r.checkpoint_lsn, walship::Lsn(ends[1]));
    assert_eq!(r.retained_segments, 2);
    assert_eq!(on_disk(&root, &names), names[2..].to_vec());

    // Inside segment 2: it is still needed.
    let r = wal.checkpoint(Lsn(ends[1] + 1), &NO_CAP).unwrap();
    assert!(r.removed.is_empty(), "{r:?}");
    assert_eq!(r.held_by, strings(&["checkpoint"]));
    // The bytes reported are the files' sizes.
    let bytes: u64 = names[2..]
        .iter()
        .map(|n| std::fs::metadata(root.join("wal").join(n)).unwrap().len())
        .sum();
    assert_eq!(r.retained_bytes, bytes);
}

#[test]
fn the_newest_sealed_segment_is_kept_even_when_nothing_needs_it() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("d");
    let (wal, names, ends) = sealed_store(&root, 3);
    let r = wal.checkpoint(Lsn(ends[2]), &NO_CAP).unwrap();
    assert_eq!(r.removed, names[..2].to_vec());
    assert_eq!(r.held_by, strings(&["newest_segment"]));
    assert_eq!(on_disk(&root, &names), names[2..].to_vec());
    let rep = report(&DataDir::new(&root)).unwrap();
    assert_eq!(rep.sealed_segments, 1);
    assert_eq!(rep.oldest_segment.as_deref(), Some(names[2].as_str()));
    assert_eq!(rep.held_by, strings(&["newest_segment"]));
}

#[test]
fn a_checkpoint_never_moves_back() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("d");
    let (wal, _names, ends) = sealed_store(&root, 3);
    wal.checkpoint(Lsn(ends[1]), &NO_CAP).unwrap();
    let r = wal.checkpoint(Lsn(ends[0]), &NO_CAP).unwrap();
    assert_eq!(r.checkpoint_lsn, walship::Lsn(ends[1]));
    assert_eq!(
        report(&DataDir::new(&root)).unwrap().checkpoint_lsn,
        walship::Lsn(ends[1])
    );
}

#[test]
fn the_slowest_consumer_not_lost_sets_the_floor() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("d");
    let (wal, names, ends) = sealed_store(&root, 4);
    let dir = DataDir::new(&root);
    let reg = ConsumerRegistry::new(&dir);
    reg.save(&consumer("fast", ConsumerKind::Standby, ends[2]))
        .unwrap();
    reg.save(&consumer("slow", ConsumerKind::Standby, ends[0]))
        .unwrap();
    let mut lost = consumer("gone", ConsumerKind::Standby, 0);
    lost.lost = true;
    reg.save(&lost).unwrap();

    // The checkpoint is past everything; "slow" is past segment 0 only, "gone" holds nothing.
    let r = wal.checkpoint(Lsn(ends[3]), &NO_CAP).unwrap();
    assert_eq!(r.removed, names[..1].to_vec());
    assert_eq!(r.held_by, strings(&["slow"]));
    assert!(r.marked_lost.is_empty());

    let rep = report(&dir).unwrap();
    assert_eq!(rep.held_by, strings(&["slow"]));
    let by_id = |id: &str| rep.consumers.iter().find(|c| c.id == id).unwrap().clone();
    let size = |n: &String| std::fs::metadata(root.join("wal").join(n)).unwrap().len();
    assert!(by_id("slow").holds_retention);
    assert!(!by_id("fast").holds_retention);
    assert_eq!(
        by_id("slow").needs_bytes,
        names[1..].iter().map(size).sum::<u64>()
    );
    assert_eq!(by_id("fast").needs_bytes, size(&names[3]));
    assert_eq!(by_id("gone").needs_bytes, 0);
    assert!(!by_id("gone").holds_retention);

    // Once "slow" reaches "fast", segments 1 and 2 go too; both still need the newest one,
    // which is kept for its own sake as well (holders listed by id).
    reg.save(&consumer("slow", ConsumerKind::Standby, ends[2]))
        .unwrap();
    let r = wal.checkpoint(Lsn(ends[3]), &NO_CAP).unwrap();
    assert_eq!(r.removed, names[1..3].to_vec());
    assert_eq!(r.held_by, strings(&["newest_segment", "fast", "slow"]));
}

#[test]
fn the_cap_marks_lost_only_a_consumer_holding_more_than_it() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("d");
    let (wal, names, ends) = sealed_store(&root, 4);
    let dir = DataDir::new(&root);
    let reg = ConsumerRegistry::new(&dir);
    reg.save(&consumer("behind", ConsumerKind::Standby, 0))
        .unwrap();
    // What it holds back: every segment the checkpoint would remove (all but the newest).
    let held: u64 = names[..3]
        .iter()
        .map(|n| std::fs::metadata(root.join("wal").join(n)).unwrap().len())
        .sum();

    // Exactly at the cap: kept, and it still holds everything.
    let at_cap = RetentionOptions {
        max_retained: Some(held),
        ..NO_CAP
    };
    let r = wal.checkpoint(Lsn(ends[3]), &at_cap).unwrap();
    assert!(r.marked_lost.is_empty(), "{r:?}");
    assert!(r.removed.is_empty(), "{r:?}");
    assert_eq!(r.held_by, strings(&["behind"]));
    assert!(!reg.get("behind").unwrap().unwrap().lost);

    // One byte over: marked lost, and it holds nothing from then on.
    let below = RetentionOptions {
        max_retained: Some(held - 1),
        ..NO_CAP
    };
    let r = wal.checkpoint(Lsn(ends[3]), &below).unwrap();
    assert_eq!(r.marked_lost, strings(&["behind"]));
    assert_eq!(r.removed, names[..3].to_vec());
    assert!(reg.get("behind").unwrap().unwrap().lost);
    let r = wal.checkpoint(Lsn(ends[3]), &NO_CAP).unwrap();
    assert!(r.marked_lost.is_empty(), "a lost consumer is marked once");
}

#[test]
fn an_archiver_position_counts_only_when_its_archive_shows_the_segment() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("d");
    let (wal, names, ends) = sealed_store(&root, 3);
    let dir = DataDir::new(&root);
    let reg = ConsumerRegistry::new(&dir);
    let arc = t.path().join("arc");
    std::fs::create_dir_all(&arc).unwrap();

    // The position says everything is archived; the (empty) archive says otherwise.
    let mut a = consumer("archiver", ConsumerKind::Archiver, ends[2]);
    a.address = Some(arc.to_str().unwrap().to_string());
    reg.save(&a).unwrap();
    let r = wal.checkpoint(Lsn(ends[2]), &NO_CAP).unwrap();
    assert!(r.removed.is_empty(), "{r:?}");
    assert_eq!(r.missing_from_archive.len(), 1, "{r:?}");
    let m = &r.missing_from_archive[0];
    assert!(
        m.contains(&names[0]) && m.contains("is not in the archive"),
        "{m}"
    );

    // A relative location cannot be looked in: kept as well, and said why.
    a.address = Some("arc".to_string());
    reg.save(&a).unwrap();
    let r = wal.checkpoint(Lsn(ends[2]), &NO_CAP).unwrap();
    assert!(r.removed.is_empty(), "{r:?}");
    assert!(
        r.missing_from_archive[0].contains("is not an absolute path"),
        "{r:?}"
    );

    // Registered without a location (through the library): trusted by its position alone.
    a.address = None;
    reg.save(&a).unwrap();
    let r = wal.checkpoint(Lsn(ends[2]), &NO_CAP).unwrap();
    assert_eq!(r.removed, names[..2].to_vec());
    assert!(r.missing_from_archive.is_empty());
}
