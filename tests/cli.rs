//! The commands as a user runs them: real child processes, their output, error text and exit
//! codes (0 ok, 1 damage, 2 usage or I/O).

mod common;

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{code, p, run, stderr, stdout};
use serde_json::Value;

fn init(dir: &Path) {
    let o = run(&["init", p(dir), "--segment-size", "64KiB"], b"");
    assert_eq!(code(&o), 0, "{}", stderr(&o));
}

/// Appends one record per line; returns the printed LSNs.
fn write(dir: &Path, input: &str, extra: &[&str]) -> Vec<String> {
    let mut args = vec!["write", p(dir)];
    args.extend_from_slice(extra);
    let o = run(&args, input.as_bytes());
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    stdout(&o).lines().map(str::to_string).collect()
}

fn seal(dir: &Path) -> String {
    let o = run(&["seal", p(dir)], b"");
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    stdout(&o)
}

fn dump_json(path: &Path, extra: &[&str]) -> Vec<Value> {
    let mut args = vec!["dump", p(path), "--json"];
    args.extend_from_slice(extra);
    let o = run(&args, b"");
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    stdout(&o)
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON object per line"))
        .collect()
}

fn lsn_form(l: &str) -> bool {
    let Some((hi, lo)) = l.split_once('/') else {
        return false;
    };
    let hex = |x: &str| {
        x.bytes()
            .all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(&b))
    };
    !hi.is_empty() && lo.len() == 8 && hex(hi) && hex(lo)
}

fn tempdir() -> (tempfile::TempDir, PathBuf) {
    let t = tempfile::tempdir().expect("tempdir");
    let d = t.path().join("data");
    (t, d)
}

/// A directory with three sealed segments and an open one, 5 records each.
fn four_segments() -> (tempfile::TempDir, PathBuf) {
    let (t, d) = tempdir();
    init(&d);
    for seg in 0..4 {
        let lines: String = (0..5).map(|i| format!("seg{seg} rec{i} abc\n")).collect();
        write(&d, &lines, &[]);
        if seg < 3 {
            seal(&d);
        }
    }
    (t, d)
}

fn wal_file(d: &Path, no: u64, sealed: bool) -> PathBuf {
    d.join("wal").join(format!(
        "00000001{no:016X}{}",
        if sealed { ".wal" } else { ".wal.open" }
    ))
}

fn flip(path: &Path, offset: u64, mask: u8) {
    let mut b = std::fs::read(path).expect("read");
    b[offset as usize] ^= mask;
    std::fs::write(path, b).expect("write");
}

fn verify_json(path: &Path) -> (i32, Value) {
    let o = run(&["verify", p(path), "--json"], b"");
    let v: Value = serde_json::from_str(stdout(&o).trim())
        .unwrap_or_else(|e| panic!("verify --json: {e}: {}{}", stdout(&o), stderr(&o)));
    (code(&o), v)
}

/// A `walship dump --follow` child whose stdout lines arrive on a channel; killed when dropped,
/// so a failing test never leaves it running.
struct Follower {
    child: std::process::Child,
    lines: std::sync::mpsc::Receiver<String>,
}

impl Follower {
    fn start(d: &Path, extra: &[&str]) -> Follower {
        let mut child = Command::new(common::bin())
            .args(["dump", p(d), "--follow"])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn dump --follow");
        let out = child.stdout.take().expect("stdout");
        let (tx, lines) = std::sync::mpsc::channel::<String>();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { return };
                if tx.send(line).is_err() {
                    return;
                }
            }
        });
        Follower { child, lines }
    }

    /// The next `n` lines, failing after a generous timeout.
    fn take(&self, n: usize) -> Vec<String> {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut got = Vec::with_capacity(n);
        while got.len() < n {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) => got.push(l),
                Err(_) => panic!("dump --follow printed {} of {n} lines", got.len()),
            }
        }
        got
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn init_parses_sizes_and_rejects_bad_ones() {
    for (arg, bytes) in [
        ("64KiB", 65536),
        ("65536", 65536),
        ("1MiB", 1 << 20),
        ("1GiB", 1 << 30),
    ] {
        let (_t, d) = tempdir();
        let o = run(&["init", p(&d), "--segment-size", arg], b"");
        assert_eq!(code(&o), 0, "{arg}: {}", stderr(&o));
        assert!(
            stdout(&o).contains(&format!("segment size {bytes} bytes")),
            "{}",
            stdout(&o)
        );
        let c = walship::DataDir::new(&d).read_control().expect("control");
        assert_eq!(c.segment_size, bytes);
    }
    let (_t, d) = tempdir();
    let o = run(&["init", p(&d)], b"");
    assert_eq!(code(&o), 0);
    assert!(
        stdout(&o).contains("segment size 16777216 bytes"),
        "{}",
        stdout(&o)
    );
    // A second init on the same directory is refused.
    let o = run(&["init", p(&d)], b"");
    assert_eq!(code(&o), 2);
    assert!(
        stderr(&o).contains("already a walship data directory"),
        "{}",
        stderr(&o)
    );

    for (arg, says) in [
        ("100KiB", "must be a power of two"),
        ("32KiB", "must be a power of two from 64KiB"),
        ("2GiB", "must be a power of two from 64KiB"),
        ("12XB", "unknown unit"),
        ("lots", "invalid size"),
    ] {
        let (_t, d) = tempdir();
        let o = run(&["init", p(&d), "--segment-size", arg], b"");
        assert_eq!(code(&o), 2, "{arg} accepted");
        let err = stderr(&o);
        assert!(err.contains(says), "{arg}: {err}");
        assert!(
            !d.join("control").exists(),
            "{arg}: a control file was made"
        );
    }
}

#[test]
fn write_prints_lsns_and_stores_type_and_tx() {
    let (_t, d) = tempdir();
    init(&d);
    let lsns = write(&d, "alpha\nbeta\r\n\ngamma", &["--durable"]);
    assert_eq!(
        lsns,
        ["0/00000050", "0/00000080", "0/000000B0", "0/000000D8"]
    );
    let more = write(&d, "one\ntwo\n", &["--type", "tx_commit", "--tx", "42"]);
    assert_eq!(more.len(), 2);
    assert!(more.iter().all(|l| lsn_form(l)), "{more:?}");
    let recs = dump_json(&d, &[]);
    let payloads: Vec<&str> = recs
        .iter()
        .map(|r| r["data_hex"].as_str().unwrap_or("?"))
        .collect();
    assert_eq!(
        payloads,
        [
            "616c706861",
            // The bytes as given: a carriage return before the newline stays.
            "626574610d",
            "",
            "67616d6d61",
            "6f6e65",
            "74776f"
        ]
    );
    assert_eq!(recs[0]["type"], "insert");
    assert_eq!(recs[0]["tx_id"], Value::Null);
    assert_eq!(recs[4]["type"], "tx_commit");
    assert_eq!(recs[5]["tx_id"], 42);
    // Printed LSNs are the stored ones.
    let printed: Vec<String> = lsns.iter().chain(&more).cloned().collect();
    let stored: Vec<String> = recs
        .iter()
        .map(|r| walship::Lsn(r["lsn"].as_u64().unwrap_or(0)).to_string())
        .collect();
    assert_eq!(printed, stored);

    let o = run(&["write", p(&d), "--type", "nonsense"], b"x\n");
    assert_eq!(code(&o), 2);
    assert!(stderr(&o).contains("unknown entry type"), "{}", stderr(&o));
    let o = run(&["write", p(&d.join("nope"))], b"x\n");
    assert_eq!(code(&o), 2);
    assert!(
        stderr(&o).contains("not a walship data directory"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn many_durable_lines_share_syncs_and_cross_segments() {
    let (_t, d) = tempdir();
    init(&d);
    let input: String = (0..3000)
        .map(|i| format!("line {i:05} {}\n", "z".repeat(40)))
        .collect();
    let lsns = write(&d, &input, &["--durable"]);
    assert_eq!(lsns.len(), 3000);
    let parsed: Vec<walship::Lsn> = lsns.iter().map(|l| l.parse().expect("LSN")).collect();
    assert!(parsed.windows(2).all(|w| w[0] < w[1]));
    let recs = dump_json(&d, &[]);
    assert_eq!(recs.len(), 3000);
    assert!(recs
        .iter()
        .any(|r| r["segment"].as_str().is_some_and(|s| s.ends_with(".wal"))));
    let v = run(&["verify", p(&d)], b"");
    assert_eq!(code(&v), 0, "{}", stdout(&v));
}

#[test]
fn seal_renames_and_writing_continues_in_the_next_segment() {
    let (_t, d) = tempdir();
    init(&d);
    let o = seal(&d);
    assert!(o.contains("nothing to seal"), "{o}");
    write(&d, "a\nb\n", &[]);
    let o = seal(&d);
    assert!(o.contains("sealed 000000010000000000000000.wal"), "{o}");
    assert!(wal_file(&d, 0, true).exists());
    assert!(!wal_file(&d, 0, false).exists());
    let lsns = write(&d, "c\n", &[]);
    assert_eq!(lsns, ["0/00010050"]);
    let recs = dump_json(&d, &[]);
    assert_eq!(recs.len(), 3);
    assert_eq!(recs[2]["segment"], "000000010000000000000001.wal.open");
    assert_eq!(recs[2]["offset"], 80);
}

#[test]
fn dump_json_has_every_key_with_the_right_types() {
    let (_t, d) = tempdir();
    init(&d);
    write(&d, "hello\n", &["--type", "update", "--tx", "9"]);
    let recs = dump_json(&d, &[]);
    assert_eq!(recs.len(), 1);
    let r = recs[0].as_object().expect("object");
    let mut keys: Vec<&str> = r.keys().map(String::as_str).collect();
    keys.sort_unstable();
    let mut want = [
        "lsn",
        "end_lsn",
        "segment",
        "offset",
        "type",
        "tx_id",
        "len",
        "timestamp",
        "crc",
        "data_hex",
    ];
    want.sort_unstable();
    for k in want {
        assert!(keys.contains(&k), "missing key {k}: {keys:?}");
    }
    assert_eq!(r["lsn"], 80);
    assert_eq!(r["end_lsn"], 128);
    assert_eq!(r["segment"], "000000010000000000000000.wal.open");
    assert_eq!(r["offset"], 80);
    assert_eq!(r["type"], "update");
    assert_eq!(r["tx_id"], 9);
    assert_eq!(r["len"], 5);
    assert_eq!(r["data_hex"], "68656c6c6f");
    let ts = r["timestamp"].as_str().expect("timestamp string");
    let t = chrono::DateTime::parse_from_rfc3339(ts).expect("RFC 3339");
    assert!((chrono::Utc::now() - t.to_utc()).num_seconds().abs() < 3600);
    // The crc is the record's stored CRC, read from the file.
    let bytes = std::fs::read(wal_file(&d, 0, false)).expect("read");
    let stored = u32::from_le_bytes([bytes[80], bytes[81], bytes[82], bytes[83]]);
    assert_eq!(r["crc"], format!("{stored:08x}"));

    // Text output names the same record.
    let o = run(&["dump", p(&d)], b"");
    assert_eq!(code(&o), 0);
    let line = stdout(&o);
    for part in [
        "lsn: 0/00000050",
        "end: 0/00000080",
        "tx:        9",
        "type: update",
        "\"hello\"",
    ] {
        assert!(line.contains(part), "{part} not in {line}");
    }
}

#[test]
fn dump_filters() {
    let (_t, d) = tempdir();
    init(&d);
    write(&d, "a\nb\n", &["--tx", "1"]);
    write(&d, "c\nd\n", &["--type", "delete", "--tx", "2"]);
    write(&d, "e\n", &["--type", "checkpoint"]);
    let all = dump_json(&d, &[]);
    let lsn = |i: usize| all[i]["lsn"].as_u64().expect("lsn");
    let hexes = |v: &[Value]| -> Vec<String> {
        v.iter()
            .map(|r| r["data_hex"].as_str().unwrap_or("?").to_string())
            .collect()
    };
    assert_eq!(hexes(&all), ["61", "62", "63", "64", "65"]);
    let start = walship::Lsn(lsn(2)).to_string();
    assert_eq!(
        hexes(&dump_json(&d, &["--start", &start])),
        ["63", "64", "65"]
    );
    let dec = lsn(3).to_string();
    assert_eq!(hexes(&dump_json(&d, &["--start", &dec])), ["64", "65"]);
    assert_eq!(hexes(&dump_json(&d, &["--end", &start])), ["61", "62"]);
    assert_eq!(hexes(&dump_json(&d, &["--type", "delete"])), ["63", "64"]);
    assert_eq!(hexes(&dump_json(&d, &["--tx", "1"])), ["61", "62"]);
    assert_eq!(hexes(&dump_json(&d, &["--limit", "3"])), ["61", "62", "63"]);
    assert_eq!(
        hexes(&dump_json(&d, &["--tx", "2", "--limit", "1"])),
        ["63"]
    );
    let o = run(&["dump", p(&d), "--start", "zz"], b"");
    assert_eq!(code(&o), 2);
    assert!(stderr(&o).contains("invalid LSN"), "{}", stderr(&o));

    // --stats: per type count, share and bytes.
    let o = run(&["dump", p(&d), "--stats", "--json"], b"");
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let st: Value = serde_json::from_str(stdout(&o).trim()).expect("stats JSON");
    assert_eq!(st["records"], 5);
    assert_eq!(st["bytes"], 5 * 48);
    let types = st["types"].as_array().expect("types");
    let del = types
        .iter()
        .find(|t| t["type"] == "delete")
        .expect("delete row");
    assert_eq!(del["count"], 2);
    assert_eq!(del["share"], 0.4);
    assert_eq!(del["bytes"], 96);
    let o = run(&["dump", p(&d), "--stats"], b"");
    assert_eq!(code(&o), 0);
    assert!(
        stdout(&o)
            .lines()
            .any(|l| l.starts_with("insert") && l.contains("40.00%")),
        "{}",
        stdout(&o)
    );
}

#[test]
fn dump_follow_sees_records_from_another_process_across_a_seal() {
    let (_t, d) = tempdir();
    init(&d);
    write(&d, "before\n", &[]);
    let f = Follower::start(&d, &["--json"]);
    let mut lines = f.take(1);
    write(&d, "second\nthird\n", &[]);
    lines.extend(f.take(2));
    seal(&d);
    write(&d, "after seal\n", &[]);
    lines.extend(f.take(1));
    let seen: Vec<Value> = lines
        .iter()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect();
    let hex: Vec<&str> = seen
        .iter()
        .map(|r| r["data_hex"].as_str().unwrap_or("?"))
        .collect();
    assert_eq!(
        hex,
        [
            "6265666f7265",
            "7365636f6e64",
            "7468697264",
            "6166746572207365616c"
        ]
    );
    assert_eq!(seen[3]["segment"], "000000010000000000000001.wal.open");
    assert_eq!(seen[3]["lsn"], 65536 + 80);
}

#[test]
fn dump_reports_damage_after_the_good_records_and_exits_1() {
    let (_t, d) = four_segments();
    let recs = dump_json(&d, &[]);
    // Damage the third record of segment 1 (sealed): one bit of its payload.
    let victim = recs
        .iter()
        .filter(|r| r["segment"] == "000000010000000000000001.wal")
        .nth(2)
        .expect("record");
    let off = victim["offset"].as_u64().expect("offset");
    let lsn = victim["lsn"].as_u64().expect("lsn");
    let path = wal_file(&d, 1, true);
    flip(&path, off + 41, 0x04);
    let o = run(&["dump", p(&d), "--json"], b"");
    assert_eq!(code(&o), 1, "{}", stderr(&o));
    assert_eq!(
        stdout(&o).lines().count(),
        7,
        "records before the damage are printed"
    );
    let err = stderr(&o);
    let line = err
        .lines()
        .find(|l| l.contains("damage"))
        .unwrap_or_else(|| panic!("{err}"));
    for part in [
        path.display().to_string(),
        format!("offset {off}"),
        format!("LSN {}", walship::Lsn(lsn)),
        "checksum mismatch".to_string(),
    ] {
        assert!(line.contains(&part), "{part:?} not in {line:?}");
    }
}

#[test]
fn torn_tail_in_the_open_segment_is_a_note_not_damage() {
    let (_t, d) = tempdir();
    init(&d);
    write(&d, "one\ntwo\n", &[]);
    let recs = dump_json(&d, &[]);
    let end = recs[1]["end_lsn"].as_u64().expect("end") as usize;
    // Half a record after the last one: an interrupted write.
    let path = wal_file(&d, 0, false);
    let mut b = std::fs::read(&path).expect("read");
    let mut rec = vec![0u8; 56];
    walship::format::record::encode_record(
        &mut rec,
        walship::Lsn(end as u64),
        0,
        1,
        None,
        1,
        b"interrupted",
    );
    b[end..end + 28].copy_from_slice(&rec[..28]);
    std::fs::write(&path, &b).expect("write");
    let o = run(&["dump", p(&d)], b"");
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(stdout(&o).lines().count(), 2);
    let err = stderr(&o);
    assert!(
        err.contains("torn tail") && err.contains(&format!("offset {end}")),
        "{err}"
    );
    let (c, v) = verify_json(&d);
    assert_eq!(c, 0, "{v}");
    assert_eq!(v["ok"], true);
    assert_eq!(v["records"], 2);
    // The writer zeroes it and goes on at the same position.
    let lsns = write(&d, "three\n", &[]);
    assert_eq!(lsns, [walship::Lsn(end as u64).to_string()]);
    let o = run(&["dump", p(&d)], b"");
    assert!(!stderr(&o).contains("torn tail"), "{}", stderr(&o));
}

#[test]
fn verify_clean_and_json_summary() {
    let (_t, d) = four_segments();
    let o = run(&["verify", p(&d)], b"");
    assert_eq!(code(&o), 0, "{}", stdout(&o));
    assert!(
        stdout(&o).contains("4 segments, 20 records"),
        "{}",
        stdout(&o)
    );
    let (c, v) = verify_json(&d);
    assert_eq!(c, 0);
    assert_eq!(v["ok"], true);
    assert_eq!(v["segments"], 4);
    assert_eq!(v["records"], 20);
    assert_eq!(v["first_lsn"], 80);
    let last = dump_json(&d, &[]).last().cloned().expect("records");
    assert_eq!(v["end_lsn"], last["end_lsn"]);
    assert_eq!(v["errors"], Value::Array(vec![]));
    // The wal/ folder and single files work too.
    assert_eq!(verify_json(&d.join("wal")).0, 0);
    assert_eq!(verify_json(&wal_file(&d, 1, true)).0, 0);
    // Could not run: exit 2.
    let o = run(&["verify", p(&d.join("missing"))], b"");
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    assert!(stderr(&o).contains("missing"), "{}", stderr(&o));
}

fn assert_damage(d: &Path, segment: &str, says: &str) -> Value {
    let (c, v) = verify_json(d);
    assert_eq!(c, 1, "{v}");
    assert_eq!(v["ok"], false);
    let errors = v["errors"].as_array().expect("errors");
    let e = errors
        .iter()
        .find(|e| e["segment"] == segment && e["reason"].as_str().is_some_and(|r| r.contains(says)))
        .unwrap_or_else(|| panic!("no error in {segment} saying {says:?}: {v}"));
    for k in ["segment", "offset", "lsn", "reason"] {
        assert!(e.get(k).is_some(), "error without {k}: {e}");
    }
    e.clone()
}

#[test]
fn verify_finds_a_flipped_bit_in_padding_and_in_payload() {
    let (_t, d) = four_segments();
    let recs = dump_json(&d, &[]);
    // "seg1 rec0 abc" is 13 bytes: 3 bytes of padding follow it.
    let r = recs
        .iter()
        .find(|r| r["segment"] == "000000010000000000000001.wal")
        .expect("record");
    assert_eq!(r["len"], 13);
    let off = r["offset"].as_u64().expect("offset");
    flip(&wal_file(&d, 1, true), off + 40 + 13 + 1, 0x10);
    let e = assert_damage(&d, "000000010000000000000001.wal", "checksum mismatch");
    assert_eq!(e["offset"], off);
    assert_eq!(e["lsn"], r["lsn"]);

    let (_t2, d2) = four_segments();
    // The seal marker's own padding-free payload is covered by its CRC; the segment checksum
    // covers the header: flip a reserved header byte of segment 2.
    flip(&wal_file(&d2, 2, true), 73, 0x01);
    assert_damage(&d2, "000000010000000000000002.wal", "header checksum");
    let o = run(&["dump", p(&d2)], b"");
    assert_eq!(code(&o), 1);
}

#[test]
fn verify_finds_missing_reordered_and_foreign_segments() {
    let (_t, d) = four_segments();
    std::fs::remove_file(wal_file(&d, 1, true)).expect("rm");
    assert_damage(&d, "000000010000000000000002.wal", "missing");

    let (_t, d) = four_segments();
    let (a, b) = (wal_file(&d, 1, true), wal_file(&d, 2, true));
    let tmp = d.join("wal").join("swap");
    std::fs::rename(&a, &tmp).expect("mv");
    std::fs::rename(&b, &a).expect("mv");
    std::fs::rename(&tmp, &b).expect("mv");
    assert_damage(&d, "000000010000000000000001.wal", "file name disagrees");

    let (_t, d) = four_segments();
    let (_t2, other) = four_segments();
    std::fs::copy(wal_file(&other, 1, true), wal_file(&d, 1, true)).expect("cp");
    assert_damage(&d, "000000010000000000000001.wal", "belongs to system");
    // The writer refuses it too.
    let o = run(&["write", p(&d)], b"x\n");
    assert_eq!(code(&o), 1, "{}", stderr(&o));
    assert!(stderr(&o).contains("belongs to system"), "{}", stderr(&o));
}

#[test]
fn a_second_writer_is_refused_at_once_with_the_holders_pid() {
    let (_t, d) = tempdir();
    init(&d);
    let wal = walship::Wal::open(&d, walship::WalOptions::default()).expect("open");
    for args in [vec!["write", p(&d)], vec!["seal", p(&d)]] {
        let o = run(&args, b"x\n");
        assert_eq!(code(&o), 2, "{args:?}");
        let err = stderr(&o);
        assert!(err.contains("locked by another process"), "{err}");
        assert!(
            err.contains(&format!("pid {}", std::process::id())),
            "{err}"
        );
        assert_eq!(err.lines().count(), 1, "one clear line: {err}");
    }
    // The lock file removed (or replaced) under the holder: the directory's own lock still
    // refuses a second writer.
    std::fs::remove_file(d.join("LOCK")).expect("rm LOCK");
    let o = run(&["write", p(&d), "--durable"], b"x\n");
    assert_eq!(code(&o), 2, "{}", stderr(&o));
    assert!(
        stderr(&o).contains("locked by another process"),
        "{}",
        stderr(&o)
    );
    drop(wal);
    assert_eq!(write(&d, "x\n", &[]).len(), 1);
}

#[test]
fn every_command_has_help_with_an_example() {
    for cmd in [
        &[][..],
        &["init"],
        &["write"],
        &["seal"],
        &["dump"],
        &["verify"],
    ] {
        let mut args = cmd.to_vec();
        args.push("--help");
        let o = run(&args, b"");
        assert_eq!(code(&o), 0, "{args:?}");
        assert!(stdout(&o).contains("Example"), "{args:?}: {}", stdout(&o));
        assert!(stdout(&o).contains("walship"), "{args:?}");
    }
    let o = run(&["frobnicate"], b"");
    assert_eq!(code(&o), 2);
}

#[test]
fn dump_follow_keeps_up_with_a_burst_larger_than_its_read_window() {
    let (_t, d) = tempdir();
    let o = run(&["init", p(&d), "--segment-size", "16MiB"], b"");
    assert_eq!(code(&o), 0);
    write(&d, "first\n", &[]);
    let f = Follower::start(&d, &[]);
    let first = f.take(1).remove(0);
    assert!(first.contains("\"first\""), "{first}");
    // About 3 MiB appended between two polls of the follower.
    let n = 24_000;
    let burst: String = (0..n)
        .map(|i| format!("{i:08} {}\n", "b".repeat(90)))
        .collect();
    write(&d, &burst, &[]);
    let got = f.take(n);
    let last = got.last().expect("lines");
    assert!(last.contains(&format!("\"{:08} ", n - 1)), "{last}");
}

#[test]
fn dump_starts_in_any_segment_and_reads_single_files() {
    let (_t, d) = four_segments();
    let all = dump_json(&d, &[]);
    assert_eq!(all.len(), 20);
    let hex = |v: &[Value]| -> Vec<String> {
        v.iter()
            .map(|r| r["data_hex"].as_str().unwrap_or("?").to_string())
            .collect()
    };
    // From the first record of segment 2, given as HI/LO; and from inside a record.
    let from = all[10]["lsn"].as_u64().expect("lsn");
    assert_eq!(from, 2 * 65536 + 80);
    let got = dump_json(&d, &["--start", &walship::Lsn(from).to_string()]);
    assert_eq!(hex(&got), hex(&all[10..]));
    let got = dump_json(&d, &["--start", &(from + 1).to_string()]);
    assert_eq!(hex(&got), hex(&all[11..]));
    // LSN space skipped by a seal: the next record is the first of the next segment.
    let got = dump_json(
        &d,
        &["--start", &(65536 + 60000).to_string(), "--limit", "1"],
    );
    assert_eq!(hex(&got), hex(&all[10..11]));
    // One sealed file, one open file, and the wal/ folder.
    assert_eq!(
        hex(&dump_json(&wal_file(&d, 1, true), &[])),
        hex(&all[5..10])
    );
    assert_eq!(
        hex(&dump_json(&wal_file(&d, 3, false), &[])),
        hex(&all[15..])
    );
    assert_eq!(hex(&dump_json(&d.join("wal"), &[])), hex(&all));
    let o = run(&["dump", p(&d.join("control"))], b"");
    assert_eq!(code(&o), 2);
    assert!(
        stderr(&o).contains("not a segment file name"),
        "{}",
        stderr(&o)
    );
}

/// The one line of stderr that carries walship's error (its prefix), and that there is one.
fn error_line(o: &std::process::Output) -> String {
    let err = stderr(o);
    let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("walship: ")).collect();
    assert_eq!(lines.len(), 1, "{err}");
    lines[0].to_string()
}

#[test]
fn verify_says_ok_only_about_a_walship_path() {
    let (t, d) = four_segments();
    let root = t.path();
    // Not walship paths: exit 2, nothing claimed ok.
    let etc_like = root.join("etc");
    std::fs::create_dir(&etc_like).expect("mkdir");
    std::fs::write(etc_like.join("hosts"), "127.0.0.1 localhost\n").expect("write");
    std::fs::create_dir(etc_like.join("ssh")).expect("mkdir");
    let empty = root.join("empty");
    std::fs::create_dir(&empty).expect("mkdir");
    let fifo = root.join("fifo");
    make_fifo(&fifo);
    for (p, says) in [
        (root.join("missing"), "No such file"),
        (d.join("control"), "not a segment file name"),
        (empty.clone(), "not a walship path"),
        (etc_like.clone(), "not a walship path"),
        (fifo.clone(), "is a FIFO"),
    ] {
        for cmd in ["verify", "dump"] {
            let o = run(&[cmd, common::p(&p)], b"");
            assert_eq!(
                code(&o),
                2,
                "{cmd} {}: {}{}",
                p.display(),
                stdout(&o),
                stderr(&o)
            );
            assert!(!stdout(&o).contains("ok"), "{}", stdout(&o));
            let line = error_line(&o);
            assert!(
                line.contains(common::p(&p)) && line.contains(says),
                "{cmd}: {line}"
            );
        }
    }

    // Partly a data directory, or segments with no identity to check them against: damage.
    let only_wal = root.join("only-wal");
    std::fs::create_dir_all(only_wal.join("wal")).expect("mkdir");
    let lost_control = root.join("lost-control");
    common::copy_tree(&d, &lost_control);
    std::fs::remove_file(lost_control.join("control")).expect("rm");
    let garbage = root.join("garbage-control");
    common::copy_tree(&d, &garbage);
    std::fs::write(garbage.join("control"), [0x5Au8; 64]).expect("write");
    let short = root.join("short-control");
    common::copy_tree(&d, &short);
    std::fs::write(short.join("control"), b"WALSHIPC").expect("write");
    let no_wal = root.join("no-wal");
    std::fs::create_dir(&no_wal).expect("mkdir");
    std::fs::copy(d.join("control"), no_wal.join("control")).expect("cp");
    let bare = root.join("archive-without-identity");
    std::fs::create_dir(&bare).expect("mkdir");
    for no in 0..3 {
        std::fs::copy(
            wal_file(&d, no, true),
            bare.join(wal_file(&d, no, true).file_name().expect("name")),
        )
        .expect("cp");
    }
    for (p, segment, says) in [
        (only_wal.clone(), "control", "no control file"),
        (only_wal.join("wal"), "control", "no control file"),
        (lost_control.clone(), "control", "no control file"),
        (lost_control.join("wal"), "control", "no control file"),
        (garbage.clone(), "control", "bad magic"),
        (garbage.join("wal"), "control", "bad magic"),
        (short.clone(), "control", "8 bytes"),
        (no_wal.clone(), "wal", "no wal/ folder"),
        (bare.clone(), "IDENTITY", "neither an IDENTITY file"),
    ] {
        let (c, v) = verify_json(&p);
        assert_eq!(c, 1, "{}: {v}", p.display());
        assert_eq!(v["ok"], false);
        let errors = v["errors"].as_array().expect("errors");
        assert!(
            errors.iter().any(|e| e["segment"] == segment
                && e["reason"].as_str().is_some_and(|r| r.contains(says))),
            "{}: {v}",
            p.display()
        );
        let o = run(&["verify", common::p(&p)], b"");
        assert_eq!(code(&o), 1);
        assert!(stdout(&o).contains("DAMAGED"), "{}", stdout(&o));
    }
    // A data directory whose segments were all removed is not an empty one: its checkpoint,
    // or a consumer's position, says how far the log had reached.
    let emptied = root.join("emptied");
    common::copy_tree(&d, &emptied);
    let o = run(&["checkpoint", p(&emptied), "--lsn", "0/00000080"], b"");
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let archived = root.join("archived");
    common::copy_tree(&d, &archived);
    let o = run(
        &[
            "archive",
            p(&archived),
            "--to",
            p(&root.join("arc")),
            "--once",
        ],
        b"",
    );
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    for dir in [&emptied, &archived] {
        for e in std::fs::read_dir(dir.join("wal")).expect("ls") {
            std::fs::remove_file(e.expect("entry").path()).expect("rm");
        }
        let (c, v) = verify_json(dir);
        assert_eq!(c, 1, "{v}");
        assert!(
            v["errors"][0]["reason"]
                .as_str()
                .is_some_and(|r| r.contains("holds no segment")),
            "{v}"
        );
    }
    // A segment file in a data directory whose control is damaged is damage too.
    let (c, v) = verify_json(&garbage.join("wal").join("000000010000000000000001.wal"));
    assert_eq!(c, 1, "{v}");

    // The only ok with no segments: an empty but valid data directory (and its wal/).
    let fresh = root.join("fresh");
    init(&fresh);
    for p in [fresh.clone(), fresh.join("wal")] {
        let (c, v) = verify_json(&p);
        assert_eq!(
            (c, &v["segments"], &v["ok"]),
            (0, &Value::from(0), &Value::from(true)),
            "{v}"
        );
    }
    // And a real one, by every path that names it.
    for p in [d.clone(), d.join("wal"), d.join("wal").join(".")] {
        let (c, v) = verify_json(&p);
        assert_eq!(c, 0, "{}: {v}", p.display());
        assert_eq!(v["segments"], 4);
    }
}

/// Makes a FIFO at `path`.
fn make_fifo(path: &Path) {
    let o = Command::new("mkfifo").arg(path).output().expect("mkfifo");
    assert!(o.status.success(), "{o:?}");
}

/// Two data directories of one system that part after segment 0: `a` and `b` each write and
/// seal segments 1 and 2 with their own records.
fn forked() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let (t, a) = tempdir();
    init(&a);
    write(&a, "common 1\ncommon 2\n", &[]);
    seal(&a);
    let b = t.path().join("b");
    common::copy_tree(&a, &b);
    for (d, tag) in [(&a, "a"), (&b, "b")] {
        for seg in 1..3 {
            write(
                d,
                &format!("{tag}{seg} x\n{tag}{seg} y\n{tag}{seg} z\n"),
                &[],
            );
            seal(d);
        }
    }
    (t, a, b)
}

#[test]
fn dump_checks_identity_and_chain_like_verify() {
    let seg = common::SEG;
    // Another system's segment 2 put into wal/, another segment size, a chain from another
    // history of the same system: each in place of segment 2.
    let (_t, d) = four_segments();
    let (_t2, other) = four_segments();
    let (_t3, big) = tempdir();
    let o = run(&["init", p(&big), "--segment-size", "128KiB"], b"");
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    for _ in 0..3 {
        write(&big, "big\n", &[]);
        seal(&big);
    }
    let (_t4, a, b) = forked();
    let cases: Vec<(PathBuf, PathBuf, &str)> = vec![
        (d.clone(), wal_file(&other, 2, true), "belongs to system"),
        (
            d.clone(),
            wal_file(&other, 2, true).with_file_name("000000010000000000000002.wal"),
            "belongs to system",
        ),
        (a.clone(), wal_file(&b, 2, true), "chain broken"),
    ];
    for (dir, from, says) in cases {
        let target = wal_file(&dir, 2, true);
        let keep = std::fs::read(&target).expect("read");
        std::fs::copy(&from, &target).expect("cp");
        let good = 10usize.min(if dir == a { 5 } else { 10 });
        for extra in [
            &[][..],
            &["--json"][..],
            &["--stats", "--json"][..],
            &["--follow"][..],
        ] {
            let mut args = vec!["dump", p(&dir)];
            args.extend_from_slice(extra);
            let o = run(&args, b"");
            assert_eq!(code(&o), 1, "{extra:?}: {}{}", stdout(&o), stderr(&o));
            let line = error_line(&o);
            for part in [
                target.display().to_string(),
                format!("LSN {}", walship::Lsn(2 * seg)),
                says.to_string(),
            ] {
                assert!(line.contains(&part), "{extra:?}: {part:?} not in {line}");
            }
            if extra.contains(&"--stats") {
                let v: Value = serde_json::from_str(stdout(&o).trim()).expect("stats");
                assert_eq!(v["records"], good, "{v}");
            } else {
                assert_eq!(
                    stdout(&o).lines().count(),
                    good,
                    "{extra:?}: {}",
                    stdout(&o)
                );
            }
        }
        // Starting at the segment itself: its identity and its chain to the one before.
        let start = walship::Lsn(2 * seg).to_string();
        let o = run(&["dump", p(&dir), "--start", &start], b"");
        assert_eq!(code(&o), 1, "{}", stderr(&o));
        assert!(error_line(&o).contains(says), "{}", stderr(&o));
        assert_eq!(stdout(&o), "");
        // The file given directly is checked against its directory's control file.
        if says != "chain broken" {
            let o = run(&["dump", p(&target)], b"");
            assert_eq!(code(&o), 1, "{}", stderr(&o));
            assert!(error_line(&o).contains(says), "{}", stderr(&o));
            assert_eq!(stdout(&o), "");
        }
        let (c, v) = verify_json(&dir);
        assert_eq!(c, 1, "{v}");
        assert!(v["errors"].to_string().contains(says), "{v}");
        std::fs::write(&target, keep).expect("restore");
        assert_eq!(dump_json(&dir, &[]).len(), if dir == a { 8 } else { 20 });
    }
    // Another segment size.
    let target = wal_file(&d, 2, true);
    std::fs::copy(
        wal_file(&big, 2, true).with_file_name("000000010000000000000001.wal"),
        &target,
    )
    .expect("cp");
    let o = run(&["dump", p(&d), "--json"], b"");
    assert_eq!(code(&o), 1, "{}", stderr(&o));
    assert_eq!(stdout(&o).lines().count(), 10);
    let line = error_line(&o);
    assert!(
        line.contains(&format!("LSN {}", walship::Lsn(2 * seg))),
        "{line}"
    );
    assert!(
        line.contains("belongs to system") || line.contains("segment size"),
        "{line}"
    );
    // The same file alone outside any data directory: checked against itself only.
    let alone = _t.path().join("000000010000000000000001.wal");
    std::fs::copy(wal_file(&big, 1, true), &alone).expect("cp");
    assert_eq!(dump_json(&alone, &[]).len(), 1);
}

#[test]
fn init_refuses_a_directory_it_did_not_make() {
    // The directory of a system whose control file was lost: its segments keep their identity.
    let (_t, d) = four_segments();
    std::fs::remove_file(d.join("control")).expect("rm");
    let before = std::fs::read_dir(d.join("wal")).expect("ls").count();
    let o = run(&["init", p(&d), "--segment-size", "64KiB"], b"");
    assert_eq!(code(&o), 2, "{}", stdout(&o));
    let line = error_line(&o);
    assert!(
        line.contains(p(&d)) && line.contains("wal/ is not empty"),
        "{line}"
    );
    assert!(!d.join("control").exists());
    assert_eq!(
        std::fs::read_dir(d.join("wal")).expect("ls").count(),
        before
    );

    // Any entry init would not make is refused, named.
    let (t, _) = tempdir();
    type Make = Box<dyn Fn(&Path)>;
    let cases: Vec<(&str, Make)> = vec![
        (
            "LOCK",
            Box::new(|p: &Path| std::fs::write(p.join("LOCK"), "1\n").expect("w")),
        ),
        (
            ".keep",
            Box::new(|p: &Path| std::fs::write(p.join(".keep"), "").expect("w")),
        ),
        (
            "notes",
            Box::new(|p: &Path| std::fs::create_dir(p.join("notes")).expect("mkdir")),
        ),
        (
            "wal",
            Box::new(|p: &Path| std::fs::write(p.join("wal"), "").expect("w")),
        ),
        (
            "state",
            Box::new(|p: &Path| {
                std::fs::create_dir(p.join("state")).expect("mkdir");
                std::fs::write(p.join("state").join("retention.json"), "{}").expect("w");
            }),
        ),
        (
            "wal",
            Box::new(|p: &Path| {
                std::os::unix::fs::symlink("/tmp", p.join("wal")).expect("ln");
            }),
        ),
        ("fifo", Box::new(|p: &Path| make_fifo(&p.join("fifo")))),
    ];
    for (i, (name, make)) in cases.iter().enumerate() {
        let p = t.path().join(format!("case{i}"));
        std::fs::create_dir(&p).expect("mkdir");
        make(&p);
        let o = run(&["init", common::p(&p)], b"");
        assert_eq!(code(&o), 2, "{name}: {}", stdout(&o));
        let line = error_line(&o);
        assert!(
            line.contains(name) && line.contains(common::p(&p)),
            "{name}: {line}"
        );
        assert!(!p.join("control").exists(), "{name}");
    }
    // A regular file is not a directory to initialise.
    let f = t.path().join("file");
    std::fs::write(&f, "x").expect("w");
    let o = run(&["init", p(&f)], b"");
    assert_eq!(code(&o), 2);
    assert_eq!(std::fs::read(&f).expect("read"), b"x");

    // What an interrupted init leaves (empty wal/ and state/) is completed; then it is
    // initialised, and a second init says so.
    let p = t.path().join("half");
    std::fs::create_dir_all(p.join("wal")).expect("mkdir");
    std::fs::create_dir_all(p.join("state")).expect("mkdir");
    std::fs::write(p.join(".control.tmp"), b"WALSH").expect("w");
    let o = run(&["init", common::p(&p), "--segment-size", "64KiB"], b"");
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let o = run(&["init", common::p(&p), "--segment-size", "64KiB"], b"");
    assert_eq!(code(&o), 2);
    assert!(error_line(&o).contains("already a walship data directory"));
    write(&p, "works\n", &["--durable"]);
}

#[test]
fn a_non_regular_file_with_a_segment_name_is_refused_never_opened() {
    let (t, base) = four_segments();
    let arc = t.path().join("arc");
    let o = run(&["archive", p(&base), "--to", p(&arc), "--once"], b"");
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let kinds = ["FIFO", "directory", "socket", "symbolic link"];
    let names = [
        "000000010000000000000004.wal.open",
        "000000010000000000000004.wal",
        "000000010000000000000002.wal",
        "000000010000000000000005.wal.prep",
    ];
    let mut listeners = Vec::new();
    for (i, kind) in kinds.iter().enumerate() {
        for (j, name) in names.iter().enumerate() {
            let d = t.path().join(format!("d{i}-{j}"));
            common::copy_tree(&base, &d);
            let at = d.join("wal").join(name);
            if at.exists() {
                std::fs::rename(&at, d.join(format!("{name}.moved"))).expect("mv");
            }
            match *kind {
                "FIFO" => make_fifo(&at),
                "directory" => std::fs::create_dir(&at).expect("mkdir"),
                "socket" => {
                    listeners.push(std::os::unix::net::UnixListener::bind(&at).expect("bind"))
                }
                _ => std::os::unix::fs::symlink(wal_file(&base, 1, true), &at).expect("ln"),
            }
            let says = format!("{}: is a {kind}, not a regular file", at.display());
            for args in [
                vec!["verify", p(&d)],
                vec!["dump", p(&d)],
                vec!["dump", p(&d), "--follow"],
                vec!["dump", p(&d.join("wal"))],
                vec!["write", p(&d)],
                vec!["seal", p(&d)],
                vec!["checkpoint", p(&d), "--lsn", "0/00000050"],
                vec!["status", p(&d)],
            ] {
                // `run` fails the test if the command blocks.
                let o = run(&args, b"x\n");
                assert_eq!(code(&o), 1, "{args:?} {kind} {name}: {}", stdout(&o));
                // verify lists it among its problems (on stdout); the others stop on it.
                let err = format!("{}{}", stdout(&o), stderr(&o));
                assert!(err.contains(&says), "{args:?}: {says:?} not in {err}");
            }
        }
    }
    // The control file too.
    let d = t.path().join("fifo-control");
    common::copy_tree(&base, &d);
    std::fs::remove_file(d.join("control")).expect("rm");
    make_fifo(&d.join("control"));
    for args in [
        vec!["verify", p(&d)],
        vec!["dump", p(&d)],
        vec!["write", p(&d)],
        vec!["checkpoint", p(&d)],
    ] {
        let o = run(&args, b"x\n");
        assert_eq!(code(&o), 1, "{args:?}: {}", stdout(&o));
        assert!(
            stderr(&o).contains("control: is a FIFO, not a regular file")
                || stdout(&o).contains("control: is a FIFO, not a regular file"),
            "{args:?}: {}{}",
            stdout(&o),
            stderr(&o)
        );
    }
    // Given directly as the path: not a walship path.
    let fifo = t.path().join("000000010000000000000000.wal");
    make_fifo(&fifo);
    for cmd in ["verify", "dump"] {
        let o = run(&[cmd, p(&fifo)], b"");
        assert_eq!(code(&o), 2, "{cmd}: {}", stderr(&o));
        assert!(error_line(&o).contains("is a FIFO"), "{}", stderr(&o));
    }
    // In an archive, the same.
    let seg = arc.join("000000010000000000000001.wal");
    std::fs::rename(&seg, arc.join("moved")).expect("mv");
    make_fifo(&seg);
    for args in [
        vec!["verify", p(&arc)],
        vec!["restore", p(&arc), p(&t.path().join("restored"))],
    ] {
        let o = run(&args, b"");
        assert_ne!(code(&o), 0, "{args:?}");
        assert!(
            stderr(&o).contains("is a FIFO, not a regular file"),
            "{args:?}: {}",
            stderr(&o)
        );
    }
    drop(listeners);
}

#[test]
fn write_bounds_each_line_to_the_largest_payload_and_keeps_its_bytes() {
    let (_t, d) = tempdir();
    init(&d);
    let max = 65536 - 184;
    // Bytes as given: CR before LF, a lone CR, NUL, invalid UTF-8, and a last line without
    // a newline.
    let mut input = Vec::new();
    input.extend_from_slice(b"crlf\r\n\rlead\n\0nul\xff\n");
    input.extend(std::iter::repeat_n(b'm', max));
    input.extend_from_slice(b"\nlast\r");
    let o = run(&["write", p(&d), "--durable"], &input);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let recs = dump_json(&d, &[]);
    let got: Vec<Vec<u8>> = recs
        .iter()
        .map(|r| {
            let h = r["data_hex"].as_str().expect("hex");
            (0..h.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&h[i..i + 2], 16).expect("hex"))
                .collect()
        })
        .collect();
    assert_eq!(
        got,
        vec![
            b"crlf\r".to_vec(),
            b"\rlead".to_vec(),
            b"\0nul\xff".to_vec(),
            vec![b'm'; max],
            b"last\r".to_vec()
        ]
    );

    // One byte over, at line 3 (and at line 1): refused before any byte of it is stored;
    // lines before it are stored and printed.
    for (before, n) in [(2usize, 3u64), (0, 1)] {
        let stored = dump_json(&d, &[]).len();
        let mut input: Vec<u8> = (0..before)
            .flat_map(|i| format!("ok {i}\n").into_bytes())
            .collect();
        input.extend(std::iter::repeat_n(b'z', max + 1));
        input.extend_from_slice(b"\nnever\n");
        let o = run(&["write", p(&d)], &input);
        assert_eq!(code(&o), 2, "{}", stderr(&o));
        assert_eq!(stdout(&o).lines().count(), before);
        let line = error_line(&o);
        for part in [
            format!("line {n} "),
            format!("{max} bytes"),
            "65536-byte segments".into(),
        ] {
            assert!(line.contains(&part), "{part:?} not in {line}");
        }
        let recs = dump_json(&d, &[]);
        assert_eq!(recs.len(), stored + before);
        assert!(recs
            .iter()
            .all(|r| r["len"].as_u64() != Some(max as u64 + 1)));
    }

    // A line of hundreds of megabytes: the command stops reading soon after the limit.
    let mut child = Command::new(common::bin())
        .args(["write", p(&d)])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut input = child.stdin.take().expect("stdin");
    let chunk = vec![b'h'; 1 << 20];
    let mut accepted = 0usize;
    while accepted < 300 << 20 {
        match std::io::Write::write(&mut input, &chunk) {
            Ok(n) => accepted += n,
            Err(_) => break,
        }
    }
    drop(input);
    let o = child.wait_with_output().expect("wait");
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(accepted < 16 << 20, "read {accepted} bytes of one line");
    assert!(error_line(&o).contains("line 1 "), "{}", stderr(&o));
}

#[test]
fn header_and_missing_segment_errors_name_the_segments_start_lsn() {
    let seg = common::SEG;
    for no in [1u64, 2] {
        // A damaged header: the name says where the segment starts.
        let (_t, d) = four_segments();
        flip(&wal_file(&d, no, true), 44, 0x01); // in the system id: the header CRC fails
        let want = walship::Lsn(no * seg).to_string();
        let o = run(&["dump", p(&d)], b"");
        assert_eq!(code(&o), 1);
        let line = error_line(&o);
        assert!(line.contains(&format!("LSN {want}")), "{line}");
        let (c, v) = verify_json(&d);
        assert_eq!(c, 1);
        assert_eq!(v["errors"][0]["lsn"], no * seg, "{v}");
        let o = run(&["write", p(&d)], b"x\n");
        assert_eq!(code(&o), 1);
        assert!(
            error_line(&o).contains(&format!("LSN {want}")),
            "{}",
            stderr(&o)
        );

        // The same file alone, outside any data directory: the header's own size field still
        // locates it.
        let alone = _t
            .path()
            .join(wal_file(&d, no, true).file_name().expect("name"));
        std::fs::copy(wal_file(&d, no, true), &alone).expect("cp");
        let o = run(&["dump", p(&alone)], b"");
        assert_eq!(code(&o), 1);
        assert!(
            error_line(&o).contains(&format!("LSN {want}")),
            "{}",
            stderr(&o)
        );
        let (c, v) = verify_json(&alone);
        assert_eq!(c, 1);
        assert_eq!(v["errors"][0]["lsn"], no * seg, "{v}");

        // A missing segment.
        let (_t, d) = four_segments();
        std::fs::remove_file(wal_file(&d, no, true)).expect("rm");
        let o = run(&["dump", p(&d)], b"");
        assert_eq!(code(&o), 1);
        let line = error_line(&o);
        assert!(
            line.contains("missing") && line.contains(&format!("LSN {want}")),
            "{line}"
        );
        let (c, v) = verify_json(&d);
        assert_eq!(c, 1);
        let e = &v["errors"][0];
        assert!(
            e["reason"].as_str().is_some_and(|r| r.contains("missing")),
            "{v}"
        );
        assert_eq!(e["lsn"], no * seg, "{v}");
        let o = run(&["write", p(&d)], b"x\n");
        assert_eq!(code(&o), 1);
        let line = error_line(&o);
        assert!(
            line.contains("missing") && line.contains(&format!("LSN {want}")),
            "{line}"
        );
    }
    // Missing before the open segment: the same LSN from all three.
    let (_t, d) = four_segments();
    let open = common::open_segment(&d).expect("an open segment").0;
    let gone = open.segment_no.0 - 1;
    std::fs::remove_file(wal_file(&d, gone, true)).expect("rm");
    let want = walship::Lsn(gone * seg).to_string();
    for args in [
        vec!["dump", p(&d)],
        vec!["verify", p(&d)],
        vec!["write", p(&d)],
    ] {
        let o = run(&args, b"x\n");
        assert_eq!(code(&o), 1, "{args:?}");
        assert!(
            common::text(&o).contains("missing")
                && common::text(&o).contains(&format!("LSN {want}")),
            "{args:?}: {}",
            common::text(&o)
        );
    }
}

/// A segment number from a file name or an archive object whose LSN does not fit in 64 bits is
/// refused with an error naming the file, never multiplied into a wrapped LSN or a panic: for
/// every command, for sealed and open names, at the boundary and far past it.
#[test]
fn segment_numbers_past_the_end_of_the_lsn_space_are_refused_by_every_command() {
    // 64 KiB segments: numbers up to 0000FFFFFFFFFFFF start inside the LSN space.
    for number in ["0001000000000000", "FFFFFFFFFFFFFFFF"] {
        for suffix in ["wal", "wal.open"] {
            let (t, dir) = common::new_dir();
            let d = dir.to_str().expect("utf8");
            let out = common::run(&["write", d, "--durable"], b"one\n");
            assert_eq!(common::code(&out), 0, "{}", common::stderr(&out));
            let out = common::run(&["seal", d], b"");
            assert_eq!(common::code(&out), 0, "{}", common::stderr(&out));
            let sealed = dir.join("wal").join("000000010000000000000000.wal");
            let arc = t.path().join("arc");
            let out = common::run(
                &["archive", d, "--to", arc.to_str().expect("utf8"), "--once"],
                b"",
            );
            assert_eq!(common::code(&out), 0, "{}", common::stderr(&out));
            let name = format!("00000001{number}.{suffix}");
            std::fs::copy(&sealed, dir.join("wal").join(&name)).expect("copy");
            for args in [
                vec!["write", d],
                vec!["verify", d],
                vec!["dump", d],
                vec!["status", d],
                vec!["checkpoint", d],
                vec!["seal", d],
            ] {
                let out = common::run(&args, b"x\n");
                let code = common::code(&out);
                let err = common::stderr(&out);
                assert!(!err.contains("panicked"), "{args:?} {name}: {err}");
                if args[0] == "write"
                    || args[0] == "seal"
                    || (args[0] == "checkpoint" && suffix == "wal")
                {
                    assert_eq!(code, 1, "{args:?} {name}: {err}");
                    assert!(
                        err.contains(&name) && err.contains("past the end of the LSN space"),
                        "{args:?}: {err}"
                    );
                }
                if args[0] == "verify" || args[0] == "dump" {
                    assert_eq!(code, 1, "{args:?} {name}: {err}");
                }
            }
            if suffix == "wal" {
                // The same name in an archive.
                std::fs::copy(&sealed, arc.join(&name)).expect("copy");
                let a = arc.to_str().expect("utf8");
                let dest = t.path().join("restored");
                for args in [
                    vec!["verify", a],
                    vec!["restore", a, dest.to_str().expect("utf8")],
                    vec!["archive", d, "--to", a, "--once"],
                ] {
                    let out = common::run(&args, b"");
                    let err = common::stderr(&out);
                    assert!(!err.contains("panicked"), "{args:?}: {err}");
                    assert_eq!(common::code(&out), 1, "{args:?}: {err}");
                }
            }
        }
    }
}

#[test]
fn a_corrupt_state_file_is_damage_with_one_message_wherever_it_is_read() {
    // Each state file `status` reads, made unreadable in turn: the same error (naming the file
    // and what it should hold) and exit code 1, as damage; the file is left as it was.
    for (rel, what) in [
        ("state/retention.json", "retention state"),
        ("state/consumers/archiver.json", "consumer record"),
        ("state/damage/shipper--x.json", "damage entry"),
    ] {
        let t = tempfile::tempdir().expect("tempdir");
        let d = t.path().join("data");
        let o = run(&["init", p(&d), "--segment-size", "64KiB"], b"");
        assert_eq!(code(&o), 0, "{}", stderr(&o));
        let file = d.join(rel);
        std::fs::create_dir_all(file.parent().expect("parent")).expect("mkdir");
        std::fs::write(&file, b"{").expect("write");
        let o = run(&["status", p(&d)], b"");
        assert_eq!(code(&o), 1, "{rel}: {}", stderr(&o));
        let err = stderr(&o);
        assert!(
            err.contains(&format!("{}: not a valid {what}: ", file.display())),
            "{rel}: {err}"
        );
        assert_eq!(std::fs::read(&file).expect("read"), b"{", "{rel}");
    }
}

/// `promote`, which takes the directory's lock before anything else, names a path that is no
/// directory as no data directory, and creates nothing there.
#[test]
fn promote_refuses_a_path_that_is_no_directory() {
    let (t, _) = tempdir();
    let file = t.path().join("a-file");
    std::fs::write(&file, b"x").expect("write");
    for (path, says) in [
        (t.path().join("missing"), "it does not exist"),
        (file.clone(), "it is not a directory"),
    ] {
        let o = run(&["promote", p(&path)], b"");
        assert_eq!(code(&o), 2, "{}", stderr(&o));
        let line = error_line(&o);
        assert!(
            line.contains(&format!(
                "{}: not a walship data directory: {says}",
                p(&path)
            )),
            "{line}"
        );
        assert!(!path.exists() || path.is_file());
    }
    assert_eq!(std::fs::read(&file).expect("read"), b"x");
}

/// `rewind` on a path that is no data directory says so before it asks the source anything
/// (the source here listens nowhere).
#[test]
fn rewind_names_a_path_that_is_no_data_directory_before_asking_the_source() {
    let (t, _) = tempdir();
    let file = t.path().join("a-file");
    std::fs::write(&file, b"x").expect("write");
    for (path, says) in [
        (t.path().join("missing"), "no control file"),
        (file.clone(), "it is not a directory"),
    ] {
        let o = run(&["rewind", p(&path), "--source", "127.0.0.1:9"], b"");
        assert_eq!(code(&o), 2, "{}", stderr(&o));
        let line = error_line(&o);
        assert!(
            line.contains(&format!(
                "{}: not a walship data directory: {says}",
                p(&path)
            )),
            "{line}"
        );
    }
}

/// A directory to create (an archive, a standby's directory) whose path runs into a regular
/// file is refused naming that file, and nothing is written there.
#[test]
fn a_path_that_runs_into_a_file_is_named_by_what_is_in_the_way() {
    let (t, data) = tempdir();
    let out = run(&["init", p(&data), "--segment-size", "64KiB"], b"");
    assert_eq!(code(&out), 0, "{}", stderr(&out));
    let file = t.path().join("a-file");
    std::fs::write(&file, b"x").expect("write");
    let under = file.join("sub");
    let cases: [(Vec<&str>, &Path); 3] = [
        (vec!["archive", p(&data), "--to", p(&file), "--once"], &file),
        (
            vec!["archive", p(&data), "--to", p(&under), "--once"],
            &under,
        ),
        (
            vec!["standby", p(&under), "--primary", "127.0.0.1:9"],
            &under,
        ),
    ];
    for (args, target) in cases {
        let o = run(&args, b"");
        assert_eq!(code(&o), 2, "{args:?}: {}", stderr(&o));
        let line = error_line(&o);
        assert!(
            line.contains(&format!(
                "{}: {} is a regular file, not a directory",
                p(target),
                p(&file)
            )),
            "{args:?}: {line}"
        );
    }
    assert_eq!(std::fs::read(&file).expect("read"), b"x");
}

/// A data directory (and an archive) whose path is not UTF-8, which `init` and `write` accept,
/// is checked, shown, archived and restored like any other.
#[test]
fn paths_that_are_not_utf8_work_with_every_command() {
    use std::os::unix::ffi::OsStrExt;
    let (t, _) = tempdir();
    let dir = t.path().join(std::ffi::OsStr::from_bytes(b"data-\xff"));
    let arc = t.path().join(std::ffi::OsStr::from_bytes(b"arc-\xfe"));
    let back = t.path().join(std::ffi::OsStr::from_bytes(b"back-\xfd"));
    let cmd = |args: &[&std::ffi::OsStr]| {
        Command::new(common::bin())
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run walship")
    };
    let os = std::ffi::OsStr::new;
    let o = cmd(&[
        os("init"),
        dir.as_os_str(),
        os("--segment-size"),
        os("64KiB"),
    ]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let mut child = Command::new(common::bin())
        .arg("write")
        .arg(&dir)
        .arg("--durable")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    std::io::Write::write_all(&mut child.stdin.take().expect("stdin"), b"one\ntwo\n")
        .expect("write stdin");
    let o = child.wait_with_output().expect("wait");
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    let o = cmd(&[os("seal"), dir.as_os_str()]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    for args in [
        vec![os("verify"), dir.as_os_str()],
        vec![os("status"), dir.as_os_str(), os("--json")],
        vec![
            os("archive"),
            dir.as_os_str(),
            os("--to"),
            arc.as_os_str(),
            os("--once"),
        ],
        vec![os("verify"), arc.as_os_str()],
        vec![os("status"), arc.as_os_str()],
        vec![os("restore"), arc.as_os_str(), back.as_os_str()],
        vec![os("verify"), back.as_os_str()],
    ] {
        let o = cmd(&args);
        assert_eq!(code(&o), 0, "{args:?}: {}{}", stdout(&o), stderr(&o));
    }
    let o = cmd(&[os("dump"), back.as_os_str()]);
    assert_eq!(code(&o), 0, "{}", stderr(&o));
    assert_eq!(stdout(&o).lines().count(), 2, "{}", stdout(&o));
}

/// Output that cannot be written (a full device) ends a command with one error line and exit
/// status 2, never a panic.
#[test]
fn output_that_cannot_be_written_is_an_error_not_a_panic() {
    let (_t, d) = four_segments();
    for args in [
        vec!["status", p(&d)],
        vec!["status", p(&d), "--json"],
        vec!["verify", p(&d)],
        vec!["dump", p(&d)],
    ] {
        let full = std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/full")
            .expect("open /dev/full");
        let o = Command::new(common::bin())
            .args(&args)
            .stdout(full)
            .stderr(Stdio::piped())
            .output()
            .expect("run walship");
        assert_eq!(code(&o), 2, "{args:?}: {}", stderr(&o));
        assert!(!stderr(&o).contains("panicked"), "{args:?}: {}", stderr(&o));
        assert!(
            error_line(&o).contains("No space left on device"),
            "{args:?}: {}",
            stderr(&o)
        );
    }
}

/// A seal marker whose own CRC is right but whose record count, last record or segment
/// checksum disagrees with its segment: `dump` stops at it as `verify` does, read in its
/// directory or alone.
#[test]
fn dump_checks_a_seal_marker_against_its_segment_as_verify_does() {
    use walship::format::record::{decode_at, encode_seal, Decoded, SEAL_LEN};
    type Forge = fn(&mut walship::format::SealInfo);
    let forgeries: [(&str, Forge); 3] = [
        ("one record fewer", |s| s.record_count -= 1),
        ("another last record", |s| {
            s.last_lsn = s.last_lsn.map(|l| walship::Lsn(l.0 - 8))
        }),
        ("another checksum", |s| s.segment_checksum ^= 1),
    ];
    for (what, forge) in forgeries {
        let (_t, d) = four_segments();
        let path = wal_file(&d, 1, true);
        let mut b = std::fs::read(&path).expect("read");
        let off = b.len() - SEAL_LEN;
        let lsn = walship::Lsn(common::SEG + off as u64);
        let Ok(Decoded::Seal(mut seal)) = decode_at(&b, off, lsn, common::SEG as usize) else {
            panic!("no seal marker at the end of {}", path.display());
        };
        forge(&mut seal);
        let durable = u32::from_le_bytes(b[off + 36..off + 40].try_into().expect("4 bytes"));
        let ts = i64::from_le_bytes(b[off + 24..off + 32].try_into().expect("8 bytes"));
        encode_seal(&mut b[off..], lsn, durable, ts, &seal);
        std::fs::write(&path, &b).expect("write");
        assert_eq!(code(&run(&["verify", p(&d)], b"")), 1, "{what}: verify");
        for target in [d.clone(), path.clone()] {
            let o = run(&["dump", p(&target)], b"");
            assert_eq!(code(&o), 1, "{what}: dump {}", target.display());
            assert!(
                error_line(&o).contains("seal marker"),
                "{what}: {}",
                stderr(&o)
            );
        }
    }
}

/// A sealed segment cut short, at several lengths: `verify`, `dump` and `write` name the same
/// offset, LSN and reason (where its records stop), not where a marker would have been.
#[test]
fn a_truncated_sealed_segment_is_named_alike_by_every_command() {
    for cut in [1usize, 20, 64, 84, 150, 1000] {
        let (_t, d) = four_segments();
        let path = wal_file(&d, 1, true);
        let len = std::fs::metadata(&path).expect("stat").len() as usize;
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&path)
            .expect("open");
        f.set_len((len - cut.min(len - 100)) as u64)
            .expect("truncate");
        let (c, v) = verify_json(&d);
        assert_eq!(c, 1, "cut {cut}: {v}");
        let e = &v["errors"][0];
        let want = format!(
            "offset {} (LSN {}): {}",
            e["offset"],
            walship::Lsn(e["lsn"].as_u64().expect("lsn")),
            e["reason"].as_str().expect("reason")
        );
        for args in [vec!["dump", p(&d)], vec!["write", p(&d)]] {
            let o = run(&args, b"x\n");
            assert_eq!(code(&o), 1, "cut {cut}: {args:?}");
            assert!(
                error_line(&o).contains(&want),
                "cut {cut}: {args:?}: {} (verify: {want})",
                error_line(&o)
            );
        }
    }
}

/// A sealed segment numbered after the open one (copied in from elsewhere) is not of this log:
/// `dump` refuses it as `verify` and `write` do.
#[test]
fn a_sealed_segment_after_the_open_one_is_refused_by_every_command() {
    let (_t, d) = four_segments();
    let (_t2, other) = tempdir();
    init(&other);
    for seg in 0..5 {
        write(&other, &format!("other {seg}\n"), &[]);
        seal(&other);
    }
    // Segment 4 of another log of the same shape, after this log's open segment 3.
    std::fs::copy(wal_file(&other, 4, true), wal_file(&d, 4, true)).expect("cp");
    assert_eq!(code(&run(&["verify", p(&d)], b"")), 1);
    let o = run(&["write", p(&d)], b"x\n");
    assert_eq!(code(&o), 1, "{}", stderr(&o));
    let o = run(&["dump", p(&d)], b"");
    assert_eq!(code(&o), 1, "{}", stderr(&o));
    assert!(
        error_line(&o).contains("follows the open segment"),
        "{}",
        stderr(&o)
    );
}

/// A command refused on a path that is no data directory (empty, or holding files of its own)
/// leaves it exactly as it was: no lock file behind.
#[test]
fn commands_refused_on_a_path_that_is_no_data_directory_leave_no_lock_file() {
    let t = tempfile::tempdir().unwrap();
    let commands: [&[&str]; 6] = [
        &["promote"],
        &["standby", "--primary", "127.0.0.1:1"],
        &["seal"],
        &["checkpoint", "--lsn", "0"],
        &["rewind", "--source", "127.0.0.1:1"],
        &["write"],
    ];
    for (i, cmd) in commands.iter().enumerate() {
        for junk in [false, true] {
            // An empty directory is where a standby begins: not refused.
            if cmd[0] == "standby" && !junk {
                continue;
            }
            let dir = t.path().join(format!("d{i}-{junk}"));
            std::fs::create_dir(&dir).unwrap();
            if junk {
                std::fs::write(dir.join("notes.txt"), b"mine").unwrap();
            }
            let before = common::names(&dir);
            let mut args = vec![cmd[0], p(&dir)];
            args.extend_from_slice(&cmd[1..]);
            let out = common::run(&args, b"");
            assert_ne!(code(&out), 0, "{args:?}: {}", stderr(&out));
            assert_eq!(common::names(&dir), before, "{args:?} left files behind");
        }
    }
}

/// Many `init`s of one path at once: exactly one succeeds, and the identity it printed is the
/// one the directory keeps; the others are refused as already initialised (exit 2).
#[test]
fn inits_racing_on_one_path_make_one_identity() {
    for round in 0..5 {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("data");
        let children: Vec<_> = (0..10)
            .map(|_| {
                Command::new(common::bin())
                    .args(["init", p(&dir), "--segment-size", "64KiB"])
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped())
                    .spawn()
                    .unwrap()
            })
            .collect();
        let outs: Vec<_> = children
            .into_iter()
            .map(|c| c.wait_with_output().unwrap())
            .collect();
        let ok: Vec<_> = outs.iter().filter(|o| o.status.success()).collect();
        assert_eq!(ok.len(), 1, "round {round}: {} succeeded", ok.len());
        for o in outs.iter().filter(|o| !o.status.success()) {
            assert_eq!(o.status.code(), Some(2), "{}", common::text(o));
            assert!(
                common::text(o).contains("already a walship data directory"),
                "{}",
                common::text(o)
            );
        }
        let kept = walship::DataDir::new(&dir).read_control().unwrap();
        assert!(
            stdout(ok[0]).contains(&kept.identity.system_id.to_string()),
            "round {round}: printed {}, kept {}",
            stdout(ok[0]),
            kept.identity.system_id
        );
    }
}

/// A prepared file (the writer's next segment, or a released one kept for reuse) given alone to
/// `dump` or `verify` is refused as what it is (exit 2): it holds no record of the log, neither
/// damage nor records to print.
#[test]
fn dump_and_verify_refuse_a_prepared_file_given_alone() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path().join("d");
    common::init(&d);
    common::write_records(&d, 3000, "prep");
    common::ok(&["checkpoint", p(&d), "--lsn", "0/00010000"]);
    let preps: Vec<_> = std::fs::read_dir(d.join("wal"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(".wal.prep"))
        .collect();
    assert!(!preps.is_empty());
    for prep in &preps {
        for cmd in ["dump", "verify"] {
            let o = run(&[cmd, p(prep)], b"");
            assert_eq!(code(&o), 2, "{cmd} {}: {}", prep.display(), stderr(&o));
            assert!(stderr(&o).contains("a prepared file"), "{}", stderr(&o));
            assert!(stdout(&o).is_empty(), "{}", stdout(&o));
        }
    }
}

/// `write` whose standard output fails (a full device) says that it is the LSNs it could not
/// print, not the log, and exits 2; the records are stored.
#[test]
fn write_names_standard_output_when_printing_lsns_fails() {
    let t = tempfile::tempdir().unwrap();
    let d = t.path().join("d");
    common::init(&d);
    let out = Command::new(common::bin())
        .args(["write", p(&d)])
        .stdin(Stdio::piped())
        .stdout(std::fs::File::create("/dev/full").unwrap())
        .stderr(Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().unwrap().write_all(b"one\ntwo\n")?;
            c.wait_with_output()
        })
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("write LSNs to standard output: No space left on device"),
        "{err}"
    );
    assert_eq!(common::read_all(&d).unwrap().len(), 2);
}

/// With `--log-format json` every line on stderr is a JSON object, the failure a command ends
/// with included: its kind and exit code are fields.
#[test]
fn a_failure_is_one_json_line_with_json_logs() {
    let t = tempfile::tempdir().unwrap();
    let missing = t.path().join("missing");
    let o = run(&["--log-format", "json", "status", p(&missing)], b"");
    assert_eq!(code(&o), 2);
    let lines: Vec<Value> = stderr(&o)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
        .collect();
    let last = lines.last().expect("a line");
    assert_eq!(last["level"], "ERROR", "{last}");
    assert_eq!(last["fields"]["kind"], "error", "{last}");
    assert_eq!(last["fields"]["exit_code"], 2, "{last}");
    assert!(
        last["fields"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("not a walship data directory")),
        "{last}"
    );
    // Text logs keep the one plain line.
    let o = run(&["status", p(&missing)], b"");
    assert!(stderr(&o).starts_with("walship: error: "), "{}", stderr(&o));
}
