//! Helpers shared by the store's integration tests: scratch data directories, reading every
//! record back, and running the real `walship` binary.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use walship::format::SegmentFileKind;
use walship::{DataDir, Lsn, WalReader, WalRecord};

/// Smallest segment size: keeps rotation frequent and files small.
pub const SEG: u64 = 64 * 1024;

/// The binary under test.
pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_walship")
}

/// A fresh data directory with 64 KiB segments inside its own temporary folder.
pub fn new_dir() -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("data");
    DataDir::init(&dir, SEG).expect("init");
    (tmp, dir)
}

/// Every record from the start of the log, and an error if the reader stops on damage.
pub fn read_all(path: &Path) -> walship::Result<Vec<WalRecord>> {
    let mut r = WalReader::open(path, Lsn(0))?;
    let mut out = Vec::new();
    while let Some(rec) = r.next_record()? {
        out.push(rec);
    }
    Ok(out)
}

/// Runs `walship ARGS` with `stdin` fed in and waits for it to exit; a run that hangs for a
/// minute is killed and fails the test.
pub fn run(args: &[&str], stdin: &[u8]) -> Output {
    use std::io::{Read, Write};
    let mut child = Command::new(bin())
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn walship");
    let mut input = child.stdin.take().expect("stdin");
    let data = stdin.to_vec();
    let feeder = std::thread::spawn(move || {
        let _ = input.write_all(&data);
    });
    let mut out = child.stdout.take().expect("stdout");
    let mut err = child.stderr.take().expect("stderr");
    let out_t = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out.read_to_end(&mut v);
        v
    });
    let err_t = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err.read_to_end(&mut v);
        v
    });
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    let status = loop {
        if let Some(s) = child.try_wait().expect("try_wait") {
            break s;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("walship {args:?} did not exit within a minute");
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    };
    let _ = feeder.join();
    Output {
        status,
        stdout: out_t.join().expect("stdout reader"),
        stderr: err_t.join().expect("stderr reader"),
    }
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The exit code; panics with the output when the process died from a signal.
pub fn code(o: &Output) -> i32 {
    o.status
        .code()
        .unwrap_or_else(|| panic!("killed by a signal: {:?}\nstderr: {}", o.status, stderr(o)))
}

/// Path of the segment file of `kind` for segment `no` (timeline 1).
pub fn seg_path(dir: &Path, no: u64, kind: SegmentFileKind) -> PathBuf {
    dir.join("wal")
        .join(walship::format::SegmentName::new(1, no, kind).to_string())
}

/// The open segment of a data directory, if any.
pub fn open_segment(dir: &Path) -> Option<(walship::format::SegmentName, PathBuf)> {
    DataDir::new(dir)
        .list_segments()
        .expect("list segments")
        .into_iter()
        .find(|n| n.kind == SegmentFileKind::Open)
        .map(|n| (n, dir.join("wal").join(n.to_string())))
}

/// Copies a directory tree (fixtures into a scratch folder).
pub fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    for e in std::fs::read_dir(from).expect("read_dir") {
        let e = e.expect("entry");
        let dst = to.join(e.file_name());
        if e.file_type().expect("type").is_dir() {
            copy_tree(&e.path(), &dst);
        } else {
            std::fs::copy(e.path(), &dst).expect("copy");
        }
    }
}

/// What a record is, wherever it sits: its segment may be renamed from open to sealed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rec {
    pub lsn: u64,
    pub end_lsn: u64,
    pub entry_type: walship::EntryType,
    pub tx_id: Option<u64>,
    pub timestamp_us: i64,
    pub crc: u32,
    pub payload: String,
    pub segment_no: u64,
    pub offset: u64,
}

pub fn rec(r: &WalRecord) -> Rec {
    Rec {
        lsn: r.lsn.0,
        end_lsn: r.end_lsn.0,
        entry_type: r.entry_type,
        tx_id: r.tx_id,
        timestamp_us: r.timestamp_us,
        crc: r.crc,
        payload: String::from_utf8_lossy(&r.payload).into_owned(),
        segment_no: r.segment.segment_no.0,
        offset: r.offset,
    }
}

/// Every record from the start of the log, compared by content and position.
pub fn read_recs(path: &Path) -> walship::Result<Vec<Rec>> {
    Ok(read_all(path)?.iter().map(rec).collect())
}
