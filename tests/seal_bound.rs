//! The bound on sealed segments not yet durable (`WalOptions::max_unsynced_seal_bytes`): with
//! the finisher held before it makes any sealed segment durable (the `failpoints` feature), a
//! writer that nobody waits for seals as many segments as the bound allows and then waits; once
//! the finisher goes on, so does the writer, and every record is there.
//!
//! Failpoints are process-global: the test holds a `fail::FailScenario` for its whole run.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use fail::FailScenario;
use walship::{Entry, EntryType, Wal, WalOptions};

use common::{new_dir, read_all, SEG};

/// Waits (polling) until `cond` holds; panics naming `what` after a minute.
fn wait_for(what: &str, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

#[test]
fn a_writer_waits_once_the_unsynced_sealed_segments_reach_the_bound() {
    let _fs = FailScenario::setup();
    let (_tmp, dir) = new_dir();
    let options = WalOptions {
        // Three segments' worth: three sealed segments may wait for the finisher.
        max_unsynced_seal_bytes: 3 * SEG + SEG / 2,
        ..WalOptions::default()
    };
    let wal = Arc::new(Wal::open(&dir, options).expect("open"));
    fail::cfg("wal::finisher::sync", "pause").expect("hold the finisher");
    let payloads: Vec<Vec<u8>> = (0..64u8)
        .map(|i| vec![i; 8 << 10]) // about 7 records per 64 KiB segment: 9 segments
        .collect();
    let writer = {
        let (wal, payloads) = (wal.clone(), payloads.clone());
        std::thread::spawn(move || {
            for p in &payloads {
                wal.append(&Entry::new(EntryType::Insert, None, p))?;
            }
            Ok::<_, walship::Error>(())
        })
    };
    // Three seals (six tickets with their activations) fit; the fourth waits for the first
    // sealed segment to become durable, which the held finisher never makes it.
    wait_for("three sealed segments", || wal.stats().segments_sealed >= 3);
    std::thread::sleep(Duration::from_millis(300));
    let held = wal.stats();
    assert_eq!(held.segments_sealed, 3, "a fourth seal went past the bound");
    assert!(
        !writer.is_finished(),
        "the writer did not wait at the bound"
    );
    assert_eq!(held.seal_bound_waits, 0, "a wait is counted once it ends");

    fail::remove("wal::finisher::sync");
    writer
        .join()
        .expect("writer thread")
        .expect("appends after the finisher went on");
    let after = wal.stats();
    assert!(after.seal_bound_waits >= 1, "{after:?}");
    assert!(after.seal_bound_wait_us > 0, "{after:?}");
    assert!(after.segments_sealed >= 8, "{after:?}");
    wal.sync().expect("sync");
    drop(wal);

    let records = read_all(&dir).expect("read back");
    let got: Vec<&[u8]> = records.iter().map(|r| r.payload.as_slice()).collect();
    let want: Vec<&[u8]> = payloads.iter().map(Vec::as_slice).collect();
    assert_eq!(got, want, "every record, in order");
}
