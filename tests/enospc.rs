//! A full disk: on a small tmpfs, appending until the space runs out gives an error from append
//! or rotation (never SIGBUS), and everything appended before stays readable. Needs root to
//! mount the tmpfs; skipped with a printed reason otherwise.

mod common;

use walship::{DataDir, Entry, EntryType, Wal, WalOptions};

use common::mount::{self, Mount};

fn mount_or_skip(size: &str) -> Option<Mount> {
    mount::or_skip(Mount::tmpfs(size))
}

#[test]
fn full_disk_is_an_error_and_keeps_what_was_appended() {
    let Some(fs) = mount_or_skip("400k") else {
        return;
    };
    let dir = fs.path().join("data");
    DataDir::init(&dir, common::SEG).expect("init");
    // Space to give back later: the room for one segment.
    let filler = fs.path().join("filler");
    std::fs::write(&filler, vec![1u8; 2 * common::SEG as usize]).expect("filler");
    let wal = Wal::open(&dir, WalOptions::default()).expect("open");
    let mut appended = Vec::new();
    let mut failure = None;
    for i in 0..10_000u32 {
        let payload = format!("{i:06}-{}", "p".repeat(900));
        match wal.append(&Entry::new(EntryType::Insert, None, payload.as_bytes())) {
            Ok(a) => {
                wal.wait_durable(a.end_lsn)
                    .expect("durable while space remains");
                appended.push((a.lsn.0, payload));
            }
            Err(e) => {
                failure = Some(e);
                break;
            }
        }
    }
    let e = failure.expect("400 KiB filled without an error");
    assert!(e.is_no_space(), "expected ENOSPC, got: {e}");
    println!("{} records appended before: {e}", appended.len());
    assert!(
        appended.len() > 64,
        "too few records to cross a segment: {}",
        appended.len()
    );
    // The writer is not poisoned by a failed rotation: the records stay durable and readable,
    // and once space is freed, appending goes on.
    assert_eq!(wal.sync().expect("sync after ENOSPC"), wal.flush_lsn());
    let again = wal.append(&Entry::new(EntryType::Insert, None, b"still full"));
    assert!(again.as_ref().is_err_and(|e| e.is_no_space()), "{again:?}");
    let recs = common::read_recs(&dir).expect("read back after ENOSPC");
    let got: Vec<(u64, String)> = recs.iter().map(|r| (r.lsn, r.payload.clone())).collect();
    assert!(got == appended, "records differ after ENOSPC");

    // A second process is refused the lock; after this one closes it fails cleanly too.
    let out = common::run(&["write", dir.to_str().expect("utf8")], b"x\n");
    assert_eq!(common::code(&out), 2);
    assert!(common::stderr(&out).contains("locked by another process"));

    // Space freed: the next rotation succeeds and appending goes on.
    std::fs::remove_file(&filler).expect("remove filler");
    let a = wal
        .append_durable(&Entry::new(EntryType::Insert, None, b"after space freed"))
        .expect("append once space is back");
    appended.push((a.lsn.0, "after space freed".into()));
    for i in 0.. {
        let payload = format!("second fill {i} {}", "q".repeat(900));
        match wal.append_durable(&Entry::new(EntryType::Insert, None, payload.as_bytes())) {
            Ok(a) => appended.push((a.lsn.0, payload)),
            Err(e) => {
                assert!(e.is_no_space(), "expected ENOSPC again, got: {e}");
                break;
            }
        }
        assert!(i < 10_000, "the disk never filled again");
    }
    drop(wal);

    let out = common::run(&["write", dir.to_str().expect("utf8")], &vec![b'x'; 8000]);
    let err = common::stderr(&out);
    assert_eq!(common::code(&out), 2, "{err}");
    assert!(err.contains("No space left on device"), "{err}");
    let v = common::run(&["verify", dir.to_str().expect("utf8")], b"");
    assert_eq!(common::code(&v), 0, "{}", common::stdout(&v));
    let recs = common::read_recs(&dir).expect("read back");
    let got: Vec<(u64, String)> = recs.iter().map(|r| (r.lsn, r.payload.clone())).collect();
    assert!(got == appended, "records differ after the second fill");
}

/// `walship write` onto a disk that fills: every line stored has its LSN printed, durable, and
/// the error names the first line not stored (exit 2); a caller resumes from that line.
#[test]
fn write_prints_every_stored_lines_lsn_when_the_disk_fills() {
    for durable in [true, false] {
        let Some(fs) = mount_or_skip("300k") else {
            return;
        };
        let dir = fs.path().join("data");
        DataDir::init(&dir, common::SEG).expect("init");
        let input: String = (0..100_000).map(|i| format!("line-{i:06}\n")).collect();
        let mut args = vec!["write", common::p(&dir)];
        if durable {
            args.push("--durable");
        }
        let out = common::run(&args, input.as_bytes());
        assert_eq!(common::code(&out), 2, "{}", common::text(&out));
        let printed: Vec<String> = common::stdout(&out).lines().map(String::from).collect();
        let err = common::stderr(&out);
        let stored = common::read_all(&dir).expect("read back");
        assert!(!stored.is_empty(), "{err}");
        assert_eq!(printed.len(), stored.len(), "durable {durable}: {err}");
        for (line, rec) in printed.iter().zip(&stored) {
            assert_eq!(*line, rec.lsn.to_string());
        }
        assert!(
            err.contains(&format!(
                "line {} of standard input was not stored",
                stored.len() + 1
            )),
            "{err}"
        );
        assert_eq!(
            stored.last().unwrap().payload,
            format!("line-{:06}", stored.len() - 1).into_bytes()
        );
    }
}
