//! The on-disk format (control file version 1, segment format version 2): pure encode/decode with no I/O, so that every piece can be
//! property-tested and fuzzed. docs/FORMAT.md describes the same bytes for people.

pub mod control;
pub mod crc_fold;
pub mod history;
pub mod identity;
pub mod names;
pub mod record;
pub mod segment_header;
pub mod zeros;

pub use control::ControlFile;
pub use identity::SystemIdentity;
pub use names::{SegmentFileKind, SegmentName, SegmentNo};
pub use record::{RecordHeader, SealInfo};
pub use segment_header::SegmentHeader;

/// The control file's format version: this code writes and reads only this one.
pub const FORMAT_VERSION: u32 = 1;

/// The segment format version this code writes: version 2 records carry the writer's durable
/// offset (bytes 36..40 of the record header), which version 1 left zero.
pub const SEGMENT_FORMAT_VERSION: u32 = 2;

/// The oldest segment format version this code still reads.
pub const MIN_SEGMENT_FORMAT_VERSION: u32 = 1;

/// Records and the seal marker start at multiples of this.
pub const ALIGN: usize = 8;

/// Smallest and largest segment sizes accepted by `init`.
pub const MIN_SEGMENT_SIZE: u64 = 64 * 1024;
pub const MAX_SEGMENT_SIZE: u64 = 1024 * 1024 * 1024;

/// Rounds `n` up to the next multiple of [`ALIGN`].
pub const fn align_up(n: usize) -> usize {
    (n + ALIGN - 1) & !(ALIGN - 1)
}

/// Little-endian readers over a slice known to be long enough (callers check lengths first).
pub(crate) fn get_u32(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

pub(crate) fn get_u64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

pub(crate) fn put_u32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}

pub(crate) fn put_u64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

/// Checks a segment size: a power of two within the accepted range.
pub fn check_segment_size(size: u64) -> Result<(), String> {
    if !size.is_power_of_two() || !(MIN_SEGMENT_SIZE..=MAX_SEGMENT_SIZE).contains(&size) {
        return Err(format!(
            "segment size {size} must be a power of two from 64KiB ({MIN_SEGMENT_SIZE}) to 1GiB ({MAX_SEGMENT_SIZE})"
        ));
    }
    Ok(())
}
