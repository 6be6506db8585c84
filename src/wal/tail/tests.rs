//! The tail's unit tests, over a real data directory without the writer's threads.

use super::*;
use crate::decoder::{ScanEnd, SegmentScanner};
use crate::format::record::{decode_at, Decoded};
use crate::sync::lock;
use crate::wal::test_support::{entry, init, name, open, wal_files, SEG};
use crate::wal::WalOptions;

fn fresh(segment_size: u64) -> (tempfile::TempDir, std::path::PathBuf, Inner) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path().join("d");
    init(&root, segment_size);
    let inner = open(&root, WalOptions::default());
    (tmp, root, inner)
}

fn read(root: &std::path::Path, file: &str) -> Vec<u8> {
    std::fs::read(root.join("wal").join(file)).expect("read a segment")
}

#[test]
fn the_first_append_activates_segment_zero_with_its_header_then_the_record() {
    let (_tmp, root, inner) = fresh(SEG);
    assert!(wal_files(&root).is_empty());
    let mut st = lock(&inner.tail);
    let a = inner
        .append_locked(&mut st, &entry(b"first"), 42)
        .expect("append");
    let start = SEGMENT_HEADER_LEN as u64;
    let len = encoded_len(5);
    assert_eq!(a.lsn, Lsn(start));
    assert_eq!(a.end_lsn, Lsn(start + len as u64));
    assert_eq!(
        (st.off, st.end_lsn, st.seg_records, st.seg_last_lsn),
        (
            SEGMENT_HEADER_LEN + len,
            Lsn(start + len as u64),
            1,
            Some(Lsn(start))
        )
    );
    assert_eq!(st.next_segment_no, 1);
    assert_eq!(
        st.prepare_next,
        Some(1),
        "the preparer is asked for the next"
    );
    assert_eq!(st.tickets, 1, "the activation took a ticket");
    drop(st);
    let open0 = name(0, SegmentFileKind::Open);
    assert_eq!(wal_files(&root), vec![open0.clone()]);
    let bytes = read(&root, &open0);
    assert_eq!(bytes.len() as u64, SEG, "an open segment has its full size");
    let h = SegmentHeader::decode(&bytes[..SEGMENT_HEADER_LEN]).expect("header");
    assert_eq!(
        (h.segment_no, h.segment_size, h.prev_checksum, h.system_id),
        (0, SEG, None, inner.control.system_id)
    );
    match decode_at(&bytes, SEGMENT_HEADER_LEN, Lsn(start), SEG as usize).expect("record") {
        Decoded::Record(r) => {
            assert_eq!(r.payload, b"first");
            assert_eq!(r.header.timestamp_us, 42);
            assert_eq!(r.entry_type, crate::EntryType::Insert);
        }
        Decoded::Seal(_) => panic!("a seal marker where the record should be"),
    }
    assert!(
        bytes[SEGMENT_HEADER_LEN + len..].iter().all(|&b| b == 0),
        "nothing past the record"
    );
}

#[test]
fn a_record_too_large_for_a_segment_is_refused_and_the_largest_fits() {
    let (_tmp, root, inner) = fresh(SEG);
    let max = inner.max_payload();
    let mut st = lock(&inner.tail);
    let big = vec![7u8; max + 1];
    match inner.append_locked(&mut st, &entry(&big), 0) {
        Err(Error::RecordTooLarge {
            len,
            max: m,
            segment_size,
        }) => assert_eq!((len, m, segment_size), (max + 1, max, SEG)),
        other => panic!("expected RecordTooLarge, got {other:?}"),
    }
    assert_eq!((st.end_lsn, st.tickets), (Lsn(0), 0), "nothing appended");
    assert!(st.seg.is_none());
    let fits = vec![8u8; max];
    let a = inner
        .append_locked(&mut st, &entry(&fits), 0)
        .expect("the largest payload fits an empty segment");
    assert_eq!(a.lsn, Lsn(SEGMENT_HEADER_LEN as u64));
    // The segment is full: the next record, however small, goes to the next one.
    let b = inner
        .append_locked(&mut st, &entry(b"x"), 0)
        .expect("append");
    assert_eq!(b.lsn, Lsn(SEG + SEGMENT_HEADER_LEN as u64));
    drop(st);
    assert_eq!(
        wal_files(&root),
        vec![
            name(0, SegmentFileKind::Sealed),
            name(1, SegmentFileKind::Open)
        ]
    );
}

#[test]
fn a_full_segment_is_sealed_and_the_next_one_chains_to_its_checksum() {
    let (_tmp, root, inner) = fresh(SEG);
    let payload = [3u8; 1000];
    let mut st = lock(&inner.tail);
    let mut in_first = 0u64;
    let mut last_in_first = 0;
    let next = loop {
        let a = inner
            .append_locked(&mut st, &entry(&payload), 0)
            .expect("append");
        if a.lsn.0 >= SEG {
            break a;
        }
        in_first += 1;
        last_in_first = a.lsn.0;
    };
    assert_eq!(next.lsn, Lsn(SEG + SEGMENT_HEADER_LEN as u64));
    assert_eq!(st.seg_records, 1);
    assert_eq!(st.tickets, 3, "activation, seal, activation");
    assert_eq!(st.last_seal, 2);
    drop(st);
    let sealed = read(&root, &name(0, SegmentFileKind::Sealed));
    let mut scan = SegmentScanner::new(&sealed).expect("a segment header");
    assert_eq!(scan.by_ref().count() as u64, in_first);
    let seal = match scan.finish() {
        ScanEnd::Sealed {
            offset,
            seal,
            trailing,
        } => {
            assert_eq!(offset + SEAL_LEN, sealed.len(), "cut after its marker");
            assert_eq!(trailing, 0);
            seal
        }
        other => panic!("the sealed segment ends {other:?}"),
    };
    assert_eq!(seal.record_count, in_first);
    assert_eq!(seal.last_lsn, Some(Lsn(last_in_first)));
    assert_eq!(
        seal.segment_checksum,
        crc32fast::hash(&sealed[..sealed.len() - SEAL_LEN])
    );
    let open1 = read(&root, &name(1, SegmentFileKind::Open));
    let h = SegmentHeader::decode(&open1[..SEGMENT_HEADER_LEN]).expect("header");
    assert_eq!(h.segment_no, 1);
    assert_eq!(h.prev_checksum, Some(seal.segment_checksum));
    assert_eq!(
        inner.sealed.load(Ordering::Acquire),
        last_in_first + encoded_len(payload.len()) as u64,
        "the sealed LSN is the end of the first segment's last record"
    );
}

#[test]
fn sealing_needs_records_and_the_next_append_activates_the_next_number() {
    let (_tmp, root, inner) = fresh(SEG);
    let mut st = lock(&inner.tail);
    assert_eq!(inner.seal_locked(&mut st, false).expect("seal"), None);
    assert_eq!(st.tickets, 0);
    inner
        .append_locked(&mut st, &entry(b"one"), 0)
        .expect("append");
    let sealed = inner.seal_locked(&mut st, false).expect("seal");
    assert_eq!(
        sealed,
        Some(SegmentName::new(1, 0, SegmentFileKind::Sealed))
    );
    assert!(st.seg.is_none(), "no open segment until the next append");
    assert_eq!((st.tickets, st.last_seal, st.next_segment_no), (2, 2, 1));
    let checksum = st.prev_checksum.expect("the seal's checksum is kept");
    assert_eq!(
        inner.seal_locked(&mut st, false).expect("seal"),
        None,
        "nothing open"
    );
    let a = inner
        .append_locked(&mut st, &entry(b"two"), 0)
        .expect("append");
    assert_eq!(a.lsn, Lsn(SEG + SEGMENT_HEADER_LEN as u64));
    drop(st);
    let open1 = read(&root, &name(1, SegmentFileKind::Open));
    let h = SegmentHeader::decode(&open1[..SEGMENT_HEADER_LEN]).expect("header");
    assert_eq!(h.prev_checksum, Some(checksum));
}

#[test]
fn each_record_carries_how_far_the_log_was_durable_when_it_was_appended() {
    let (_tmp, root, inner) = fresh(SEG);
    let a = {
        let mut st = lock(&inner.tail);
        inner
            .append_locked(&mut st, &entry(b"first"), 0)
            .expect("append")
    };
    inner.written.fetch_max(a.end_lsn.0, Ordering::AcqRel);
    inner.wait_durable(a.end_lsn.0).expect("sync");
    let b = {
        let mut st = lock(&inner.tail);
        inner
            .append_locked(&mut st, &entry(b"second"), 0)
            .expect("append")
    };
    let bytes = read(&root, &name(0, SegmentFileKind::Open));
    let durable_of = |lsn: u64| match decode_at(&bytes, lsn as usize, Lsn(lsn), SEG as usize) {
        Ok(Decoded::Record(r)) => r.header.durable_offset,
        other => panic!("no record at {lsn}: {other:?}"),
    };
    assert_eq!(durable_of(a.lsn.0), 0, "nothing was durable yet");
    assert_eq!(durable_of(b.lsn.0) as u64, a.end_lsn.0);
}

#[test]
fn writeback_is_started_once_per_whole_chunk_behind_the_write_position() {
    let (_tmp, _root, inner) = fresh(4 << 20);
    let payload = vec![5u8; 100_000];
    let mut st = lock(&inner.tail);
    let mut due = Vec::new();
    while st.off < 2 * WRITEBACK_CHUNK + 1000 {
        inner
            .append_locked(&mut st, &entry(&payload), 0)
            .expect("append");
        let off = st.off;
        if let Some((seg, from, to)) = st.writeback_due() {
            assert_eq!(seg.name.segment_no.0, 0);
            assert!(to <= off, "never ahead of the write position");
            due.push((from, to));
        }
    }
    assert_eq!(
        due,
        vec![(0, WRITEBACK_CHUNK), (WRITEBACK_CHUNK, 2 * WRITEBACK_CHUNK)]
    );
    assert!(st.writeback_due().is_none(), "nothing new since");
}

#[test]
fn a_reopened_tail_goes_on_where_the_last_writer_stopped() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path().join("d");
    init(&root, SEG);
    let (end, off, last) = {
        let inner = open(&root, WalOptions::default());
        let mut st = lock(&inner.tail);
        for p in [&b"a"[..], b"bb", b"ccc"] {
            inner.append_locked(&mut st, &entry(p), 0).expect("append");
        }
        let r = (st.end_lsn, st.off, st.seg_last_lsn);
        drop(st);
        inner.written.fetch_max(r.0 .0, Ordering::AcqRel);
        inner.wait_durable(r.0 .0).expect("sync");
        r
    };
    let inner = open(&root, WalOptions::default());
    let mut st = lock(&inner.tail);
    assert_eq!(
        (st.end_lsn, st.off, st.seg_records, st.seg_last_lsn),
        (end, off, 3, last)
    );
    assert_eq!(st.next_segment_no, 1);
    assert_eq!(st.writeback_to, 0);
    assert!(st.seg_durable_offsets);
    // The running checksum goes on from the bytes already there.
    let a = inner
        .append_locked(&mut st, &entry(b"dddd"), 0)
        .expect("append");
    assert_eq!(a.lsn, end);
    inner.seal_locked(&mut st, false).expect("seal");
    drop(st);
    let sealed = read(&root, &name(0, SegmentFileKind::Sealed));
    let mut scan = SegmentScanner::new(&sealed).expect("a segment header");
    assert_eq!(scan.by_ref().count(), 4);
    assert!(
        matches!(scan.finish(), ScanEnd::Sealed { trailing: 0, .. }),
        "the seal's checksum covers the records of both writers"
    );
}

#[test]
fn the_running_checksum_covers_every_byte_before_the_write_position() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let root = tmp.path().join("d");
    init(&root, 4 << 20);
    let open_name = name(0, SegmentFileKind::Open);
    // Lengths of all kinds, and large ones that come again (folded in by their CRC).
    let mut sizes = (1..).map(|i: usize| {
        if i % 2 == 0 {
            [2100, 4096, 8000][(i / 2) % 3]
        } else {
            (i * 7919) % 9000
        }
    });
    // Two writers one after the other, the second adopting the open segment mid-chunk; the
    // checksum is taken with the write position anywhere in a chunk, and with write-back
    // started (its pages unmapped) in between.
    for writer in 0..2 {
        let inner = open(&root, WalOptions::default());
        let mut st = lock(&inner.tail);
        let stop = (writer + 1) * (3 * WRITEBACK_CHUNK / 2) + 333;
        let mut n = 0;
        while st.off < stop {
            let payload = vec![n as u8; sizes.next().unwrap_or(1)];
            inner
                .append_locked(&mut st, &entry(&payload), 0)
                .expect("append");
            n += 1;
            if n % 3 == 0 {
                if let Some((seg, from, to)) = st.writeback_due() {
                    seg.unmap_pages(from, to);
                }
            }
            if n % 17 == 0 {
                let off = st.off;
                let bytes = read(&root, &open_name);
                assert_eq!(st.checksum(), crc32fast::hash(&bytes[..off]), "at {off}");
            }
        }
        let end = st.end_lsn.0;
        drop(st);
        inner.written.fetch_max(end, Ordering::AcqRel);
        inner.wait_durable(end).expect("sync");
    }
    let inner = open(&root, WalOptions::default());
    let mut st = lock(&inner.tail);
    inner.seal_locked(&mut st, false).expect("seal");
    drop(st);
    let sealed = read(&root, &name(0, SegmentFileKind::Sealed));
    let mut scan = SegmentScanner::new(&sealed).expect("a segment header");
    scan.by_ref().for_each(drop);
    match scan.finish() {
        ScanEnd::Sealed { seal, .. } => assert_eq!(
            seal.segment_checksum,
            crc32fast::hash(&sealed[..sealed.len() - SEAL_LEN])
        ),
        other => panic!("the sealed segment ends {other:?}"),
    }
}

#[test]
fn a_sync_leaves_mapped_the_pages_the_checksum_has_still_to_read() {
    use crate::thread_usage::thread_faults;
    const PAGE: usize = 4096;
    // Large enough for every round in one segment.
    let (_tmp, root, inner) = fresh(1 << 20);
    let open_name = name(0, SegmentFileKind::Open);
    let append_until = |st: &mut Tail, stop: usize, fill: u8| {
        while st.off + encoded_len(1000) < stop {
            inner
                .append_locked(st, &entry(&[fill; 1000]), 0)
                .expect("append");
        }
    };
    // Each round: pages the checksum reads before a group commit syncs them, then pages it
    // has not read yet when the sync comes; the checksum's chunk is never reached, so only
    // the explicit checksum reads. Rounds start at different offsets within a page.
    for round in 0..3u8 {
        let mut st = lock(&inner.tail);
        let start = st.off;
        append_until(&mut st, start + 3 * PAGE + 100 * round as usize, round);
        st.checksum();
        let hashed = st.hashed_to;
        append_until(&mut st, hashed + HASH_CHUNK - 2 * PAGE, round);
        let (end, off, seg) = (st.end_lsn.0, st.off, st.seg.clone().expect("open segment"));
        drop(st);
        inner.written.fetch_max(end, Ordering::AcqRel);
        inner.wait_durable(end).expect("sync");
        let mut st = lock(&inner.tail);
        // A whole page the checksum had read, inside the sync: written back unmapped, so
        // reading it faults.
        let read_page = start.next_multiple_of(PAGE);
        assert!(
            read_page + PAGE <= hashed,
            "round {round}: a whole page read before the sync"
        );
        let before = thread_faults();
        // SAFETY: tail lock held; the bytes were written under it.
        let byte = unsafe { seg.written(read_page, 1) }[0];
        assert!(
            thread_faults() > before,
            "round {round}: a page the checksum had read stayed mapped through the sync ({byte})"
        );
        // The pages it had not read stay mapped: reading them now faults nothing.
        let before = thread_faults();
        let sum = st.checksum();
        assert_eq!(
            thread_faults() - before,
            0,
            "round {round}: the checksum faulted pages the sync had unmapped back in"
        );
        assert_eq!(sum, crc32fast::hash(&read(&root, &open_name)[..off]));
    }
}
