//! Where the log in a data directory's files ends, and how far behind a position is: read from
//! the files alone (no lock), by `status` and by the shipper for its standbys' lag, while a
//! writer may be sealing segments.

use std::io::Read;
use std::path::Path;

use crate::datadir::DataDir;
use crate::decoder::{ScanEnd, SegmentScanner};
use crate::error::{Error, IoContext, Result};
use crate::format::{ControlFile, SegmentFileKind};
use crate::sealed_set::newest_sealed_end;
use crate::segment_check::check_sealed;
use crate::{Lsn, WalReader};

/// Ends of the WAL in a directory's files: (flush_lsn, sealed_lsn).
pub fn wal_ends(dd: &DataDir, control: &ControlFile) -> Result<(Lsn, Lsn)> {
    // A segment sealed between the listing and its read is found under its sealed name; what
    // is left (a segment sealed and then recycled in that time) is listed again, after a
    // pause that lets a writer sealing segments one after the other finish a rotation.
    let mut last_err = None;
    for attempt in 0..ATTEMPTS {
        if attempt > 0 {
            std::thread::sleep(std::time::Duration::from_millis(1 << attempt));
        }
        match wal_ends_once(dd, control) {
            Ok(v) => return Ok(v),
            Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
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

/// Listings tried before giving up; the pauses between them add up to about half a second.
const ATTEMPTS: u32 = 9;

fn wal_ends_once(dd: &DataDir, control: &ControlFile) -> Result<(Lsn, Lsn)> {
    let names = dd.list_segments()?;
    let mut sealed = newest_sealed_end(dd, &names, control)?;
    let mut flush = sealed;
    // In number order (the listing's). An open segment whose records end without a seal marker
    // is the end of the log: a newer one beside it (a crash while sealing) is not part of it,
    // and recovery sets it aside or refuses.
    for open in names.iter().filter(|n| n.kind == SegmentFileKind::Open) {
        let mut last = false;
        let end = match read_written(&dd.segment_path(open)) {
            Ok(bytes) => {
                let (end, sealed) = records_end(&bytes);
                last = !sealed;
                end
            }
            Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                // Sealed since the listing: renamed to its sealed name.
                let name = open.with_kind(SegmentFileKind::Sealed);
                let end = check_sealed(&dd.segment_path(&name), &name, control)?.end_lsn;
                sealed = sealed.max(end);
                Some(end)
            }
            Err(e) => return Err(e),
        };
        if let Some(e) = end {
            flush = flush.max(e);
        }
        if last {
            break;
        }
    }
    Ok((flush, sealed))
}

/// Whatever the open segment holds when read: the writer may cut it to its used length while
/// it is read (sealing it), which leaves every record before the cut in place.
fn read_written(path: &Path) -> Result<Vec<u8>> {
    let mut f = crate::fsutil::open_regular(path)?;
    let mut bytes = Vec::new();
    f.read_to_end(&mut bytes)
        .ctx(|| format!("read {}", path.display()))?;
    Ok(bytes)
}

/// Where the last whole record of an open segment's bytes ends (`None` when there is none:
/// activated, header not written yet, or no record), and whether a seal marker follows it (an
/// interrupted seal, which recovery finishes).
fn records_end(bytes: &[u8]) -> (Option<Lsn>, bool) {
    let Ok(mut scan) = SegmentScanner::new(bytes) else {
        return (None, false);
    };
    let end = scan.by_ref().map(|r| r.end_lsn()).last();
    (end, matches!(scan.end(), Some(ScanEnd::Sealed { .. })))
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
    use crate::retention::RetentionOptions;
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

    #[test]
    fn the_ends_are_read_while_a_writer_seals_segment_after_segment() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let root = tmp.path().join("data");
        let control = DataDir::init(&root, 1 << 16).expect("init");
        let dd = DataDir::new(&root);
        let wal = std::sync::Arc::new(Wal::open(&root, WalOptions::default()).expect("open"));
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        // 4 KiB records into 64 KiB segments: a seal every 15 records, thousands a second,
        // while the loop below checkpoints at the sealed end, so that segments are recycled.
        let writer = {
            let (wal, stop) = (wal.clone(), stop.clone());
            std::thread::spawn(move || {
                let payload = vec![7u8; 4096];
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    wal.append(&Entry::new(EntryType::Insert, None, &payload))
                        .expect("append");
                }
            })
        };
        let mut last = (Lsn(0), Lsn(0));
        let start = std::time::Instant::now();
        while wal.stats().segments_sealed < 300 && start.elapsed().as_secs() < 60 {
            let (flush, sealed) = wal_ends(&dd, &control).expect("the ends, while sealing");
            assert!(sealed <= flush, "{sealed} > {flush}");
            assert!(
                flush >= last.0 && sealed >= last.1,
                "{last:?} then {flush}, {sealed}"
            );
            last = (flush, sealed);
            // Released segments go to the pool, and the writer reuses them as new segments.
            crate::retention::checkpoint(&dd, sealed, &RetentionOptions::default())
                .expect("checkpoint");
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        writer.join().expect("writer");
        assert!(
            wal.stats().segments_sealed >= 300,
            "the writer sealed while we read"
        );
        assert!(
            wal.stats().segments_recycled > 0,
            "and reused released files"
        );
    }
}
