//! What the tests of recycled segment files share: numbered records appended durably, read back
//! from a position, and the files set aside in a data directory.

use std::path::Path;

use walship::{DataDir, Entry, EntryType, Lsn, Wal, WalReader};

/// The payload of record `i` of the batch `tag`.
pub fn payload(tag: &str, i: usize) -> Vec<u8> {
    format!("{tag}-{i:05}-{}", "r".repeat(200)).into_bytes()
}

/// Appends `n` durable records; returns (LSN, payload) of each.
pub fn append(wal: &Wal, tag: &str, n: usize) -> Vec<(Lsn, Vec<u8>)> {
    (0..n)
        .map(|i| {
            let p = payload(tag, i);
            let a = wal
                .append_durable(&Entry::new(EntryType::Insert, None, &p))
                .expect("durable append");
            (a.lsn, p)
        })
        .collect()
}

/// Every record from `from` on, as (LSN, payload).
pub fn read_from(dir: &Path, from: Lsn) -> Vec<(Lsn, Vec<u8>)> {
    let mut r = WalReader::open(dir, from).expect("reader");
    let mut out = Vec::new();
    while let Some(x) = r.next_record().expect("no damage") {
        out.push((x.lsn, x.payload));
    }
    out
}

/// The files set aside in the data directory `dir`.
pub fn setaside(dir: &Path) -> Vec<String> {
    walship::setaside::list(&DataDir::new(dir)).expect("list")
}

/// The log from the checkpoint on holds exactly `want`, verify finds it whole, nothing was set
/// aside, and a reopened writer continues at its end.
pub fn check(dir: &Path, from: Lsn, want: &[(Lsn, Vec<u8>)]) {
    let got = read_from(dir, from);
    assert_eq!(got.len(), want.len(), "records from the checkpoint on");
    assert!(got == want, "the records read back differ");
    let v = walship::verify::verify_path(dir).expect("verify");
    assert!(v.ok, "{:?}", v.errors);
    assert!(setaside(dir).is_empty(), "{:?}", setaside(dir));
}
