//! Segment file names: 8 hex digits of timeline, 16 of segment number, then the state suffix.

use std::fmt;

use crate::Lsn;

/// The state a segment file's name announces.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SegmentFileKind {
    /// `.wal`: complete, checked and durable.
    Sealed,
    /// `.wal.open`: being written by the directory's writer.
    Open,
    /// `.wal.partial`: a standby's segment still arriving; never read as sealed.
    Partial,
    /// `.wal.prep`: prepared ahead by the writer; holds no records.
    Prepared,
}

impl SegmentFileKind {
    pub fn suffix(self) -> &'static str {
        match self {
            SegmentFileKind::Sealed => ".wal",
            SegmentFileKind::Open => ".wal.open",
            SegmentFileKind::Partial => ".wal.partial",
            SegmentFileKind::Prepared => ".wal.prep",
        }
    }
}

/// A segment's number: segment `n` covers LSNs `[n × segment size, (n + 1) × segment size)`.
/// Numbers come from file names, headers, archives and the network, so every conversion to an
/// LSN is checked: a number past the end of the LSN space is an error, never a wrapped LSN.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(transparent)]
pub struct SegmentNo(pub u64);

impl SegmentNo {
    /// The LSN of the segment's first byte, `None` past the end of the LSN space.
    pub fn start_lsn(self, segment_size: u64) -> Option<Lsn> {
        self.0.checked_mul(segment_size).map(Lsn)
    }

    /// [`SegmentNo::start_lsn`] for messages and bounds, where a number past the end of the LSN
    /// space shows as the last LSN instead of a wrapped one.
    pub fn start_lsn_saturating(self, segment_size: u64) -> Lsn {
        Lsn(self.0.saturating_mul(segment_size))
    }

    /// The LSN just past the segment's last byte, `None` past the end of the LSN space.
    pub fn end_lsn(self, segment_size: u64) -> Option<Lsn> {
        self.0.checked_add(1)?.checked_mul(segment_size).map(Lsn)
    }

    /// The segment that holds `lsn`.
    pub fn of_lsn(lsn: Lsn, segment_size: u64) -> SegmentNo {
        SegmentNo(lsn.0 / segment_size.max(1))
    }

    /// The next segment's number (the last number has none: it stays the last).
    pub fn next(self) -> SegmentNo {
        SegmentNo(self.0.saturating_add(1))
    }

    /// The previous segment's number, `None` for segment 0.
    pub fn prev(self) -> Option<SegmentNo> {
        self.0.checked_sub(1).map(SegmentNo)
    }
}

impl fmt::Display for SegmentNo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}", self.0)
    }
}

impl fmt::UpperHex for SegmentNo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::UpperHex::fmt(&self.0, f)
    }
}

/// A parsed segment file name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SegmentName {
    pub timeline: u32,
    pub segment_no: SegmentNo,
    pub kind: SegmentFileKind,
}

impl SegmentName {
    pub fn new(timeline: u32, segment_no: u64, kind: SegmentFileKind) -> Self {
        SegmentName {
            timeline,
            segment_no: SegmentNo(segment_no),
            kind,
        }
    }

    /// The LSN of the segment's first byte, or an error naming the file when its number lies
    /// past the end of the LSN space (a name no writer made).
    pub fn start_lsn(&self, segment_size: u64) -> crate::Result<Lsn> {
        self.segment_no.start_lsn(segment_size).ok_or_else(|| {
            crate::Error::Corrupt {
                file: self.to_string().into(),
                offset: 0,
                lsn: crate::Lsn(u64::MAX),
                reason: format!(
                    "segment number {:X} lies past the end of the LSN space with {segment_size}-byte segments: not a name walship makes",
                    self.segment_no
                ),
            }
        })
    }

    /// Parses a file name; anything that is not exactly a segment name gives `None`, so no
    /// stray file (or a name that came from elsewhere) is ever taken for a segment.
    pub fn parse(name: &str) -> Option<SegmentName> {
        if name.len() < 24 || !name.is_char_boundary(24) {
            return None;
        }
        let (hex, suffix) = name.split_at(24);
        if !hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(&b))
        {
            return None;
        }
        let kind = [
            SegmentFileKind::Sealed,
            SegmentFileKind::Open,
            SegmentFileKind::Partial,
            SegmentFileKind::Prepared,
        ]
        .into_iter()
        .find(|k| k.suffix() == suffix)?;
        Some(SegmentName {
            timeline: u32::from_str_radix(&hex[..8], 16).ok()?,
            segment_no: SegmentNo(u64::from_str_radix(&hex[8..], 16).ok()?),
            kind,
        })
    }

    pub fn with_kind(self, kind: SegmentFileKind) -> Self {
        SegmentName { kind, ..self }
    }
}

impl fmt::Display for SegmentName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:08X}{:016X}{}",
            self.timeline,
            self.segment_no,
            self.kind.suffix()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        let n = SegmentName::new(1, 0xA3, SegmentFileKind::Sealed);
        assert_eq!(n.to_string(), "0000000100000000000000A3.wal");
        assert_eq!(SegmentName::parse("0000000100000000000000A3.wal"), Some(n));
        let o = n.with_kind(SegmentFileKind::Open);
        assert_eq!(o.to_string(), "0000000100000000000000A3.wal.open");
        assert_eq!(SegmentName::parse(&o.to_string()), Some(o));
        for bad in [
            "0000000100000000000000a3.wal",
            "0000000100000000000000A3.wal.tmp",
            "../00000100000000000000A3.wal",
            "000000010000000000000A3.wal",
            "control",
        ] {
            assert_eq!(SegmentName::parse(bad), None, "{bad}");
        }
    }
}
