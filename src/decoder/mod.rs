//! Scanning a segment's bytes: the records in order, then why the scan ended. Pure: it reads a
//! byte slice and does no I/O, so recovery, verify, dump, the reader, the standby and the
//! archive all judge a segment by the same rules.
//!
//! A sealed segment is hashed once. Its seal marker's checksum covers every byte before the
//! marker, so when that one pass matches, the records are the bytes the writer wrote and each
//! is decoded without hashing it again. When it does not match (or there is no seal marker at
//! the end), every record is CRC-checked as it is decoded, so damage is reported at the first
//! bad record, exactly as without the shortcut.
//!
//! Here: scanning a segment in order; `open_tail.rs`: judging the bytes past an open
//! segment's last valid record (clean, torn, stale, or damage before a later durable record);
//! `stale.rs`: the records a recycled file still holds from its earlier use.

use crate::format::record::{
    decode_at, decode_at_unhashed, encoded_len, Decoded, RecordError, RecordRef, SEAL_LEN,
};
use crate::format::segment_header::SEGMENT_HEADER_LEN;
use crate::format::{SealInfo, SegmentHeader, ALIGN};

mod open_tail;
mod stale;

pub use open_tail::{
    check_version, is_zero_from, judge_open_tail, later_records, LaterRecord, OpenTail,
};
pub use stale::{stale_tail, StaleTail};

/// Why a scan stopped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ScanEnd {
    /// A valid seal marker at `offset` whose counts and checksum match; `trailing` bytes follow
    /// it (0 in a sealed file, which ends right after its marker).
    Sealed {
        offset: usize,
        seal: SealInfo,
        trailing: usize,
    },
    /// Nothing written at `offset`: type byte 0, or the bytes ran out exactly there.
    Unwritten { offset: usize },
    /// The bytes at `offset` are not a valid record.
    Invalid { offset: usize, error: ScanError },
}

impl ScanEnd {
    pub fn offset(&self) -> usize {
        match self {
            ScanEnd::Sealed { offset, .. }
            | ScanEnd::Unwritten { offset }
            | ScanEnd::Invalid { offset, .. } => *offset,
        }
    }
}

/// A record-level failure, or a seal marker that disagrees with the segment it closes.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ScanError {
    #[error("{0}")]
    Record(RecordError),
    #[error("segment checksum mismatch (seal says {stored:08x}, bytes give {computed:08x})")]
    SegmentChecksum { stored: u32, computed: u32 },
    #[error("seal marker disagrees with the segment: {0}")]
    SealMismatch(String),
}

/// A seal marker at the very end of a segment's bytes (where a sealed file ends), with the
/// checksum of every byte before it, computed in one pass.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FinalSeal {
    pub offset: usize,
    pub seal: SealInfo,
    /// CRC32 of `buf[..offset]`.
    pub computed: u32,
}

/// The CRC32 of all but the last [`SEAL_LEN`] bytes of a segment, computed chunk by chunk as
/// the file was read, while each chunk was still in the CPU's cache: it spares the scanner a
/// hash pass of its own over memory. Made only by
/// [`read_segment_hashed`](crate::reader::read_segment_hashed), for the bytes it read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadChecksum {
    pub(crate) len: usize,
    pub(crate) crc: u32,
}

impl FinalSeal {
    /// Looks for a valid seal marker in the last [`SEAL_LEN`] bytes of `buf` and hashes what
    /// precedes it. `None` when those bytes are not a seal marker at its own position.
    pub fn find(buf: &[u8], header: &SegmentHeader) -> Option<FinalSeal> {
        Self::find_with(buf, header, None)
    }

    /// [`FinalSeal::find`], taking the checksum from `read` when it covers exactly the bytes
    /// before the marker.
    pub(crate) fn find_with(
        buf: &[u8],
        header: &SegmentHeader,
        read: Option<ReadChecksum>,
    ) -> Option<FinalSeal> {
        let offset = buf.len().checked_sub(SEAL_LEN)?;
        if offset < SEGMENT_HEADER_LEN || offset % ALIGN != 0 {
            return None;
        }
        let lsn = header.start_lsn() + offset as u64;
        match decode_at(buf, offset, lsn, header.segment_size as usize) {
            Ok(Decoded::Seal(seal)) => Some(FinalSeal {
                offset,
                seal,
                computed: match read {
                    Some(r) if r.len == offset => r.crc,
                    _ => crc32fast::hash(&buf[..offset]),
                },
            }),
            _ => None,
        }
    }

    /// Where the bytes proven intact end: the marker's offset when its checksum matches, else 0.
    pub fn trusted_end(&self) -> usize {
        if self.computed == self.seal.segment_checksum {
            self.offset
        } else {
            0
        }
    }
}

/// Decodes what sits at `off` (LSN `lsn`; `limit` is the segment size). Bytes before
/// `trusted_end` were proven intact by a matching segment checksum (see [`FinalSeal`]): a record
/// lying wholly before it is decoded without its own CRC. Anything else, a failure included, is
/// decoded with every check, so errors are the same as [`decode_at`]'s.
#[inline(always)]
pub fn decode_record(
    buf: &[u8],
    off: usize,
    lsn: crate::Lsn,
    limit: usize,
    trusted_end: usize,
) -> Result<Decoded<'_>, RecordError> {
    if off < trusted_end {
        prefetch_ahead(buf, off);
        if let Ok(d) = decode_at_unhashed(buf, off, lsn, limit) {
            let len = match d {
                Decoded::Record(r) => encoded_len(r.payload.len()),
                Decoded::Seal(_) => SEAL_LEN,
            };
            if off + len <= trusted_end {
                return Ok(d);
            }
        }
    }
    decode_at(buf, off, lsn, limit)
}

/// How far ahead of the record being decoded the unhashed scan asks for bytes to be cached.
const PREFETCH_DISTANCE: usize = 2048;

/// Without hashing, the scan reads only each record's header and padding, and each address
/// depends on the length read before it: the hardware prefetcher does not follow, and every
/// record would wait for memory. Asking for the bytes ahead (three lines per record, more than
/// a small record takes) keeps the scan at memory bandwidth.
#[inline(always)]
fn prefetch_ahead(buf: &[u8], off: usize) {
    #[cfg(target_arch = "x86_64")]
    for line in 0..3 {
        if let Some(b) = buf.get(off + PREFETCH_DISTANCE + line * 64) {
            use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T0};
            // SAFETY: SSE is part of x86_64; a prefetch is only a hint, of an address inside
            // `buf`: it reads nothing into the program and cannot fault.
            unsafe { _mm_prefetch::<_MM_HINT_T0>((b as *const u8).cast::<i8>()) };
        }
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = (buf, off);
}

/// Iterates over the records of one segment held in `buf` (the file's bytes from offset 0).
pub struct SegmentScanner<'a> {
    buf: &'a [u8],
    header: SegmentHeader,
    off: usize,
    first_offset: usize,
    record_count: u64,
    last_lsn: Option<crate::Lsn>,
    end: Option<ScanEnd>,
    /// A seal marker at the end of `buf` and the checksum of the bytes before it.
    final_seal: Option<FinalSeal>,
    /// Records ending at or before this offset are decoded without their own CRC.
    trusted_end: usize,
}

impl<'a> SegmentScanner<'a> {
    /// Starts at the first record; fails when the header is not valid.
    pub fn new(buf: &'a [u8]) -> Result<Self, String> {
        let header = SegmentHeader::decode(buf)?;
        Ok(Self::with_header(buf, header, SEGMENT_HEADER_LEN))
    }

    /// [`SegmentScanner::new`] over bytes whose checksum was computed as they were read
    /// (`read` must come from reading exactly `buf`).
    pub fn with_read_checksum(buf: &'a [u8], read: ReadChecksum) -> Result<Self, String> {
        let header = SegmentHeader::decode(buf)?;
        let final_seal = FinalSeal::find_with(buf, &header, Some(read));
        Ok(Self::start(buf, header, SEGMENT_HEADER_LEN, final_seal))
    }

    /// Starts at `offset` (a record boundary found earlier) with a header already decoded.
    /// When `buf` ends with a seal marker, hashes the segment once before the first record.
    pub fn with_header(buf: &'a [u8], header: SegmentHeader, offset: usize) -> Self {
        let final_seal = FinalSeal::find(buf, &header);
        Self::start(buf, header, offset, final_seal)
    }

    /// Starts at the first record of a sealed segment whose bytes were already checked whole
    /// (every record, the seal marker that ends `buf`, the segment checksum; see
    /// [`crate::segment_check`]): `header` and `seal` are what that check decoded. The bytes are
    /// not hashed again and records are decoded without their own CRC; everything else (each
    /// record's structure, LSN and version, the marker's counts) is checked as by
    /// [`SegmentScanner::new`], and any failure is decoded with every check.
    pub fn over_checked(buf: &'a [u8], header: SegmentHeader, seal: SealInfo) -> Self {
        let final_seal = buf.len().checked_sub(SEAL_LEN).map(|offset| FinalSeal {
            offset,
            seal,
            computed: seal.segment_checksum,
        });
        Self::start(buf, header, SEGMENT_HEADER_LEN, final_seal)
    }

    fn start(
        buf: &'a [u8],
        header: SegmentHeader,
        offset: usize,
        final_seal: Option<FinalSeal>,
    ) -> Self {
        SegmentScanner {
            buf,
            header,
            off: offset,
            first_offset: offset,
            record_count: 0,
            last_lsn: None,
            end: None,
            final_seal,
            trusted_end: final_seal.map_or(0, |s| s.trusted_end()),
        }
    }

    /// Checks every record's own CRC even under a matching seal checksum: the reference the
    /// single-pass scan of a sealed segment is tested against.
    pub fn checking_every_record(mut self) -> Self {
        self.trusted_end = 0;
        self
    }

    /// Records ending at or before this offset are decoded without their own CRC, because a
    /// matching seal checksum covers them; 0 when every record is CRC-checked.
    pub fn unhashed_until(&self) -> usize {
        self.trusted_end
    }

    pub fn header(&self) -> &SegmentHeader {
        &self.header
    }

    /// The offset of the next record (after the scan ended: where it ended).
    pub fn offset(&self) -> usize {
        self.off
    }

    /// Records returned so far.
    pub fn record_count(&self) -> u64 {
        self.record_count
    }

    /// Why the scan stopped; `None` while records remain.
    pub fn end(&self) -> Option<&ScanEnd> {
        self.end.as_ref()
    }

    /// Runs the scan to its end, counting records, and returns the end.
    pub fn finish(&mut self) -> ScanEnd {
        while self.next().is_some() {}
        self.end
            .clone()
            .unwrap_or(ScanEnd::Unwritten { offset: self.off })
    }

    fn check_seal(&self, seal: SealInfo) -> Result<SealInfo, ScanError> {
        // Counts can only be compared when the scan saw every record of the segment. The bytes
        // were hashed up front when this is the marker at the end.
        check_seal_against(
            seal,
            (self.first_offset == SEGMENT_HEADER_LEN).then_some((self.record_count, self.last_lsn)),
            || match self.final_seal {
                Some(f) if f.offset == self.off => f.computed,
                _ => crc32fast::hash(&self.buf[..self.off]),
            },
        )
    }
}

/// Checks a seal marker against the segment before it: its record count and last record's LSN
/// against what a scan saw (`seen`, when the scan saw every record), its checksum against
/// `computed` (the CRC32 of the bytes before the marker). Every reader of segments judges a
/// marker by this one check.
pub fn check_seal_against(
    seal: SealInfo,
    seen: Option<(u64, Option<crate::Lsn>)>,
    computed: impl FnOnce() -> u32,
) -> Result<SealInfo, ScanError> {
    if let Some((count, last)) = seen {
        if seal.record_count != count {
            return Err(ScanError::SealMismatch(format!(
                "it counts {} records, the segment holds {count}",
                seal.record_count
            )));
        }
        if count > 0 && seal.last_lsn != last {
            return Err(ScanError::SealMismatch(format!(
                "it names {} as the last record, the segment's last record is at {}",
                seal.last_lsn.unwrap_or_default(),
                last.unwrap_or_default()
            )));
        }
    }
    let computed = computed();
    if computed != seal.segment_checksum {
        return Err(ScanError::SegmentChecksum {
            stored: seal.segment_checksum,
            computed,
        });
    }
    Ok(seal)
}

impl<'a> Iterator for SegmentScanner<'a> {
    type Item = RecordRef<'a>;

    fn next(&mut self) -> Option<RecordRef<'a>> {
        if self.end.is_some() {
            return None;
        }
        let limit = self.header.segment_size as usize;
        let lsn = self.header.start_lsn() + self.off as u64;
        let decoded = decode_record(self.buf, self.off, lsn, limit, self.trusted_end)
            .and_then(|d| check_version(&self.header, &d, self.buf, self.off).map(|()| d));
        match decoded {
            Ok(Decoded::Record(r)) => {
                self.off += encoded_len(r.payload.len());
                self.record_count += 1;
                self.last_lsn = Some(r.lsn());
                Some(r)
            }
            Ok(Decoded::Seal(seal)) => {
                self.end = Some(match self.check_seal(seal) {
                    Ok(seal) => ScanEnd::Sealed {
                        offset: self.off,
                        seal,
                        trailing: self.buf.len() - self.off - SEAL_LEN,
                    },
                    Err(error) => ScanEnd::Invalid {
                        offset: self.off,
                        error,
                    },
                });
                None
            }
            Err(RecordError::Unwritten) => {
                self.end = Some(ScanEnd::Unwritten { offset: self.off });
                None
            }
            Err(e) => {
                self.end = Some(ScanEnd::Invalid {
                    offset: self.off,
                    error: ScanError::Record(e),
                });
                None
            }
        }
    }
}

/// Test segments built by hand, shared by the unit tests of the decoder and the segment checks.
#[cfg(test)]
pub(crate) mod test_segments;

#[cfg(test)]
mod tests {
    use super::test_segments::sealed_segment_for_tests;
    use super::*;

    /// A sealed segment of `n` records of 10 bytes each.
    fn sealed(n: usize) -> (Vec<u8>, SegmentHeader) {
        sealed_segment_for_tests(2, n, None)
    }

    #[test]
    fn final_seal_trusts_only_a_matching_checksum() {
        let (b, h) = sealed(3);
        let f = FinalSeal::find(&b, &h).expect("marker at the end");
        assert_eq!(f.trusted_end(), b.len() - SEAL_LEN);
        let mut damaged = b.clone();
        damaged[SEGMENT_HEADER_LEN + 45] ^= 1; // a payload byte of the first record
        let f = FinalSeal::find(&damaged, &h).expect("marker still valid");
        assert_eq!(f.trusted_end(), 0);
        // An open segment: records, then zeros. No marker at the end, nothing hashed.
        let mut open = b[..b.len() - SEAL_LEN].to_vec();
        open.resize(b.len() + 64, 0);
        assert_eq!(FinalSeal::find(&open, &h), None);
        // Bytes appended after the marker: it is no longer at the end.
        let mut longer = b.clone();
        longer.extend_from_slice(&[0; 8]);
        assert_eq!(FinalSeal::find(&longer, &h), None);
    }

    #[test]
    fn only_records_wholly_before_the_trusted_end_skip_their_crc() {
        let (mut b, h) = sealed(2);
        let off = SEGMENT_HEADER_LEN;
        let len = encoded_len(10);
        b[off] ^= 1; // the first record's stored CRC no longer matches its bytes
        let lsn = h.start_lsn() + off as u64;
        let limit = h.segment_size as usize;
        let bad_crc = |r: Result<Decoded<'_>, RecordError>| {
            matches!(r, Err(RecordError::ChecksumMismatch { .. }))
        };
        assert!(matches!(
            decode_record(&b, off, lsn, limit, off + len),
            Ok(Decoded::Record(_))
        ));
        assert!(bad_crc(decode_record(&b, off, lsn, limit, off + len - 8)));
        assert!(bad_crc(decode_record(&b, off, lsn, limit, 0)));
    }

    #[test]
    fn a_checked_segment_reads_the_same_records_and_still_checks_its_marker() {
        let (b, h) = sealed(4);
        let seal = match SegmentScanner::new(&b).expect("header").finish() {
            ScanEnd::Sealed { seal, .. } => seal,
            other => panic!("not sealed: {other:?}"),
        };
        let full: Vec<_> = SegmentScanner::new(&b).expect("header").collect();
        let mut scan = SegmentScanner::over_checked(&b, h, seal);
        assert_eq!(scan.unhashed_until(), b.len() - SEAL_LEN);
        assert_eq!(scan.by_ref().collect::<Vec<_>>(), full);
        assert!(matches!(scan.finish(), ScanEnd::Sealed { trailing: 0, .. }));
        // A marker that is not the one checked: its checksum is compared with what was.
        let other = SealInfo {
            segment_checksum: seal.segment_checksum ^ 1,
            ..seal
        };
        let mut scan = SegmentScanner::over_checked(&b, h, other);
        assert_eq!(scan.by_ref().count(), 4);
        assert!(matches!(
            scan.finish(),
            ScanEnd::Invalid {
                error: ScanError::SegmentChecksum { .. },
                ..
            }
        ));
        // A record whose structure is broken is still found (with every check).
        let mut broken = b.clone();
        broken[SEGMENT_HEADER_LEN + 8] ^= 1; // the first record's LSN
        let mut scan = SegmentScanner::over_checked(&broken, h, seal);
        assert_eq!(scan.by_ref().count(), 0);
        assert!(matches!(
            scan.finish(),
            ScanEnd::Invalid {
                offset: SEGMENT_HEADER_LEN,
                ..
            }
        ));
    }
}
