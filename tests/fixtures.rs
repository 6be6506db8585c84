//! Golden files of format version 1 (fixtures/v1/), read forever: the encoder must reproduce
//! them byte for byte, and the reader, verify and recovery must find exactly the records,
//! positions and errors written down here. A change to the format cannot slip through.
//!
//! Regenerate (only for a deliberate change, which is a new format version):
//! `cargo test --test fixtures -- --ignored regenerate_fixtures`

mod common;

use std::path::{Path, PathBuf};

use uuid::Uuid;
use walship::format::record::{encode_record, encode_seal, encoded_len, SEAL_LEN};
use walship::format::segment_header::SEGMENT_HEADER_LEN;
use walship::format::{ControlFile, SealInfo, SegmentHeader, FORMAT_VERSION};
use walship::reader::LogEnd;
use walship::verify::verify_path;
use walship::{EntryType, Lsn, Wal, WalOptions, WalReader};

use common::SEG;

const SYSTEM: u128 = 0x5741_4c53_4849_5000_0000_0000_0000_0001;
const FOREIGN: u128 = 0x5741_4c53_4849_5000_0000_0000_0000_0002;
/// 2025-11-26T00:00:00Z in microseconds.
const T0: i64 = 1_764_115_200_000_000;
const SEALED: &str = "000000010000000000000000.wal";
const OPEN: &str = "000000010000000000000001.wal.open";

/// (type, tx id, timestamp, payload) of each record, in order.
type Spec = (EntryType, Option<u64>, i64, Vec<u8>);

fn sealed_records() -> Vec<Spec> {
    vec![
        (EntryType::Insert, None, T0 + 1, b"hello".to_vec()),
        (EntryType::TxBegin, Some(7), T0 + 2, vec![]),
        (
            EntryType::Update,
            Some(7),
            T0 + 3,
            b"key=1 value=2".to_vec(),
        ),
        (EntryType::TxCommit, Some(7), T0 + 4, vec![]),
    ]
}

fn open_records() -> Vec<Spec> {
    vec![
        (EntryType::Delete, None, T0 + 5, b"gone".to_vec()),
        (
            EntryType::Checkpoint,
            Some(u64::MAX),
            T0 + 6,
            (0..100u8).collect(),
        ),
    ]
}

fn control() -> ControlFile {
    ControlFile {
        identity: walship::format::SystemIdentity {
            format_version: FORMAT_VERSION,
            timeline: 1,
            system_id: Uuid::from_u128(SYSTEM),
            segment_size: SEG,
        },
        created_us: T0,
    }
}

fn header(no: u64, system: u128, prev: Option<u32>) -> SegmentHeader {
    header_v(FORMAT_VERSION, no, system, prev)
}

fn header_v(version: u32, no: u64, system: u128, prev: Option<u32>) -> SegmentHeader {
    SegmentHeader {
        format_version: version,
        timeline: 1,
        segment_size: SEG,
        segment_no: no,
        system_id: Uuid::from_u128(system),
        prev_checksum: prev,
        created_us: T0,
    }
}

/// The durable offset the golden writer records: none in version 1; in version 2, the log is
/// durable up to the record before the previous one (a group commit in flight).
fn durable_at(h: &SegmentHeader, off: usize) -> u32 {
    if h.format_version < 2 {
        0
    } else {
        off.saturating_sub(100).max(SEGMENT_HEADER_LEN) as u32 & !7
    }
}

/// A segment's bytes laid out as the writer lays them out; returns them and the end offset.
fn segment(h: &SegmentHeader, records: &[Spec]) -> (Vec<u8>, usize) {
    let mut b = vec![0u8; SEG as usize];
    b[..SEGMENT_HEADER_LEN].copy_from_slice(&h.encode());
    let mut off = SEGMENT_HEADER_LEN;
    for (t, tx, ts, p) in records {
        let len = encoded_len(p.len());
        encode_record(
            &mut b[off..off + len],
            h.start_lsn() + off as u64,
            durable_at(h, off),
            t.code(),
            *tx,
            *ts,
            p,
        );
        off += len;
    }
    (b, off)
}

/// Every fixture file: path under fixtures/v1, bytes.
fn golden() -> Vec<(String, Vec<u8>)> {
    let recs = sealed_records();
    let (mut sealed, end) = segment(&header(0, SYSTEM, None), &recs);
    let seal = SealInfo {
        record_count: recs.len() as u64,
        last_lsn: Some(walship::Lsn(224)),
        segment_checksum: crc32fast::hash(&sealed[..end]),
    };
    encode_seal(
        &mut sealed[end..end + SEAL_LEN],
        walship::Lsn(end as u64),
        0,
        T0 + 10,
        &seal,
    );
    sealed.truncate(end + SEAL_LEN);

    let prev = Some(seal.segment_checksum);
    let (open, open_end) = segment(&header(1, SYSTEM, prev), &open_records());
    let (foreign, _) = segment(&header(1, FOREIGN, prev), &open_records());

    let mut torn = open.clone();
    let mut half = vec![0u8; encoded_len(4)];
    encode_record(
        &mut half,
        walship::Lsn(SEG + open_end as u64),
        0,
        EntryType::Insert.code(),
        None,
        T0 + 7,
        b"torn",
    );
    torn[open_end..open_end + 24].copy_from_slice(&half[..24]);

    let mut flipped = sealed.clone();
    flipped[222] ^= 0x01; // padding after "key=1 value=2" (record at 168, payload 13 bytes)

    let truncated = sealed[..sealed.len() - 20].to_vec();

    vec![
        ("good/control".into(), control().encode().to_vec()),
        (format!("good/wal/{SEALED}"), sealed),
        (format!("good/wal/{OPEN}"), open),
        (format!("torn_tail/wal/{OPEN}"), torn),
        (format!("flipped_bit/wal/{SEALED}"), flipped),
        (format!("foreign_system/wal/{OPEN}"), foreign),
        (format!("truncated_seal/wal/{SEALED}"), truncated),
    ]
}

/// Segment format version 2: the same records, each carrying the writer's durable offset, and
/// the two cases that offset tells apart: bytes lost past the durable position with a later
/// page kept (the end of the log) and bytes lost that had been durable (damage).
fn golden_v2() -> Vec<(String, Vec<u8>)> {
    let recs = sealed_records();
    let (mut sealed, end) = segment(&header_v(2, 0, SYSTEM, None), &recs);
    let seal = SealInfo {
        record_count: recs.len() as u64,
        last_lsn: Some(walship::Lsn(224)),
        segment_checksum: crc32fast::hash(&sealed[..end]),
    };
    encode_seal(
        &mut sealed[end..end + SEAL_LEN],
        walship::Lsn(end as u64),
        128,
        T0 + 10,
        &seal,
    );
    sealed.truncate(end + SEAL_LEN);
    let prev = Some(seal.segment_checksum);
    let h = header_v(2, 1, SYSTEM, prev);
    let (open, open_end) = segment(&h, &open_records());
    // Three more records after the good ones: at 272 (durable offset 128), 312 (durable 128)
    // and 352; the first is then lost (zeros), the later ones kept.
    let more = |durable_last: u32| {
        let mut b = open.clone();
        let mut off = open_end;
        for (i, durable) in [128u32, 128, durable_last].into_iter().enumerate() {
            let p = format!("later {i}");
            let len = encoded_len(p.len());
            encode_record(
                &mut b[off..off + len],
                walship::Lsn(SEG + off as u64),
                durable,
                EntryType::Insert.code(),
                None,
                T0 + 20 + i as i64,
                p.as_bytes(),
            );
            off += len;
        }
        b[open_end..open_end + 40].fill(0);
        b
    };
    vec![
        ("good/control".into(), control().encode().to_vec()),
        (format!("good/wal/{SEALED}"), sealed),
        (format!("good/wal/{OPEN}"), open.clone()),
        (format!("out_of_order/wal/{OPEN}"), more(272)),
        (format!("synced_gap/wal/{OPEN}"), more(312)),
    ]
}

fn fixtures_v2() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/v2")
}

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/v1")
}

/// A scratch data directory: the good files with a variant's files laid over them.
fn datadir(variant: Option<&str>) -> (tempfile::TempDir, PathBuf) {
    let t = tempfile::tempdir().expect("tempdir");
    let d = t.path().join("data");
    common::copy_tree(&fixtures().join("good"), &d);
    std::fs::create_dir_all(d.join("state")).expect("state dir");
    if let Some(v) = variant {
        common::copy_tree(&fixtures().join(v), &d);
    }
    (t, d)
}

#[test]
#[ignore = "writes fixtures/v1 and fixtures/v2; run only for a deliberate format change"]
fn regenerate_fixtures() {
    for (root, files) in [(fixtures(), golden()), (fixtures_v2(), golden_v2())] {
        for (rel, bytes) in files {
            let p = root.join(rel);
            std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
            std::fs::write(&p, bytes).expect("write fixture");
        }
    }
}

#[test]
fn the_encoder_reproduces_every_golden_file() {
    let all = golden()
        .into_iter()
        .map(|(rel, b)| (fixtures().join(rel), b))
        .chain(
            golden_v2()
                .into_iter()
                .map(|(rel, b)| (fixtures_v2().join(rel), b)),
        );
    for (path, bytes) in all {
        let rel = path.display().to_string();
        let stored = std::fs::read(&path).unwrap_or_else(|e| panic!("{rel}: {e}"));
        assert_eq!(stored.len(), bytes.len(), "{rel}: length changed");
        if let Some(i) = (0..bytes.len()).find(|&i| stored[i] != bytes[i]) {
            panic!("{rel}: first difference at byte {i}: the format changed");
        }
    }
}

/// (lsn, end_lsn, segment file, offset, type, tx, timestamp, payload) of a record.
type Row = (u64, u64, String, u64, EntryType, Option<u64>, i64, Vec<u8>);

/// The good records.
fn expected() -> Vec<Row> {
    let mut out = Vec::new();
    for (name, start, recs) in [(SEALED, 0, sealed_records()), (OPEN, SEG, open_records())] {
        let mut off = 80u64;
        for (t, tx, ts, p) in recs {
            let end = off + encoded_len(p.len()) as u64;
            out.push((
                start + off,
                start + end,
                name.to_string(),
                off,
                t,
                tx,
                ts,
                p,
            ));
            off = end;
        }
    }
    out
}

fn read(d: &Path) -> (Vec<Row>, walship::Result<()>, LogEnd) {
    let mut r = WalReader::open(d, Lsn(0)).expect("open reader");
    let mut out = Vec::new();
    loop {
        match r.next_record() {
            Ok(Some(x)) => out.push((
                x.lsn.0,
                x.end_lsn.0,
                x.segment.to_string(),
                x.offset,
                x.entry_type,
                x.tx_id,
                x.timestamp_us,
                x.payload,
            )),
            Ok(None) => return (out, Ok(()), r.log_end().clone()),
            Err(e) => return (out, Err(e), r.log_end().clone()),
        }
    }
}

fn same_as_expected(got: &[Row], n: usize) {
    let want = expected();
    assert_eq!(got.len(), n);
    for (g, w) in got.iter().zip(&want) {
        assert_eq!((g.0, g.1, &g.2, g.3), (w.0, w.1, &w.2, w.3));
        assert_eq!((g.4, g.5, g.6, &g.7), (w.4, w.5, w.6, &w.7));
    }
}

#[test]
fn good_files_read_back_exactly() {
    let (_t, d) = datadir(None);
    let c = walship::DataDir::new(&d).read_control().expect("control");
    assert_eq!(c, control());
    let (got, res, end) = read(&d);
    res.expect("no damage");
    assert_eq!(end, LogEnd::Clean);
    same_as_expected(&got, 6);
    assert_eq!(
        got.iter().map(|g| g.0).collect::<Vec<_>>(),
        [80, 128, 168, 224, 65616, 65664]
    );

    let v = verify_path(&d).expect("verify");
    assert!(v.ok, "{:?}", v.errors);
    assert_eq!(
        (v.segments, v.records, v.first_lsn, v.end_lsn),
        (2, 6, Some(walship::Lsn(80)), walship::Lsn(65808))
    );
    assert!(v.notes.is_empty(), "{:?}", v.notes);

    // The writer continues the golden open segment right after its last record.
    let wal = Wal::open(&d, WalOptions::default()).expect("open golden directory");
    assert_eq!(wal.write_lsn(), Lsn(65808));
    assert_eq!(wal.sealed_lsn(), Lsn(264));
    let a = wal
        .append_durable(&walship::Entry::new(EntryType::Insert, None, b"new"))
        .expect("append");
    assert_eq!((a.lsn, a.end_lsn), (Lsn(65808), Lsn(65856)));
    // Its seal chains onto the golden sealed segment: the result verifies clean.
    wal.seal().expect("seal");
    drop(wal);
    assert_eq!(common::read_all(&d).expect("read").len(), 7);
    let v = verify_path(&d).expect("verify");
    assert!(v.ok, "{:?}", v.errors);
}

#[test]
fn torn_tail_is_the_end_of_the_log_and_recovery_zeroes_it() {
    let (_t, d) = datadir(Some("torn_tail"));
    let (got, res, end) = read(&d);
    res.expect("a torn tail is not damage");
    same_as_expected(&got, 6);
    match end {
        LogEnd::TornTail {
            segment, offset, ..
        } => {
            assert_eq!((segment.to_string().as_str(), offset), (OPEN, 272));
        }
        other => panic!("expected a torn tail, got {other:?}"),
    }
    let v = verify_path(&d).expect("verify");
    assert!(v.ok, "{:?}", v.errors);
    assert_eq!(v.notes.len(), 1);
    assert!(
        v.notes[0].contains("torn tail at offset 272 (LSN 0/00010110)"),
        "{:?}",
        v.notes
    );

    let strict = Wal::open(
        &d,
        WalOptions {
            recovery_mode: walship::RecoveryMode::Strict,
            ..WalOptions::default()
        },
    );
    let e = strict.err().expect("strict mode refuses a torn tail");
    assert!(e.to_string().contains("offset 272"), "{e}");

    let wal = Wal::open(&d, WalOptions::default()).expect("tolerate-tail recovery");
    assert_eq!(wal.write_lsn(), Lsn(65808));
    drop(wal);
    let b = std::fs::read(d.join("wal").join(OPEN)).expect("read");
    assert!(b[272..].iter().all(|&x| x == 0), "torn tail left behind");
    assert_eq!(
        b[..272],
        std::fs::read(fixtures().join("good/wal").join(OPEN)).expect("good")[..272]
    );
}

#[test]
fn flipped_bit_in_a_sealed_segment_is_found() {
    let (_t, d) = datadir(Some("flipped_bit"));
    let (got, res, _) = read(&d);
    same_as_expected(&got, 2);
    let e = res.expect_err("damage");
    assert!(e.is_corruption());
    let msg = e.to_string();
    assert!(
        msg.contains(SEALED) && msg.contains("offset 168 (LSN 0/000000A8)"),
        "{msg}"
    );
    assert!(msg.contains("record checksum mismatch"), "{msg}");

    let v = verify_path(&d).expect("verify");
    assert!(!v.ok);
    let e = &v.errors[0];
    assert_eq!(
        (e.segment.as_str(), e.offset, e.lsn),
        (SEALED, 168, walship::Lsn(168))
    );
    assert!(
        e.reason.contains("record checksum mismatch"),
        "{}",
        e.reason
    );
    let out = common::run(&["verify", d.to_str().expect("utf8")], b"");
    assert_eq!(common::code(&out), 1);
}

#[test]
fn foreign_segment_is_refused() {
    let (_t, d) = datadir(Some("foreign_system"));
    let v = verify_path(&d).expect("verify");
    assert!(!v.ok);
    assert_eq!(v.errors.len(), 1, "{:?}", v.errors);
    let e = &v.errors[0];
    assert_eq!(
        (e.segment.as_str(), e.offset, e.lsn),
        (OPEN, 0, walship::Lsn(SEG))
    );
    assert!(
        e.reason.contains(&Uuid::from_u128(FOREIGN).to_string()),
        "{}",
        e.reason
    );
    let err = Wal::open(&d, WalOptions::default()).err().expect("refused");
    assert!(err.is_corruption());
    let msg = err.to_string();
    assert!(
        msg.contains(OPEN) && msg.contains("belongs to system"),
        "{msg}"
    );
}

#[test]
fn truncated_seal_is_damage() {
    let (_t, d) = datadir(Some("truncated_seal"));
    let v = verify_path(&d).expect("verify");
    assert!(!v.ok);
    let e = &v.errors[0];
    assert_eq!(
        (e.segment.as_str(), e.offset, e.lsn),
        (SEALED, 264, walship::Lsn(264))
    );
    assert!(
        e.reason
            .contains("record truncated: needs 64 bytes, 44 remain"),
        "{}",
        e.reason
    );
    let (got, res, _) = read(&d);
    same_as_expected(&got, 4);
    assert!(res.expect_err("damage").to_string().contains("offset 264"));
    let err = Wal::open(&d, WalOptions::default()).err().expect("refused");
    assert!(err.is_corruption());
    // The writer names the damage where verify and the reader do.
    let msg = err.to_string();
    assert!(
        msg.contains(SEALED)
            && msg.contains("offset 264")
            && msg.contains("record truncated: needs 64 bytes, 44 remain"),
        "{msg}"
    );
}

/// A scratch data directory from the version 2 golden files, with a variant laid over them.
fn datadir_v2(variant: Option<&str>) -> (tempfile::TempDir, PathBuf) {
    let t = tempfile::tempdir().expect("tempdir");
    let d = t.path().join("data");
    common::copy_tree(&fixtures_v2().join("good"), &d);
    std::fs::create_dir_all(d.join("state")).expect("state dir");
    if let Some(v) = variant {
        common::copy_tree(&fixtures_v2().join(v), &d);
    }
    (t, d)
}

#[test]
fn version_2_files_read_back_exactly_and_a_version_1_directory_continues_in_version_2() {
    let (_t, d) = datadir_v2(None);
    let (got, res, end) = read(&d);
    res.expect("no damage");
    assert_eq!(end, LogEnd::Clean);
    same_as_expected(&got, 6);
    let v = verify_path(&d).expect("verify");
    assert!(v.ok && v.notes.is_empty(), "{:?} {:?}", v.errors, v.notes);

    // A version 1 directory: the writer continues its version 1 open segment with durable
    // offsets left zero, and writes its next segment in version 2.
    let (_t1, d1) = datadir(None);
    let wal = Wal::open(&d1, WalOptions::default()).expect("open v1");
    wal.append_durable(&walship::Entry::new(EntryType::Insert, None, b"v1 tail"))
        .expect("append");
    wal.seal().expect("seal");
    wal.append_durable(&walship::Entry::new(EntryType::Insert, None, b"v2 head"))
        .expect("append");
    drop(wal);
    let open1 =
        std::fs::read(d1.join("wal").join(OPEN.trim_end_matches(".open"))).expect("sealed 1");
    assert_eq!(
        walship::format::SegmentHeader::decode(&open1)
            .expect("h")
            .format_version,
        1
    );
    assert!(open1[272 + 36..272 + 40].iter().all(|&b| b == 0));
    let (_, p2) = common::open_segment(&d1).expect("segment 2");
    let h2 = walship::format::SegmentHeader::decode(&std::fs::read(p2).expect("r")).expect("h");
    assert_eq!(h2.format_version, 2);
    assert_eq!(common::read_all(&d1).expect("read").len(), 8);
    assert!(verify_path(&d1).expect("verify").ok);
}

#[test]
fn version_2_bytes_lost_before_the_durable_position_only_end_the_log() {
    let (_t, d) = datadir_v2(Some("out_of_order"));
    let (got, res, end) = read(&d);
    res.expect("not damage: nothing was durable past offset 272");
    same_as_expected(&got, 6);
    assert!(
        matches!(end, LogEnd::TornTail { offset: 272, .. }),
        "{end:?}"
    );
    let v = verify_path(&d).expect("verify");
    assert!(v.ok, "{:?}", v.errors);
    assert!(
        v.notes
            .iter()
            .any(|n| n.contains("2 valid records after it")),
        "{:?}",
        v.notes
    );
    let found = std::fs::read(d.join("wal").join(OPEN)).expect("read");
    let wal = Wal::open(&d, WalOptions::default()).expect("the log ends at 272");
    assert_eq!(wal.write_lsn(), Lsn(SEG + 272));
    drop(wal);
    let aside = walship::setaside::list(&walship::DataDir::new(&d)).expect("list");
    assert_eq!(aside.len(), 1);
    let copy = walship::setaside::setaside_dir(&walship::DataDir::new(&d)).join(&aside[0]);
    assert_eq!(std::fs::read(copy).expect("copy"), found);
}

#[test]
fn version_2_bytes_lost_behind_a_later_durable_position_are_damage() {
    let (_t, d) = datadir_v2(Some("synced_gap"));
    let (got, res, _) = read(&d);
    same_as_expected(&got, 6);
    let e = res.expect_err("damage");
    assert!(e.to_string().contains("durable up to offset 312"), "{e}");
    let v = verify_path(&d).expect("verify");
    assert!(!v.ok);
    assert_eq!(
        (v.errors[0].offset, v.errors[0].lsn),
        (272, walship::Lsn(SEG + 272))
    );
    let before = std::fs::read(d.join("wal").join(OPEN)).expect("read");
    let e = Wal::open(&d, WalOptions::default()).err().expect("refused");
    assert!(
        e.is_corruption() && e.to_string().contains("offset 272"),
        "{e}"
    );
    assert_eq!(
        std::fs::read(d.join("wal").join(OPEN)).expect("read"),
        before
    );
}

/// The archive identity files, one per archive layout version (docs/ARCHIVE.md): version 1
/// (no first segment) is still read, version 2 is what walship writes.
fn archive_identities() -> Vec<(String, walship::archive::ArchiveIdentity)> {
    let v1 = walship::archive::ArchiveIdentity {
        system: walship::format::SystemIdentity {
            system_id: Uuid::from_u128(SYSTEM),
            timeline: 1,
            segment_size: SEG,
            format_version: 1,
        },
        first_segment: None,
    };
    let v2 = walship::archive::ArchiveIdentity {
        first_segment: Some(42),
        ..v1
    };
    vec![
        ("archive/v1/IDENTITY".into(), v1),
        ("archive/v2/IDENTITY".into(), v2),
    ]
}

fn archive_fixture(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(rel)
}

#[test]
#[ignore = "writes fixtures/archive; run only for a deliberate archive layout change"]
fn regenerate_archive_fixtures() {
    for (rel, id) in archive_identities() {
        let p = archive_fixture(&rel);
        std::fs::create_dir_all(p.parent().expect("parent")).expect("mkdir");
        std::fs::write(&p, id.encode()).expect("write fixture");
    }
}

#[test]
fn archive_identity_files_of_every_layout_version_read_and_encode_exactly() {
    let texts = [
        "walship-archive 1\nsystem_id 57414c53-4849-5000-0000-000000000001\ntimeline 1\nsegment_size 65536\nformat_version 1\ncrc32 ",
        "walship-archive 2\nsystem_id 57414c53-4849-5000-0000-000000000001\ntimeline 1\nsegment_size 65536\nformat_version 1\nfirst_segment 42\ncrc32 ",
    ];
    for ((rel, id), text) in archive_identities().into_iter().zip(texts) {
        let stored = std::fs::read(archive_fixture(&rel)).unwrap_or_else(|e| panic!("{rel}: {e}"));
        assert_eq!(stored, id.encode(), "{rel}: the encoding changed");
        assert!(
            String::from_utf8_lossy(&stored).starts_with(text),
            "{rel}: {}",
            String::from_utf8_lossy(&stored)
        );
        assert_eq!(
            walship::archive::ArchiveIdentity::decode(&stored),
            Ok(id),
            "{rel}"
        );
    }
}

/// An archive holds a timeline's history under the data directory's name, byte for byte the
/// golden history file (docs/ARCHIVE.md, layout).
#[test]
fn an_archived_history_file_is_the_golden_file_byte_for_byte() {
    let golden = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/history/v1");
    let t = tempfile::tempdir().expect("tempdir");
    let store = walship::archive::LocalDirStore::create(t.path().join("archive")).expect("store");
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime");
    for name in ["00000002.history", "00000003.history"] {
        let bytes = std::fs::read(golden.join(name)).expect("golden");
        let h = walship::format::history::HistoryFile::decode(&bytes, name).expect("decode");
        rt.block_on(walship::archive::put_history(&store, &h))
            .expect("put");
        assert_eq!(
            std::fs::read(t.path().join("archive").join(name)).expect("archived"),
            bytes,
            "{name}"
        );
    }
    assert_eq!(
        rt.block_on(walship::archive::list_histories(&store))
            .expect("list"),
        vec![2, 3]
    );
}
