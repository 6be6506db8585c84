//! A system's identity: what every segment, control file and archive of one system shares.
//! The control file holds it (with its creation time), an archive's identity file repeats it
//! (with the segment it begins at), and a set of segments read without either goes by the
//! identity its first segment's header claims.

use uuid::Uuid;

/// What the segments of one system share. Stored in the control file (FORMAT.md) and the
/// archive identity file (ARCHIVE.md); never on its own.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SystemIdentity {
    pub system_id: Uuid,
    pub timeline: u32,
    pub segment_size: u64,
    /// The format version: of the control file in a data directory, of the archived segments
    /// in an archive.
    pub format_version: u32,
}

impl From<&super::SegmentHeader> for SystemIdentity {
    /// The identity a segment claims for itself: a set without a control file goes by its first.
    fn from(h: &super::SegmentHeader) -> Self {
        SystemIdentity {
            system_id: h.system_id,
            timeline: h.timeline,
            segment_size: h.segment_size,
            format_version: h.format_version,
        }
    }
}
