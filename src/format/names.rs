//! Segment file names: 8 hex digits of timeline, 16 of segment number, then the state suffix.

use std::fmt;

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

/// A parsed segment file name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SegmentName {
    pub timeline: u32,
    pub segment_no: u64,
    pub kind: SegmentFileKind,
}

impl SegmentName {
    pub fn new(timeline: u32, segment_no: u64, kind: SegmentFileKind) -> Self {
        SegmentName {
            timeline,
            segment_no,
            kind,
        }
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
            segment_no: u64::from_str_radix(&hex[8..], 16).ok()?,
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
