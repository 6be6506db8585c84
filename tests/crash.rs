//! Crash safety with the real binary: `walship write --durable` is killed with SIGKILL at random
//! moments, many times over one data directory. Every acknowledged record must survive intact,
//! and appending must go on. Power loss is simulated by damaging what lies past the last durable
//! position after a kill: recovery must keep exactly the durable prefix.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::Rec;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use walship::decoder::{ScanEnd, SegmentScanner};
use walship::format::record::{encode_record, encoded_len};
use walship::format::segment_header::SEGMENT_HEADER_LEN;
use walship::{EntryType, Lsn, Wal, WalOptions};

/// What one writer process was sent and what it acknowledged before it was killed.
struct Cycle {
    /// Every line written to its stdin, in order (a line cut short by the kill included).
    sent: Vec<Vec<u8>>,
    /// The LSN of each acknowledged (durable) line, in order.
    acked: Vec<Lsn>,
}

fn rng() -> StdRng {
    let seed = std::env::var("WALSHIP_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| rand::thread_rng().gen());
    println!("seed {seed} (set WALSHIP_TEST_SEED to replay)");
    StdRng::seed_from_u64(seed)
}

/// Runs `walship write DIR --durable`, feeds it lines, and kills it with SIGKILL after `ms`.
fn run_and_kill(dir: &Path, cycle: usize, ms: u64, rng: &mut StdRng) -> Cycle {
    let stderr_path = dir
        .parent()
        .expect("parent")
        .join(format!("stderr.{cycle}"));
    let mut child = Command::new(common::bin())
        .arg("write")
        .arg(dir)
        .arg("--durable")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(std::fs::File::create(&stderr_path).expect("stderr file"))
        .spawn()
        .expect("spawn walship write");
    let mut stdin = child.stdin.take().expect("stdin");
    let stdout = child.stdout.take().expect("stdout");

    let sent = Arc::new(Mutex::new(Vec::new()));
    let feeder = {
        let sent = sent.clone();
        let seed: u64 = rng.gen();
        std::thread::spawn(move || {
            let mut rng = StdRng::seed_from_u64(seed);
            for i in 0.. {
                let mut burst = Vec::new();
                for j in 0..rng.gen_range(1..40) {
                    let fill = rng.gen_range(0..300);
                    let line: Vec<u8> = format!("c{cycle}-{}-", i * 100 + j)
                        .into_bytes()
                        .into_iter()
                        .chain((0..fill).map(|_| rng.gen_range(b'a'..=b'z')))
                        .collect();
                    burst.extend_from_slice(&line);
                    burst.push(b'\n');
                    sent.lock().expect("sent").push(line);
                }
                if stdin.write_all(&burst).is_err() {
                    return;
                }
                if rng.gen_bool(0.3) {
                    std::thread::sleep(Duration::from_millis(rng.gen_range(0..5)));
                }
            }
        })
    };
    let acked = Arc::new(Mutex::new(Vec::new()));
    let collector = {
        let acked = acked.clone();
        std::thread::spawn(move || {
            let mut r = BufReader::new(stdout);
            let mut line = String::new();
            // A line cut short by the kill has no newline: it is not an acknowledgement.
            while r.read_line(&mut line).unwrap_or(0) > 0 && line.ends_with('\n') {
                let lsn: Lsn = line.trim_end().parse().expect("an LSN per line");
                acked.lock().expect("acked").push(lsn);
                line.clear();
            }
        })
    };
    std::thread::sleep(Duration::from_millis(ms));
    child.kill().expect("SIGKILL");
    let status = child.wait().expect("wait");
    assert!(
        status.code().is_none(),
        "writer exited by itself ({status}) before the kill: {}",
        std::fs::read_to_string(&stderr_path).unwrap_or_default()
    );
    feeder.join().expect("feeder");
    collector.join().expect("collector");
    let sent = std::mem::take(&mut *sent.lock().expect("sent"));
    let acked = std::mem::take(&mut *acked.lock().expect("acked"));
    Cycle { sent, acked }
}

/// Checks the log after a cycle: what was there before is unchanged, then comes a prefix of the
/// lines sent (at least every acknowledged one, each at its acknowledged LSN), nothing else.
fn check_cycle(dir: &Path, before: &[Rec], c: &Cycle) -> Vec<Rec> {
    let now = common::read_recs(dir).unwrap_or_else(|e| panic!("reading after a kill: {e}"));
    assert!(now.len() >= before.len(), "records disappeared");
    if let Some(i) = (0..before.len()).find(|&i| now[i] != before[i]) {
        panic!(
            "earlier record changed: {:?} became {:?}",
            before[i], now[i]
        );
    }
    let new = &now[before.len()..];
    assert!(
        new.len() >= c.acked.len(),
        "{} records acknowledged, only {} present",
        c.acked.len(),
        new.len()
    );
    assert!(new.len() <= c.sent.len(), "more records than lines sent");
    for (i, r) in new.iter().enumerate() {
        assert!(
            r.payload.as_bytes() == c.sent[i],
            "record {i} of this cycle is wrong: {r:?}"
        );
        assert_eq!(r.entry_type, EntryType::Insert);
        if let Some(a) = c.acked.get(i) {
            assert_eq!(r.lsn, a.0, "acknowledged LSN differs from the stored one");
        }
    }
    assert!(now.windows(2).all(|w| w[0].end_lsn <= w[1].lsn));
    now
}

/// Appending goes on after the last kill, and what is stored verifies clean.
fn finish(dir: &Path, before: &[Rec]) {
    let out = common::run(
        &["write", dir.to_str().expect("utf8"), "--durable"],
        b"after-1\nafter-2\n",
    );
    assert_eq!(common::code(&out), 0, "{}", common::stderr(&out));
    let all = common::read_recs(dir).expect("read");
    assert!(
        all[..before.len()] == *before,
        "records changed by the last write"
    );
    let tail: Vec<&str> = all[before.len()..]
        .iter()
        .map(|r| r.payload.as_str())
        .collect();
    assert_eq!(tail, ["after-1", "after-2"]);
    let v = common::run(&["verify", dir.to_str().expect("utf8")], b"");
    assert_eq!(common::code(&v), 0, "{}", common::stdout(&v));
}

#[test]
fn sigkill_never_loses_an_acknowledged_record() {
    let (_tmp, dir) = common::new_dir();
    let mut rng = rng();
    let mut log = Vec::new();
    let mut acked_total = 0;
    for cycle in 0..25 {
        let ms = rng.gen_range(5..250);
        let c = run_and_kill(&dir, cycle, ms, &mut rng);
        acked_total += c.acked.len();
        log = check_cycle(&dir, &log, &c);
    }
    let segments = walship::DataDir::new(&dir)
        .list_segments()
        .expect("list")
        .len();
    println!(
        "{acked_total} acknowledged, {} stored, {segments} segment files",
        log.len()
    );
    assert!(acked_total > 0, "no cycle acknowledged anything");
    assert!(segments > 2, "the test never crossed a segment boundary");
    finish(&dir, &log);
}

/// How a power loss may leave the bytes the disk never confirmed.
#[derive(Clone, Copy, Debug)]
enum Loss {
    Zeros,
    Garbage,
    HalfRecord,
}

/// Damages the open segment from `from` (a record boundary at or past the durable position) to
/// its end. Garbage is random bytes: it is never a valid record at its position.
fn damage(path: &Path, seg_start: u64, from: usize, loss: Loss, rng: &mut StdRng) {
    let mut b = std::fs::read(path).expect("read open segment");
    match loss {
        Loss::Zeros => b[from..].fill(0),
        Loss::Garbage => rng.fill(&mut b[from..]),
        Loss::HalfRecord => {
            b[from..].fill(0);
            let payload = vec![b'h'; rng.gen_range(8..200)];
            let mut rec = vec![0u8; encoded_len(payload.len())];
            encode_record(
                &mut rec,
                walship::Lsn(seg_start + from as u64),
                0,
                1,
                None,
                1,
                &payload,
            );
            let half = (rec.len() / 2).min(b.len() - from);
            b[from..from + half].copy_from_slice(&rec[..half]);
        }
    }
    std::fs::write(path, &b).expect("write damaged segment");
}

#[test]
fn power_loss_past_the_durable_position_keeps_exactly_the_durable_prefix() {
    let (_tmp, dir) = common::new_dir();
    let mut rng = rng();
    let mut log: Vec<Rec> = Vec::new();
    let mut damaged = 0;
    for cycle in 0..15 {
        let ms = rng.gen_range(20..200);
        let c = run_and_kill(&dir, cycle, ms, &mut rng);
        let now = check_cycle(&dir, &log, &c);
        // Durable: everything before this cycle (checked above), every acknowledged record,
        // every sealed segment (sealing syncs), and what the writer published as durable (it
        // may have been killed between publishing a sync and printing what it covered).
        let acked = now[..log.len() + c.acked.len()]
            .last()
            .map(|r| r.end_lsn)
            .unwrap_or(0);
        let published = walship::flush_position::read_flush_position(&walship::DataDir::new(&dir))
            .expect("read the published position")
            .unwrap_or(0);
        let durable = acked.max(published);
        log = now;
        let Some((name, path)) = common::open_segment(&dir) else {
            continue;
        };
        let bytes = std::fs::read(&path).expect("read");
        if bytes[..SEGMENT_HEADER_LEN].iter().all(|&b| b == 0) {
            continue; // activated, killed before its header was written: nothing to lose
        }
        let mut scan = SegmentScanner::new(&bytes).expect("open segment header");
        if matches!(scan.finish(), ScanEnd::Sealed { .. }) {
            continue; // an interrupted seal: its segment was synced whole
        }
        let start = name.segment_no.0 * common::SEG;
        let from = durable.saturating_sub(start).max(SEGMENT_HEADER_LEN as u64) as usize;
        let loss = [Loss::Zeros, Loss::Garbage, Loss::HalfRecord][cycle % 3];
        damage(&path, start, from, loss, &mut rng);
        damaged += 1;

        let wal = Wal::open(&dir, WalOptions::default())
            .unwrap_or_else(|e| panic!("recovery after {loss:?} from offset {from}: {e}"));
        let kept: Vec<Rec> = log
            .iter()
            .filter(|r| r.end_lsn <= start + from as u64)
            .cloned()
            .collect();
        let end = kept.last().map(|r| r.end_lsn).unwrap_or(0);
        assert_eq!(wal.write_lsn(), Lsn(end), "recovered end after {loss:?}");
        drop(wal);
        let after = std::fs::read(&path).expect("read");
        assert!(
            after[from..].iter().all(|&b| b == 0),
            "{loss:?}: the torn tail was not zeroed"
        );
        let back = common::read_recs(&dir).expect("read after recovery");
        assert!(
            back == kept,
            "recovery after {loss:?} from offset {from} kept {} records, expected {}",
            back.len(),
            kept.len()
        );
        log = back;
    }
    println!(
        "{damaged} simulated power losses, {} records kept",
        log.len()
    );
    assert!(
        damaged >= 5,
        "too few cycles left an open segment to damage"
    );
    finish(&dir, &log);
}

/// A power loss may persist the pages past the durable position in any order: a later page
/// kept, an earlier one lost (zeros), torn (half written) or garbled. In the default mode the log
/// ends at the first damaged record and everything after it is kept aside; strict mode refuses;
/// verify agrees with both; no acknowledged record is ever lost.
#[test]
fn power_loss_persisting_pages_out_of_order_keeps_every_acknowledged_record() {
    let (_tmp, dir) = common::new_dir();
    let d = dir.to_str().expect("utf8");
    let mut rng = rng();
    let mut log: Vec<Rec> = Vec::new();
    let mut patterns = 0;
    // Whether a killed writer leaves enough unsynced data to reorder depends on the machine's
    // load: run cycles until eight did (at most 40).
    for cycle in 0..40 {
        if patterns >= 8 {
            break;
        }
        let c = run_and_kill(&dir, cycle, rng.gen_range(20..200), &mut rng);
        let now = check_cycle(&dir, &log, &c);
        let acked_end = now[..log.len() + c.acked.len()]
            .last()
            .map(|r| r.end_lsn)
            .unwrap_or(0);
        log = now;
        let Some((name, path)) = common::open_segment(&dir) else {
            continue;
        };
        let mut bytes = std::fs::read(&path).expect("read");
        if bytes[..SEGMENT_HEADER_LEN].iter().all(|&b| b == 0) {
            continue;
        }
        let start = name.segment_no.0 * common::SEG;
        // The writer's durable position is at least the last acknowledged record's end and
        // at least what any record says it was: bytes from there on were never synced.
        let mut scan = SegmentScanner::new(&bytes).expect("open segment header");
        let max_durable = scan
            .by_ref()
            .map(|r| r.header.durable_offset as usize)
            .max()
            .unwrap_or(0);
        if matches!(scan.end(), Some(ScanEnd::Sealed { .. })) {
            continue;
        }
        let written = scan.offset();
        // And at least the position it published after its last sync, which may be past
        // the acknowledgements the killed process got to print.
        let published = std::fs::read(dir.join("state/flush_position"))
            .ok()
            .and_then(|b| walship::flush_position::decode_position(&b))
            .unwrap_or(0);
        let from = (acked_end.saturating_sub(start) as usize)
            .max(published.saturating_sub(start) as usize)
            .max(max_durable)
            .max(SEGMENT_HEADER_LEN);
        if written < from + 600 {
            continue; // too little unsynced data to reorder
        }
        // Lose 64 to 512 bytes at an 8-byte boundary past `from`, keep what follows.
        let at = (from + rng.gen_range(0..written - from - 520)) & !7;
        let at = at.max(from);
        let len = rng.gen_range(8..=64) * 8;
        match patterns % 3 {
            0 => bytes[at..at + len].fill(0),
            1 => rng.fill(&mut bytes[at..at + len]),
            _ => bytes[at + len / 2..at + len].fill(0),
        }
        std::fs::write(&path, &bytes).expect("write damaged segment");
        patterns += 1;
        let mut after = SegmentScanner::new(&bytes).expect("header");
        after.by_ref().for_each(drop);
        let end = after.offset();
        assert!(
            end >= from && end <= at + len,
            "damage at {at} left the log ending at {end}"
        );

        let v = common::run(&["verify", d], b"");
        assert_eq!(
            common::code(&v),
            0,
            "verify after losing {len} bytes at {at}: {}",
            common::stdout(&v)
        );
        let strict = Wal::open(
            &dir,
            WalOptions {
                recovery_mode: walship::RecoveryMode::Strict,
                ..WalOptions::default()
            },
        );
        let e = strict.err().expect("strict mode refuses to cut the log");
        assert!(e.to_string().contains(&format!("offset {end}")), "{e}");
        assert_eq!(
            std::fs::read(&path).expect("read"),
            bytes,
            "strict mode changed the file"
        );

        let aside_before = walship::setaside::list(&walship::DataDir::new(&dir)).expect("list");
        let wal = Wal::open(&dir, WalOptions::default())
            .unwrap_or_else(|e| panic!("recovery after losing {len} bytes at {at}: {e}"));
        let kept: Vec<Rec> = log
            .iter()
            .filter(|r| r.end_lsn <= start + end as u64)
            .cloned()
            .collect();
        assert_eq!(wal.write_lsn(), Lsn(kept.last().map_or(0, |r| r.end_lsn)));
        drop(wal);
        assert!(
            kept.last().map_or(0, |r| r.end_lsn) >= acked_end.min(start + end as u64),
            "an acknowledged record was lost"
        );
        let aside = walship::setaside::list(&walship::DataDir::new(&dir)).expect("list");
        assert_eq!(
            aside.len(),
            aside_before.len() + 1,
            "no copy set aside: {aside:?}"
        );
        let copy = walship::setaside::setaside_dir(&walship::DataDir::new(&dir)).join(
            aside
                .iter()
                .find(|n| !aside_before.contains(n))
                .expect("new copy"),
        );
        assert_eq!(
            std::fs::read(copy).expect("read copy"),
            bytes,
            "the copy is not the file as found"
        );
        let back = common::read_recs(&dir).expect("read after recovery");
        assert!(
            back == kept,
            "kept {} records, expected {}",
            back.len(),
            kept.len()
        );
        log = back;
    }
    println!("{patterns} out-of-order power losses");
    assert!(
        patterns >= 4,
        "too few cycles left unsynced data to reorder"
    );
    finish(&dir, &log);
}
