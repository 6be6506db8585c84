//! The checks that decide whether a segment file belongs to this log and is whole. Recovery,
//! the shipper, the standby, the archive, retention, status and `verify` all judge segments
//! with these, so a segment means the same to each of them:
//!
//! - [`check_identity`]: a header matches the directory's identity and the file's name;
//! - [`check_sealed`]: the cheap check of a sealed file on disk (its header and the seal marker
//!   at its very end), for listing where segments end;
//! - [`check_sealed_bytes`]: the full check of a sealed segment's bytes (every record, the seal
//!   marker and its whole-segment checksum, nothing after it, and optionally the chain to its
//!   predecessor), before a segment is shipped, stored by a standby, archived or restored.

use std::os::unix::fs::FileExt;
use std::path::Path;

use crate::decoder::{ScanEnd, SegmentScanner};
use crate::error::{Error, IoContext, Result};
use crate::format::record::{decode_at, Decoded, RecordRef, SEAL_LEN};
use crate::format::segment_header::SEGMENT_HEADER_LEN;
use crate::format::{ControlFile, SealInfo, SegmentHeader, SegmentName};
use crate::Lsn;

/// A sealed segment whose header and seal marker were checked.
#[derive(Clone, Debug)]
pub struct SealedSegment {
    pub name: SegmentName,
    pub header: SegmentHeader,
    pub seal: SealInfo,
    /// LSN where the seal marker sits: the end of the segment's last record.
    pub end_lsn: Lsn,
}

/// A damage error located in `path` at `offset`, whose LSN is `lsn`.
pub(crate) fn corrupt(path: &Path, offset: usize, lsn: Lsn, reason: impl Into<String>) -> Error {
    Error::Corrupt {
        file: path.to_path_buf(),
        offset: offset as u64,
        lsn,
        reason: reason.into(),
    }
}

/// Checks that a sealed segment file is whole: header, identity, and a valid seal marker at its
/// very end. Cheap: it reads the header and the marker, not every record (`verify` does that).
pub fn check_sealed(
    path: &Path,
    name: &SegmentName,
    control: &ControlFile,
) -> Result<SealedSegment> {
    let file = crate::fsutil::open_regular(path)?;
    let len = file
        .metadata()
        .ctx(|| format!("stat {}", path.display()))?
        .len() as usize;
    let start = name.segment_no.start_lsn_saturating(control.segment_size);
    let mut hb = [0u8; SEGMENT_HEADER_LEN];
    if len < SEGMENT_HEADER_LEN + SEAL_LEN {
        let short = (
            len,
            format!("sealed segment is only {len} bytes: too short for a header and a seal marker"),
        );
        return Err(if len < SEGMENT_HEADER_LEN {
            corrupt(path, short.0, start + len as u64, short.1)
        } else {
            locate_damage(&file, path, start, short)
        });
    }
    file.read_exact_at(&mut hb, 0)
        .ctx(|| format!("read {}", path.display()))?;
    let header = SegmentHeader::decode(&hb).map_err(|r| corrupt(path, 0, start, r))?;
    check_identity(path, &header, name, control)?;
    let seal_off = len - SEAL_LEN;
    let mut sb = vec![0u8; SEAL_LEN];
    file.read_exact_at(&mut sb, seal_off as u64)
        .ctx(|| format!("read {}", path.display()))?;
    // decode_at works on a buffer; place the marker at its real offset's alignment.
    let seal_lsn = start + seal_off as u64;
    let seal = match decode_at(&sb, 0, seal_lsn, control.segment_size as usize) {
        Ok(Decoded::Seal(s)) => s,
        Ok(Decoded::Record(_)) => return Err(locate_damage(
            &file,
            path,
            start,
            (seal_off, "sealed segment does not end with a seal marker (last bytes are a record: truncated?)".into()),
        )),
        Err(e) => {
            return Err(locate_damage(
                &file,
                path,
                start,
                (
                    seal_off,
                    format!("sealed segment does not end with a valid seal marker: {e}"),
                ),
            ))
        }
    };
    Ok(SealedSegment {
        name: *name,
        header,
        seal,
        end_lsn: seal_lsn,
    })
}

/// A sealed segment without a valid marker at its end: the whole file is scanned, so that the
/// damage is named where its records stop and why, as `verify` and `dump` name it (a file cut
/// short ends inside a record, not where a marker would be). `fallback` when the file cannot be
/// read or its scan ends at a valid marker after all.
fn locate_damage(
    file: &std::fs::File,
    path: &Path,
    start: Lsn,
    fallback: (usize, String),
) -> Error {
    let mut bytes = Vec::new();
    let read = std::io::Read::read_to_end(&mut &*file, &mut bytes);
    let (off, reason) = match read.ok().and_then(|_| SegmentScanner::new(&bytes).ok()) {
        Some(mut scan) => sealed_end(&scan.finish()).err().unwrap_or(fallback),
        None => fallback,
    };
    corrupt(path, off, start + off as u64, reason)
}

/// A segment belongs here when its header matches the directory's identity and its name.
pub fn check_identity(
    path: &Path,
    header: &SegmentHeader,
    name: &SegmentName,
    control: &ControlFile,
) -> Result<()> {
    let start = header.start_lsn();
    if header.system_id != control.system_id {
        return Err(corrupt(
            path,
            0,
            start,
            format!(
                "segment belongs to system {}, this directory is system {}",
                header.system_id, control.system_id
            ),
        ));
    }
    if header.segment_size != control.segment_size {
        return Err(corrupt(
            path,
            0,
            start,
            format!(
                "segment size {} differs from the directory's {}",
                header.segment_size, control.segment_size
            ),
        ));
    }
    if header.segment_no != name.segment_no.0 || header.timeline != name.timeline {
        return Err(corrupt(
            path,
            0,
            start,
            format!(
                "header says timeline {} segment {:X}, the file name says timeline {} segment {:X}",
                header.timeline, header.segment_no, name.timeline, name.segment_no
            ),
        ));
    }
    Ok(())
}

/// What a full check of one sealed segment's bytes found.
#[derive(Clone, Debug)]
pub struct CheckedSegment {
    pub header: SegmentHeader,
    pub seal: SealInfo,
    /// Offset of the seal marker: the end of the last record.
    pub seal_offset: usize,
    /// Where the first record matching the cut predicate starts, and how many records come
    /// before it.
    pub cut: Option<(usize, u64)>,
    /// The last record's timestamp, when the segment holds records.
    pub last_timestamp_us: Option<i64>,
}

impl CheckedSegment {
    /// The LSN of the seal marker (the end of the segment's last record).
    pub fn seal_lsn(&self) -> Lsn {
        self.header.start_lsn() + self.seal_offset as u64
    }

    /// The segment as the cheap check describes it, under the sealed name `name`.
    pub fn sealed(&self, name: &SegmentName) -> SealedSegment {
        SealedSegment {
            name: name.with_kind(crate::format::SegmentFileKind::Sealed),
            header: self.header,
            seal: self.seal,
            end_lsn: self.seal_lsn(),
        }
    }
}

/// What a full check is asked beyond the segment itself.
#[derive(Clone, Copy, Default)]
pub struct FullCheck<'a> {
    /// The seal checksum of the segment before this one, when it is held: the header's chain
    /// field must name it.
    pub prev_checksum: Option<u32>,
    /// Marks the first record to leave out (restore's target); `None` checks only.
    pub cut: Option<&'a dyn Fn(&RecordRef<'_>) -> bool>,
}

/// Why a sealed segment ends where it does without a valid seal marker.
pub const NO_SEAL_MARKER: &str = "sealed segment ends without a seal marker (truncated?)";

/// Checks every byte of a sealed segment: header, identity and name, the chain to its
/// predecessor (when `check.prev_checksum` is given), each record, the seal marker and the
/// whole-segment checksum, and that nothing follows the marker. Stops at the first problem.
pub fn check_sealed_bytes(
    path: &Path,
    name: &SegmentName,
    bytes: &[u8],
    control: &ControlFile,
    check: FullCheck<'_>,
) -> Result<CheckedSegment> {
    let start = name.segment_no.start_lsn_saturating(control.segment_size);
    let corrupt =
        |offset: usize, reason: String| corrupt(path, offset, start + offset as u64, reason);
    let mut scan = SegmentScanner::new(bytes).map_err(|r| corrupt(0, r))?;
    let header = *scan.header();
    check_identity(path, &header, name, control)?;
    if let Some(prev) = check.prev_checksum {
        if header.prev_checksum != Some(prev) {
            return Err(corrupt(
                0,
                format!(
                    "chain broken: the header expects previous checksum {}, the previous segment has {prev:08x}",
                    header.prev_checksum.map_or("none".into(), |c| format!("{c:08x}"))
                ),
            ));
        }
    }
    let mut first_cut = None;
    let mut last_ts = None;
    let mut kept = 0u64;
    for r in scan.by_ref() {
        if first_cut.is_none() {
            if check.cut.is_some_and(|f| f(&r)) {
                first_cut = Some(((r.lsn() - start) as usize, kept));
            } else {
                kept += 1;
            }
        }
        last_ts = Some(r.header.timestamp_us);
    }
    let (seal_offset, seal) = sealed_end(&scan.finish()).map_err(|(o, why)| corrupt(o, why))?;
    Ok(CheckedSegment {
        header,
        seal,
        seal_offset,
        cut: first_cut,
        last_timestamp_us: last_ts,
    })
}

/// How the scan of a sealed segment must end: a valid seal marker with nothing after it.
/// Returns the marker's offset and the marker, or the offset of the problem and what it is.
pub fn sealed_end(end: &ScanEnd) -> std::result::Result<(usize, SealInfo), (usize, String)> {
    match end {
        ScanEnd::Sealed {
            offset,
            seal,
            trailing: 0,
        } => Ok((*offset, *seal)),
        ScanEnd::Sealed {
            offset, trailing, ..
        } => Err((*offset, format!("{trailing} bytes follow the seal marker"))),
        ScanEnd::Invalid { offset, error } => Err((*offset, error.to_string())),
        ScanEnd::Unwritten { offset } => Err((*offset, NO_SEAL_MARKER.into())),
    }
}

/// Why an open segment file of `len` bytes, whose records end without a seal marker (`why`),
/// is damage when its length is not the segment size: the writer makes open segments whole and
/// cuts one only after its seal marker is durable. None at the segment size.
pub fn open_length_damage(len: usize, segment_size: usize, why: &str) -> Option<String> {
    match len.cmp(&segment_size) {
        std::cmp::Ordering::Less => Some(format!("open segment is cut to {len} bytes (the writer cuts a segment only after its seal marker is durable), yet it does not end with a valid seal marker: {why}")),
        std::cmp::Ordering::Greater => Some(format!("open segment is {len} bytes, longer than the segment size {segment_size}: not a file the writer made")),
        std::cmp::Ordering::Equal => None,
    }
}

/// The header of a segment file and the offsets where its valid records end, in order (None
/// without a valid header of this system).
pub fn record_ends(
    buf: &[u8],
    name: &SegmentName,
    control: &ControlFile,
) -> Option<(SegmentHeader, Vec<usize>)> {
    let header = SegmentHeader::decode(buf.get(..SEGMENT_HEADER_LEN)?).ok()?;
    if header.system_id != control.system_id
        || header.segment_size != control.segment_size
        || header.segment_no != name.segment_no.0
        || header.timeline != name.timeline
    {
        return None;
    }
    let start = header.start_lsn();
    let size = control.segment_size as usize;
    // A sealed file is cut after its seal marker: the bytes end before the segment does.
    let end = size.min(buf.len());
    let mut ends = Vec::new();
    let mut off = SEGMENT_HEADER_LEN;
    while off < end {
        match decode_at(&buf[..end], off, start + off as u64, size) {
            Ok(Decoded::Record(r)) => {
                off = (r.end_lsn() - start) as usize;
                ends.push(off);
            }
            _ => break,
        }
    }
    Some((header, ends))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::record::encoded_len;
    use crate::format::{SegmentFileKind, SEGMENT_FORMAT_VERSION};

    const SIZE: u64 = 1 << 16;

    fn control() -> ControlFile {
        ControlFile {
            identity: crate::format::SystemIdentity {
                format_version: SEGMENT_FORMAT_VERSION,
                timeline: 1,
                system_id: uuid::Uuid::nil(),
                segment_size: SIZE,
            },
            created_us: 0,
        }
    }

    fn name(no: u64) -> SegmentName {
        SegmentName::new(1, no, SegmentFileKind::Sealed)
    }

    fn sealed(no: u64, n: usize, prev_checksum: Option<u32>) -> Vec<u8> {
        crate::decoder::test_segments::sealed_segment_for_tests(no, n, prev_checksum).0
    }

    fn check(bytes: &[u8], no: u64, check: FullCheck<'_>) -> Result<CheckedSegment> {
        check_sealed_bytes(Path::new("seg"), &name(no), bytes, &control(), check)
    }

    fn reason(r: Result<CheckedSegment>) -> String {
        match r {
            Err(Error::Corrupt { reason, .. }) => reason,
            other => panic!("expected damage, got {other:?}"),
        }
    }

    /// A sealed file is cut after its seal marker, before the segment ends: each record's
    /// offset is still read against the segment size. Records as the writer leaves them (each
    /// says the log was durable up to its own offset), in segments after the first, sealed at
    /// many lengths, some past half the segment and some short of it.
    #[test]
    fn record_ends_finds_every_record_of_a_segment_sealed_at_any_length() {
        use crate::format::record::{encode_record, encode_seal};
        for no in [1u64, 2, 7] {
            for n in [1usize, 2, 100, 300, 409, 500, 700] {
                let h = SegmentHeader {
                    format_version: SEGMENT_FORMAT_VERSION,
                    timeline: 1,
                    segment_size: SIZE,
                    segment_no: no,
                    system_id: uuid::Uuid::nil(),
                    prev_checksum: Some(1),
                    created_us: 0,
                };
                let mut b = h.encode().to_vec();
                let mut want = Vec::new();
                for i in 0..n {
                    let off = b.len();
                    b.resize(off + encoded_len(40), 0);
                    let lsn = h.start_lsn() + off as u64;
                    encode_record(&mut b[off..], lsn, off as u32, 1, None, i as i64, &[7; 40]);
                    want.push(b.len());
                }
                let off = b.len();
                let seal = SealInfo {
                    record_count: n as u64,
                    last_lsn: Lsn::from_stored(h.start_lsn().0 + (off - encoded_len(40)) as u64),
                    segment_checksum: crc32fast::hash(&b),
                };
                b.resize(off + SEAL_LEN, 0);
                encode_seal(
                    &mut b[off..],
                    h.start_lsn() + off as u64,
                    off as u32,
                    0,
                    &seal,
                );
                let (_, ends) = record_ends(&b, &name(no), &control()).expect("a header");
                assert_eq!(ends, want, "segment {no}, {n} records, {} bytes", b.len());
            }
        }
    }

    #[test]
    fn a_whole_segment_passes_and_says_where_it_ends() {
        let b = sealed(2, 3, None);
        let c = check(&b, 2, FullCheck::default()).expect("whole");
        let seal_offset = b.len() - SEAL_LEN;
        assert_eq!(c.seal_offset, seal_offset);
        assert_eq!(c.seal.record_count, 3);
        assert_eq!(c.seal_lsn(), Lsn(2 * SIZE + seal_offset as u64));
        assert_eq!(c.last_timestamp_us, Some(2));
        assert_eq!(c.cut, None);
        let s = c.sealed(&name(2).with_kind(SegmentFileKind::Open));
        assert_eq!(s.name, name(2));
        assert_eq!(s.end_lsn, c.seal_lsn());
    }

    #[test]
    fn the_cut_names_the_first_record_left_out() {
        let b = sealed(2, 4, None);
        let from_two = |r: &RecordRef<'_>| r.header.timestamp_us >= 2;
        let c = check(
            &b,
            2,
            FullCheck {
                cut: Some(&from_two),
                ..FullCheck::default()
            },
        )
        .expect("whole");
        let second = SEGMENT_HEADER_LEN + 2 * encoded_len(10);
        assert_eq!(c.cut, Some((second, 2)));
    }

    #[test]
    fn damage_is_refused_in_the_words_users_see() {
        let b = sealed(2, 2, None);
        let mut longer = b.clone();
        longer.extend_from_slice(&[0; 8]);
        assert_eq!(
            reason(check(&longer, 2, FullCheck::default())),
            "8 bytes follow the seal marker"
        );
        let mut cut = b[..b.len() - SEAL_LEN].to_vec();
        cut.resize(b.len(), 0);
        assert_eq!(reason(check(&cut, 2, FullCheck::default())), NO_SEAL_MARKER);
        let mut flipped = b.clone();
        flipped[SEGMENT_HEADER_LEN + 45] ^= 1;
        assert!(check(&flipped, 2, FullCheck::default()).is_err());
        // Named for another segment than its header says.
        assert!(reason(check(&b, 3, FullCheck::default()))
            .starts_with("header says timeline 1 segment 2"));
    }

    #[test]
    fn the_chain_is_checked_only_when_the_predecessor_is_known() {
        let first = sealed(2, 1, None);
        let sum = check(&first, 2, FullCheck::default())
            .expect("whole")
            .seal
            .segment_checksum;
        let linked = sealed(3, 1, Some(sum));
        let with_prev = |p| FullCheck {
            prev_checksum: Some(p),
            ..FullCheck::default()
        };
        check(&linked, 3, with_prev(sum)).expect("chained");
        check(&linked, 3, FullCheck::default()).expect("no predecessor held");
        assert!(reason(check(&linked, 3, with_prev(sum ^ 1))).starts_with("chain broken"));
    }

    #[test]
    fn sealed_end_accepts_only_a_final_marker() {
        let seal = SealInfo {
            record_count: 0,
            last_lsn: None,
            segment_checksum: 7,
        };
        let end = |trailing| ScanEnd::Sealed {
            offset: 64,
            seal,
            trailing,
        };
        assert_eq!(sealed_end(&end(0)), Ok((64, seal)));
        assert_eq!(
            sealed_end(&end(3)),
            Err((64, "3 bytes follow the seal marker".into()))
        );
        assert_eq!(
            sealed_end(&ScanEnd::Unwritten { offset: 80 }),
            Err((80, NO_SEAL_MARKER.into()))
        );
    }
}
