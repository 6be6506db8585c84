//! Backup storage for sealed segments: the store interface and its local-directory
//! implementation, the archive's identity file, the archiver that pushes segments, and restore to
//! a point in time. `walship verify ARCHIVE` is [`crate::verify`]'s, which reads archives through
//! this module.
//!
//! An archive belongs to one system. Its root holds the identity file ([`IDENTITY_NAME`]) and
//! every archived segment under its sealed name (`.wal`), or that name plus `.zst` when the
//! segment was compressed with zstd, and the history file of every timeline after the first
//! (`0000000N.history`, [`history`]). docs/ARCHIVE.md describes the layout byte for byte.

pub mod archiver;
pub mod history;
pub mod identity;
pub mod prune;
pub mod restore;
pub mod s3;
pub mod status;
pub mod store;
pub mod target;

use std::path::Path;

pub use archiver::{Archiver, ArchiverOptions, PushOutcome, ReadBack};
pub use history::{
    history_object_name, list_histories, newest_history, put_history, read_history, HistoryPut,
    TimelineChoice,
};
pub use identity::{ArchiveIdentity, IDENTITY_NAME};
pub use prune::{prune, KeepSince, PruneReport};
pub use restore::{
    restore, RestoreOptions, RestorePhase, RestoreProgress, RestoreReport, RestoreTarget,
};
pub use s3::{S3Config, S3Store};
pub use store::{ArchiveStore, LocalDirStore, ObjectInfo, PutOutcome};
pub use target::{AnyStore, ArchiveTarget};

use crate::error::{Error, Result};
use crate::format::{SegmentFileKind, SegmentName};
pub use crate::segment_check::CheckedSegment;
use crate::segment_check::{check_sealed_bytes, FullCheck};

/// How an archived segment's bytes are stored.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Compression {
    /// Byte-identical to the local sealed file; name ends in `.wal`.
    #[default]
    None,
    /// A zstd frame of the sealed file; name ends in `.wal.zst`.
    Zstd,
}

impl Compression {
    fn suffix(self) -> &'static str {
        match self {
            Compression::None => "",
            Compression::Zstd => ".zst",
        }
    }
}

/// The object name of sealed segment `seg` stored with `c`.
pub fn object_name(seg: SegmentName, c: Compression) -> String {
    format!("{}{}", seg.with_kind(SegmentFileKind::Sealed), c.suffix())
}

/// Parses an archived segment's object name; anything else (the identity file, stray files)
/// gives `None`.
pub fn parse_object_name(name: &str) -> Option<(SegmentName, Compression)> {
    let (base, c) = match name.strip_suffix(".zst") {
        Some(b) => (b, Compression::Zstd),
        None => (name, Compression::None),
    };
    SegmentName::parse(base)
        .filter(|n| n.kind == SegmentFileKind::Sealed)
        .map(|n| (n, c))
}

/// The most bytes an archived object of a segment may hold: a sealed file is at most one
/// segment long, and its zstd frame at most zstd's bound for that many bytes.
pub fn max_object_len(c: Compression, segment_size: u64) -> u64 {
    match c {
        Compression::None => segment_size,
        Compression::Zstd => {
            zstd::zstd_safe::compress_bound(usize::try_from(segment_size).unwrap_or(usize::MAX))
                as u64
        }
    }
}

/// Refuses an archived object larger than any segment's object could be, before it is read
/// (a huge object is damage, and reading it whole would use that much memory).
pub fn check_object_len(file: &Path, c: Compression, len: u64, segment_size: u64) -> Result<()> {
    let max = max_object_len(c, segment_size);
    if len > max {
        return Err(object_damage(
            file,
            segment_size,
            format!("the object holds {len} bytes; a segment's object holds at most {max} (segment size {segment_size})"),
        ));
    }
    Ok(())
}

/// Damage of an archived object as a whole, named at the start of the segment its name says
/// (`segment_size` places it).
fn object_damage(file: &Path, segment_size: u64, reason: String) -> Error {
    let lsn = file
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(parse_object_name)
        .map_or(crate::Lsn(0), |(n, _)| {
            n.segment_no.start_lsn_saturating(segment_size)
        });
    Error::Corrupt {
        file: file.to_path_buf(),
        offset: 0,
        lsn,
        reason,
    }
}

/// The segment file's bytes from an archived object's bytes (`file` names the object in
/// errors). Every place that reads an archive inflates through here: no segment is longer than
/// `segment_size`, so decompression stops one byte past it and more is damage, whatever the
/// frame claims; memory use is bounded by the segment size.
pub fn decode_object(
    file: &Path,
    c: Compression,
    data: Vec<u8>,
    segment_size: u64,
) -> Result<Vec<u8>> {
    use std::io::Read;
    check_object_len(file, c, data.len() as u64, segment_size)?;
    match c {
        Compression::None => Ok(data),
        Compression::Zstd => {
            let too_long = || {
                object_damage(
                    file,
                    segment_size,
                    format!("decompresses to more than a segment ({segment_size} bytes): not a segment of this archive"),
                )
            };
            // A frame that declares its size says at once when it is too large.
            if let Ok(Some(n)) = zstd::zstd_safe::get_frame_content_size(&data) {
                if n > segment_size {
                    return Err(too_long());
                }
            }
            let invalid = |e: std::io::Error| {
                object_damage(file, segment_size, format!("not a valid zstd frame: {e}"))
            };
            let decoder = zstd::stream::read::Decoder::with_buffer(&data[..]).map_err(invalid)?;
            let cap = usize::try_from(segment_size.min(data.len() as u64 * 8)).unwrap_or(0);
            let mut out = Vec::with_capacity(cap);
            decoder
                .take(segment_size + 1)
                .read_to_end(&mut out)
                .map_err(invalid)?;
            if out.len() as u64 > segment_size {
                return Err(too_long());
            }
            Ok(out)
        }
    }
}

/// An archive's segments in segment order. Two objects for one segment (`.wal` and `.wal.zst`)
/// are both listed; callers treat that as damage.
pub fn segment_objects(objects: &[ObjectInfo]) -> Vec<(SegmentName, Compression, ObjectInfo)> {
    let mut out: Vec<_> = objects
        .iter()
        .filter_map(|o| parse_object_name(&o.name).map(|(n, c)| (n, c, o.clone())))
        .collect();
    out.sort_by_key(|(n, c, _)| (n.segment_no, n.timeline, *c as u8));
    out
}

/// Keeps the segments along `path` (a timeline's history) and returns how many it dropped: an
/// earlier timeline's segments past where the path leaves it, and its copy of a switch segment
/// (the switch segment is the new timeline's).
pub fn retain_on_path(
    segs: &mut Vec<(SegmentName, Compression, ObjectInfo)>,
    path: &crate::timeline::History,
    segment_size: u64,
) -> usize {
    let before = segs.len();
    segs.retain(|(n, _, _)| n.timeline == path.segment_timeline(n.segment_no.0, segment_size));
    before - segs.len()
}

/// Runs blocking work (file I/O, compression, checksums) off the async threads.
pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T> + Send + 'static,
) -> Result<T> {
    joined(tokio::task::spawn_blocking(f)).await
}

/// Waits for a spawned task; a panic or cancellation becomes an error.
pub(crate) async fn joined<T>(h: tokio::task::JoinHandle<Result<T>>) -> Result<T> {
    h.await
        .map_err(|e| Error::Other(format!("background task failed: {e}")))?
}

/// True when `path` looks like an archive: a directory with an identity file at its root, or
/// one holding compressed segment objects (which only an archive holds), so that an archive
/// that lost its identity file is still checked as one.
pub fn is_archive(path: &Path) -> bool {
    if path.join(IDENTITY_NAME).is_file() {
        return true;
    }
    path.is_dir()
        && store::list_dir(path).is_ok_and(|objects| {
            objects
                .iter()
                .any(|o| parse_object_name(&o.name).is_some_and(|(_, c)| c == Compression::Zstd))
        })
}

/// Checks every byte of a sealed segment against the archive's identity (see
/// [`check_sealed_bytes`]). `cut` marks the first record to leave out (restore's target); `None`
/// checks only.
pub fn check_segment_bytes(
    file: &Path,
    name: &SegmentName,
    bytes: &[u8],
    identity: &ArchiveIdentity,
    cut: Option<&dyn Fn(&crate::format::record::RecordRef<'_>) -> bool>,
) -> Result<CheckedSegment> {
    let check = FullCheck {
        prev_checksum: None,
        cut,
    };
    check_sealed_bytes(file, name, bytes, &identity.to_control(), check)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decoding_stops_at_the_segment_size() {
        let f = Path::new("x.wal.zst");
        let seg = 64 * 1024u64;
        let exact = vec![5u8; seg as usize];
        let frame = zstd::encode_all(&exact[..], 1).unwrap();
        assert_eq!(
            decode_object(f, Compression::Zstd, frame, seg).unwrap(),
            exact
        );
        let over = vec![5u8; seg as usize + 1];
        // Declared size (bulk) and undeclared (streamed) alike.
        let declared = zstd::bulk::compress(&over, 1).unwrap();
        let streamed = zstd::encode_all(&over[..], 1).unwrap();
        for frame in [declared, streamed] {
            let e = decode_object(f, Compression::Zstd, frame, seg).unwrap_err();
            assert!(
                matches!(&e, Error::Corrupt { file, reason, .. } if file == f && reason.contains("more than a segment")),
                "{e}"
            );
        }
        assert!(decode_object(f, Compression::None, over, seg).is_err());
        assert!(decode_object(f, Compression::Zstd, b"not zstd".to_vec(), seg).is_err());
        assert_eq!(
            decode_object(f, Compression::None, exact.clone(), seg).unwrap(),
            exact
        );
    }

    #[test]
    fn object_names() {
        let s = SegmentName::new(1, 0xA3, SegmentFileKind::Sealed);
        assert_eq!(
            object_name(s, Compression::None),
            "0000000100000000000000A3.wal"
        );
        assert_eq!(
            object_name(s, Compression::Zstd),
            "0000000100000000000000A3.wal.zst"
        );
        assert_eq!(
            parse_object_name("0000000100000000000000A3.wal.zst"),
            Some((s, Compression::Zstd))
        );
        assert_eq!(
            parse_object_name("0000000100000000000000A3.wal"),
            Some((s, Compression::None))
        );
        for bad in [
            "0000000100000000000000A3.wal.open",
            "0000000100000000000000A3.wal.open.zst",
            "IDENTITY",
            ".0000000100000000000000A3.wal.tmp",
        ] {
            assert_eq!(parse_object_name(bad), None, "{bad}");
        }
    }
}
