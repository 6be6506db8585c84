//! Golden files of recycled segment files (fixtures/v2/recycled*): an open segment written into
//! a file that held an earlier segment, so that the earlier segment's records lie past the log's
//! end. The reader, verify and recovery must call them stale (neither damage nor a torn tail),
//! and must still tell a torn write at the end apart from them.
//!
//! Regenerate (only for a deliberate change):
//! `cargo test --test fixtures_recycled -- --ignored regenerate_recycled_fixtures`

mod common;

use std::path::{Path, PathBuf};

use uuid::Uuid;
use walship::format::record::{encode_record, encode_seal, encoded_len, SEAL_LEN};
use walship::format::segment_header::SEGMENT_HEADER_LEN;
use walship::format::{SealInfo, SegmentHeader};
use walship::reader::LogEnd;
use walship::verify::verify_path;
use walship::{Entry, EntryType, Lsn, RecoveryMode, Wal, WalOptions};

use common::SEG;

const SYSTEM: u128 = 0x5741_4c53_4849_5000_0000_0000_0000_0001;
/// 2025-11-26T00:00:00Z in microseconds.
const T0: i64 = 1_764_115_200_000_000;
const OPEN: &str = "000000010000000000000001.wal.open";
const PREP: &str = "000000010000000000000002.wal.prep";
/// Where the good open segment's records end (fixtures/v2/good).
const END: usize = 272;

fn fixtures_v2() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/v2")
}

fn header(no: u64, prev: Option<u32>, created_us: i64) -> SegmentHeader {
    SegmentHeader {
        format_version: 2,
        timeline: 1,
        segment_size: SEG,
        segment_no: no,
        system_id: Uuid::from_u128(SYSTEM),
        prev_checksum: prev,
        created_us,
    }
}

/// An earlier use of the file: segment 0 as it was before being released, 12 records of 39
/// bytes (80 bytes each on disk: at 80, 160, 240, 320, ...), sealed, then zeros to the segment
/// size (what reusing a sealed file leaves). Timestamps `T0 - 100 + i`, durable offsets 0.
fn earlier_use() -> Vec<u8> {
    let h = header(0, None, T0 - 1000);
    let mut b = vec![0u8; SEG as usize];
    b[..SEGMENT_HEADER_LEN].copy_from_slice(&h.encode());
    let mut off = SEGMENT_HEADER_LEN;
    let mut last = Lsn(0);
    for i in 0..12 {
        let p = format!("old record {i:02}").repeat(3);
        let len = encoded_len(p.len());
        last = Lsn(off as u64);
        encode_record(
            &mut b[off..off + len],
            last,
            0,
            EntryType::Insert.code(),
            None,
            T0 - 100 + i,
            p.as_bytes(),
        );
        off += len;
    }
    let seal = SealInfo {
        record_count: 12,
        last_lsn: Some(last),
        segment_checksum: crc32fast::hash(&b[..off]),
    };
    encode_seal(
        &mut b[off..off + SEAL_LEN],
        Lsn(off as u64),
        0,
        T0 - 50,
        &seal,
    );
    b
}

/// The good open segment 1 written over the earlier use: its header and records up to 272,
/// the old bytes after.
fn recycled_open() -> Vec<u8> {
    let good = std::fs::read(fixtures_v2().join("good/wal").join(OPEN)).expect("good open");
    let mut b = earlier_use();
    b[..END].copy_from_slice(&good[..END]);
    b
}

/// Every file: path under fixtures/v2, bytes.
fn golden() -> Vec<(String, Vec<u8>)> {
    let open = recycled_open();
    // A write begun at 272 and cut short: the first 24 bytes of a record (LSN 0/00010110).
    let mut torn = open.clone();
    let mut rec = vec![0u8; encoded_len(4)];
    encode_record(
        &mut rec,
        Lsn(SEG + END as u64),
        128,
        EntryType::Insert.code(),
        None,
        T0 + 7,
        b"torn",
    );
    torn[END..END + 24].copy_from_slice(&rec[..24]);
    // The earlier use, its header cleared and named as the next prepared file.
    let mut prep = earlier_use();
    prep[..SEGMENT_HEADER_LEN].fill(0);
    vec![
        (format!("recycled/wal/{OPEN}"), open.clone()),
        (format!("recycled/wal/{PREP}"), prep),
        (format!("recycled_torn/wal/{OPEN}"), torn),
    ]
}

/// A scratch data directory: fixtures/v2/good with a variant laid over it.
fn datadir(variant: &str) -> (tempfile::TempDir, PathBuf) {
    let t = tempfile::tempdir().expect("tempdir");
    let d = t.path().join("data");
    common::copy_tree(&fixtures_v2().join("good"), &d);
    std::fs::create_dir_all(d.join("state")).expect("state dir");
    common::copy_tree(&fixtures_v2().join(variant), &d);
    (t, d)
}

fn setaside(d: &Path) -> Vec<String> {
    walship::setaside::list(&walship::DataDir::new(d)).expect("list")
}

#[test]
#[ignore = "writes fixtures/v2/recycled*; run only for a deliberate format change"]
fn regenerate_recycled_fixtures() {
    for (rel, bytes) in golden() {
        let p = fixtures_v2().join(rel);
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        std::fs::write(&p, bytes).expect("write fixture");
    }
}

#[test]
fn the_encoder_reproduces_every_recycled_golden_file() {
    for (rel, bytes) in golden() {
        let on_disk = std::fs::read(fixtures_v2().join(&rel)).expect("fixture");
        assert!(
            on_disk == bytes,
            "{rel} differs from what the encoder writes"
        );
    }
}

#[test]
fn stale_records_after_the_end_are_neither_damage_nor_a_torn_tail() {
    let (_t, d) = datadir("recycled");
    let recs = common::read_all(&d).expect("no damage");
    assert_eq!(recs.len(), 6);
    let mut r = walship::WalReader::open(&d, Lsn(0)).expect("reader");
    while r.next_record().expect("record").is_some() {}
    assert_eq!(*r.log_end(), LogEnd::Clean);

    let v = verify_path(&d).expect("verify");
    assert!(v.ok, "{:?}", v.errors);
    assert!(
        v.notes
            .iter()
            .any(|n| n.contains("stale records of the earlier segment 0 from offset 320 to 1104")),
        "{:?}",
        v.notes
    );

    // Strict mode has nothing to refuse: stale bytes need no repair.
    let found = std::fs::read(d.join("wal").join(OPEN)).expect("read");
    let strict = Wal::open(
        &d,
        WalOptions {
            recovery_mode: RecoveryMode::Strict,
            ..WalOptions::default()
        },
    )
    .expect("strict recovery accepts stale bytes");
    assert_eq!(strict.write_lsn(), Lsn(SEG + END as u64));
    drop(strict);
    assert!(setaside(&d).is_empty(), "{:?}", setaside(&d));
    let now = std::fs::read(d.join("wal").join(OPEN)).expect("read");
    assert!(now[..END] == found[..END], "the log itself is unchanged");

    // The writer continues at 272 over the old bytes, and everything reads back.
    let wal = Wal::open(&d, WalOptions::default()).expect("open");
    wal.append_durable(&Entry::new(EntryType::Insert, None, b"new after stale"))
        .expect("append");
    wal.seal().expect("seal");
    wal.append_durable(&Entry::new(EntryType::Insert, None, b"in segment 2"))
        .expect("append");
    drop(wal);
    let recs = common::read_all(&d).expect("read");
    assert_eq!(recs.len(), 8);
    assert_eq!(recs[6].payload, b"new after stale");
    assert_eq!(recs[7].payload, b"in segment 2");
    let v = verify_path(&d).expect("verify");
    assert!(v.ok, "{:?}", v.errors);
    assert!(setaside(&d).is_empty(), "{:?}", setaside(&d));
    // Segment 2 was written into the recycled prepared file: old bytes follow its records.
    let (_, p2) = common::open_segment(&d).expect("segment 2");
    let b2 = std::fs::read(p2).expect("read");
    assert!(b2[1104 - SEAL_LEN..1104].iter().any(|&x| x != 0));
}

#[test]
fn a_write_begun_over_stale_records_is_a_torn_tail() {
    let (_t, d) = datadir("recycled_torn");
    assert_eq!(common::read_all(&d).expect("not damage").len(), 6);
    let v = verify_path(&d).expect("verify");
    assert!(v.ok, "{:?}", v.errors);
    assert!(
        v.notes
            .iter()
            .any(|n| n.contains("torn tail at offset 272")),
        "{:?}",
        v.notes
    );
    let strict = Wal::open(
        &d,
        WalOptions {
            recovery_mode: RecoveryMode::Strict,
            ..WalOptions::default()
        },
    );
    assert!(strict.is_err(), "strict mode refuses a torn tail");
    let found = std::fs::read(d.join("wal").join(OPEN)).expect("read");
    let wal = Wal::open(&d, WalOptions::default()).expect("tolerate-tail recovery");
    assert_eq!(wal.write_lsn(), Lsn(SEG + END as u64));
    drop(wal);
    let aside = setaside(&d);
    assert_eq!(aside.len(), 1, "the file as found is kept");
    let copy = walship::setaside::setaside_dir(&walship::DataDir::new(&d)).join(&aside[0]);
    assert!(std::fs::read(copy).expect("copy") == found);
}
