//! Streaming the open segment: real `walship serve` and `walship standby` processes on loopback
//! TCP (through the test proxy, which counts the bytes sent to the standby). The standby's
//! flushed position, as the primary's slot for it shows, follows the primary's durable
//! position while the segment stays open; a standby killed mid-segment takes up its partial
//! copy (cut to its valid prefix when torn) without fetching again what it holds.

use std::path::Path;
use std::sync::atomic::Ordering;

mod common;
use common::proxy::{Proxy, ProxyMode};
use common::{init, seal, status, wait_until, write_records, NET};

/// The primary's flush_lsn, and the flushed position its one standby acknowledged.
fn positions(primary: &Path) -> (u64, Option<u64>) {
    let s = status(primary);
    let flush = s["flush_lsn"].as_u64().unwrap();
    let acked = s["standbys"]
        .as_array()
        .and_then(|a| a.first())
        .and_then(|sb| sb["flushed_lsn"].as_u64());
    (flush, acked)
}

/// Waits until the standby acknowledged everything durable on the primary.
fn wait_acked(primary: &Path) -> u64 {
    let mut at = 0;
    wait_until(
        "the standby to acknowledge the primary's durable position",
        || {
            let (flush, acked) = positions(primary);
            at = flush;
            acked == Some(flush)
        },
    );
    at
}

fn files(dir: &Path, suffix: &str) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir.join("wal"))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(suffix))
        .collect();
    v.sort();
    v
}

fn assert_identical_sealed(primary: &Path, standby: &Path) {
    let a = files(primary, ".wal");
    assert!(!a.is_empty());
    assert_eq!(a, files(standby, ".wal"));
    for f in &a {
        let x = std::fs::read(primary.join("wal").join(f)).unwrap();
        let y = std::fs::read(standby.join("wal").join(f)).unwrap();
        assert!(x == y, "{f} differs");
    }
}

#[test]
fn the_standby_follows_the_open_segment_and_matches_byte_for_byte_after_the_seal() {
    let t = tempfile::tempdir().unwrap();
    let primary = t.path().join("primary");
    init(&primary);
    let (_srv, addr) = common::serve(&primary, "127.0.0.1:0", &NET, &t.path().join("serve.log"));
    let sb = t.path().join("standby");
    let _s = common::standby(&sb, &addr, &[], &t.path().join("standby.log"));
    for round in 0..3 {
        write_records(&primary, 40, &format!("r{round}"));
        let flush = wait_acked(&primary);
        // Still one open segment: nothing was sealed, the records came as they became durable.
        assert!(files(&primary, ".wal").is_empty(), "round {round}");
        assert_eq!(files(&primary, ".wal.open").len(), 1);
        assert!(flush > 0);
        assert_eq!(files(&sb, ".wal.partial").len(), 1);
    }
    seal(&primary);
    write_records(&primary, 10, "after");
    wait_acked(&primary);
    wait_until("the standby to hold the sealed segment", || {
        files(&sb, ".wal").len() == 1
    });
    assert_identical_sealed(&primary, &sb);
}

#[test]
fn a_killed_standby_takes_up_its_torn_partial_copy_without_fetching_it_again() {
    let t = tempfile::tempdir().unwrap();
    let primary = t.path().join("primary");
    init(&primary);
    let (_srv, addr) = common::serve(&primary, "127.0.0.1:0", &NET, &t.path().join("serve.log"));
    let proxy = Proxy::to(&addr, ProxyMode::default());
    let sb = t.path().join("standby");
    let mut s = common::standby(&sb, &proxy.addr, &[], &t.path().join("standby1.log"));
    // About 40 KiB of records in the open 64 KiB segment.
    write_records(&primary, 600, "a");
    let flush = wait_acked(&primary);
    let part = sb.join("wal").join(&files(&sb, ".wal.partial")[0]);
    // The copy is zero-filled ahead of its records (here up to the segment's size), so that
    // syncing the next records does not change the file's length.
    wait_until("the copy to be zero-filled ahead", || {
        std::fs::metadata(&part).unwrap().len() == 64 * 1024
    });
    s.kill();
    let held = flush % (64 * 1024);
    // A torn tail: half a record's worth of garbage after the last whole record.
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new().write(true).open(&part).unwrap();
        f.write_all_at(&[0xAB; 40], held).unwrap();
    }
    let before = proxy.down_bytes.load(Ordering::Relaxed);
    write_records(&primary, 20, "b");
    let log2 = t.path().join("standby2.log");
    let _s2 = common::standby(&sb, &proxy.addr, &[], &log2);
    let flush2 = wait_acked(&primary);
    assert!(flush2 > flush);
    let sent = proxy.down_bytes.load(Ordering::Relaxed) - before;
    // The 20 new records (about 1.3 KiB) and the protocol's own frames, not the 40 KiB held.
    assert!(
        sent < 8 * 1024,
        "{sent} bytes were sent after the restart; the copy held {held}"
    );
    let log = std::fs::read_to_string(&log2).unwrap();
    assert!(log.contains("cutting the partial copy"), "{log}");
    // What followed the valid prefix is zeroed, the records received since written over it.
    let copy = std::fs::read(&part).unwrap();
    assert!(
        copy[(flush2 % (64 * 1024)) as usize..]
            .iter()
            .all(|&b| b == 0),
        "bytes past the copy's records are not zeros"
    );
    seal(&primary);
    write_records(&primary, 1, "c");
    wait_acked(&primary);
    wait_until("the standby to hold the sealed segment", || {
        files(&sb, ".wal").len() == 1
    });
    assert_identical_sealed(&primary, &sb);
}
