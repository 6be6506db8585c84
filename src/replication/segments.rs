//! The sealed segments of a directory as the shipper sees them, and the check a standby makes
//! on an incoming segment before it may carry a sealed name.

use std::collections::BTreeMap;

use crate::datadir::DataDir;
use crate::error::{Error, Result};
use crate::format::{ControlFile, SegmentFileKind, SegmentName};
use crate::segment_check::{
    check_sealed, check_sealed_bytes, FullCheck, SealedSegment, NO_SEAL_MARKER,
};
use crate::Lsn;

/// Sealed segments by number, and where the newest ends.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SealedSet {
    pub by_no: BTreeMap<u64, SegmentName>,
    /// End of the last record of the newest sealed segment (0 when there is none).
    pub sealed_lsn: u64,
}

impl SealedSet {
    pub fn oldest(&self) -> Option<u64> {
        self.by_no.keys().next().copied()
    }
    pub fn newest(&self) -> Option<u64> {
        self.by_no.keys().next_back().copied()
    }
}

/// Lists the sealed segments of `dd` (cheap: one directory listing and the newest one's seal
/// marker). Open, prepared and partial files are not for shipping and are left out.
pub fn scan_sealed(dd: &DataDir, control: &ControlFile, previous: &SealedSet) -> Result<SealedSet> {
    let mut set = SealedSet::default();
    for name in dd.list_segments()? {
        if name.kind == SegmentFileKind::Sealed {
            set.by_no.insert(name.segment_no.0, name);
        }
    }
    if let Some((_, newest)) = set.by_no.iter().next_back() {
        set.sealed_lsn = if previous.newest() == Some(newest.segment_no.0) {
            previous.sealed_lsn
        } else {
            check_sealed(&dd.segment_path(newest), newest, control)?.end_lsn
        };
    }
    Ok(set)
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
                lsn: Lsn(name.segment_no.start_lsn_saturating(control.segment_size)),
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
            lsn: Lsn(name.segment_no.start_lsn_saturating(control.segment_size)),
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
