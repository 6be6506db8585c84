//! Log sequence numbers: byte positions in the WAL stream.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// A byte position in the WAL stream. `segment_no = lsn / segment_size`.
///
/// Shown as PostgreSQL shows its LSNs, `HI/LO` in hex (`0/0100A3F8`); parsed from that form or
/// from a plain decimal number.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Lsn(pub u64);

impl Lsn {
    pub const ZERO: Lsn = Lsn(0);

    pub fn as_u64(self) -> u64 {
        self.0
    }

    /// `Lsn(0)` stored where a position may be absent (a seal marker of an empty segment, a
    /// file written before any record): read it as `None`.
    pub fn from_stored(v: u64) -> Option<Lsn> {
        (v != 0).then_some(Lsn(v))
    }

    /// The stored form of an optional position: `None` is 0.
    pub fn to_stored(lsn: Option<Lsn>) -> u64 {
        lsn.map_or(0, |l| l.0)
    }

    /// `len` bytes further on, `None` past the end of the LSN space.
    pub fn checked_add(self, len: u64) -> Option<Lsn> {
        self.0.checked_add(len).map(Lsn)
    }

    /// Bytes from `earlier` to here, 0 when `earlier` is not earlier.
    pub fn saturating_sub(self, earlier: Lsn) -> u64 {
        self.0.saturating_sub(earlier.0)
    }

    /// Where this position falls inside a segment of `segment_size` bytes.
    pub fn offset_in_segment(self, segment_size: u64) -> u64 {
        self.0 % segment_size.max(1)
    }
}

/// `len` bytes further on in the stream.
impl std::ops::Add<u64> for Lsn {
    type Output = Lsn;
    fn add(self, len: u64) -> Lsn {
        Lsn(self.0 + len)
    }
}

impl std::ops::AddAssign<u64> for Lsn {
    fn add_assign(&mut self, len: u64) {
        self.0 += len;
    }
}

/// The number of bytes between two positions (the later minus the earlier).
impl std::ops::Sub for Lsn {
    type Output = u64;
    fn sub(self, earlier: Lsn) -> u64 {
        self.0 - earlier.0
    }
}

impl fmt::Display for Lsn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:X}/{:08X}", self.0 >> 32, self.0 & 0xFFFF_FFFF)
    }
}

impl From<u64> for Lsn {
    fn from(v: u64) -> Self {
        Lsn(v)
    }
}

/// Why a string is not an LSN.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid LSN {input:?}: expected HI/LO in hex (like 0/0100A3F8) or a decimal number")]
pub struct ParseLsnError {
    pub input: String,
}

impl FromStr for Lsn {
    type Err = ParseLsnError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ParseLsnError {
            input: s.to_string(),
        };
        let t = s.trim();
        if let Some((hi, lo)) = t.split_once('/') {
            // Digits only: the integer parsers would also take a leading `+`.
            let hex =
                |p: &str| !p.is_empty() && p.len() <= 8 && p.bytes().all(|b| b.is_ascii_hexdigit());
            if !hex(hi) || !hex(lo) {
                return Err(err());
            }
            let hi = u32::from_str_radix(hi, 16).map_err(|_| err())?;
            let lo = u32::from_str_radix(lo, 16).map_err(|_| err())?;
            Ok(Lsn(((hi as u64) << 32) | lo as u64))
        } else if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) {
            t.parse::<u64>().map(Lsn).map_err(|_| err())
        } else {
            Err(err())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_is_postgres_style() {
        assert_eq!(Lsn(0).to_string(), "0/00000000");
        assert_eq!(Lsn(0x0100_A3F8).to_string(), "0/0100A3F8");
        assert_eq!(Lsn(0x1_0000_0050).to_string(), "1/00000050");
    }

    #[test]
    fn zero_is_stored_none() {
        assert_eq!(Lsn::from_stored(0), None);
        assert_eq!(Lsn::from_stored(7), Some(Lsn(7)));
        assert_eq!(Lsn::to_stored(None), 0);
        assert_eq!(Lsn::to_stored(Some(Lsn(7))), 7);
        assert_eq!(Lsn(10) - Lsn(4), 6);
        assert_eq!(Lsn(4).saturating_sub(Lsn(10)), 0);
        assert_eq!(Lsn(u64::MAX).checked_add(1), None);
        assert_eq!(Lsn(70).offset_in_segment(64), 6);
    }

    #[test]
    fn parses_both_forms() {
        assert_eq!("0/0100A3F8".parse::<Lsn>().unwrap(), Lsn(0x0100_A3F8));
        assert_eq!("1/50".parse::<Lsn>().unwrap(), Lsn(0x1_0000_0050));
        assert_eq!("4096".parse::<Lsn>().unwrap(), Lsn(4096));
        for bad in [
            "",
            "/",
            "0/",
            "x/1",
            "-1",
            "1/2/3",
            "123456789/0",
            "+5",
            "+1/5",
            "1/+5",
            "0x10",
        ] {
            assert!(bad.parse::<Lsn>().is_err(), "{bad} should not parse");
        }
    }
}
