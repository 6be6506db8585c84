//! What the segments of one set (a data directory, a folder, an archive) must share, and the
//! checks of a segment header against it and against its file name.

use super::*;

/// The identity the segments of one set must share: the system's identity, from a data
/// directory's control file, an archive's identity file, or (with neither) the first segment's
/// header. A segment must match its system id and segment size ([`header_mismatch`]).
pub type Identity = crate::format::SystemIdentity;

/// The LSN a segment starts at, when it can be computed (`None` on overflow).
pub fn segment_start(segment_no: u64, segment_size: u64) -> Option<Lsn> {
    crate::format::SegmentNo(segment_no).start_lsn(segment_size)
}

/// The segment size a header's own field claims, when it is a valid size: with no identity to
/// go by, it still locates a segment whose header fails its checks.
pub fn claimed_segment_size(bytes: &[u8]) -> Option<u64> {
    let field: [u8; 8] = bytes.get(16..24)?.try_into().ok()?;
    let size = u64::from_le_bytes(field);
    crate::format::check_segment_size(size).ok().map(|()| size)
}

/// Why a segment's header does not fit the set it is read in (identity or file name), if it
/// does not.
pub fn header_mismatch(
    header: &SegmentHeader,
    name: &SegmentName,
    id: &Identity,
) -> Option<String> {
    if header.system_id != id.system_id {
        return Some(format!(
            "segment belongs to system {}, expected {}",
            header.system_id, id.system_id
        ));
    }
    if header.segment_size != id.segment_size {
        return Some(format!(
            "segment size {} differs from {}",
            header.segment_size, id.segment_size
        ));
    }
    if header.segment_no != name.segment_no.0 || header.timeline != name.timeline {
        return Some(format!(
            "header says timeline {} segment {:X}; the file name disagrees",
            header.timeline, header.segment_no
        ));
    }
    None
}
