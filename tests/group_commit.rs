//! Group commit under concurrency, across segment rotations: every acknowledged record is below
//! `flush_lsn` when acknowledged and is read back exactly once, in LSN order, after reopening.

use std::collections::HashSet;
use std::sync::Arc;

use walship::{DataDir, Entry, EntryType, Lsn, Wal, WalOptions, WalReader};

#[test]
fn concurrent_durable_appends_share_syncs_and_survive_reopen() {
    let dir = tempfile::tempdir().unwrap();
    DataDir::init(dir.path(), 64 << 10).unwrap();
    let wal = Arc::new(Wal::open(dir.path(), WalOptions::default()).unwrap());
    let threads = 8;
    let per_thread = 250;
    let handles: Vec<_> = (0..threads)
        .map(|t| {
            let wal = wal.clone();
            std::thread::spawn(move || {
                let mut acked = Vec::new();
                for i in 0..per_thread {
                    let payload = format!("writer {t} record {i} {}", "x".repeat(i % 90));
                    let a = wal
                        .append_durable(&Entry::new(EntryType::Insert, Some(t), payload.as_bytes()))
                        .unwrap();
                    assert!(wal.flush_lsn() >= a.end_lsn, "acknowledged before durable");
                    acked.push((a.lsn, payload));
                }
                acked
            })
        })
        .collect();
    let mut acked: Vec<(Lsn, String)> = handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    let stats = wal.stats();
    assert_eq!(stats.records_appended, threads * per_thread as u64);
    assert!(stats.segments_sealed >= 3, "{stats:?}");
    assert!(
        stats.syncs >= 1 && stats.syncs <= stats.records_appended,
        "{stats:?}"
    );
    drop(wal);

    acked.sort();
    let mut reader = WalReader::open(dir.path(), Lsn(0)).unwrap();
    let mut seen = Vec::new();
    while let Some(r) = reader.next_record().unwrap() {
        seen.push((r.lsn, String::from_utf8(r.payload).unwrap()));
    }
    assert_eq!(seen, acked);
    let distinct: HashSet<_> = seen.iter().map(|(_, p)| p.clone()).collect();
    assert_eq!(distinct.len(), threads as usize * per_thread);
}

/// The first append right after open races the preparer's request for the same segment; the
/// segment put in place must always be whole.
#[test]
fn first_append_right_after_open_finds_a_whole_segment() {
    for _ in 0..40 {
        let dir = tempfile::tempdir().unwrap();
        DataDir::init(dir.path(), 1 << 20).unwrap();
        let wal = Wal::open(dir.path(), WalOptions::default()).unwrap();
        wal.append_durable(&Entry::new(EntryType::Insert, None, b"first"))
            .unwrap();
        drop(wal);
        let wal = Wal::open(dir.path(), WalOptions::default()).unwrap();
        assert_eq!(wal.write_lsn(), Lsn(wal.flush_lsn().0));
        assert!(wal.write_lsn().0 > 0);
    }
}
