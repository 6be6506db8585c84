//! The checks a segment passes on its way between primary and standby: the primary's before it
//! ships one, and the standby's on an incoming segment before it may carry a sealed name. The
//! catalog of segments to ship is [`crate::sealed_set`].

use crate::datadir::DataDir;
use crate::error::{Error, Result};
use crate::format::segment_header::SEGMENT_HEADER_LEN;
use crate::format::{ControlFile, SegmentName};
pub use crate::sealed_set::{scan_sealed, SealedSet};
use crate::segment_check::{
    check_sealed, check_sealed_bytes, FullCheck, SealedSegment, NO_SEAL_MARKER,
};
use crate::Lsn;

/// Where `flushed` lies in a copy of an open segment, as `Identify`'s `copy_checksum` covers
/// it: the segment and the offset of `flushed` in it, when that is past the segment's header
/// (a copy holding at least one record).
pub fn copy_extent(flushed: Lsn, segment_size: u64) -> Option<(u64, usize)> {
    let last = flushed.0.checked_sub(1)?;
    let (no, off) = (
        last / segment_size,
        flushed.0 - (last / segment_size) * segment_size,
    );
    (off > SEGMENT_HEADER_LEN as u64).then_some((no, off as usize))
}

/// The checksum `Identify` states for a standby's copy of the open segment: the CRC-32 of the
/// bytes of `records`, the segment from the end of its header up to the copy's `flushed_lsn`.
/// Records hold their own LSNs, so two copies that agree here hold the same records.
pub fn copy_checksum(records: &[u8]) -> u32 {
    crc32fast::hash(records)
}

/// Checks a received segment's bytes: header and identity, the chain to its predecessor (when
/// the standby holds it), every record, the seal marker and the whole-segment checksum, and
/// that the file ends right after the marker. `name` is the sealed name it will get.
pub fn verify_incoming(
    bytes: &[u8],
    path: &std::path::Path,
    name: &SegmentName,
    control: &ControlFile,
    prev_checksum: Option<u32>,
) -> Result<SealedSegment> {
    let check = FullCheck {
        prev_checksum,
        cut: None,
    };
    match check_sealed_bytes(path, name, bytes, control, check) {
        Ok(checked) => Ok(checked.sealed(name)),
        // The standby has always said this in these words.
        Err(Error::Corrupt {
            file,
            offset,
            lsn,
            reason,
        }) if reason == NO_SEAL_MARKER => Err(Error::Corrupt {
            file,
            offset,
            lsn,
            reason: "segment ends without a seal marker".into(),
        }),
        Err(e) => Err(e),
    }
}

/// A sealed segment checked whole before it is shipped, and its bytes.
pub struct Checked {
    pub segment: SealedSegment,
    pub map: memmap2::Mmap,
}

/// Checks a sealed segment of this directory as a standby will check it (header and identity,
/// the chain to its predecessor when this directory holds it, every record, the seal marker,
/// the whole-segment checksum, nothing after the marker) and maps it for sending. A primary
/// must not ship damage it can find itself.
pub fn check_for_shipping(
    dd: &DataDir,
    name: &SegmentName,
    predecessor: Option<&SegmentName>,
    control: &ControlFile,
) -> Result<Option<Checked>> {
    let path = dd.segment_path(name);
    // Never open what is not a regular file (a FIFO would block the open).
    match std::fs::metadata(&path) {
        Ok(m) if m.is_file() => {}
        Ok(_) => {
            return Err(Error::Corrupt {
                file: path.clone(),
                offset: 0,
                lsn: name.segment_no.start_lsn_saturating(control.segment_size),
                reason: "not a regular file".into(),
            })
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(format!("stat {}", path.display()), e)),
    }
    let file = match std::fs::File::open(&path) {
        Ok(f) => f,
        // Removed by retention meanwhile: the caller looks again.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(format!("open {}", path.display()), e)),
    };
    let meta = file
        .metadata()
        .map_err(|e| Error::io(format!("stat {}", path.display()), e))?;
    if !meta.is_file() {
        return Err(Error::Corrupt {
            file: path.clone(),
            offset: 0,
            lsn: name.segment_no.start_lsn_saturating(control.segment_size),
            reason: "not a regular file".into(),
        });
    }
    let prev = match predecessor {
        Some(p) => match check_sealed(&dd.segment_path(p), p, control) {
            Ok(s) => Some(s.seal.segment_checksum),
            // Its own damage is found when it is shipped; gone meanwhile: no chain to check.
            Err(_) => None,
        },
        None => None,
    };
    // SAFETY: sealed files are never written again; a removal (retention) keeps the mapped
    // pages readable. Nothing in walship truncates a sealed file.
    let map = unsafe { memmap2::Mmap::map(&file) }
        .map_err(|e| Error::io(format!("mmap {}", path.display()), e))?;
    let segment = verify_incoming(&map, &path, name, control, prev)?;
    Ok(Some(Checked { segment, map }))
}
