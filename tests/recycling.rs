//! Recycled segment files: released segments kept by retention and reused by the writer as new
//! segments. The log reads back exactly; real writer processes killed with SIGKILL while another
//! process releases segments lose no acknowledged record; the archiver never takes the old
//! bytes. (A failpoint at each step of a recycled file's first use: `recycling_faults.rs`.)

mod common;

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use walship::format::SegmentFileKind;
use walship::retention::RetentionOptions;
use walship::{DataDir, Lsn, Wal, WalOptions};

use common::recycled::{append, check, read_from};

fn files(dir: &Path, kind: SegmentFileKind) -> Vec<String> {
    DataDir::new(dir)
        .list_segments()
        .expect("list")
        .into_iter()
        .filter(|n| n.kind == kind)
        .map(|n| n.to_string())
        .collect()
}

#[test]
fn released_segments_are_reused_and_every_record_reads_back() {
    let (_t, dir) = common::new_dir();
    let wal = Wal::open(&dir, WalOptions::default()).expect("open");
    let mut want = append(&wal, "a", 2500);
    let ckpt = wal.flush_lsn();
    let r = wal
        .checkpoint(ckpt, &RetentionOptions::default())
        .expect("checkpoint");
    // Every released file is kept: the pool holds as many as the checkpoint released.
    assert!(r.recycled.len() > walship::recycling::MIN_RECYCLED, "{r:?}");
    assert_eq!(r.recycled.len(), r.removed.len(), "{r:?}");
    for name in &r.recycled {
        assert!(dir.join("wal").join(name).exists(), "{name} kept");
    }
    want.retain(|(l, _)| *l >= ckpt);
    want.extend(append(&wal, "b", 1500));
    let recycled = wal.stats().segments_recycled;
    assert!(recycled >= 4, "{recycled} recycled files reused");
    drop(wal);
    // The open segment may hold old records past its end: not damage, not torn.
    check(&dir, ckpt, &want);
    let wal = Wal::open(&dir, WalOptions::default()).expect("reopen");
    assert_eq!(wal.write_lsn(), want.last().expect("records").0 + 248);
    want.extend(append(&wal, "c", 10));
    drop(wal);
    check(&dir, ckpt, &want);
    // With no bound, nothing is kept.
    let wal = Wal::open(&dir, WalOptions::default()).expect("reopen");
    let none = RetentionOptions {
        max_recycled: 0,
        ..RetentionOptions::default()
    };
    let r = wal.checkpoint(wal.flush_lsn(), &none).expect("checkpoint");
    assert!(r.recycled.is_empty() && !r.removed.is_empty(), "{r:?}");
}

#[test]
fn the_pool_keeps_what_a_checkpoint_released_and_shrinks_by_a_tenth_when_idle() {
    let (_t, dir) = common::new_dir();
    let wal = Wal::open(&dir, WalOptions::default()).expect("open");
    let pool = || files(&dir, SegmentFileKind::Prepared);
    append(&wal, "a", 4000);
    let r = wal
        .checkpoint(wal.flush_lsn(), &RetentionOptions::default())
        .expect("checkpoint");
    let released = r.removed.len();
    assert!(released >= 12, "{r:?}");
    assert_eq!(r.recycled.len(), released, "{r:?}");
    assert!(r.pool_removed.is_empty(), "{r:?}");
    // The writer's own prepared file for its next segment is one more.
    let kept = pool();
    assert_eq!(kept.len(), released + 1, "{kept:?}");
    // Checkpoints that release nothing take a tenth of the pool (rounded down), the highest
    // numbers first; the writer's prepared file is never touched.
    let mut expected = released;
    while expected >= 10 {
        let before = pool();
        let r = wal
            .checkpoint(wal.flush_lsn(), &RetentionOptions::default())
            .expect("idle checkpoint");
        assert!(r.removed.is_empty(), "{r:?}");
        let target = expected - expected / 10;
        assert_eq!(r.pool_removed.len(), expected - target, "{r:?}");
        let after = pool();
        assert_eq!(after.len(), target + 1, "{after:?}");
        let (lowest, highest) = before.split_at(target);
        assert_eq!(&after[..target], lowest, "the lowest numbers stay");
        assert_eq!(
            after[target],
            *highest.last().expect("prepared"),
            "the writer's file stays"
        );
        for gone in &r.pool_removed {
            assert!(!dir.join("wal").join(gone).exists(), "{gone} removed");
        }
        expected = target;
    }
    // Below ten files a tenth is none: the pool stays.
    let r = wal
        .checkpoint(wal.flush_lsn(), &RetentionOptions::default())
        .expect("idle checkpoint");
    assert!(r.pool_removed.is_empty(), "{r:?}");
    assert_eq!(pool().len(), expected + 1);
    // The bound applies to what is already kept: --max-recycled 1 leaves one.
    let one = RetentionOptions {
        max_recycled: 1,
        ..RetentionOptions::default()
    };
    let r = wal.checkpoint(wal.flush_lsn(), &one).expect("checkpoint");
    assert_eq!(r.pool_removed.len(), expected - 1, "{r:?}");
    assert_eq!(pool().len(), 2);
    // The writer goes on into its prepared file and the kept one, and everything reads back.
    let ckpt = wal.flush_lsn();
    let mut want = append(&wal, "b", 1500);
    assert!(wal.stats().segments_recycled >= 1);
    drop(wal);
    want.retain(|(l, _)| *l >= ckpt);
    check(&dir, ckpt, &want);
}

#[test]
fn a_pool_file_changed_after_its_release_is_set_aside_not_damage() {
    use std::os::unix::fs::FileExt;
    // A flipped bit, a file grown past the segment size: it can no longer be reused, but it
    // lies below the checkpoint and every live segment, so nothing in it is needed.
    for (tag, change) in [
        (
            "flipped",
            (|f: &std::fs::File| f.write_all_at(&[0xFF; 4], 5000).unwrap()) as fn(&_),
        ),
        ("grown", |f: &std::fs::File| f.set_len(1 << 30).unwrap()),
    ] {
        let (_t, dir) = common::new_dir();
        let wal = Wal::open(&dir, WalOptions::default()).expect("open");
        append(&wal, "a", 2500);
        let ckpt = wal.flush_lsn();
        wal.checkpoint(ckpt, &RetentionOptions::default())
            .expect("checkpoint");
        drop(wal);
        let pool = files(&dir, SegmentFileKind::Prepared);
        let victim = dir.join("wal").join(&pool[0]);
        change(
            &std::fs::OpenOptions::new()
                .write(true)
                .open(&victim)
                .unwrap(),
        );
        let v = common::walship(&["verify", common::p(&dir)]);
        assert!(v.status.success(), "{tag}: {}", common::text(&v));
        let wal = Wal::open(&dir, WalOptions::default()).expect("the writer starts");
        let want: Vec<_> = append(&wal, "b", 300);
        drop(wal);
        assert!(
            !victim.exists(),
            "{tag}: the changed file was reused or left"
        );
        let aside: Vec<_> = std::fs::read_dir(dir.join("setaside"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(
            aside.iter().any(|n| n.starts_with(&pool[0])),
            "{tag}: {aside:?}"
        );
        let got = read_from(&dir, want[0].0);
        assert_eq!(got, want, "{tag}");
        let v = common::walship(&["verify", common::p(&dir)]);
        assert!(v.status.success(), "{tag}: {}", common::text(&v));
    }
}

/// Inodes of the files in `wal/` of `kind`.
fn inodes(dir: &Path, kind: SegmentFileKind) -> HashSet<u64> {
    files(dir, kind)
        .iter()
        .filter_map(|n| std::fs::metadata(dir.join("wal").join(n)).ok())
        .map(|m| m.ino())
        .collect()
}

#[test]
fn sigkill_while_another_process_recycles_loses_no_acknowledged_record() {
    let (_t, dir) = common::new_dir();
    let d = dir.to_str().expect("utf8").to_string();
    let seed: u64 = std::env::var("WALSHIP_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| rand::thread_rng().gen());
    println!("seed {seed} (set WALSHIP_TEST_SEED to replay)");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut pooled = HashSet::new();
    let mut reused = 0;
    let mut acked_total = 0;
    for cycle in 0..12 {
        let mut child = Command::new(common::bin())
            .args(["write", &d, "--durable"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn walship write");
        let mut stdin = child.stdin.take().expect("stdin");
        let stdout = child.stdout.take().expect("stdout");
        let sent = Arc::new(Mutex::new(Vec::new()));
        let feeder = {
            let sent = sent.clone();
            std::thread::spawn(move || {
                for i in 0.. {
                    let line = format!("k{cycle}-{i:06}-{}", "z".repeat(150));
                    sent.lock().expect("sent").push(line.clone());
                    if stdin.write_all(format!("{line}\n").as_bytes()).is_err() {
                        return;
                    }
                }
            })
        };
        let acked = Arc::new(Mutex::new(Vec::<Lsn>::new()));
        let collector = {
            let acked = acked.clone();
            std::thread::spawn(move || {
                let mut r = BufReader::new(stdout);
                let mut line = String::new();
                while r.read_line(&mut line).unwrap_or(0) > 0 && line.ends_with('\n') {
                    acked
                        .lock()
                        .expect("acked")
                        .push(line.trim_end().parse().expect("an LSN"));
                    line.clear();
                }
            })
        };
        // Checkpoints from another process, releasing segments while the writer runs.
        let until = Instant::now() + Duration::from_millis(rng.gen_range(100..400));
        let mut ckpt = Lsn(0);
        while Instant::now() < until {
            std::thread::sleep(Duration::from_millis(20));
            let last = acked.lock().expect("acked").last().copied();
            if let Some(l) = last {
                let out = common::run(&["checkpoint", &d, "--lsn", &l.to_string()], b"");
                assert_eq!(common::code(&out), 0, "{}", common::stderr(&out));
                ckpt = ckpt.max(l);
                pooled.extend(inodes(&dir, SegmentFileKind::Prepared));
            }
        }
        child.kill().expect("SIGKILL");
        assert!(child.wait().expect("wait").code().is_none(), "killed");
        feeder.join().expect("feeder");
        collector.join().expect("collector");
        let sent = std::mem::take(&mut *sent.lock().expect("sent"));
        let acked = std::mem::take(&mut *acked.lock().expect("acked"));
        acked_total += acked.len();
        // Every acknowledged record at or past the checkpoint is there, at its LSN.
        let got: std::collections::HashMap<Lsn, Vec<u8>> =
            read_from(&dir, ckpt).into_iter().collect();
        for (i, l) in acked.iter().enumerate().filter(|(_, l)| **l >= ckpt) {
            assert_eq!(
                got.get(l).map(Vec::as_slice),
                Some(sent[i].as_bytes()),
                "cycle {cycle}: acknowledged record {i} at {l}"
            );
        }
        let live: HashSet<u64> = inodes(&dir, SegmentFileKind::Sealed)
            .union(&inodes(&dir, SegmentFileKind::Open))
            .copied()
            .collect();
        reused += live.intersection(&pooled).count();
    }
    println!("{acked_total} acknowledged; {reused} live segment files were recycled ones");
    assert!(acked_total > 0);
    assert!(reused > 0, "no recycled file was ever reused");
    let out = common::run(&["write", &d, "--durable"], b"after\n");
    assert_eq!(common::code(&out), 0, "{}", common::stderr(&out));
    let v = common::run(&["verify", &d], b"");
    assert_eq!(common::code(&v), 0, "{}", common::stdout(&v));
}

#[test]
fn the_archiver_takes_only_each_segments_own_records_from_recycled_files() {
    let (t, dir) = common::new_dir();
    let arc = t.path().join("arc");
    let (d, a) = (dir.to_str().expect("utf8"), arc.to_str().expect("utf8"));
    let archive = || {
        let out = common::run(&["archive", d, "--to", a, "--once"], b"");
        assert_eq!(common::code(&out), 0, "{}", common::stderr(&out));
    };
    let wal = Wal::open(&dir, WalOptions::default()).expect("open");
    append(&wal, "a", 2500);
    wal.seal().expect("seal");
    archive();
    wal.checkpoint(wal.flush_lsn(), &RetentionOptions::default())
        .expect("checkpoint");
    let pooled = inodes(&dir, SegmentFileKind::Prepared);
    append(&wal, "b", 2500);
    wal.seal().expect("seal");
    assert!(wal.stats().segments_recycled > 0);
    drop(wal);
    archive();
    let mut from_recycled = 0;
    for name in files(&dir, SegmentFileKind::Sealed) {
        let local = dir.join("wal").join(&name);
        let bytes = std::fs::read(&local).expect("read");
        if pooled.contains(&std::fs::metadata(&local).expect("stat").ino()) {
            from_recycled += 1;
        }
        // Cut right after its own seal marker: nothing of the file's earlier use is left.
        let mut scan = walship::decoder::SegmentScanner::new(&bytes).expect("header");
        assert!(matches!(
            scan.finish(),
            walship::decoder::ScanEnd::Sealed { trailing: 0, .. }
        ));
        assert!(
            std::fs::read(arc.join(&name)).expect("archived") == bytes,
            "{name}: the archived object is the sealed file"
        );
    }
    assert!(from_recycled > 0, "no sealed segment was a recycled file");
    let v = common::run(&["verify", a], b"");
    assert_eq!(common::code(&v), 0, "{}", common::stdout(&v));
}
