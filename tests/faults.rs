//! Fault injection at the I/O boundary (the `failpoints` feature: `cargo test --features
//! failpoints`). Each test makes one system call fail where the code makes it, and checks what a
//! user relies on: a failed sync poisons the writer and every waiter sees the cause, no later
//! append claims durability, every other fault is a clear error that loses nothing acknowledged,
//! and everything works again once the fault is gone.
//!
//! Failpoints are process-global: every test that sets one in this process holds a
//! `fail::FailScenario` for its whole run, which serializes them and clears every point when the
//! test ends (panics included). Tests of the command line set them in the child process only,
//! through the `FAILPOINTS` environment variable.

mod common;

use std::path::Path;
use std::sync::{Arc, Barrier};

use fail::FailScenario;
use walship::{Entry, EntryType, Error, Lsn, Wal, WalOptions};

use common::{new_dir, read_all};

/// The text `Display` gives the injected EIO and ENOSPC.
const EIO_TEXT: &str = "os error 5";
const ENOSPC_TEXT: &str = "os error 28";

/// A record this test got acknowledged as durable.
struct Acked {
    lsn: Lsn,
    payload: Vec<u8>,
}

fn entry(payload: &[u8]) -> Entry<'_> {
    Entry::new(EntryType::Insert, Some(1), payload)
}

/// Appends `n` records durably; each one is acknowledged.
fn append_acked(wal: &Wal, tag: &str, n: usize, acked: &mut Vec<Acked>) {
    for i in 0..n {
        let payload = format!("{tag}-{i:05}-{}", "x".repeat(100)).into_bytes();
        let a = wal
            .append_durable(&entry(&payload))
            .expect("durable append");
        acked.push(Acked {
            lsn: a.lsn,
            payload,
        });
    }
}

/// A new data directory at `dir`, open for writing.
fn open_primary(dir: &Path) -> Wal {
    walship::DataDir::init(dir, common::SEG).expect("init");
    Wal::open(dir, WalOptions::default()).expect("open")
}

/// Appends 1000 acknowledged records and seals them; returns where the sealed WAL ends.
fn append_sealed(wal: &Wal, tag: &str, acked: &mut Vec<Acked>) -> u64 {
    append_acked(wal, tag, 1000, acked);
    wal.seal().expect("seal");
    wal.flush_lsn().0
}

/// Every acknowledged record is in the directory at its LSN with its payload, and `walship
/// verify` finds the directory clean.
fn assert_all_there(dir: &Path, acked: &[Acked]) {
    let records = read_all(dir).expect("read back");
    let by_lsn: std::collections::HashMap<u64, &[u8]> = records
        .iter()
        .map(|r| (r.lsn.0, r.payload.as_slice()))
        .collect();
    for a in acked {
        assert_eq!(
            by_lsn.get(&a.lsn.0).copied(),
            Some(a.payload.as_slice()),
            "acknowledged record at {} is missing or changed",
            a.lsn
        );
    }
    let out = common::run(&["verify", dir.to_str().expect("utf-8 path")], b"");
    assert_eq!(
        common::code(&out),
        0,
        "verify: {}{}",
        common::stdout(&out),
        common::stderr(&out)
    );
}

fn poisoned_reason(r: walship::Result<impl std::fmt::Debug>) -> String {
    match r {
        Err(Error::Poisoned(reason)) => reason,
        other => panic!("expected the writer to be poisoned, got {other:?}"),
    }
}

fn no_prepare() -> WalOptions {
    WalOptions {
        prepare_ahead: false,
        ..WalOptions::default()
    }
}

#[test]
fn msync_failure_in_group_commit_poisons_the_writer_and_every_waiter() {
    let _fs = FailScenario::setup();
    let (_tmp, dir) = new_dir();
    let mut acked = Vec::new();
    let wal = Arc::new(Wal::open(&dir, WalOptions::default()).expect("open"));
    append_acked(&wal, "before", 20, &mut acked);
    let durable = wal.flush_lsn();

    // Eight records appended, then eight threads wait for them at once: whoever leads the
    // group commit hits the failed msync, and every waiter must get the error.
    const WAITERS: usize = 8;
    let pending: Vec<_> = (0..WAITERS)
        .map(|i| {
            wal.append(&entry(format!("pending-{i}").as_bytes()))
                .expect("append")
        })
        .collect();
    fail::cfg("segment::msync", "return(EIO)").expect("cfg");
    let barrier = Arc::new(Barrier::new(WAITERS));
    let threads: Vec<_> = pending
        .iter()
        .map(|a| {
            let (wal, barrier, end) = (wal.clone(), barrier.clone(), a.end_lsn);
            std::thread::spawn(move || {
                barrier.wait();
                wal.wait_durable(end)
            })
        })
        .collect();
    for t in threads {
        let reason = poisoned_reason(t.join().expect("waiter thread"));
        assert!(
            reason.contains("msync") && reason.contains(EIO_TEXT),
            "the error names the failed call and its cause: {reason}"
        );
    }
    assert_eq!(
        wal.flush_lsn(),
        durable,
        "nothing became durable after the failure"
    );

    // Poisoned for good, even with the fault gone: a retried msync could report success for
    // pages the kernel already dropped.
    fail::remove("segment::msync");
    let reason = poisoned_reason(wal.append(&entry(b"after")));
    assert!(
        reason.contains("msync") && reason.contains(EIO_TEXT),
        "{reason}"
    );
    poisoned_reason(wal.wait_durable(pending[0].end_lsn));
    poisoned_reason(wal.sync());
    poisoned_reason(wal.seal());
    poisoned_reason(wal.append_durable(&entry(b"after")));
    assert_eq!(wal.flush_lsn(), durable);
    // Even a wait for what was durable before the failure gets the error: asked now, the
    // writer can no longer vouch for anything.
    poisoned_reason(wal.wait_durable(durable));
    poisoned_reason(wal.wait_durable(Lsn(0)));
    drop(wal);

    // Reopening (the fault fixed) recovers every acknowledged record and takes new ones.
    let wal = Wal::open(&dir, WalOptions::default()).expect("reopen");
    append_acked(&wal, "after", 20, &mut acked);
    wal.seal().expect("seal");
    drop(wal);
    assert_all_there(&dir, &acked);
}

/// Holds one named thread at a sync point until released, so that a test can force the order
/// of two threads.
struct Hold {
    state: std::sync::Mutex<(bool, bool)>,
    cv: std::sync::Condvar,
}

impl Hold {
    /// Holds the thread named `thread` when it passes `point` (once released, it passes freely).
    fn at(point: &str, thread: &'static str) -> Arc<Hold> {
        let hold = Arc::new(Hold {
            state: std::sync::Mutex::new((false, false)),
            cv: std::sync::Condvar::new(),
        });
        let h = hold.clone();
        fail::cfg_callback(point, move || {
            if std::thread::current().name() == Some(thread) {
                h.hold();
            }
        })
        .expect("cfg_callback");
        hold
    }

    fn hold(&self) {
        let mut g = self.state.lock().expect("hold lock");
        if g.1 {
            return;
        }
        g.0 = true;
        self.cv.notify_all();
        while !g.1 {
            g = self.cv.wait(g).expect("hold wait");
        }
    }

    fn wait_arrived(&self, what: &str) {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        let mut g = self.state.lock().expect("hold lock");
        while !g.0 {
            assert!(std::time::Instant::now() < deadline, "{what} never arrived");
            g = self
                .cv
                .wait_timeout(g, std::time::Duration::from_millis(50))
                .expect("hold wait")
                .0;
        }
    }

    fn release(&self) {
        self.state.lock().expect("hold lock").1 = true;
        self.cv.notify_all();
    }
}

/// The group-commit leader and the seal finisher sync the same segment (the leader noted it just
/// before the writer sealed it), and the file's write-back error is reported to only one of
/// them, as Linux reports it once per open file. Whichever order they run in, and whether the
/// error comes from an msync or the seal's fsync: both fail, `flush_lsn` never covers a record
/// appended after the last good sync, every waiter (those arriving after the failure included)
/// gets the error, and a reopen recovers every acknowledged record.
#[test]
fn leader_and_finisher_syncing_one_segment_both_see_its_failure() {
    let _fs = FailScenario::setup();
    // (who syncs first, the call that fails once)
    let cases = [
        ("leader", "segment::msync"),
        ("finisher", "segment::msync"),
        ("finisher", "wal::seal::fsync"),
    ];
    for (first, point) in cases {
        let case = format!("{first} first, {point} fails");
        let (_tmp, dir) = new_dir();
        let mut acked = Vec::new();
        let wal = Arc::new(Wal::open(&dir, WalOptions::default()).expect("open"));
        append_acked(&wal, "before", 20, &mut acked);
        let durable = wal.flush_lsn();
        let pending: Vec<_> = (0..8)
            .map(|i| {
                wal.append(&entry(format!("pending-{i}").as_bytes()))
                    .expect("append")
            })
            .collect();
        let last = pending[7].end_lsn;

        let leader_hold = Hold::at("wal::group_commit::sync", "leader");
        let finisher_hold = Hold::at("wal::finisher::sync", "walship-seal");
        let leader = {
            let wal = wal.clone();
            std::thread::Builder::new()
                .name("leader".into())
                .spawn(move || wal.wait_durable(last))
                .expect("spawn leader")
        };
        // The leader has noted the open segment and its end, and is about to sync it.
        leader_hold.wait_arrived("the leader");
        let sealer = {
            let wal = wal.clone();
            std::thread::spawn(move || wal.seal())
        };
        // The segment is sealed; the finisher is about to make it durable.
        finisher_hold.wait_arrived("the finisher");
        // One write-back error, reported to one sync only.
        fail::cfg(point, "1*return(EIO)").expect("cfg");
        let (leader_reason, seal_reason) = if first == "leader" {
            leader_hold.release();
            let l = poisoned_reason(leader.join().expect("leader thread"));
            finisher_hold.release();
            (l, poisoned_reason(sealer.join().expect("sealer thread")))
        } else {
            finisher_hold.release();
            let s = poisoned_reason(sealer.join().expect("sealer thread"));
            leader_hold.release();
            (poisoned_reason(leader.join().expect("leader thread")), s)
        };
        assert!(leader_reason.contains(EIO_TEXT), "{case}: {leader_reason}");
        assert_eq!(leader_reason, seal_reason, "{case}: one first cause");
        // Nothing appended after the last good sync counts as durable, and no waiter, however
        // late, hears otherwise.
        if point == "segment::msync" {
            assert_eq!(wal.flush_lsn(), durable, "{case}");
        }
        for a in &pending {
            poisoned_reason(wal.wait_durable(a.end_lsn));
        }
        poisoned_reason(wal.wait_durable(durable));
        poisoned_reason(wal.sync());
        poisoned_reason(wal.append(&entry(b"after")));
        fail::remove(point);
        let flushed = wal.flush_lsn();
        poisoned_reason(wal.wait_durable(last));
        assert_eq!(
            wal.flush_lsn(),
            flushed,
            "{case}: flush_lsn moved after the failure"
        );
        drop(wal);

        let wal = Wal::open(&dir, WalOptions::default()).expect("reopen");
        append_acked(&wal, "after", 100, &mut acked);
        wal.seal().expect("seal");
        drop(wal);
        assert_all_there(&dir, &acked);
    }
}

/// The early write-back the writer starts behind its position is only a hint, but an I/O error
/// it meets is a failed write of the segment: the writer is poisoned and nothing after the
/// last good sync is reported durable. A file system that cannot start write-back (EINVAL,
/// EOPNOTSUPP) only loses the hint.
#[test]
fn an_io_error_starting_early_writeback_poisons_the_writer() {
    let _fs = FailScenario::setup();
    for (errno, poisons) in [("EIO", true), ("EINVAL", false), ("EOPNOTSUPP", false)] {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().join("data");
        // Early write-back starts per MiB: segments large enough to hold more.
        walship::DataDir::init(&dir, 4 << 20).expect("init");
        let wal = Wal::open(&dir, WalOptions::default()).expect("open");
        let mut acked = Vec::new();
        append_acked(&wal, "before", 10, &mut acked);
        let durable = wal.flush_lsn();
        fail::cfg("segment::writeback", &format!("return({errno})")).expect("cfg");
        let payload = vec![b'w'; 4000];
        let mut last = None;
        // 1.5 MiB without a sync: the finisher starts write-back of the first MiB (appends
        // fail once the writer is poisoned).
        for _ in 0..400 {
            match wal.append(&entry(&payload)) {
                Ok(a) => last = Some(a),
                Err(e) => {
                    assert!(poisons, "{errno}: {e}");
                    break;
                }
            }
        }
        let last = last.expect("appended");
        // The finisher starts write-back on its own thread: wait until its failure poisoned
        // the writer, so that no leader's msync of the same bytes gets there first.
        if poisons {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
            while wal.append(&entry(b"probe")).is_ok() {
                assert!(
                    std::time::Instant::now() < deadline,
                    "{errno}: the failed write-back never poisoned the writer"
                );
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
        }
        let r = wal.wait_durable(last.end_lsn);
        if poisons {
            let reason = poisoned_reason(r);
            assert!(
                reason.contains("write back") && reason.contains(EIO_TEXT),
                "{errno}: {reason}"
            );
            assert_eq!(wal.flush_lsn(), durable, "{errno}");
        } else {
            r.expect("only the hint is lost");
            acked.push(Acked {
                lsn: last.lsn,
                payload: payload.clone(),
            });
        }
        fail::remove("segment::writeback");
        drop(wal);
        let wal = Wal::open(&dir, WalOptions::default()).expect("reopen");
        append_acked(&wal, "after", 10, &mut acked);
        drop(wal);
        assert_all_there(&dir, &acked);
    }
}

/// Each step of a seal after the marker is written: the msync, cutting the file to its used
/// length, the fsync, the rename to the sealed name, the directory fsync.
#[test]
fn a_failure_in_any_step_of_a_seal_poisons_and_loses_nothing() {
    let _fs = FailScenario::setup();
    let steps = [
        ("segment::msync", "msync"),
        ("wal::seal::truncate", "truncate"),
        ("wal::seal::fsync", "fsync"),
        ("wal::seal::rename", "rename"),
        ("wal::seal::dir_fsync", "fsync directory"),
    ];
    for (point, word) in steps {
        let (_tmp, dir) = new_dir();
        let mut acked = Vec::new();
        let wal = Wal::open(&dir, WalOptions::default()).expect("open");
        append_acked(&wal, "before", 30, &mut acked);
        let durable = wal.flush_lsn();
        fail::cfg(point, "return(EIO)").expect("cfg");
        let reason = poisoned_reason(wal.seal());
        assert!(
            reason.contains(word) && reason.contains(EIO_TEXT),
            "{point}: the error names the step and the cause: {reason}"
        );
        fail::remove(point);
        let again = poisoned_reason(wal.append(&entry(b"after")));
        assert_eq!(again, reason, "{point}: later calls report the first cause");
        poisoned_reason(wal.seal());
        assert_eq!(wal.flush_lsn(), durable, "{point}");
        drop(wal);

        // Recovery finishes or redoes the interrupted seal; the writer goes on.
        let wal = Wal::open(&dir, WalOptions::default()).expect("reopen after the fault");
        append_acked(&wal, "after", 30, &mut acked);
        wal.seal().expect("seal");
        drop(wal);
        assert_all_there(&dir, &acked);
    }
}

#[test]
fn a_seal_failing_during_rotation_poisons_the_writer_and_recovery_finishes_it() {
    let _fs = FailScenario::setup();
    let (_tmp, dir) = new_dir();
    let mut acked = Vec::new();
    let wal = Wal::open(&dir, WalOptions::default()).expect("open");
    fail::cfg("wal::seal::fsync", "return(EIO)").expect("cfg");
    let payload = vec![b'r'; 1000];
    let reason = loop {
        match wal.append_durable(&entry(&payload)) {
            Ok(a) => {
                assert!(acked.len() < 200, "a 64 KiB segment never rotated");
                acked.push(Acked {
                    lsn: a.lsn,
                    payload: payload.clone(),
                })
            }
            Err(Error::Poisoned(reason)) => break reason,
            Err(e) => panic!("expected a poisoned writer, got {e}"),
        }
    };
    assert!(
        reason.contains("fsync") && reason.contains(EIO_TEXT),
        "{reason}"
    );
    assert!(!acked.is_empty());
    fail::remove("wal::seal::fsync");
    poisoned_reason(wal.append_durable(&entry(&payload)));
    drop(wal);
    // The failed segment keeps its open name, its seal marker durable, behind the newer open
    // segment the writer had moved on to; recovery finishes its seal.
    let open: Vec<_> = std::fs::read_dir(dir.join("wal"))
        .expect("read wal/")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.ends_with(".wal.open"))
        .collect();
    assert_eq!(open.len(), 2, "{open:?}");
    let wal = Wal::open(&dir, WalOptions::default()).expect("reopen");
    append_acked(&wal, "after", 100, &mut acked);
    drop(wal);
    assert_all_there(&dir, &acked);
}

/// Appends records of 1000 bytes until one fails; returns the error.
fn append_until_error(wal: &Wal, acked: &mut Vec<Acked>) -> Error {
    let payload = vec![b'f'; 1000];
    for _ in 0..500 {
        match wal.append_durable(&entry(&payload)) {
            Ok(a) => acked.push(Acked {
                lsn: a.lsn,
                payload: payload.clone(),
            }),
            Err(e) => return e,
        }
    }
    panic!("no append failed over several segments' worth of records");
}

/// No space to create the next segment (with and without a background preparer): the append
/// that needs it fails with ENOSPC, the writer stays usable, and appends resume once space
/// returns.
#[test]
fn no_space_for_a_new_segment_is_a_clear_error_and_appending_resumes() {
    let _fs = FailScenario::setup();
    for options in [no_prepare(), WalOptions::default()] {
        let (_tmp, dir) = new_dir();
        let mut acked = Vec::new();
        let wal = Wal::open(&dir, options.clone()).expect("open");
        append_acked(&wal, "before", 10, &mut acked);
        fail::cfg("segment::prepare", "return(ENOSPC)").expect("cfg");
        let e = append_until_error(&wal, &mut acked);
        assert!(e.is_no_space(), "{e}");
        let msg = e.to_string();
        assert!(
            msg.contains("allocate") && msg.contains(ENOSPC_TEXT),
            "{msg}"
        );
        // Not poisoned: still full, still the same clear error.
        let again = wal
            .append(&entry(b"still full"))
            .expect_err("still no space");
        assert!(again.is_no_space(), "{again}");
        // Nothing open to seal: this returns once the segment sealed by the rotation has its
        // sealed name.
        assert_eq!(wal.seal().expect("seal"), None);
        // No half-made segment file is left behind.
        let leftovers: Vec<_> = std::fs::read_dir(dir.join("wal"))
            .expect("read wal/")
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| !n.ends_with(".wal"))
            .collect();
        assert!(
            leftovers.is_empty(),
            "files left after failed creation: {leftovers:?}"
        );
        fail::remove("segment::prepare");
        append_acked(&wal, "after", 100, &mut acked);
        drop(wal);
        assert_all_there(&dir, &acked);
    }
}

#[test]
fn a_failed_rename_activating_a_segment_is_a_clear_error_and_appending_resumes() {
    let _fs = FailScenario::setup();
    for options in [no_prepare(), WalOptions::default()] {
        let (_tmp, dir) = new_dir();
        let mut acked = Vec::new();
        let wal = Wal::open(&dir, options).expect("open");
        fail::cfg("wal::activate::rename", "return(EIO)").expect("cfg");
        // The very first append needs a segment.
        let e = wal.append(&entry(b"first")).expect_err("rename fails");
        assert!(
            matches!(&e, Error::Io { .. }),
            "a plain I/O error, not a poisoned writer: {e}"
        );
        let msg = e.to_string();
        assert!(msg.contains("rename") && msg.contains(EIO_TEXT), "{msg}");
        fail::remove("wal::activate::rename");
        append_acked(&wal, "first", 10, &mut acked);
        // And at a rotation, with acknowledged records before it.
        fail::cfg("wal::activate::rename", "return(EIO)").expect("cfg");
        let e = append_until_error(&wal, &mut acked);
        assert!(
            matches!(&e, Error::Io { .. }) && e.to_string().contains("rename"),
            "{e}"
        );
        fail::remove("wal::activate::rename");
        append_acked(&wal, "after", 100, &mut acked);
        drop(wal);
        assert_all_there(&dir, &acked);
    }
}

/// A file system without `fallocate` (EOPNOTSUPP from FUSE or NFS, ENOSYS from a sandbox): every
/// segment, made by the background preparer or on the append path, is reserved by writing
/// zeros, and the writer works across rotations and a reopen.
#[test]
fn without_fallocate_segments_are_reserved_by_writing_zeros() {
    let _fs = FailScenario::setup();
    for errno in ["EOPNOTSUPP", "ENOSYS"] {
        for options in [no_prepare(), WalOptions::default()] {
            let (_tmp, dir) = new_dir();
            fail::cfg("segment::fallocate", &format!("return({errno})")).expect("cfg");
            let mut acked = Vec::new();
            let wal = Wal::open(&dir, options.clone()).expect("open");
            // About three 64 KiB segments.
            append_acked(&wal, "a", 1000, &mut acked);
            assert!(
                wal.stats().segments_sealed >= 2,
                "{errno}: too few rotations"
            );
            common::assert_segments_reserved(&dir);
            drop(wal);
            let wal = Wal::open(&dir, options).expect("reopen");
            append_acked(&wal, "b", 300, &mut acked);
            common::assert_segments_reserved(&dir);
            wal.seal().expect("seal");
            drop(wal);
            fail::remove("segment::fallocate");
            assert_all_there(&dir, &acked);
        }
    }
}

/// Only "not supported" falls back to writing zeros: no space, an I/O error or any other failure
/// of `fallocate` is the append's error, names the file, leaves no half-made segment and loses
/// nothing; appending resumes once the fault is gone.
#[test]
fn fallocate_failing_otherwise_stays_an_error() {
    let _fs = FailScenario::setup();
    for (errno, text) in [
        ("ENOSPC", ENOSPC_TEXT),
        ("EIO", EIO_TEXT),
        ("EINVAL", "os error 22"),
    ] {
        for options in [no_prepare(), WalOptions::default()] {
            let (_tmp, dir) = new_dir();
            let mut acked = Vec::new();
            let wal = Wal::open(&dir, options.clone()).expect("open");
            append_acked(&wal, "before", 10, &mut acked);
            fail::cfg("segment::fallocate", &format!("return({errno})")).expect("cfg");
            let e = append_until_error(&wal, &mut acked);
            let msg = e.to_string();
            assert!(
                matches!(e, Error::Io { .. })
                    && msg.contains("allocate")
                    && msg.contains(".wal.prep")
                    && msg.contains(text),
                "{errno}: {msg}"
            );
            assert_eq!(e.is_no_space(), errno == "ENOSPC", "{errno}: {msg}");
            // The segment the failed rotation sealed gets its sealed name in the background.
            wal.wait_sealed_names().expect("not poisoned");
            let leftovers: Vec<_> = std::fs::read_dir(dir.join("wal"))
                .expect("read wal/")
                .filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| !n.ends_with(".wal"))
                .collect();
            assert!(leftovers.is_empty(), "{errno}: left behind: {leftovers:?}");
            fail::remove("segment::fallocate");
            append_acked(&wal, "after", 100, &mut acked);
            drop(wal);
            assert_all_there(&dir, &acked);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Replication: the standby's side of an incoming segment.

mod replication {
    use std::path::Path;
    use std::time::{Duration, Instant};

    use fail::FailScenario;
    use walship::replication::{
        CheckingApplicator, Shipper, ShipperConfig, Standby, StandbyConfig,
    };

    use super::{append_acked, append_sealed, assert_all_there, open_primary, Acked, EIO_TEXT};

    async fn wait_for(what: &str, mut f: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !f() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Sealed segment files in a directory's wal/.
    fn sealed_files(dir: &Path) -> usize {
        std::fs::read_dir(dir.join("wal"))
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .filter(|e| e.file_name().to_string_lossy().ends_with(".wal"))
                    .count()
            })
            .unwrap_or(0)
    }

    /// When the fault comes.
    #[derive(Clone, Copy, Debug)]
    enum When {
        /// At the first batch of a new segment, right after the last one was sealed.
        FirstBatch,
        /// At a later batch of the open segment, after earlier batches were synced and applied.
        LaterBatch,
        /// When the seal arrives for a segment whose records were all streamed and applied.
        AtSeal,
    }

    /// Every position seen so far: each sample keeps `applied <= flushed`, within `[before,
    /// most]`, and neither ever moves backwards (across a restart of the standby too).
    struct Positions {
        case: String,
        before: walship::Lsn,
        most: walship::Lsn,
        last: (walship::Lsn, walship::Lsn),
    }

    impl Positions {
        fn check(&mut self, st: &walship::replication::StandbyState, what: &str) {
            let (flushed, applied) = (st.flushed_lsn, st.applied_lsn);
            let case = &self.case;
            assert!(
                applied <= flushed,
                "{case} ({what}): applied {applied} past flushed {flushed} ({:?})",
                st.last_error
            );
            assert!(
                self.before <= applied && flushed <= self.most,
                "{case} ({what}): applied {applied} flushed {flushed} outside [{}, {}] ({:?})",
                self.before,
                self.most,
                st.last_error
            );
            assert!(
                self.last.0 <= flushed && self.last.1 <= applied,
                "{case} ({what}): moved backwards from flushed {} applied {} to {flushed} {applied}",
                self.last.0,
                self.last.1
            );
            self.last = (flushed, applied);
        }
    }

    /// For each fault on the standby's path of an incoming segment (a short write, a failed
    /// fsync, a failed rename), at the first batch of a segment, at a later batch and at the
    /// seal: the standby reports the cause; what it synced before keeps counting as flushed and
    /// nothing past the failure counts (a failed sync or write counts nothing new), in what it
    /// reports, what the primary hears, and after a restart (its applied position and its copy
    /// of the open segment agree); applied never passes flushed; it converges once the fault
    /// is gone.
    #[test]
    fn standby_faults_on_an_incoming_segment_are_reported_and_it_converges_after() {
        let _fs = FailScenario::setup();
        let points = [
            ("standby::write", "write"),
            ("standby::fsync", "fsync"),
            ("standby::rename", "rename"),
        ];
        for (point, word) in points {
            for when in [When::FirstBatch, When::LaterBatch, When::AtSeal] {
                standby_fault_case(point, word, when);
            }
        }
        // The copy's new name made durable before its first records count as flushed.
        standby_fault_case(
            "standby::create_dir_fsync",
            "fsync directory",
            When::FirstBatch,
        );
    }

    fn standby_fault_case(point: &str, word: &str, when: When) {
        let case = format!("{point} at {when:?}");
        eprintln!("case: {case}");
        let t = tempfile::tempdir().expect("tempdir");
        let (pdir, sdir) = (t.path().join("primary"), t.path().join("standby"));
        let wal = open_primary(&pdir);
        let mut acked: Vec<Acked> = Vec::new();
        let first = append_sealed(&wal, "first", &mut acked);
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let mut cfg = ShipperConfig::new(&pdir, "127.0.0.1:0");
            cfg.heartbeat_interval = Duration::from_millis(100);
            let mut shipper = Shipper::start(cfg).await.expect("shipper");
            let mut scfg = StandbyConfig::new(&sdir, shipper.local_addr().to_string());
            scfg.heartbeat_interval = Duration::from_millis(100);
            scfg.backoff_max = Duration::from_millis(300);
            let mut standby = Standby::start(scfg.clone(), CheckingApplicator::default())
                .await
                .expect("standby");
            wait_for("the standby to apply the first segments", || {
                standby.state().applied_lsn == walship::Lsn(first)
            })
            .await;
            // Records of the open segment streamed, synced and applied before the fault.
            let before = match when {
                When::FirstBatch => walship::Lsn(first),
                When::LaterBatch | When::AtSeal => {
                    append_acked(&wal, "open", 200, &mut acked);
                    let end = wal.flush_lsn();
                    wait_for("the standby to apply the streamed records", || {
                        standby.state().applied_lsn == end
                    })
                    .await;
                    end
                }
            };
            let stored = sealed_files(&sdir);

            fail::cfg(point, "return(EIO)").expect("cfg");
            let second = match when {
                When::FirstBatch | When::LaterBatch => append_sealed(&wal, "second", &mut acked),
                When::AtSeal => {
                    wal.seal().expect("seal");
                    wal.flush_lsn().0
                }
            };
            // A failed write or sync counts nothing new; a failed rename leaves the records
            // streamed and synced before it counted, not the sealed segment.
            let most = if point == "standby::rename" {
                walship::Lsn(second)
            } else {
                before
            };
            let mut seen = Positions {
                case: case.clone(),
                before,
                most,
                last: (before, before),
            };
            let mut error = String::new();
            wait_for("the standby to report the fault", || {
                let st = standby.state();
                seen.check(&st, "under the fault");
                error = st.last_error.unwrap_or_default();
                error.contains(word) && error.contains(EIO_TEXT)
            })
            .await;
            assert!(
                !error.contains("invalid segment"),
                "{case}: a local fault is not the primary's: {error}"
            );
            // Through reconnections while the fault lasts.
            let until = Instant::now() + Duration::from_millis(700);
            while Instant::now() < until {
                seen.check(&standby.state(), "while it retries");
                tokio::time::sleep(Duration::from_millis(3)).await;
            }
            assert_eq!(sealed_files(&sdir), stored, "{case}");
            let id = standby.standby_id().to_string();
            for s in shipper.standbys().iter().filter(|s| s.id == id) {
                assert!(
                    s.applied_lsn <= s.flushed_lsn && s.flushed_lsn <= most,
                    "{case}: the primary heard flushed {} applied {}",
                    s.flushed_lsn,
                    s.applied_lsn
                );
            }

            // Stopped and started again: what it finds on disk (its applied position and its
            // copy of the open segment) agrees with what it reported.
            standby
                .stop(Duration::from_secs(5))
                .await
                .expect("stop standby");
            seen.check(&standby.state(), "stopped");
            drop(standby);
            fail::remove(point);
            let mut standby = Standby::start(scfg, CheckingApplicator::default())
                .await
                .expect("restart standby");
            let st = standby.state();
            seen.check(&st, "restarted");
            if point != "standby::rename" {
                assert_eq!(st.flushed_lsn, before, "{case}: flushed after the restart");
            }
            wait_for("the standby to converge after the fault", || {
                let st = standby.state();
                seen.most = walship::Lsn(second);
                seen.check(&st, "converging");
                // (The seal marker ends no record: the sealed segment is stored once it has
                // its sealed name.)
                st.flushed_lsn == walship::Lsn(second)
                    && st.applied_lsn == walship::Lsn(second)
                    && sealed_files(&sdir) > stored
            })
            .await;
            standby
                .stop(Duration::from_secs(5))
                .await
                .expect("stop standby");
            shipper.stop(Duration::from_secs(5)).await;
        });
        drop(wal);
        assert_all_there(&sdir, &acked);
        assert_all_there(&pdir, &acked);
    }
}

// ---------------------------------------------------------------------------------------------
// Archive: a push that fails halfway, a final name that cannot be given.

mod archive {
    use std::path::Path;
    use std::sync::Arc;

    use fail::FailScenario;
    use walship::archive::{Archiver, ArchiverOptions, LocalDirStore};
    use walship::DataDir;

    use super::{append_sealed, assert_all_there, open_primary, Acked, ENOSPC_TEXT};

    /// Every file in the archive directory.
    fn files(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .expect("read archive")
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    #[test]
    fn a_failed_archive_push_leaves_nothing_half_written_and_a_rerun_completes() {
        let _fs = FailScenario::setup();
        let points = [
            ("archive::put::write", "write"),
            ("archive::put::link", "link"),
        ];
        for (point, word) in points {
            let t = tempfile::tempdir().expect("tempdir");
            let (pdir, adir) = (t.path().join("primary"), t.path().join("archive"));
            let wal = open_primary(&pdir);
            let mut acked: Vec<Acked> = Vec::new();
            let first = append_sealed(&wal, "first", &mut acked);
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            let store = Arc::new(LocalDirStore::create(&adir).expect("archive store"));
            let mut archiver = rt
                .block_on(Archiver::new(
                    DataDir::new(&pdir),
                    store.clone(),
                    ArchiverOptions::default(),
                ))
                .expect("archiver");
            let s = rt.block_on(archiver.push_pending()).expect("first push");
            assert_eq!(s.position, walship::Lsn(first));
            let before = files(&adir);

            let second = append_sealed(&wal, "second", &mut acked);
            fail::cfg(point, "return(ENOSPC)").expect("cfg");
            let e = rt
                .block_on(archiver.push_pending())
                .expect_err("the push fails");
            let msg = e.to_string();
            assert!(
                msg.contains(word) && msg.contains(ENOSPC_TEXT),
                "{point}: {msg}"
            );
            // Nothing half-written is left under any name, and the position did not move.
            assert_eq!(files(&adir), before, "{point}");
            assert_eq!(archiver.position().0, first, "{point}");

            // A rerun, the fault gone, completes; the archive restores to the primary's end.
            fail::remove(point);
            let s = rt.block_on(archiver.push_pending()).expect("rerun");
            assert_eq!(s.position, walship::Lsn(second), "{point}");
            drop(wal);
            let restored = t.path().join("restored");
            let out = super::common::run(
                &[
                    "restore",
                    adir.to_str().expect("utf-8"),
                    restored.to_str().expect("utf-8"),
                ],
                b"",
            );
            assert_eq!(
                super::common::code(&out),
                0,
                "{}",
                super::common::stderr(&out)
            );
            assert_all_there(&restored, &acked);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// The command line: a fault in a child process (named in FAILPOINTS) is one clear line on
// stderr and exit code 2.

mod cli {
    use std::process::Output;

    use super::common::{code, new_dir, run_with, stderr, stdout};

    /// `walship ARGS` with the failpoints named in FAILPOINTS and `input` on stdin.
    fn walship(args: &[&str], failpoints: &str, input: &[u8]) -> Output {
        run_with(args, input, |c| {
            c.env("FAILPOINTS", failpoints);
        })
    }

    #[test]
    fn write_durable_with_a_failing_msync_prints_no_lsn_and_exits_2() {
        let (_tmp, dir) = new_dir();
        let d = dir.to_str().expect("utf-8");
        let out = walship(
            &["write", d, "--durable"],
            "segment::msync=return(EIO)",
            b"a\nb\n",
        );
        assert_eq!(code(&out), 2, "{}", stderr(&out));
        assert_eq!(stdout(&out), "", "no LSN is acknowledged");
        let err = stderr(&out);
        let line = err.lines().last().unwrap_or_default();
        assert!(
            line.starts_with("walship: error: ")
                && line.contains("msync")
                && line.contains(super::EIO_TEXT),
            "{err}"
        );
        let out = walship(&["write", d, "--durable"], "", b"c\n");
        assert_eq!(code(&out), 0, "{}", stderr(&out));
        assert_eq!(stdout(&out).lines().count(), 1);
    }

    #[test]
    fn archive_once_failing_halfway_exits_2_and_a_rerun_completes() {
        let (tmp, dir) = new_dir();
        let d = dir.to_str().expect("utf-8");
        let lines: String = (0..2000).map(|i| format!("line-{i}\n")).collect();
        let out = walship(&["write", d], "", lines.as_bytes());
        assert_eq!(code(&out), 0, "{}", stderr(&out));
        assert_eq!(code(&walship(&["seal", d], "", b"")), 0);
        let archive = tmp.path().join("archive");
        let a = archive.to_str().expect("utf-8");
        let out = walship(
            &["archive", d, "--to", a, "--once"],
            "archive::put::write=return(ENOSPC)",
            b"",
        );
        assert_eq!(code(&out), 2, "{}", stderr(&out));
        let err = stderr(&out);
        let line = err.lines().last().unwrap_or_default();
        assert!(
            line.starts_with("walship: error: ") && line.contains(super::ENOSPC_TEXT),
            "{err}"
        );
        let out = walship(&["archive", d, "--to", a, "--once"], "", b"");
        assert_eq!(code(&out), 0, "{}", stderr(&out));
        let restored = tmp.path().join("restored");
        let out = walship(&["restore", a, restored.to_str().expect("utf-8")], "", b"");
        assert_eq!(code(&out), 0, "{}", stderr(&out));
        let records = super::read_all(&restored).expect("read the restore");
        assert_eq!(records.len(), 2000);
        assert_eq!(records[1999].payload, b"line-1999");
    }

    /// `walship write` on a file system without `fallocate` (the call fails with EOPNOTSUPP)
    /// works across rotations and says once how it reserves segments; a restore cut inside a
    /// segment reserves its open segment the same way and takes new writes.
    #[test]
    fn write_and_restore_without_fallocate_succeed_and_say_so() {
        let (tmp, dir) = new_dir();
        let d = dir.to_str().expect("utf-8");
        let no_fallocate = "segment::fallocate=return(EOPNOTSUPP)";
        let lines: String = (0..2000)
            .map(|i| format!("line-{i:05}-{}\n", "z".repeat(60)))
            .collect();
        let out = walship(&["write", d, "--durable"], no_fallocate, lines.as_bytes());
        let err = stderr(&out);
        assert_eq!(code(&out), 0, "{err}");
        assert_eq!(stdout(&out).lines().count(), 2000);
        assert_eq!(
            err.matches("does not support fallocate").count(),
            1,
            "one warning, naming the fallback: {err}"
        );
        assert_eq!(code(&walship(&["seal", d], no_fallocate, b"")), 0);
        let archive = tmp.path().join("archive");
        let a = archive.to_str().expect("utf-8");
        let out = walship(&["archive", d, "--to", a, "--once"], "", b"");
        assert_eq!(code(&out), 0, "{}", stderr(&out));
        let records = super::read_all(&dir).expect("read");
        let cut = records[1000].end_lsn;
        let restored = tmp.path().join("restored");
        let r = restored.to_str().expect("utf-8");
        let out = walship(
            &["restore", a, r, "--until-lsn", &cut.to_string()],
            no_fallocate,
            b"",
        );
        assert_eq!(code(&out), 0, "{}", stderr(&out));
        crate::common::assert_segments_reserved(&restored);
        let out = walship(&["write", r, "--durable"], no_fallocate, b"after restore\n");
        assert_eq!(code(&out), 0, "{}", stderr(&out));
        let got = super::read_all(&restored).expect("read the restore");
        assert_eq!(got.len(), 1002);
        assert_eq!(got[1000].payload, records[1000].payload);
        assert_eq!(got[1001].payload, b"after restore");
        let out = walship(&["verify", r], "", b"");
        assert_eq!(code(&out), 0, "{}", stdout(&out));
    }

    /// No space (or an I/O error) from `fallocate` is not "unsupported": exit 2, one line naming
    /// the file and the cause, every earlier record kept.
    #[test]
    fn write_with_fallocate_out_of_space_exits_2() {
        let (_tmp, dir) = new_dir();
        let d = dir.to_str().expect("utf-8");
        let out = walship(&["write", d, "--durable"], "", b"kept\n");
        assert_eq!(code(&out), 0, "{}", stderr(&out));
        for (errno, text) in [("ENOSPC", super::ENOSPC_TEXT), ("EIO", super::EIO_TEXT)] {
            let lines: String = (0..2000)
                .map(|i| format!("more-{i}-{}\n", "y".repeat(60)))
                .collect();
            let out = walship(
                &["write", d, "--durable"],
                &format!("segment::fallocate=return({errno})"),
                lines.as_bytes(),
            );
            assert_eq!(code(&out), 2, "{}", stderr(&out));
            let err = stderr(&out);
            let line = err.lines().last().unwrap_or_default();
            assert!(
                line.starts_with("walship: error: ")
                    && line.contains("allocate")
                    && line.contains(".wal")
                    && line.contains(text),
                "{errno}: {err}"
            );
            assert!(!err.contains("does not support fallocate"), "{err}");
        }
        let got = super::read_all(&dir).expect("read");
        assert_eq!(got[0].payload, b"kept");
        let out = walship(&["verify", d], "", b"");
        assert_eq!(code(&out), 0, "{}", stdout(&out));
    }
}

/// Recovery syncs `wal/` before the writer counts anything durable: the name of an open segment
/// the last writer activated (renamed from its prepared name) may not be durable yet, and the
/// new writer acknowledges records in that file. If that sync fails, nothing is acknowledged.
#[test]
fn recovery_syncs_the_directory_before_the_writer_acknowledges_anything() {
    let _fs = FailScenario::setup();
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("data");
    let mut acked = Vec::new();
    {
        let wal = open_primary(&root);
        append_acked(&wal, "before", 20, &mut acked);
    }
    fail::cfg("recovery::dir_fsync", "return(EIO)").expect("cfg");
    let e = Wal::open(&root, WalOptions::default())
        .err()
        .expect("a failed directory sync fails the open");
    assert!(e.to_string().contains("fsync directory"), "{e}");
    fail::remove("recovery::dir_fsync");
    let wal = Wal::open(&root, WalOptions::default()).expect("reopen");
    append_acked(&wal, "after", 5, &mut acked);
    drop(wal);
    assert_all_there(&root, &acked);
}
