//! Group commit under contention: 8 threads append and wait for durability through the library.

mod common;

use std::collections::HashSet;
use std::sync::Arc;

use walship::{Entry, EntryType, Lsn, Wal, WalOptions};

const THREADS: u64 = 8;
const PER_THREAD: u64 = 250;

#[test]
fn eight_threads_get_unique_lsns_and_share_syncs() {
    let (_tmp, dir) = common::new_dir();
    let wal = Arc::new(Wal::open(&dir, WalOptions::default()).expect("open"));
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let wal = wal.clone();
            std::thread::spawn(move || {
                let mut mine = Vec::new();
                for i in 0..PER_THREAD {
                    let payload =
                        format!("thread {t} record {i} {}", "x".repeat((i % 50) as usize));
                    let a = wal
                        .append(&Entry::new(EntryType::Insert, Some(t), payload.as_bytes()))
                        .expect("append");
                    wal.wait_durable(a.end_lsn).expect("wait_durable");
                    // Durable means flush_lsn has passed the record's end.
                    assert!(wal.flush_lsn() >= a.end_lsn);
                    mine.push((a.lsn, a.end_lsn, payload));
                }
                mine
            })
        })
        .collect();
    let mut acked = Vec::new();
    for h in handles {
        acked.extend(h.join().expect("writer thread"));
    }
    let stats = wal.stats();
    let total = THREADS * PER_THREAD;
    assert_eq!(stats.records_appended, total);
    let lsns: HashSet<Lsn> = acked.iter().map(|a| a.0).collect();
    assert_eq!(lsns.len() as u64, total, "LSNs are not unique");
    // The records cross several 64 KiB segments; each seal is a sync of its own, counted apart.
    assert!(stats.segments_sealed >= 1, "{stats:?}");
    assert!(
        stats.syncs + stats.segments_sealed < total,
        "group commit shared no syncs: {stats:?} for {total} durable appends"
    );
    println!("{total} durable appends from {THREADS} threads: {stats:?}");
    drop(wal);

    let back = common::read_all(&dir).expect("read back");
    assert_eq!(back.len() as u64, total);
    acked.sort_by_key(|a| a.0);
    for (r, (lsn, end, payload)) in back.iter().zip(&acked) {
        assert_eq!((r.lsn, r.end_lsn), (*lsn, *end));
        assert_eq!(r.payload, payload.as_bytes());
    }
    assert!(back.windows(2).all(|w| w[0].end_lsn <= w[1].lsn));
    // Each thread's records are in the order it appended them.
    for t in 0..THREADS {
        let mine: Vec<&[u8]> = back
            .iter()
            .filter(|r| r.tx_id == Some(t))
            .map(|r| r.payload.as_slice())
            .collect();
        assert_eq!(mine.len() as u64, PER_THREAD);
        for (i, p) in mine.iter().enumerate() {
            assert!(p.starts_with(format!("thread {t} record {i} ").as_bytes()));
        }
    }
}

#[test]
fn sync_and_flush_lsn_cover_every_append() {
    let (_tmp, dir) = common::new_dir();
    let wal = Arc::new(Wal::open(&dir, WalOptions::default()).expect("open"));
    let handles: Vec<_> = (0..4)
        .map(|t| {
            let wal = wal.clone();
            std::thread::spawn(move || {
                let mut last = Lsn(0);
                for i in 0..200 {
                    let p = format!("{t}:{i}");
                    last = wal
                        .append(&Entry::new(EntryType::Update, None, p.as_bytes()))
                        .expect("append")
                        .end_lsn;
                }
                last
            })
        })
        .collect();
    let ends: Vec<Lsn> = handles
        .into_iter()
        .map(|h| h.join().expect("thread"))
        .collect();
    let max = ends.into_iter().max().expect("ends");
    // write_lsn never lags behind an append that has returned.
    assert!(
        wal.write_lsn() >= max,
        "write_lsn {} < {max}",
        wal.write_lsn()
    );
    let flushed = wal.sync().expect("sync");
    assert!(flushed >= max, "sync() returned {flushed}, below {max}");
    assert_eq!(common::read_all(&dir).expect("read").len(), 800);
}

/// A reader following the log while a writer appends across many rotations sees every record
/// once, in order, and never takes a record caught half-written for damage.
#[test]
fn a_follower_reads_a_live_writer_across_rotations_without_false_damage() {
    let (_tmp, dir) = common::new_dir();
    let wal = Arc::new(Wal::open(&dir, WalOptions::default()).expect("open"));
    const N: usize = 6000;
    let payload = |i: usize| format!("{i:06}:{}", "y".repeat(i * 7 % 500)).into_bytes();
    let writer = {
        let wal = wal.clone();
        std::thread::spawn(move || {
            for i in 0..N {
                wal.append(&Entry::new(EntryType::Insert, None, &payload(i)))
                    .expect("append");
                if i % 64 == 0 {
                    std::thread::yield_now();
                }
            }
        })
    };
    let mut r = walship::WalReader::open(&dir, Lsn(0)).expect("reader");
    let mut got = 0;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while got < N {
        match r.next_record() {
            Ok(Some(rec)) => {
                assert_eq!(rec.payload, payload(got), "record {got} at {}", rec.lsn);
                got += 1;
            }
            Ok(None) => {
                assert!(
                    std::time::Instant::now() < deadline,
                    "stuck after {got} records"
                );
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            Err(e) => panic!("follower failed after {got} records: {e}"),
        }
    }
    writer.join().expect("writer");
    assert!(wal.stats().segments_sealed > 20, "{:?}", wal.stats());
}

/// `walship verify` beside a running writer that seals a small segment every few milliseconds
/// (files renamed between its listing and its reads) finds no damage.
#[test]
fn verify_beside_a_live_writer_that_seals_as_it_goes_finds_no_damage() {
    let (_tmp, dir) = common::new_dir();
    let wal = Arc::new(Wal::open(&dir, WalOptions::default()).expect("open"));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (wal, stop) = (wal.clone(), stop.clone());
        std::thread::spawn(move || {
            let payload = vec![7u8; 200];
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                for _ in 0..64 {
                    wal.append(&Entry::new(EntryType::Insert, None, &payload))
                        .expect("append");
                }
            }
        })
    };
    for round in 0..15 {
        let out = common::run(&["verify", dir.to_str().expect("utf8")], b"");
        assert_eq!(
            common::code(&out),
            0,
            "round {round}: {}",
            common::stdout(&out)
        );
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    writer.join().expect("writer");
    assert!(
        wal.stats().segments_sealed > 10,
        "the writer sealed as it went"
    );
}
