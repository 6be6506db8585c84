//! Recycled files at recovery: a file that holds nothing but what its earlier use left (the
//! records of a segment that retention released, see `crate::decoder::stale_tail`) holds no
//! record of the log, so recovery neither sets it aside nor zeroes it: it stays a prepared
//! file for the writer to reuse.

use super::*;
use crate::decoder::{stale_tail, StaleTail};

/// True when `buf`, a prepared file named `name`, is a recycled file that holds no record of
/// its own: its header is all zeros (cleared for reuse) or, waiting in the pool under its old
/// number, its own sealed header; from offset 80 the records of one earlier segment below
/// `next` (the segment the log writes next) run whole to its seal marker, and only zeros
/// follow.
pub(super) fn recycled_prep(
    buf: &[u8],
    control: &ControlFile,
    name: &SegmentName,
    next: u64,
) -> Option<StaleTail> {
    let size = control.segment_size;
    if buf.len() as u64 > size || buf.len() < SEGMENT_HEADER_LEN {
        return None;
    }
    let own = if is_zero_from(&buf[..SEGMENT_HEADER_LEN], 0) {
        None
    } else {
        let h = SegmentHeader::decode(buf).ok()?;
        let ours = h.system_id == control.system_id
            && h.segment_size == size
            && h.segment_no == name.segment_no.0
            && h.timeline == name.timeline;
        if !ours {
            return None;
        }
        Some(h.segment_no)
    };
    let below = Lsn(next.saturating_mul(size));
    stale_tail(buf, size, below, SEGMENT_HEADER_LEN)
        .filter(|t| t.offset == SEGMENT_HEADER_LEN && own.is_none_or(|no| no == t.segment_no))
}

/// True when `buf`, an open segment file whose header is `header` (or the header it would
/// have, when its own is zeros), holds no record of its own segment: nothing valid or begun
/// from the first record's position on, only the whole chain of an earlier segment's records.
pub(super) fn holds_only_stale(buf: &[u8], header: &SegmentHeader) -> bool {
    let size = header.segment_size;
    let begun = buf.len() >= SEGMENT_HEADER_LEN + 16
        && crate::format::get_u64(buf, SEGMENT_HEADER_LEN + 8)
            == (header.start_lsn() + SEGMENT_HEADER_LEN as u64).0;
    buf.len() as u64 == size
        && !begun
        && later_records(buf, header, SEGMENT_HEADER_LEN)
            .next()
            .is_none()
        && stale_tail(buf, size, header.start_lsn(), SEGMENT_HEADER_LEN).is_some()
}
