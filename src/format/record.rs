//! Records and the seal marker: 40-byte header, payload, zero padding to 8 bytes.

use std::fmt;

use super::{align_up, get_u32, get_u64, put_u32, put_u64};
use crate::entry::EntryType;
use crate::Lsn;

pub const RECORD_HEADER_LEN: usize = 40;
/// The type byte of the seal marker, the last record of a sealed segment.
pub const SEAL_TYPE: u8 = 255;
pub const SEAL_PAYLOAD_LEN: usize = 24;
/// Bytes the seal marker takes: header plus payload (already a multiple of 8).
pub const SEAL_LEN: usize = RECORD_HEADER_LEN + SEAL_PAYLOAD_LEN;
const FLAG_HAS_TX: u8 = 1;

/// Bytes a record with `payload_len` bytes of payload takes, padding included.
pub const fn encoded_len(payload_len: usize) -> usize {
    align_up(RECORD_HEADER_LEN + payload_len)
}

/// Writes one record into `dst`, which must be exactly `encoded_len(payload.len())` bytes (the
/// padding bytes are written as zeros). `durable_offset` is how far into this record's segment
/// the writer had made the log durable when it appended the record (0 when not into this
/// segment yet); it can be no more than the record's own offset. Returns the record's CRC.
pub fn encode_record(
    dst: &mut [u8],
    lsn: Lsn,
    durable_offset: u32,
    type_code: u8,
    tx_id: Option<u64>,
    timestamp_us: i64,
    payload: &[u8],
) -> u32 {
    debug_assert_eq!(dst.len(), encoded_len(payload.len()));
    put_u32(dst, 4, payload.len() as u32);
    put_u64(dst, 8, lsn.0);
    put_u64(dst, 16, tx_id.unwrap_or(0));
    put_u64(dst, 24, timestamp_us as u64);
    dst[32] = type_code;
    dst[33] = if tx_id.is_some() { FLAG_HAS_TX } else { 0 };
    dst[34..36].fill(0);
    put_u32(dst, 36, durable_offset);
    let end = RECORD_HEADER_LEN + payload.len();
    dst[RECORD_HEADER_LEN..end].copy_from_slice(payload);
    dst[end..].fill(0);
    let crc = crc32fast::hash(&dst[4..]);
    put_u32(dst, 0, crc);
    crc
}

/// What a seal marker says about its segment.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SealInfo {
    /// Records in the segment, the seal marker not counted.
    pub record_count: u64,
    /// LSN of the last record (`None` when the segment holds none; stored as 0).
    pub last_lsn: Option<Lsn>,
    /// CRC32 of every byte of the segment file before the seal marker.
    pub segment_checksum: u32,
}

impl SealInfo {
    pub fn encode_payload(&self) -> [u8; SEAL_PAYLOAD_LEN] {
        let mut p = [0u8; SEAL_PAYLOAD_LEN];
        put_u64(&mut p, 0, self.record_count);
        put_u64(&mut p, 8, Lsn::to_stored(self.last_lsn));
        put_u32(&mut p, 16, self.segment_checksum);
        p
    }

    fn decode_payload(p: &[u8]) -> Option<SealInfo> {
        if p.len() != SEAL_PAYLOAD_LEN || get_u32(p, 20) != 0 {
            return None;
        }
        Some(SealInfo {
            record_count: get_u64(p, 0),
            last_lsn: Lsn::from_stored(get_u64(p, 8)),
            segment_checksum: get_u32(p, 16),
        })
    }
}

/// Writes a seal marker into `dst` (exactly [`SEAL_LEN`] bytes).
pub fn encode_seal(
    dst: &mut [u8],
    lsn: Lsn,
    durable_offset: u32,
    timestamp_us: i64,
    seal: &SealInfo,
) -> u32 {
    encode_record(
        dst,
        lsn,
        durable_offset,
        SEAL_TYPE,
        None,
        timestamp_us,
        &seal.encode_payload(),
    )
}

/// The fixed fields of a record as stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordHeader {
    pub crc: u32,
    pub len: u32,
    pub lsn: Lsn,
    pub tx_id: Option<u64>,
    pub timestamp_us: i64,
    pub type_code: u8,
    /// How far into the segment the log was durable when the record was appended (format
    /// version 2; always 0 in version 1).
    pub durable_offset: u32,
}

/// A record decoded in place.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RecordRef<'a> {
    pub header: RecordHeader,
    pub entry_type: EntryType,
    pub payload: &'a [u8],
}

impl RecordRef<'_> {
    pub fn lsn(&self) -> Lsn {
        self.header.lsn
    }
    /// Where the next record may start.
    pub fn end_lsn(&self) -> Lsn {
        self.header.lsn + encoded_len(self.payload.len()) as u64
    }
}

/// What sits at a record position.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Decoded<'a> {
    Record(RecordRef<'a>),
    Seal(SealInfo),
}

/// Why the bytes at a record position are not a record.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RecordError {
    /// The type byte is 0: nothing was written here.
    Unwritten,
    /// Fewer bytes remain than the header or the length needs.
    Truncated {
        need: usize,
        have: usize,
    },
    /// The length field points past the end of the segment.
    LengthOutOfRange {
        len: u64,
    },
    ChecksumMismatch {
        stored: u32,
        computed: u32,
    },
    LsnMismatch {
        found: Lsn,
        expected: Lsn,
    },
    UnknownType(u8),
    ReservedBitsSet,
    BadSealMarker,
    /// The durable offset lies past the record itself: no writer could have written it.
    DurableOffsetAhead {
        durable: u32,
        offset: u64,
    },
    /// A durable offset in a version 1 segment, where those bytes are reserved.
    DurableOffsetInVersion1,
}

impl fmt::Display for RecordError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RecordError::Unwritten => write!(f, "no record written here (type 0)"),
            RecordError::Truncated { need, have } => {
                write!(f, "record truncated: needs {need} bytes, {have} remain")
            }
            RecordError::LengthOutOfRange { len } => {
                write!(f, "record length {len} runs past the end of the segment")
            }
            RecordError::ChecksumMismatch { stored, computed } => write!(
                f,
                "record checksum mismatch (stored {stored:08x}, computed {computed:08x})"
            ),
            RecordError::LsnMismatch { found, expected } => write!(
                f,
                "record LSN {found} does not match its position {expected}",
            ),
            RecordError::UnknownType(t) => write!(f, "unknown record type {t}"),
            RecordError::ReservedBitsSet => write!(
                f,
                "reserved bits, padding or an absent transaction id are not zero"
            ),
            RecordError::BadSealMarker => write!(f, "malformed seal marker"),
            RecordError::DurableOffsetAhead { durable, offset } => write!(
                f,
                "record claims the log was durable up to offset {durable}, past its own offset {offset}"
            ),
            RecordError::DurableOffsetInVersion1 => write!(
                f,
                "reserved bytes 36..40 are not zero in a version 1 segment"
            ),
        }
    }
}

/// Decodes the record at `buf[off..]`, which must sit at LSN `expected_lsn`. `limit` is the
/// segment size: no record may extend past it, and the record's offset in its segment is read
/// from the LSN's low bits with it (never pass the length of a file cut short: a sealed one).
/// Checks run cheapest first, and the CRC before anything derived from an unverified field is
/// trusted.
pub fn decode_at(
    buf: &[u8],
    off: usize,
    expected_lsn: Lsn,
    limit: usize,
) -> Result<Decoded<'_>, RecordError> {
    decode(buf, off, expected_lsn, limit, true)
}

/// [`decode_at`] without hashing the record: every other check is the same. Only for bytes
/// already proven intact by a checksum that covers them (a sealed segment whose whole-segment
/// checksum matches); its errors may differ from `decode_at`'s on bytes that are not.
#[inline]
pub fn decode_at_unhashed(
    buf: &[u8],
    off: usize,
    expected_lsn: Lsn,
    limit: usize,
) -> Result<Decoded<'_>, RecordError> {
    decode(buf, off, expected_lsn, limit, false)
}

#[inline(always)]
fn decode(
    buf: &[u8],
    off: usize,
    expected_lsn: Lsn,
    limit: usize,
    check_crc: bool,
) -> Result<Decoded<'_>, RecordError> {
    let have = buf.len().saturating_sub(off);
    if have < RECORD_HEADER_LEN {
        if buf.get(off..).is_some_and(super::zeros::all_zero) {
            return Err(RecordError::Unwritten);
        }
        return Err(RecordError::Truncated {
            need: RECORD_HEADER_LEN,
            have,
        });
    }
    let h = &buf[off..off + RECORD_HEADER_LEN];
    let type_code = h[32];
    if type_code == 0 {
        return Err(RecordError::Unwritten);
    }
    let lsn = Lsn(get_u64(h, 8));
    if lsn != expected_lsn {
        return Err(RecordError::LsnMismatch {
            found: lsn,
            expected: expected_lsn,
        });
    }
    let len = get_u32(h, 4) as usize;
    let total = encoded_len(len);
    if off + total > limit {
        return Err(RecordError::LengthOutOfRange { len: len as u64 });
    }
    if have < total {
        return Err(RecordError::Truncated { need: total, have });
    }
    let stored = get_u32(h, 0);
    if check_crc {
        let computed = crc32fast::hash(&buf[off + 4..off + total]);
        if stored != computed {
            return Err(RecordError::ChecksumMismatch { stored, computed });
        }
    }
    // Only one encoding of each record is valid: flags, reserved bytes, an absent tx id and the
    // padding must all be as the encoder writes them, even under a matching CRC.
    // Word-sized tests: bytes 34..36 are bits 16..32 of the word at 32, and the padding (0 to 7
    // bytes) is the top of the record's last word (a record is at least 40 bytes).
    let flags = h[33];
    let tx_present = flags & FLAG_HAS_TX != 0;
    let pad_bits = 8 * (total - RECORD_HEADER_LEN - len) as u32;
    if flags & !FLAG_HAS_TX != 0
        || (get_u64(h, 32) >> 16) as u16 != 0
        || (!tx_present && get_u64(h, 16) != 0)
        || get_u64(buf, off + total - 8)
            .checked_shr(64 - pad_bits)
            .is_some_and(|p| p != 0)
    {
        return Err(RecordError::ReservedBitsSet);
    }
    let durable_offset = get_u32(h, 36);
    // Segments are powers of two no larger than 1 GiB, so the offset is the LSN's low bits.
    let offset = expected_lsn.offset_in_segment(limit as u64);
    if u64::from(durable_offset) > offset {
        return Err(RecordError::DurableOffsetAhead {
            durable: durable_offset,
            offset,
        });
    }
    let payload = &buf[off + RECORD_HEADER_LEN..off + RECORD_HEADER_LEN + len];
    if type_code == SEAL_TYPE {
        return SealInfo::decode_payload(payload)
            .filter(|_| flags == 0)
            .map(Decoded::Seal)
            .ok_or(RecordError::BadSealMarker);
    }
    let entry_type = EntryType::from_code(type_code).ok_or(RecordError::UnknownType(type_code))?;
    Ok(Decoded::Record(RecordRef {
        header: RecordHeader {
            crc: stored,
            len: len as u32,
            lsn,
            tx_id: tx_present.then(|| get_u64(h, 16)),
            timestamp_us: get_u64(h, 24) as i64,
            type_code,
            durable_offset,
        },
        entry_type,
        payload,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encode_then_decode() {
        let payload = b"hello world";
        let mut buf = vec![0u8; encoded_len(payload.len())];
        encode_record(
            &mut buf,
            Lsn(4096),
            0,
            EntryType::Update.code(),
            Some(42),
            77,
            payload,
        );
        assert_eq!(buf.len(), 56);
        match decode_at(&buf, 0, Lsn(4096), 1 << 20).unwrap() {
            Decoded::Record(r) => {
                assert_eq!(r.payload, payload);
                assert_eq!(r.header.tx_id, Some(42));
                assert_eq!(r.header.timestamp_us, 77);
                assert_eq!(r.entry_type, EntryType::Update);
                assert_eq!(r.end_lsn(), Lsn(4096 + 56));
            }
            other => panic!("unexpected {other:?}"),
        }
        assert!(matches!(
            decode_at(&buf, 0, Lsn(4104), 1 << 20),
            Err(RecordError::LsnMismatch { .. })
        ));
    }

    /// Found by fuzzing: non-zero padding, or a tx id stored without its flag, under a CRC that
    /// matches, must not decode (the record would not re-encode to the same bytes).
    #[test]
    fn non_canonical_bytes_are_refused_even_with_a_matching_crc() {
        let recrc = |b: &mut Vec<u8>| {
            let crc = crc32fast::hash(&b[4..]);
            put_u32(b, 0, crc);
        };
        let mut buf = vec![0u8; encoded_len(5)];
        encode_record(
            &mut buf,
            Lsn(80),
            0,
            EntryType::Insert.code(),
            None,
            1,
            b"hello",
        );
        let mut padded = buf.clone();
        padded[47] = b'2';
        recrc(&mut padded);
        assert_eq!(
            decode_at(&padded, 0, Lsn(80), 1 << 20),
            Err(RecordError::ReservedBitsSet)
        );
        let mut stray_tx = buf.clone();
        stray_tx[16] = 9;
        recrc(&mut stray_tx);
        assert_eq!(
            decode_at(&stray_tx, 0, Lsn(80), 1 << 20),
            Err(RecordError::ReservedBitsSet)
        );
        assert!(decode_at(&buf, 0, Lsn(80), 1 << 20).is_ok());
    }
}
