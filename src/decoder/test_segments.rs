//! Test segments built by hand, shared by the unit tests of the decoder and the segment checks.

use super::*;
use crate::format::record::{encode_record, encode_seal};
use crate::format::SEGMENT_FORMAT_VERSION;

/// Segment `segment_no` of a system with the nil id and 64 KiB segments, sealed after `n`
/// records of 10 bytes (record `i` holds `i` and is stamped `i`).
pub(crate) fn sealed_segment_for_tests(
    segment_no: u64,
    n: usize,
    prev_checksum: Option<u32>,
) -> (Vec<u8>, SegmentHeader) {
    let h = SegmentHeader {
        format_version: SEGMENT_FORMAT_VERSION,
        timeline: 1,
        segment_size: 1 << 16,
        segment_no,
        system_id: uuid::Uuid::nil(),
        prev_checksum,
        created_us: 0,
    };
    let mut b = h.encode().to_vec();
    let mut last_lsn = 0;
    for i in 0..n {
        let off = b.len();
        last_lsn = h.start_lsn() + off as u64;
        b.resize(off + encoded_len(10), 0);
        encode_record(
            &mut b[off..],
            last_lsn,
            0,
            1,
            None,
            i as i64,
            &[i as u8; 10],
        );
    }
    let off = b.len();
    let seal = SealInfo {
        record_count: n as u64,
        last_lsn,
        segment_checksum: crc32fast::hash(&b),
    };
    b.resize(off + SEAL_LEN, 0);
    encode_seal(&mut b[off..], h.start_lsn() + off as u64, 0, 0, &seal);
    (b, h)
}
