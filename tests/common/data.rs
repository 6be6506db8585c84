//! Data directories and their records for the tests: the segment size every test uses, a
//! scratch directory, a store of sealed segments with known ends, segment paths, copying
//! fixture trees, consumer entries, checking that segments are reserved, and every record read
//! back as a value that compares by content and position.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use walship::consumers::{ConsumerKind, ConsumerRecord};
use walship::format::SegmentFileKind;
use walship::{DataDir, Entry, EntryType, Lsn, Wal, WalOptions, WalReader, WalRecord};

/// Smallest segment size: keeps rotation frequent and files small.
pub const SEG: u64 = 64 * 1024;

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

/// A record's fields, payload byte for byte: what a restore must give back exactly.
pub type RecordFields = (u64, u64, EntryType, Option<u64>, i64, u32, Vec<u8>);

/// Every record from the start of the log as [`RecordFields`].
pub fn record_fields(path: &Path) -> Vec<RecordFields> {
    let mut r = WalReader::open(path, Lsn(0)).expect("open reader");
    let mut out = Vec::new();
    while let Some(x) = r.next_record().expect("read record") {
        out.push((
            x.lsn.0,
            x.end_lsn.0,
            x.entry_type,
            x.tx_id,
            x.timestamp_us,
            x.crc,
            x.payload,
        ));
    }
    out
}

/// Every file under `dir`, recursively, with its bytes, the lock file left out (its pid changes
/// with every process that takes it): a directory's whole state, to show that a refused command
/// changed nothing.
pub fn files_under(dir: &Path) -> std::collections::BTreeMap<PathBuf, Vec<u8>> {
    let mut out = std::collections::BTreeMap::new();
    for e in std::fs::read_dir(dir).expect("list") {
        let path = e.expect("entry").path();
        if path.is_dir() {
            out.extend(files_under(&path));
        } else if path.file_name().is_some_and(|n| n != "LOCK") {
            let bytes = std::fs::read(&path).expect("read");
            out.insert(path, bytes);
        }
    }
    out
}

/// The file names in a directory, sorted.
pub fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .expect("list")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

/// Every segment-sized file in `wal/` (open and prepared) is whole and has real blocks, never a
/// sparse hole a store through the map would have to allocate.
pub fn assert_segments_reserved(dir: &Path) {
    let mut seen = 0;
    for e in std::fs::read_dir(dir.join("wal")).expect("read wal/") {
        let e = e.expect("entry");
        let name = e.file_name().to_string_lossy().into_owned();
        if name.ends_with(".wal.open") || name.ends_with(".wal.prep") {
            let m = e.metadata().expect("stat");
            assert_eq!(m.len(), SEG, "{name}");
            assert!(
                m.blocks() * 512 >= SEG,
                "{name} is sparse: {} blocks",
                m.blocks()
            );
            seen += 1;
        }
    }
    assert!(seen > 0, "no open or prepared segment in {}", dir.display());
}

/// A data directory at `root` (64 KiB segments) with `n` sealed segments of three records
/// each; returns its writer, the sealed names and each segment's end (its seal LSN), oldest
/// first.
pub fn sealed_store(root: &Path, n: usize) -> (Wal, Vec<String>, Vec<u64>) {
    DataDir::init(root, SEG).unwrap();
    let wal = Wal::open(root, WalOptions::default()).unwrap();
    let (mut names, mut ends) = (Vec::new(), Vec::new());
    for i in 0..n {
        for j in 0..3 {
            wal.append(&Entry::new(
                EntryType::Insert,
                None,
                format!("segment {i} record {j}").as_bytes(),
            ))
            .unwrap();
        }
        ends.push(wal.write_lsn().0);
        names.push(wal.seal().unwrap().expect("a segment to seal").to_string());
    }
    wal.sync().unwrap();
    (wal, names, ends)
}

/// A consumer registry entry at `position`: not lost, no address, never heard from.
pub fn consumer(id: &str, kind: ConsumerKind, position: u64) -> ConsumerRecord {
    ConsumerRecord::new(id, kind, walship::Lsn(position))
}

/// Appends the records `record(i)` makes, one per append, until about `segments` more 64 KiB
/// segments are written (half a segment short of that), then seals and syncs. A pause after
/// each append keeps timestamps distinct, so that every record boundary is a point in time a
/// restore can stop at.
pub fn append_timed(
    root: &Path,
    segments: u64,
    mut record: impl FnMut(u64) -> (EntryType, Option<u64>, Vec<u8>),
) {
    let wal = Wal::open(root, WalOptions::default()).expect("open wal");
    let stop = wal.write_lsn().0 + segments * SEG - SEG / 2;
    let mut i = 0u64;
    while wal.write_lsn().0 < stop {
        let (kind, tx, payload) = record(i);
        wal.append(&Entry::new(kind, tx, &payload)).expect("append");
        std::thread::sleep(std::time::Duration::from_micros(2));
        i += 1;
    }
    wal.seal().expect("seal");
    wal.sync().expect("sync");
}
