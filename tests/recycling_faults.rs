//! A crash at each step of a recycled segment file's first use, by failpoints (the `failpoints`
//! feature): retention's rename into the pool, the preparer's header write and rename, the
//! activation, the first records' sync, the seal. The writer then stops as if killed; recovery
//! must return every acknowledged record, set nothing aside, and keep recycling.

mod common;

use fail::FailScenario;
use walship::retention::RetentionOptions;
use walship::{Entry, EntryType, Lsn, Wal, WalOptions};

use common::recycled::{append, check, payload, read_from};

#[test]
fn a_crash_at_each_step_of_a_recycled_files_first_use_loses_nothing() {
    for point in [
        "recycle::release",
        "recycle::pool_dir_fsync",
        "recycle::header",
        "recycle::rename",
        "wal::activate::rename",
        "segment::msync",
        "wal::seal::rename",
    ] {
        let _fs = FailScenario::setup();
        let (_t, dir) = common::new_dir();
        let wal = Wal::open(&dir, WalOptions::default()).expect("open");
        let mut want = append(&wal, "a", 1100);
        let ckpt = wal.flush_lsn();
        want.retain(|(l, _)| *l >= ckpt);
        if point == "recycle::release" {
            // The second release fails: one file is in the pool, the rest stay sealed.
            fail::cfg(point, "1*off->return(EIO)").expect("cfg");
            assert!(wal.checkpoint(ckpt, &RetentionOptions::default()).is_err());
        } else {
            wal.checkpoint(ckpt, &RetentionOptions::default())
                .expect("checkpoint");
            if matches!(point, "segment::msync" | "wal::seal::rename") {
                // Fail the first records, or the seal, of a recycled file in use.
                want.extend(into_recycled(&wal));
            }
            fail::cfg(point, "return(EIO)").expect("cfg");
        }
        // Write until the fault was met (or two segments were used), as far as it lets us.
        let mut failed = None;
        for i in 0..600 {
            let p = payload("b", i);
            match wal.append_durable(&Entry::new(EntryType::Insert, None, &p)) {
                Ok(a) => want.push((a.lsn, p)),
                Err(_) => {
                    failed = Some(p);
                    break;
                }
            }
        }
        fail::remove(point);
        if point == "recycle::pool_dir_fsync" {
            // Nothing of a pool file changes before its pool name is durable: none was reused,
            // and every one still holds its sealed header.
            assert_eq!(wal.stats().segments_recycled, 0, "a pool file was reused");
            let below = ckpt.0 / common::SEG;
            let mut seen = 0;
            for e in std::fs::read_dir(dir.join("wal")).expect("list") {
                let path = e.expect("entry").path();
                let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
                let no = name
                    .get(8..24)
                    .and_then(|h| u64::from_str_radix(h, 16).ok());
                if name.ends_with(".wal.prep") && no.is_some_and(|n| n < below) {
                    let head = std::fs::read(&path).expect("read");
                    assert_eq!(&head[..8], b"WALSHIPS", "{name}: header cleared");
                    seen += 1;
                }
            }
            assert!(seen > 0, "no pool file to check");
        }
        drop(wal); // the writer stops here, as if killed: nothing is finished on the way out
                   // The record whose wait failed was not acknowledged; it may still have been written.
        let got = read_from(&dir, ckpt);
        if let (Some(p), Some(last)) = (failed, got.last()) {
            if got.len() == want.len() + 1 && last.1 == p {
                want.push(last.clone());
            }
        }
        check(&dir, ckpt, &want);
        // Recovery kept the recycled files, and the writer goes on recycling.
        let wal = Wal::open(&dir, WalOptions::default()).expect("reopen");
        want.extend(append(&wal, "c", 500));
        let ckpt = wal.flush_lsn();
        wal.checkpoint(ckpt, &RetentionOptions::default())
            .expect("checkpoint");
        want.retain(|(l, _)| *l >= ckpt);
        want.extend(append(&wal, "d", 500));
        assert!(
            wal.stats().segments_recycled > 0,
            "{point}: no recycled file reused after recovery"
        );
        drop(wal);
        check(&dir, ckpt, &want);
    }
}

/// Appends until the open segment is a recycled file (one was prepared, then activated).
fn into_recycled(wal: &Wal) -> Vec<(Lsn, Vec<u8>)> {
    let mut out = Vec::new();
    let mut sealed_then = None;
    for i in 0..5000 {
        let s = wal.stats();
        if s.segments_recycled > 0 {
            let then = *sealed_then.get_or_insert(s.segments_sealed);
            if s.segments_sealed > then {
                return out;
            }
        }
        out.extend(append(wal, &format!("r{i}"), 1));
    }
    panic!("no recycled file came into use");
}
