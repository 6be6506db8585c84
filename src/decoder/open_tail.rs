//! The bytes past an open segment's last valid record: the valid records lying there, and
//! whether they are the torn remains of a crash or damage in the middle of the log. Pure.

use super::stale::{stale_tail, StaleTail};
use super::*;

/// A valid record (or seal marker) found past the end of an open segment's log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LaterRecord {
    pub offset: usize,
    pub lsn: crate::Lsn,
    /// How far into the segment the log was durable when it was appended (0 in version 1).
    pub durable_offset: u32,
}

/// The valid records lying past `from` in an open segment's bytes, in order. A position where
/// nothing valid starts is passed 8 bytes at a time; a valid record is passed whole.
pub fn later_records<'a>(
    buf: &'a [u8],
    header: &SegmentHeader,
    from: usize,
) -> impl Iterator<Item = LaterRecord> + 'a {
    let header = *header;
    let limit = header.segment_size as usize;
    let start_lsn = header.start_lsn();
    let mut off = crate::format::align_up(from.max(SEGMENT_HEADER_LEN));
    std::iter::from_fn(move || {
        while off + crate::format::record::RECORD_HEADER_LEN <= buf.len() {
            let at = off;
            let lsn = start_lsn + at as u64;
            // Cheap filter first: the stored LSN must equal the position.
            if crate::format::get_u64(buf, at + 8) == lsn.0 {
                if let Ok(d) = decode_at(buf, at, lsn, limit) {
                    if check_version(&header, &d, buf, at).is_ok() {
                        off += match d {
                            Decoded::Record(r) => encoded_len(r.payload.len()),
                            Decoded::Seal(_) => SEAL_LEN,
                        };
                        return Some(LaterRecord {
                            offset: at,
                            lsn,
                            durable_offset: crate::format::get_u32(buf, at + 36),
                        });
                    }
                }
            }
            off += ALIGN;
        }
        None
    })
}

/// A version 1 segment keeps the durable-offset bytes zero (they were reserved).
pub fn check_version(
    header: &SegmentHeader,
    d: &Decoded<'_>,
    buf: &[u8],
    off: usize,
) -> Result<(), RecordError> {
    let durable = match d {
        Decoded::Record(r) => r.header.durable_offset,
        Decoded::Seal(_) => crate::format::get_u32(buf, off + 36),
    };
    if durable != 0 && !header.has_durable_offsets() {
        return Err(RecordError::DurableOffsetInVersion1);
    }
    Ok(())
}

/// What the bytes after an open segment's last valid record are. Recovery, verify and the
/// reader all judge the end of the log by this one function, so they always agree.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OpenTail {
    /// Nothing but zeros: the log ends cleanly.
    Clean,
    /// Non-zero bytes up to `last_nonzero` (inclusive) that nothing proves were ever durable:
    /// the remains of writes a crash interrupted, possibly persisted out of order, so they may
    /// hold `later_records` valid records written after the first invalid one.
    Torn {
        last_nonzero: usize,
        later_records: u64,
    },
    /// Only the records of an earlier use of a recycled file follow (see `stale.rs`), with
    /// nothing of this segment among them: no record of it lies past the end, and no record of
    /// it was begun at the end. The log ends cleanly; the bytes need no repair.
    Stale(StaleTail),
    /// A valid record follows, appended when the log was already durable past the end: the
    /// invalid bytes had been synced, so they are damage in the middle of the log. In a
    /// version 1 segment any valid record that follows counts (nothing tells more).
    Damage(LaterRecord),
}

/// Judges the bytes of an open segment from `end` (the first position that is not a valid
/// record) on.
pub fn judge_open_tail(buf: &[u8], header: &SegmentHeader, end: usize) -> OpenTail {
    let Some(last_nonzero) = buf
        .get(end..)
        .and_then(crate::format::zeros::last_nonzero)
        .map(|p| end + p)
    else {
        return OpenTail::Clean;
    };
    let mut count = 0;
    for later in later_records(buf, header, end + ALIGN) {
        if !header.has_durable_offsets() || later.durable_offset as usize > end {
            return OpenTail::Damage(later);
        }
        count += 1;
    }
    let begun_here = buf.len() >= end + 16
        && crate::format::get_u64(buf, end + 8) == (header.start_lsn() + end as u64).0;
    if count == 0 && !begun_here {
        if let Some(stale) = stale_tail(buf, header.segment_size, header.start_lsn(), end) {
            return OpenTail::Stale(stale);
        }
    }
    OpenTail::Torn {
        last_nonzero,
        later_records: count,
    }
}

impl std::fmt::Display for LaterRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.durable_offset == 0 {
            write!(
                f,
                "a valid record follows at offset {} (LSN {})",
                self.offset, self.lsn
            )
        } else {
            write!(
                f,
                "a valid record follows at offset {} (LSN {}), appended when the log was durable up to offset {}",
                self.offset,
                self.lsn,
                self.durable_offset
            )
        }
    }
}

/// True when every byte from `from` on is zero.
pub fn is_zero_from(buf: &[u8], from: usize) -> bool {
    buf.get(from..).is_none_or(crate::format::zeros::all_zero)
}
