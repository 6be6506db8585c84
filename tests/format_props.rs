//! Property tests of the on-disk format: every encoder round-trips through its decoder, and no
//! single corruption of a segment the writer made ever yields a wrong record.

mod common;

use std::sync::OnceLock;

use proptest::prelude::*;
use uuid::Uuid;
use walship::decoder::{ScanEnd, ScanError, SegmentScanner};
use walship::format::control::CONTROL_LEN;
use walship::format::record::{
    decode_at, encode_record, encode_seal, encoded_len, Decoded, RecordError, RecordRef, SEAL_LEN,
};
use walship::format::segment_header::SEGMENT_HEADER_LEN;
use walship::format::{
    ControlFile, SealInfo, SegmentFileKind, SegmentHeader, FORMAT_VERSION, SEGMENT_FORMAT_VERSION,
};
use walship::verify::verify_path;
use walship::{Entry, EntryType, Wal, WalOptions, WalRecord};

fn entry_type() -> impl Strategy<Value = EntryType> {
    prop::sample::select(EntryType::ALL.to_vec())
}

fn segment_size() -> impl Strategy<Value = u64> {
    (16u32..=30).prop_map(|p| 1u64 << p)
}

proptest! {
    #[test]
    fn record_round_trip(
        slot in 0u64..(1 << 40),
        t in entry_type(),
        tx in prop::option::of(any::<u64>()),
        ts in any::<i64>(),
        payload in prop::collection::vec(any::<u8>(), 0..600),
        lead in 0usize..4,
        durable_seed in any::<u32>(),
    ) {
        let lsn = slot * 8;
        let len = encoded_len(payload.len());
        prop_assert_eq!(len % 8, 0);
        prop_assert!(len >= 40 + payload.len() && len < 48 + payload.len());
        // Stale non-zero bytes where the record goes must not leak into it (padding included).
        let mut buf = vec![0xA5u8; lead * 8 + len];
        // The durable offset can be anything up to the record's own offset in its segment.
        let own = lsn % buf.len() as u64;
        let durable = (u64::from(durable_seed) % (own + 1)) as u32;
        let crc = encode_record(&mut buf[lead * 8..], walship::Lsn(lsn), durable, t.code(), tx, ts, &payload);
        match decode_at(&buf, lead * 8, walship::Lsn(lsn), buf.len()) {
            Ok(Decoded::Record(r)) => {
                prop_assert_eq!(r.lsn().0, lsn);
                prop_assert_eq!(r.end_lsn().0, lsn + len as u64);
                prop_assert_eq!(r.entry_type, t);
                prop_assert_eq!(r.header.tx_id, tx);
                prop_assert_eq!(r.header.timestamp_us, ts);
                prop_assert_eq!(r.header.crc, crc);
                prop_assert_eq!(r.header.durable_offset, durable);
                prop_assert_eq!(r.payload, &payload[..]);
            }
            other => prop_assert!(false, "decoded {:?}", other),
        }
        prop_assert!(buf[lead * 8 + 40 + payload.len()..].iter().all(|&b| b == 0));
        // The same bytes at any other position are not a record.
        prop_assert!(decode_at(&buf, lead * 8, walship::Lsn(lsn + 8), buf.len()).is_err());
    }

    #[test]
    fn segment_header_round_trip(
        size in segment_size(),
        no in 0u64..(1 << 30),
        tl in any::<u32>(),
        id in any::<u128>(),
        prev in prop::option::of(any::<u32>()),
        created in any::<i64>(),
    ) {
        let h = SegmentHeader {
            format_version: SEGMENT_FORMAT_VERSION,
            timeline: tl,
            segment_size: size,
            segment_no: no,
            system_id: Uuid::from_u128(id),
            prev_checksum: prev,
            created_us: created,
        };
        let b = h.encode();
        prop_assert_eq!(b.len(), SEGMENT_HEADER_LEN);
        prop_assert_eq!(SegmentHeader::decode(&b), Ok(h));
        prop_assert_eq!(h.start_lsn().0, no * size);
    }

    #[test]
    fn control_round_trip(
        size in segment_size(),
        tl in any::<u32>(),
        id in any::<u128>(),
        created in any::<i64>(),
        flip in 0usize..CONTROL_LEN * 8,
    ) {
        let c = ControlFile {
            identity: walship::format::SystemIdentity {
                format_version: FORMAT_VERSION,
                timeline: tl,
                system_id: Uuid::from_u128(id),
                segment_size: size,
            },
            created_us: created,
        };
        let b = c.encode();
        prop_assert_eq!(ControlFile::decode(&b), Ok(c));
        let mut d = b;
        d[flip / 8] ^= 1 << (flip % 8);
        prop_assert!(ControlFile::decode(&d).is_err());
    }
}

/// Segments made by the real writer: one sealed and one open, with what they hold.
struct Sample {
    sealed: Vec<u8>,
    open: Vec<u8>,
    sealed_records: Vec<WalRecord>,
    open_records: Vec<WalRecord>,
}

fn sample() -> &'static Sample {
    static S: OnceLock<Sample> = OnceLock::new();
    S.get_or_init(|| {
        let (_tmp, dir) = common::new_dir();
        let wal = Wal::open(&dir, WalOptions::default()).expect("open");
        let mut n = 0u64;
        for round in 0..2 {
            for i in 0..40u64 {
                n += 1;
                let payload: Vec<u8> = (0..(n * 37 % 300) as usize)
                    .map(|k| (k as u64 ^ n) as u8)
                    .collect();
                let t = EntryType::ALL[(n % 9) as usize];
                let tx = (i % 3 != 0).then_some(n * 1000);
                wal.append(&Entry::new(t, tx, &payload)).expect("append");
            }
            if round == 0 {
                wal.seal().expect("seal");
            }
        }
        wal.sync().expect("sync");
        drop(wal);
        let all = common::read_all(&dir).expect("read back");
        let (sealed_records, open_records): (Vec<_>, Vec<_>) = all
            .into_iter()
            .partition(|r| r.segment.kind == SegmentFileKind::Sealed);
        assert_eq!((sealed_records.len(), open_records.len()), (40, 40));
        Sample {
            sealed: std::fs::read(common::seg_path(&dir, 0, SegmentFileKind::Sealed))
                .expect("read sealed"),
            open: std::fs::read(common::seg_path(&dir, 1, SegmentFileKind::Open))
                .expect("read open"),
            sealed_records,
            open_records,
        }
    })
}

#[derive(Clone, Debug)]
enum Corruption {
    BitFlip { at: usize, bit: u8 },
    Truncate { to: usize },
    Zero { at: usize, len: usize },
    Append { garbage: Vec<u8> },
}

impl Corruption {
    /// Applies the corruption; false when it left the bytes as they were.
    fn apply(&self, b: &mut Vec<u8>) -> bool {
        let before = b.clone();
        match self {
            Corruption::BitFlip { at, bit } => {
                let i = at % b.len();
                b[i] ^= 1 << bit;
            }
            Corruption::Truncate { to } => b.truncate(to % b.len()),
            Corruption::Zero { at, len } => {
                let s = at % b.len();
                let e = (s + len).min(b.len());
                b[s..e].fill(0);
            }
            Corruption::Append { garbage } => b.extend_from_slice(garbage),
        }
        *b != before
    }
}

fn corruption() -> impl Strategy<Value = Corruption> {
    prop_oneof![
        (any::<usize>(), 0u8..8).prop_map(|(at, bit)| Corruption::BitFlip { at, bit }),
        any::<usize>().prop_map(|to| Corruption::Truncate { to }),
        (any::<usize>(), 1usize..200).prop_map(|(at, len)| Corruption::Zero { at, len }),
        prop::collection::vec(any::<u8>(), 1..200)
            .prop_map(|garbage| Corruption::Append { garbage }),
    ]
}

fn same(a: &WalRecord, lsn: u64, t: EntryType, tx: Option<u64>, ts: i64, payload: &[u8]) -> bool {
    a.lsn.0 == lsn
        && a.entry_type == t
        && a.tx_id == tx
        && a.timestamp_us == ts
        && a.payload == payload
}

/// The scanner yields a prefix of the true records and nothing else; returns how it ended.
fn scan_prefix(bytes: &[u8], truth: &[WalRecord]) -> Result<Option<ScanEnd>, TestCaseError> {
    let Ok(mut scan) = SegmentScanner::new(bytes) else {
        return Ok(None);
    };
    for (i, r) in scan.by_ref().enumerate() {
        prop_assert!(
            i < truth.len(),
            "scanner yielded an extra record at {}",
            r.lsn()
        );
        prop_assert!(
            same(
                &truth[i],
                r.lsn().0,
                r.entry_type,
                r.header.tx_id,
                r.header.timestamp_us,
                r.payload
            ),
            "scanner yielded a wrong record at {}",
            r.lsn()
        );
    }
    Ok(scan.end().cloned())
}

/// The reader over a file holding `bytes` yields a prefix of the true records, then either
/// ends or fails with a located corruption error.
fn reader_prefix(
    bytes: &[u8],
    kind: SegmentFileKind,
    no: u64,
    truth: &[WalRecord],
) -> Result<(usize, bool), TestCaseError> {
    let tmp = tempfile::tempdir().expect("tempdir");
    let path = tmp
        .path()
        .join(walship::format::SegmentName::new(1, no, kind).to_string());
    std::fs::write(&path, bytes).expect("write");
    let mut n = 0;
    let mut failed = false;
    match walship::WalReader::open(&path, walship::Lsn(0)) {
        Ok(mut r) => loop {
            match r.next_record() {
                Ok(Some(rec)) => {
                    prop_assert!(n < truth.len(), "reader yielded an extra record");
                    prop_assert_eq!(&rec, &truth[n]);
                    n += 1;
                }
                Ok(None) => break,
                Err(e) => {
                    prop_assert!(e.is_corruption(), "unclear error: {}", e);
                    prop_assert!(
                        e.to_string().contains(&path.display().to_string()),
                        "error does not name the file: {}",
                        e
                    );
                    failed = true;
                    break;
                }
            }
        },
        Err(e) => prop_assert!(false, "open failed: {}", e),
    }
    let report = verify_path(&path).expect("verify runs");
    if failed {
        prop_assert!(!report.ok, "the reader failed but verify passed");
    }
    Ok((n, failed || !report.ok))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// A sealed segment changed in any way is never taken for a whole one, and nothing it
    /// yields is wrong.
    #[test]
    fn corrupted_sealed_segment_never_yields_a_wrong_record(c in corruption()) {
        let s = sample();
        let mut b = s.sealed.clone();
        prop_assume!(c.apply(&mut b));
        if let Some(ScanEnd::Sealed { trailing, .. }) = scan_prefix(&b, &s.sealed_records)? {
            prop_assert!(trailing > 0, "{:?} left a sealed segment that scans clean", c);
        }
    }

    /// In an open segment, a corruption either cuts the log at a position the scanner reports
    /// or is found; records before it are exact.
    #[test]
    fn corrupted_open_segment_never_yields_a_wrong_record(c in corruption()) {
        let s = sample();
        let mut b = s.open.clone();
        prop_assume!(c.apply(&mut b));
        scan_prefix(&b, &s.open_records)?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    /// The same through files, the reader and verify: a damaged sealed segment is reported.
    #[test]
    fn reader_and_verify_report_damaged_sealed_segments(c in corruption()) {
        let s = sample();
        let mut b = s.sealed.clone();
        prop_assume!(c.apply(&mut b));
        let (_, found) = reader_prefix(&b, SegmentFileKind::Sealed, 0, &s.sealed_records)?;
        prop_assert!(found, "{:?} not reported by verify or the reader", c);
    }

    #[test]
    fn reader_gives_valid_prefix_of_damaged_open_segment(c in corruption()) {
        let s = sample();
        let mut b = s.open.clone();
        prop_assume!(c.apply(&mut b));
        let (n, found) = reader_prefix(&b, SegmentFileKind::Open, 1, &s.open_records)?;
        // Losing records without a report is only allowed when nothing proves the lost bytes
        // had been durable: no intact record that follows was appended when the log was
        // durable past them (then the damage is indistinguishable from a torn tail).
        if n < s.open_records.len() && !found {
            let cut = s.open_records[n].offset as usize;
            let last = &s.open_records[s.open_records.len() - 1];
            let last_off = last.offset as usize;
            let last_durable = u32::from_le_bytes(
                s.open[last_off + 36..last_off + 40].try_into().expect("4 bytes"),
            ) as usize;
            let intact = b.len() >= last_off + (last.end_lsn.0 - last.lsn.0) as usize
                && b[last_off..last_off + (last.end_lsn.0 - last.lsn.0) as usize]
                    == s.open[last_off..last_off + (last.end_lsn.0 - last.lsn.0) as usize]
                && last_durable > cut;
            prop_assert!(!intact, "{:?}: records lost silently though the last record proves them durable", c);
        }
    }
}

#[test]
fn decoder_survives_arbitrary_bytes() {
    use proptest::test_runner::TestRunner;
    let mut runner = TestRunner::default();
    runner
        .run(
            &(
                prop::collection::vec(any::<u8>(), 0..400),
                0usize..400,
                any::<u64>(),
            ),
            |(bytes, off, lsn)| {
                let _ = decode_at(&bytes, off, walship::Lsn(lsn & !7), 1 << 16);
                Ok(())
            },
        )
        .expect("no panic");
}

/// Scans `bytes` twice: as the scanner does (one pass over a sealed segment whose checksum
/// matches, no per-record CRC) and checking every record's own CRC. Both must yield the same
/// records and end the same way; returns that end (`None`: the header is not valid).
fn both_scans(bytes: &[u8]) -> Result<Option<(Vec<RecordRef<'_>>, ScanEnd, usize)>, TestCaseError> {
    let (Ok(mut fast), Ok(slow)) = (SegmentScanner::new(bytes), SegmentScanner::new(bytes)) else {
        prop_assert!(SegmentScanner::new(bytes).is_err());
        return Ok(None);
    };
    let mut slow = slow.checking_every_record();
    prop_assert_eq!(slow.unhashed_until(), 0);
    let unhashed = fast.unhashed_until();
    let fast_records: Vec<_> = fast.by_ref().collect();
    let slow_records: Vec<_> = slow.by_ref().collect();
    prop_assert_eq!(&fast_records, &slow_records);
    let end = fast.finish();
    prop_assert_eq!(&end, &slow.finish());
    Ok(Some((fast_records, end, unhashed)))
}

/// A sealed segment image of `records` (type, tx id, timestamp, payload), laid out as the
/// writer lays it out, ending right after its seal marker.
fn sealed_image(records: &[(EntryType, Option<u64>, i64, Vec<u8>)]) -> Vec<u8> {
    let size = 1u64 << 16;
    let header = SegmentHeader {
        format_version: SEGMENT_FORMAT_VERSION,
        timeline: 1,
        segment_size: size,
        segment_no: 5,
        system_id: Uuid::from_u128(7),
        prev_checksum: Some(0x1234_5678),
        created_us: 1,
    };
    let mut b = header.encode().to_vec();
    let mut last_lsn = None;
    for (t, tx, ts, payload) in records {
        let off = b.len();
        let lsn = header.start_lsn() + off as u64;
        last_lsn = Some(lsn);
        b.resize(off + encoded_len(payload.len()), 0);
        let durable = (off - SEGMENT_HEADER_LEN) as u32 & !7;
        encode_record(&mut b[off..], lsn, durable, t.code(), *tx, *ts, payload);
    }
    let off = b.len();
    let seal = SealInfo {
        record_count: records.len() as u64,
        last_lsn,
        segment_checksum: crc32fast::hash(&b),
    };
    b.resize(off + SEAL_LEN, 0);
    encode_seal(&mut b[off..], header.start_lsn() + off as u64, 0, 2, &seal);
    b
}

fn records() -> impl Strategy<Value = Vec<(EntryType, Option<u64>, i64, Vec<u8>)>> {
    prop::collection::vec(
        (
            entry_type(),
            prop::option::of(any::<u64>()),
            any::<i64>(),
            prop::collection::vec(any::<u8>(), 0..300),
        ),
        0..40,
    )
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// A whole sealed segment is read in one pass, and yields exactly what checking every
    /// record's CRC yields; with any one bit flipped, the two still agree (same records, same
    /// offset and reason) and the damage is found.
    #[test]
    fn sealed_segment_single_pass_matches_per_record_checks(
        recs in records(),
        flip in any::<prop::sample::Index>(),
        bit in 0u8..8,
    ) {
        let b = sealed_image(&recs);
        let Some((yielded, end, unhashed)) = both_scans(&b)? else {
            return Err(TestCaseError::fail("the image's header is not valid"));
        };
        let seal_at = b.len() - SEAL_LEN;
        prop_assert_eq!(unhashed, seal_at, "a whole sealed segment must take the single pass");
        prop_assert_eq!(yielded.len(), recs.len());
        for (r, (t, tx, ts, payload)) in yielded.iter().zip(&recs) {
            prop_assert_eq!((r.entry_type, r.header.tx_id, r.header.timestamp_us), (*t, *tx, *ts));
            prop_assert_eq!(r.payload, &payload[..]);
        }
        let clean = matches!(end, ScanEnd::Sealed { offset, trailing: 0, .. } if offset == seal_at);
        prop_assert!(clean, "ended with {:?}", end);

        let mut d = b.clone();
        let at = flip.index(d.len());
        d[at] ^= 1 << bit;
        if let Some((_, end, unhashed)) = both_scans(&d)? {
            prop_assert_eq!(unhashed, 0, "a damaged segment must be checked record by record");
            prop_assert!(!matches!(end, ScanEnd::Sealed { trailing: 0, .. }), "a flipped bit went unnoticed");
        }
    }
}

/// Every single bit of a sealed segment the real writer made, flipped in turn: the scanner
/// finds the damage at the same offset and for the same reason as checking every record's
/// CRC, and a flip inside a record's payload is reported at that record, not at the seal.
#[test]
fn every_bit_flip_in_a_sealed_segment_is_reported_where_it_was_before() {
    let s = sample();
    let mut b = s.sealed.clone();
    let whole = both_scans(&b).expect("scans agree").expect("valid header");
    assert_eq!(whole.1.offset(), b.len() - SEAL_LEN);
    assert_eq!(
        whole.2,
        b.len() - SEAL_LEN,
        "single pass over the whole segment"
    );
    for i in 0..b.len() {
        for bit in 0..8 {
            b[i] ^= 1 << bit;
            let got = both_scans(&b).unwrap_or_else(|e| panic!("byte {i} bit {bit}: {e}"));
            if let Some((_, end, unhashed)) = got {
                assert_eq!(unhashed, 0, "byte {i} bit {bit}");
                assert!(
                    !matches!(end, ScanEnd::Sealed { trailing: 0, .. }),
                    "byte {i} bit {bit} went unnoticed"
                );
                let hit = s.sealed_records.iter().find(|r| {
                    let o = r.offset as usize;
                    (o + 40..o + 40 + r.payload.len()).contains(&i)
                });
                if let Some(r) = hit {
                    assert!(
                        matches!(
                            &end,
                            ScanEnd::Invalid {
                                offset,
                                error: ScanError::Record(RecordError::ChecksumMismatch { .. })
                            } if *offset == r.offset as usize
                        ),
                        "byte {i} bit {bit}: {end:?}"
                    );
                }
            }
            b[i] ^= 1 << bit;
        }
    }
}
