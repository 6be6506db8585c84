//! The writer's edges through the library: record size limits, rotation, sealing by age,
//! reopening, and recovery's repairs (interrupted seal, empty open segment, mid-log damage).

mod common;

use std::time::{Duration, Instant};

use walship::format::record::{encode_seal, encoded_len, SEAL_LEN};
use walship::format::{SealInfo, SegmentFileKind};
use walship::verify::verify_path;
use walship::{Entry, EntryType, Error, Lsn, RecoveryMode, Wal, WalOptions};

fn open(dir: &std::path::Path) -> Wal {
    Wal::open(dir, WalOptions::default()).expect("open")
}

/// Opening in strict mode fails (it repairs nothing); returns the error text.
fn strict_open_error(dir: &std::path::Path) -> String {
    let strict = Wal::open(
        dir,
        WalOptions {
            recovery_mode: RecoveryMode::Strict,
            ..WalOptions::default()
        },
    );
    strict
        .err()
        .expect("strict mode repairs nothing")
        .to_string()
}

fn ins(p: &[u8]) -> Entry<'_> {
    Entry::new(EntryType::Insert, None, p)
}

#[test]
fn largest_record_fits_and_one_byte_more_is_refused() {
    let (_t, dir) = common::new_dir();
    let wal = open(&dir);
    let max = wal.max_payload();
    assert_eq!(max, 65536 - 80 - 64 - 40);
    let big = vec![7u8; max];
    let a = wal.append(&ins(&big)).expect("largest payload");
    assert_eq!(a.lsn, Lsn(80));
    assert_eq!(a.end_lsn.0, 80 + encoded_len(max) as u64);
    let too = vec![7u8; max + 1];
    match wal.append(&ins(&too)) {
        Err(Error::RecordTooLarge { len, max: m, .. }) => assert_eq!((len, m), (max + 1, max)),
        other => panic!("expected RecordTooLarge, got {other:?}"),
    }
    // A small record no longer fits beside the big one: it starts the next segment.
    let b = wal.append_durable(&ins(b"next")).expect("append");
    assert_eq!(b.lsn, Lsn(65536 + 80));
    assert_eq!(wal.stats().segments_sealed, 1);
    // The sealed name follows the durable seal marker a moment later.
    let deadline = Instant::now() + Duration::from_secs(20);
    while wal.sealed_lsn() != a.end_lsn {
        assert!(
            Instant::now() < deadline,
            "sealed_lsn stays {}",
            wal.sealed_lsn()
        );
        std::thread::sleep(Duration::from_millis(1));
    }
    drop(wal);
    let recs = common::read_all(&dir).expect("read");
    assert_eq!(recs.len(), 2);
    assert_eq!(recs[0].payload, big);
    assert!(verify_path(&dir).expect("verify").ok);
}

#[test]
fn batch_and_reopen_continue_at_the_same_position() {
    let (_t, dir) = common::new_dir();
    let wal = open(&dir);
    let payloads: Vec<Vec<u8>> = (0..300)
        .map(|i| format!("batch {i}").into_bytes())
        .collect();
    let entries: Vec<Entry<'_>> = payloads.iter().map(|p| ins(p)).collect();
    let got = wal.append_batch(&entries).expect("batch");
    assert_eq!(got.len(), 300);
    assert!(got.windows(2).all(|w| w[0].end_lsn == w[1].lsn));
    let end = wal.sync().expect("sync");
    assert_eq!(end, got[299].end_lsn);
    // Waiting for a position nothing has reached is an error, not a hang.
    let e = wal
        .wait_durable(Lsn(end.0 + 8))
        .expect_err("beyond the end");
    assert!(
        e.to_string().contains("nothing has been written past"),
        "{e}"
    );
    drop(wal);

    let wal = open(&dir);
    assert_eq!((wal.write_lsn(), wal.flush_lsn()), (end, end));
    let a = wal.append(&ins(b"after reopen")).expect("append");
    assert_eq!(a.lsn, end);
    drop(wal);
    assert_eq!(common::read_all(&dir).expect("read").len(), 301);
}

#[test]
fn a_quiet_segment_is_sealed_after_its_maximum_age() {
    let (_t, dir) = common::new_dir();
    let wal = Wal::open(
        &dir,
        WalOptions {
            max_segment_age: Some(Duration::from_millis(100)),
            ..WalOptions::default()
        },
    )
    .expect("open");
    let a = wal.append(&ins(b"lonely")).expect("append");
    let deadline = Instant::now() + Duration::from_secs(20);
    let sealed = common::seg_path(&dir, 0, SegmentFileKind::Sealed);
    while !sealed.exists() {
        assert!(Instant::now() < deadline, "never sealed by age");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(wal.stats().segments_sealed, 1);
    assert!(wal.flush_lsn() >= a.end_lsn, "sealing made it durable");
    // Nothing more to seal: an empty segment is not sealed again.
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(wal.stats().segments_sealed, 1);
    let b = wal.append(&ins(b"next")).expect("append");
    assert_eq!(b.lsn, Lsn(65536 + 80));
}

#[test]
fn recovery_finishes_an_interrupted_seal() {
    let (_t, dir) = common::new_dir();
    let wal = open(&dir);
    let mut last = Lsn(0);
    for i in 0..5 {
        last = wal
            .append(&ins(format!("r{i}").as_bytes()))
            .expect("append")
            .lsn;
    }
    let end = wal.sync().expect("sync").0 as usize;
    drop(wal);
    // The marker reached the file, the cut and the rename did not.
    let path = common::seg_path(&dir, 0, SegmentFileKind::Open);
    let mut b = std::fs::read(&path).expect("read");
    let seal = SealInfo {
        record_count: 5,
        last_lsn: Some(last),
        segment_checksum: crc32fast::hash(&b[..end]),
    };
    encode_seal(
        &mut b[end..end + SEAL_LEN],
        walship::Lsn(end as u64),
        0,
        1,
        &seal,
    );
    std::fs::write(&path, &b).expect("write");
    assert!(verify_path(&dir).expect("verify").ok);

    strict_open_error(&dir);
    let wal = open(&dir);
    let sealed = common::seg_path(&dir, 0, SegmentFileKind::Sealed);
    assert!(!path.exists());
    assert_eq!(
        std::fs::metadata(&sealed).expect("sealed").len() as usize,
        end + SEAL_LEN
    );
    let a = wal.append_durable(&ins(b"next")).expect("append");
    assert_eq!(a.lsn, Lsn(65536 + 80));
    drop(wal);
    let v = verify_path(&dir).expect("verify");
    assert!(v.ok, "{:?}", v.errors);
    assert_eq!(v.records, 6);
}

/// A crash while the writer seals segment 0 in the background and writes segment 1 leaves both
/// open. With segment 0's marker durable, recovery finishes its seal and keeps segment 1; without
/// it, the log ends in segment 0 and segment 1 (whose records were never acknowledged) goes.
#[test]
fn an_open_segment_behind_a_newer_one_is_finished_or_ends_the_log() {
    let (_t, dir) = common::new_dir();
    let wal = open(&dir);
    let mut n = 0;
    while wal.write_lsn().0 < common::SEG + 1000 {
        wal.append(&ins(format!("record {n}").as_bytes()))
            .expect("append");
        n += 1;
    }
    wal.sync().expect("sync");
    drop(wal);
    let all = common::read_all(&dir).expect("read");
    let in_first = all.iter().filter(|r| r.lsn.0 < common::SEG).count();
    let sealed = common::seg_path(&dir, 0, SegmentFileKind::Sealed);
    let open0 = common::seg_path(&dir, 0, SegmentFileKind::Open);
    let open1 = common::seg_path(&dir, 1, SegmentFileKind::Open);
    assert!(open1.exists());
    let pristine = std::fs::read(&sealed).expect("read sealed");

    // Marker durable, rename lost: finished, nothing lost.
    std::fs::rename(&sealed, &open0).expect("rename");
    assert!(verify_path(&dir).expect("verify").ok);
    drop(open(&dir));
    assert_eq!(std::fs::read(&sealed).expect("sealed again"), pristine);
    assert_eq!(common::read_all(&dir).expect("read").len(), all.len());

    // Marker never durable: segment 0 ends the log.
    let mut b = pristine.clone();
    let marker = b.len() - SEAL_LEN;
    b[marker..].fill(0);
    b.resize(common::SEG as usize, 0);
    std::fs::remove_file(&sealed).expect("remove");
    std::fs::write(&open0, &b).expect("write");
    // Nothing in segment 1 counted as durable then: the published position was in segment 0.
    let end0 = all
        .iter()
        .filter(|r| r.lsn.0 < common::SEG)
        .map(|r| r.end_lsn.0)
        .max()
        .expect("records in segment 0");
    std::fs::write(
        dir.join("state/flush_position"),
        walship::flush_position::encode_position(end0),
    )
    .expect("write the published position");
    let v = verify_path(&dir).expect("verify");
    assert!(v.ok, "a crash state, not damage: {:?}", v.errors);
    let e = strict_open_error(&dir);
    assert!(e.contains("does not end with a seal marker"), "{e}");
    assert!(open1.exists());
    let wal = open(&dir);
    assert!(!open1.exists(), "the newer open segment is removed");
    assert_eq!(
        common::read_all(&dir).expect("read").len(),
        in_first,
        "segment 0's records are all kept"
    );
    // Segment 0 had no room left: the next record seals it and starts segment 1 afresh.
    let a = wal.append_durable(&ins(b"next")).expect("append");
    assert_eq!(a.lsn, Lsn(common::SEG + 80));
    drop(wal);
    assert!(sealed.exists());
    let v = verify_path(&dir).expect("verify");
    assert!(v.ok, "{:?}", v.errors);
    assert_eq!(v.records as usize, in_first + 1);
}

#[test]
fn an_open_segment_never_written_is_restarted() {
    let (_t, dir) = common::new_dir();
    let wal = open(&dir);
    wal.append(&ins(b"a")).expect("append");
    wal.seal().expect("seal");
    drop(wal);
    // Activated (renamed) but stopped before its header was written.
    let open_path = common::seg_path(&dir, 1, SegmentFileKind::Open);
    std::fs::write(&open_path, vec![0u8; common::SEG as usize]).expect("zero segment");
    assert_eq!(common::read_all(&dir).expect("reader: end of log").len(), 1);
    let v = verify_path(&dir).expect("verify");
    assert!(v.ok, "{:?}", v.errors);
    let out = common::run(&["dump", dir.to_str().expect("utf8")], b"");
    assert_eq!(common::code(&out), 0, "{}", common::stderr(&out));

    let wal = open(&dir);
    let a = wal.append_durable(&ins(b"b")).expect("append");
    assert_eq!(a.lsn, Lsn(65536 + 80));
    drop(wal);
    assert_eq!(common::read_all(&dir).expect("read").len(), 2);
    assert!(verify_path(&dir).expect("verify").ok);
}

/// The header becomes durable with a segment's first sync: records behind a header that never
/// did were never acknowledged, and recovery discards them (strict mode refuses).
#[test]
fn records_behind_a_header_never_written_are_discarded() {
    let (_t, dir) = common::new_dir();
    let wal = open(&dir);
    wal.append(&ins(b"a")).expect("append");
    wal.seal().expect("seal");
    let acknowledged = wal.flush_lsn();
    for i in 0..10 {
        wal.append(&ins(format!("lost {i}").as_bytes()))
            .expect("append");
    }
    wal.sync().expect("sync");
    drop(wal);
    let open_path = common::seg_path(&dir, 1, SegmentFileKind::Open);
    let mut b = std::fs::read(&open_path).expect("read");
    b[..80].fill(0);
    std::fs::write(&open_path, &b).expect("write");
    // As a crash before that sync leaves it: the published durable position is where the
    // acknowledged records end (one past it would prove the header had been synced).
    std::fs::write(
        dir.join("state/flush_position"),
        walship::flush_position::encode_position(acknowledged.0),
    )
    .expect("write the published position");
    assert!(verify_path(&dir).expect("verify").ok);
    let e = strict_open_error(&dir);
    assert!(e.contains("header never written"), "{e}");

    let wal = open(&dir);
    let a = wal.append_durable(&ins(b"b")).expect("append");
    assert_eq!(a.lsn, Lsn(65536 + 80));
    drop(wal);
    let recs = common::read_all(&dir).expect("read");
    let payloads: Vec<&[u8]> = recs.iter().map(|r| r.payload.as_slice()).collect();
    assert_eq!(payloads, [b"a".as_slice(), b"b".as_slice()]);
    assert!(verify_path(&dir).expect("verify").ok);
}

/// Damage followed by a record that was appended once the damaged bytes were durable (each
/// append here waits for its own durability) is refused in every mode.
#[test]
fn damage_followed_by_a_record_written_after_it_was_durable_is_refused_not_repaired() {
    let (_t, dir) = common::new_dir();
    let wal = open(&dir);
    let mut lsns = Vec::new();
    for i in 0..4 {
        lsns.push(
            wal.append_durable(&ins(format!("rec {i}").as_bytes()))
                .expect("append"),
        );
    }
    drop(wal);
    let path = common::seg_path(&dir, 0, SegmentFileKind::Open);
    let mut b = std::fs::read(&path).expect("read");
    let victim = lsns[1].lsn.0 as usize;
    b[victim + 41] ^= 0x20;
    std::fs::write(&path, &b).expect("write");
    for mode in [RecoveryMode::TolerateTail, RecoveryMode::Strict] {
        let e = Wal::open(
            &dir,
            WalOptions {
                recovery_mode: mode,
                ..WalOptions::default()
            },
        )
        .err()
        .expect("refused");
        assert!(e.is_corruption());
        let msg = e.to_string();
        assert!(msg.contains(&format!("offset {victim}")), "{msg}");
        assert!(msg.contains("not a torn tail"), "{msg}");
    }
    // Nothing was changed by the refusals.
    assert_eq!(std::fs::read(&path).expect("read"), b);
    let out = common::run(&["dump", dir.to_str().expect("utf8")], b"");
    assert_eq!(common::code(&out), 1);
    assert_eq!(common::stdout(&out).lines().count(), 1);
}

#[test]
fn appending_right_after_restarting_an_empty_segment_uses_an_intact_file() {
    // Recovery hands the restarted segment to the writer as prepared while the preparer is told
    // to prepare the same number: the first append must not race the preparer for the file.
    let (_t, dir) = common::new_dir();
    let wal = open(&dir);
    wal.append(&ins(b"a")).expect("append");
    wal.seal().expect("seal");
    drop(wal);
    let mut expected = 1;
    for round in 0..40u64 {
        let no = round + 1;
        let open_path = common::seg_path(&dir, no, SegmentFileKind::Open);
        std::fs::write(&open_path, vec![0u8; common::SEG as usize]).expect("zero segment");
        let wal = open(&dir);
        let a = wal
            .append_durable(&ins(format!("round {round}").as_bytes()))
            .unwrap_or_else(|e| panic!("round {round}: {e}"));
        assert_eq!(a.lsn, Lsn(no * common::SEG + 80));
        wal.seal().expect("seal");
        drop(wal);
        expected += 1;
    }
    let recs = common::read_all(&dir).expect("read");
    assert_eq!(recs.len(), expected);
    assert!(verify_path(&dir).expect("verify").ok);
}

#[test]
fn a_second_open_is_refused_with_the_holders_pid() {
    let (_t, dir) = common::new_dir();
    let wal = open(&dir);
    match Wal::open(&dir, WalOptions::default()) {
        Err(Error::Locked { pid, .. }) => assert_eq!(pid, Some(std::process::id())),
        Err(e) => panic!("expected Locked, got {e}"),
        Ok(_) => panic!("two writers on one directory"),
    }
    drop(wal);
    drop(open(&dir));
}
