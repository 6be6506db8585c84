//! The writer's durable position (`flush_lsn`), published for other processes of the same
//! machine: `state/flush_position`, 16 bytes the writer overwrites in place after each group
//! commit (one `pwrite`, no sync: the file is a hint that is true when written, because the
//! position moves only after the records below it are durable). A group-commit leader writes it
//! after it has woken the commits its sync covered, so that they do not wait for the write.
//! A shipper in another process watches `state/` (inotify through `notify`) and reads the 16
//! bytes on each change; a shipper in the writer's process subscribes to the same position
//! directly ([`FlushPublisher::subscribe`]).
//!
//! Bytes (docs/FORMAT.md): offset 0 `u64` LE position, offset 8 `u64` LE its bitwise complement.
//! A reader that catches the file mid-write (the halves disagree) reads it again.

use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Mutex;

use tokio::sync::watch;

use crate::datadir::DataDir;
use crate::error::{Error, Result};

/// The file's name under `state/`.
pub const FLUSH_POSITION_FILE: &str = "flush_position";
/// Its length in bytes.
pub const FLUSH_POSITION_LEN: usize = 16;

/// The path of a directory's published durable position.
pub fn flush_position_path(dd: &DataDir) -> PathBuf {
    dd.state_dir().join(FLUSH_POSITION_FILE)
}

/// The bytes that say `lsn`.
pub fn encode_position(lsn: u64) -> [u8; FLUSH_POSITION_LEN] {
    let mut b = [0u8; FLUSH_POSITION_LEN];
    b[..8].copy_from_slice(&lsn.to_le_bytes());
    b[8..].copy_from_slice(&(!lsn).to_le_bytes());
    b
}

/// The position the bytes say, or None when they are not a whole position (torn, too short).
pub fn decode_position(b: &[u8]) -> Option<u64> {
    let lsn = u64::from_le_bytes(b.get(..8)?.try_into().ok()?);
    let not = u64::from_le_bytes(b.get(8..16)?.try_into().ok()?);
    (lsn == !not).then_some(lsn)
}

/// The durable position last published, when the file holds a whole one; anything else
/// (absent, torn, not a regular file, unreadable) says nothing. For recovery's evidence, which
/// goes on without it.
pub(crate) fn published_evidence(dd: &DataDir) -> Option<u64> {
    let path = flush_position_path(dd);
    let meta = std::fs::symlink_metadata(&path).ok()?;
    if !meta.file_type().is_file() {
        return None;
    }
    decode_position(&std::fs::read(&path).ok()?)
}

/// Why an open segment without a header (zeros, or a file too short to hold one) that starts at
/// `start` is damage: the one record of acknowledgements it can be checked against is the
/// position the writer published after its syncs. Past the segment's first record, some of its
/// records were acknowledged, so its header had been synced with them: the file was cut or
/// zeroed. None when the position says nothing of the kind (recovery, `verify` and `dump` then
/// treat it as a segment whose header never became durable).
pub fn headerless_open_damage(
    dd: &DataDir,
    start: crate::Lsn,
    file_len: usize,
    segment_size: u64,
) -> Option<String> {
    let published = published_evidence(dd)?;
    if published <= start.0 + crate::format::segment_header::SEGMENT_HEADER_LEN as u64 {
        return None;
    }
    let cut = if (file_len as u64) < segment_size {
        format!(" and is {file_len} bytes, shorter than a segment")
    } else {
        String::new()
    };
    Some(format!(
        "the open segment has no header{cut}, yet the writer had published LSN {} as durable (state/flush_position), past its first record: records in it were acknowledged, so it is damage",
        crate::Lsn(published)
    ))
}

/// Why a log that ends at `end`, its next record to be written at `next`, lost acknowledged
/// records: the writer had published a durable position past `next` (records below a published
/// position were synced before it was written). None when `published` says nothing of the kind.
pub fn lost_acknowledged(
    published: Option<u64>,
    end: crate::Lsn,
    next: crate::Lsn,
) -> Option<String> {
    let published = published.filter(|&p| p > next.0)?;
    Some(format!(
        "the log ends at {end}, yet the writer had published LSN {} as durable (state/flush_position): records acknowledged past {end} are missing or damaged",
        crate::Lsn(published)
    ))
}

/// Lowers the published position to `to` when it is past it: for a directory cut back on
/// purpose (rewind), whose records past `to` are set aside, not lost. Durable on return.
pub fn lower_published(dd: &DataDir, to: crate::Lsn) -> Result<()> {
    if published_evidence(dd).is_some_and(|p| p > to.0) {
        crate::fsutil::write_atomic(&flush_position_path(dd), &encode_position(to.0))?;
    }
    Ok(())
}

/// Reads a directory's published durable position: None when no writer ever published one.
/// A position caught mid-write is read again (a few times, then reported as damage).
pub fn read_flush_position(dd: &DataDir) -> Result<Option<u64>> {
    let path = flush_position_path(dd);
    for _ in 0..100 {
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(Error::io(format!("read {}", path.display()), e)),
        };
        if let Some(lsn) = decode_position(&bytes) {
            return Ok(Some(lsn));
        }
        std::thread::yield_now();
    }
    Err(Error::Corrupt {
        file: path,
        offset: 0,
        lsn: crate::Lsn(0),
        reason: "the published durable position is not a whole position".into(),
    })
}

/// The writer's side: publishes each new `flush_lsn` to the file and to in-process subscribers.
pub struct FlushPublisher {
    /// The file, and the position it says once written (it never moves back).
    file: Mutex<Option<(std::fs::File, Option<u64>)>>,
    path: PathBuf,
    tx: watch::Sender<u64>,
}

impl FlushPublisher {
    /// Opens (creating) `state/flush_position` and publishes `initial`. A file that cannot be
    /// written only costs other processes the hint: it is logged, never fatal to the writer.
    pub fn open(dd: &DataDir, initial: u64) -> FlushPublisher {
        let path = flush_position_path(dd);
        let file = crate::fsutil::open_in_place(&path);
        let file = match file {
            Ok(f) => Some((f, None)),
            Err(e) => {
                tracing::warn!(file = %path.display(), error = %e, "cannot publish the durable position for other processes");
                None
            }
        };
        let (tx, _) = watch::channel(initial);
        let p = FlushPublisher {
            file: Mutex::new(file),
            path,
            tx,
        };
        p.write_file();
        p
    }

    /// Publishes `lsn` (a new `flush_lsn`; smaller values than the last are ignored) to this
    /// process's subscribers; the file follows with [`FlushPublisher::write_file`].
    pub fn publish(&self, lsn: u64) {
        self.tx.send_if_modified(|cur| {
            if lsn > *cur {
                *cur = lsn;
                true
            } else {
                false
            }
        });
    }

    /// Brings the file up to the position published last. Callers may race: each writes the
    /// newest position under the lock, so the file never moves back.
    pub fn write_file(&self) {
        let mut g = crate::sync::lock(&self.file);
        let Some((f, said)) = g.as_mut() else {
            return;
        };
        let lsn = *self.tx.borrow();
        if said.is_some_and(|s| s >= lsn) {
            return;
        }
        match f.write_all_at(&encode_position(lsn), 0) {
            Ok(()) => *said = Some(lsn),
            Err(e) => {
                tracing::warn!(file = %self.path.display(), error = %e, "cannot publish the durable position for other processes; stopped publishing it");
                *g = None;
            }
        }
    }

    /// The durable position as it moves, for a shipper in this process.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.tx.subscribe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_round_trip_and_torn_ones_are_refused() {
        let b = encode_position(0x0100_a3f8);
        assert_eq!(
            b,
            [0xf8, 0xa3, 0x00, 0x01, 0, 0, 0, 0, 0x07, 0x5c, 0xff, 0xfe, 0xff, 0xff, 0xff, 0xff]
        );
        assert_eq!(decode_position(&b), Some(0x0100_a3f8));
        // Half of a new position beside half of the old one.
        let mut torn = b;
        torn[..8].copy_from_slice(&0x0100_a400u64.to_le_bytes());
        assert_eq!(decode_position(&torn), None);
        assert_eq!(decode_position(&b[..15]), None);
    }

    #[test]
    fn the_file_follows_published_positions() {
        let t = tempfile::tempdir().unwrap();
        let dd = DataDir::new(t.path());
        std::fs::create_dir_all(dd.state_dir()).unwrap();
        assert_eq!(read_flush_position(&dd).unwrap(), None);
        let p = FlushPublisher::open(&dd, 100);
        let mut rx = p.subscribe();
        assert_eq!(read_flush_position(&dd).unwrap(), Some(100));
        p.publish(250);
        assert!(rx.has_changed().unwrap(), "subscribers see it at once");
        assert_eq!(*rx.borrow_and_update(), 250);
        assert_eq!(
            read_flush_position(&dd).unwrap(),
            Some(100),
            "the file when written"
        );
        p.write_file();
        p.publish(200); // never backwards
        p.write_file();
        assert_eq!(read_flush_position(&dd).unwrap(), Some(250));
        assert!(!rx.has_changed().unwrap());
    }

    #[test]
    fn racing_file_writes_never_move_the_file_back() {
        let t = tempfile::tempdir().unwrap();
        let dd = DataDir::new(t.path());
        std::fs::create_dir_all(dd.state_dir()).unwrap();
        let p = std::sync::Arc::new(FlushPublisher::open(&dd, 0));
        let threads: Vec<_> = (0..4)
            .map(|i| {
                let p = p.clone();
                std::thread::spawn(move || {
                    for n in 0..500u64 {
                        p.publish(n * 4 + i);
                        p.write_file();
                    }
                })
            })
            .collect();
        let mut last = 0;
        while !threads.iter().all(|t| t.is_finished()) {
            let now = read_flush_position(&dd).unwrap().unwrap();
            assert!(now >= last, "the file moved back from {last} to {now}");
            last = now;
        }
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(read_flush_position(&dd).unwrap(), Some(499 * 4 + 3));
    }
}
