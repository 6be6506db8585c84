//! Stale records: what a recycled segment file still holds from its earlier use. Pure.
//!
//! A sealed segment that retention releases may be kept and reused as a later segment instead
//! of being deleted (see FORMAT.md, "Recycled files"). Its new header replaces the old one, and
//! the writer overwrites the old records as it appends; past the new log's end the old records
//! remain. Each of them carries its own LSN, which belongs to the earlier segment: no reader
//! takes it for a record of the new one (the position check fails). This module recognises
//! those bytes as a whole, so that recovery, `verify` and `dump` neither call them damage nor
//! treat them as a torn tail.
//!
//! The old records are recognised only as a complete chain: from the first record of the
//! earlier segment found at or after a position, every record of that segment in order, ending
//! with its seal marker, and nothing but zeros after it (a sealed file is cut right after its
//! marker, and reusing it extends it with zeros). Anything else (a chain broken by a write of
//! the new segment, bytes that are not records) is not called stale.

use super::*;
use crate::format::get_u64;
use crate::format::record::RECORD_HEADER_LEN;
use crate::Lsn;

/// The old records found in a recycled file, from `offset` to the seal marker of the earlier
/// segment they belong to, followed only by zeros.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StaleTail {
    /// Where the first whole old record starts.
    pub offset: usize,
    /// The earlier segment the records were written for.
    pub segment_no: u64,
    /// Old records from `offset` on, the seal marker not counted.
    pub records: u64,
    /// Where the old seal marker ends; only zeros follow.
    pub end: usize,
}

/// Finds the old records of an earlier segment in `buf`, a segment file of `segment_size`
/// bytes: the first record at or after `from` whose LSN lies below `below` and names its own
/// offset in an earlier segment, then that segment's chain from there (see the module's notes).
/// `None` when there is no such record, or the chain it starts does not run whole to a seal
/// marker followed only by zeros.
pub fn stale_tail(buf: &[u8], segment_size: u64, below: Lsn, from: usize) -> Option<StaleTail> {
    let limit = segment_size as usize;
    let mut off = crate::format::align_up(from.max(SEGMENT_HEADER_LEN));
    while off + RECORD_HEADER_LEN <= buf.len().min(limit) {
        let lsn = get_u64(buf, off + 8);
        // Cheap filter first: an earlier segment's LSN for this very offset.
        if lsn < below.0
            && lsn % segment_size == off as u64
            && decode_at(buf, off, Lsn(lsn), limit).is_ok()
        {
            return chain(buf, segment_size, off, Lsn(lsn));
        }
        off += ALIGN;
    }
    None
}

/// Follows the earlier segment's records from `off` (LSN `lsn`, a valid record) to its marker.
fn chain(buf: &[u8], segment_size: u64, start: usize, lsn: Lsn) -> Option<StaleTail> {
    let limit = segment_size as usize;
    let mut off = start;
    let mut at = lsn;
    let mut records = 0u64;
    let mut last = None;
    loop {
        match decode_at(buf, off, at, limit).ok()? {
            Decoded::Record(r) => {
                let len = encoded_len(r.payload.len());
                records += 1;
                last = Some(at);
                off += len;
                at += len as u64;
            }
            Decoded::Seal(seal) => {
                let names_last = match last {
                    Some(l) => seal.last_lsn == Some(l),
                    // The chain starts at the marker: its last record lies before it.
                    None => seal.last_lsn.is_none_or(|l| l < at),
                };
                let end = off + SEAL_LEN;
                if !names_last || seal.record_count < records || !is_zero_from(buf, end) {
                    return None;
                }
                return Some(StaleTail {
                    offset: start,
                    segment_no: lsn.0 / segment_size,
                    records,
                    end,
                });
            }
        }
    }
}

impl std::fmt::Display for StaleTail {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "stale records of the earlier segment {:X} from offset {} to {} ({} records and its seal marker; a recycled file)",
            self.segment_no, self.offset, self.end, self.records
        )
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_segments::sealed_segment_for_tests;
    use super::*;

    const SIZE: u64 = 1 << 16;

    /// Segment 2 sealed after `n` records, extended with zeros to the segment size (a file
    /// released by retention and reused), with `new` bytes written over its start.
    fn recycled(n: usize, new: &[u8]) -> Vec<u8> {
        let (mut b, _) = sealed_segment_for_tests(2, n, None);
        b.resize(SIZE as usize, 0);
        b[..new.len()].copy_from_slice(new);
        b
    }

    #[test]
    fn the_old_chain_is_found_from_any_position_before_it() {
        let b = recycled(5, &[0xAA; 80]);
        let below = Lsn(7 * SIZE);
        let t = stale_tail(&b, SIZE, below, 0).expect("stale");
        assert_eq!(t.offset, SEGMENT_HEADER_LEN);
        assert_eq!((t.segment_no, t.records), (2, 5));
        assert_eq!(t.end, SEGMENT_HEADER_LEN + 5 * encoded_len(10) + SEAL_LEN);
        // From inside the second record: the chain starts at the third.
        let t =
            stale_tail(&b, SIZE, below, SEGMENT_HEADER_LEN + encoded_len(10) + 8).expect("stale");
        assert_eq!(t.offset, SEGMENT_HEADER_LEN + 2 * encoded_len(10));
        assert_eq!(t.records, 3);
        // Past the records, the marker alone.
        let t = stale_tail(&b, SIZE, below, SEGMENT_HEADER_LEN + 5 * encoded_len(10))
            .expect("the marker");
        assert_eq!(t.records, 0);
    }

    #[test]
    fn records_of_this_or_a_later_segment_are_not_stale() {
        let b = recycled(5, &[]);
        assert_eq!(stale_tail(&b, SIZE, Lsn(2 * SIZE), 0), None);
        assert!(stale_tail(&b, SIZE, Lsn(3 * SIZE), 0).is_some());
    }

    #[test]
    fn a_broken_chain_or_bytes_after_the_marker_are_not_stale() {
        let below = Lsn(9 * SIZE);
        let mut b = recycled(5, &[]);
        b[SEGMENT_HEADER_LEN + 3 * encoded_len(10) + 45] ^= 1; // a payload byte of record 4
        assert_eq!(stale_tail(&b, SIZE, below, 0), None);
        let mut b = recycled(5, &[]);
        let end = SEGMENT_HEADER_LEN + 5 * encoded_len(10) + SEAL_LEN;
        b[end + 100] = 1;
        assert_eq!(stale_tail(&b, SIZE, below, 0), None);
        // No old record at all: zeros, or garbage.
        assert_eq!(stale_tail(&vec![0; SIZE as usize], SIZE, below, 0), None);
        assert_eq!(stale_tail(&vec![0x5A; SIZE as usize], SIZE, below, 0), None);
    }
}
