//! Where the log in a data directory's files ends, and how far behind a position is: read from
//! the files alone (no lock), by `status` and by the shipper for its standbys' lag, while a
//! writer may be sealing segments.

use std::path::Path;

use crate::datadir::DataDir;
use crate::decoder::SegmentScanner;
use crate::error::{Error, Result};
use crate::format::{ControlFile, SegmentFileKind};
use crate::reader::read_segment;
use crate::sealed_set::newest_sealed_end;
use crate::{Lsn, WalReader};

/// Ends of the WAL in a directory's files: (flush_lsn, sealed_lsn).
pub fn wal_ends(dd: &DataDir, control: &ControlFile) -> Result<(Lsn, Lsn)> {
    // The writer may seal the open segment while we look (cut it to its used length while we
    // read it, then rename it): list again then.
    let mut last_err = None;
    for _ in 0..5 {
        match wal_ends_once(dd, control) {
            Ok(v) => return Ok(v),
            Err(Error::Io { source, .. })
                if matches!(
                    source.kind(),
                    std::io::ErrorKind::NotFound | std::io::ErrorKind::UnexpectedEof
                ) =>
            {
                last_err = Some(source)
            }
            Err(e) => return Err(e),
        }
    }
    Err(Error::io(
        format!("read {} (segments kept changing)", dd.wal_dir().display()),
        last_err.unwrap_or_else(|| std::io::Error::other("no result")),
    ))
}

fn wal_ends_once(dd: &DataDir, control: &ControlFile) -> Result<(Lsn, Lsn)> {
    let names = dd.list_segments()?;
    let sealed = newest_sealed_end(dd, &names, control)?;
    let mut flush = sealed;
    for open in names.iter().filter(|n| n.kind == SegmentFileKind::Open) {
        let bytes = read_segment(&dd.segment_path(open))?;
        let Ok(mut scan) = SegmentScanner::new(&bytes) else {
            continue; // activated, header not written yet: no records
        };
        let mut end = None;
        for r in scan.by_ref() {
            end = Some(r.end_lsn());
        }
        if let Some(e) = end {
            flush = flush.max(e);
        }
    }
    Ok((flush, sealed))
}

/// Seconds since the first record past `applied` was written; 0 when nothing is pending.
pub fn lag_seconds(root: &Path, applied: Lsn, flush: Lsn, now_us: i64) -> Option<f64> {
    if applied >= flush {
        return Some(0.0);
    }
    let mut reader = WalReader::open(root, applied).ok()?;
    let rec = reader.next_record().ok()??;
    Some((now_us.saturating_sub(rec.timestamp_us)).max(0) as f64 / 1e6)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Entry, EntryType, Wal, WalOptions};

    #[test]
    fn the_ends_follow_the_records_written() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let root = tmp.path().join("data");
        let control = DataDir::init(&root, 1 << 16).expect("init");
        let dd = DataDir::new(&root);
        assert_eq!(wal_ends(&dd, &control).expect("empty"), (Lsn(0), Lsn(0)));
        let wal = Wal::open(&root, WalOptions::default()).expect("open");
        let first = wal
            .append(&Entry::new(EntryType::Insert, None, b"one"))
            .expect("append");
        wal.append(&Entry::new(EntryType::Insert, None, b"two"))
            .expect("append");
        wal.sync().expect("sync");
        let (flush, sealed) = wal_ends(&dd, &control).expect("ends");
        assert!(flush > first.lsn, "{flush}");
        assert_eq!(sealed, Lsn(0), "nothing sealed yet");
        assert_eq!(lag_seconds(&root, flush, flush, 0), Some(0.0));
        // The first record past LSN `first` is behind by the time since it was written.
        let lag = lag_seconds(&root, first.lsn, flush, i64::MAX).expect("a record");
        assert!(lag > 0.0, "{lag}");
    }
}
