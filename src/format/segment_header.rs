//! The segment header: the first 80 bytes of every segment file.

use uuid::Uuid;

use super::{
    get_u32, get_u64, put_u32, put_u64, MIN_SEGMENT_FORMAT_VERSION, SEGMENT_FORMAT_VERSION,
};

pub const SEGMENT_MAGIC: &[u8; 8] = b"WALSHIPS";
pub const SEGMENT_HEADER_LEN: usize = 80;
const FLAG_HAS_PREV: u32 = 1;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SegmentHeader {
    pub format_version: u32,
    pub timeline: u32,
    pub segment_size: u64,
    pub segment_no: u64,
    pub system_id: Uuid,
    /// The previous segment's whole-segment checksum (from its seal marker), when this segment
    /// had a predecessor in the same directory when it was created.
    pub prev_checksum: Option<u32>,
    /// Creation time, microseconds since the Unix epoch (UTC).
    pub created_us: i64,
}

impl SegmentHeader {
    /// True when its records carry the writer's durable offset (format version 2 on).
    pub fn has_durable_offsets(&self) -> bool {
        self.format_version >= 2
    }

    /// The LSN of the segment's first byte.
    pub fn start_lsn(&self) -> crate::Lsn {
        crate::Lsn(self.segment_no * self.segment_size)
    }

    pub fn encode(&self) -> [u8; SEGMENT_HEADER_LEN] {
        let mut b = [0u8; SEGMENT_HEADER_LEN];
        b[0..8].copy_from_slice(SEGMENT_MAGIC);
        put_u32(&mut b, 8, self.format_version);
        put_u32(&mut b, 12, self.timeline);
        put_u64(&mut b, 16, self.segment_size);
        put_u64(&mut b, 24, self.segment_no);
        put_u64(&mut b, 32, self.start_lsn().0);
        b[40..56].copy_from_slice(self.system_id.as_bytes());
        put_u32(&mut b, 56, self.prev_checksum.unwrap_or(0));
        put_u32(
            &mut b,
            60,
            if self.prev_checksum.is_some() {
                FLAG_HAS_PREV
            } else {
                0
            },
        );
        put_u64(&mut b, 64, self.created_us as u64);
        let crc = crc32fast::hash(&b[0..76]);
        put_u32(&mut b, 76, crc);
        b
    }

    /// Decodes and checks a header; the error says what is wrong (offsets are within the header).
    pub fn decode(b: &[u8]) -> Result<SegmentHeader, String> {
        if b.len() < SEGMENT_HEADER_LEN {
            return Err(format!(
                "segment header truncated: {} of {SEGMENT_HEADER_LEN} bytes",
                b.len()
            ));
        }
        let b = &b[..SEGMENT_HEADER_LEN];
        if &b[0..8] != SEGMENT_MAGIC {
            return Err("bad segment magic (not a walship segment)".into());
        }
        let stored = get_u32(b, 76);
        let actual = crc32fast::hash(&b[0..76]);
        if stored != actual {
            return Err(format!(
                "segment header checksum mismatch (stored {stored:08x}, computed {actual:08x})"
            ));
        }
        if get_u32(b, 72) != 0 {
            return Err("segment header: reserved bytes 72..76 are not zero".into());
        }
        let format_version = get_u32(b, 8);
        if !(MIN_SEGMENT_FORMAT_VERSION..=SEGMENT_FORMAT_VERSION).contains(&format_version) {
            return Err(format!(
                "segment format version {format_version}; this walship reads versions {MIN_SEGMENT_FORMAT_VERSION} to {SEGMENT_FORMAT_VERSION}"
            ));
        }
        let segment_size = get_u64(b, 16);
        super::check_segment_size(segment_size).map_err(|e| format!("segment header: {e}"))?;
        let segment_no = get_u64(b, 24);
        let start = get_u64(b, 32);
        if segment_no.checked_mul(segment_size) != Some(start) {
            return Err(format!(
                "segment header start LSN {start} does not match segment number {segment_no}"
            ));
        }
        let mut id = [0u8; 16];
        id.copy_from_slice(&b[40..56]);
        let flags = get_u32(b, 60);
        if flags & !FLAG_HAS_PREV != 0 {
            return Err(format!("segment header: unknown flags {flags:#x}"));
        }
        Ok(SegmentHeader {
            format_version,
            timeline: get_u32(b, 12),
            segment_size,
            segment_no,
            system_id: Uuid::from_bytes(id),
            prev_checksum: (flags & FLAG_HAS_PREV != 0).then(|| get_u32(b, 56)),
            created_us: get_u64(b, 64) as i64,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_every_flip_detected() {
        let h = SegmentHeader {
            format_version: SEGMENT_FORMAT_VERSION,
            timeline: 1,
            segment_size: 1 << 16,
            segment_no: 7,
            system_id: Uuid::from_u128(99),
            prev_checksum: Some(0xdead_beef),
            created_us: 5,
        };
        let b = h.encode();
        assert_eq!(SegmentHeader::decode(&b).unwrap(), h);
        for i in 0..SEGMENT_HEADER_LEN {
            let mut d = b;
            d[i] ^= 0x80;
            assert!(
                SegmentHeader::decode(&d).is_err(),
                "flip at {i} not detected"
            );
        }
    }
}
