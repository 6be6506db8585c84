//! Timeline history files (`0000000N.history`, format version 1): pure encode and decode.
//!
//! A history file names timeline N, the system it belongs to, and every switch on the way from
//! timeline 1 to N, oldest first: which timeline was left, which was entered, at what LSN, when
//! and why. One file therefore tells the whole history of N. docs/FORMAT.md gives the bytes.

use uuid::Uuid;

use super::{get_u32, get_u64, put_u32, put_u64};
use crate::Lsn;

pub const HISTORY_MAGIC: &[u8; 8] = b"WALSHIPH";
/// The history file format version this code writes and reads.
pub const HISTORY_VERSION: u32 = 1;
/// Bytes before the first switch entry.
pub const HISTORY_HEADER_LEN: usize = 40;
/// Fixed bytes of one switch entry (its reason follows, padded to a multiple of 8).
pub const SWITCH_FIXED_LEN: usize = 32;
/// The checksum at the end of the file.
pub const HISTORY_TRAILER_LEN: usize = 4;
/// The longest reason, in bytes.
pub const MAX_REASON_LEN: usize = 1024;

/// One timeline switch: `parent` was left at `lsn` and `child` began there. Records below `lsn`
/// belong to `parent` (and its ancestors); records at or past `lsn`, to `child`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Switch {
    pub parent: u32,
    pub child: u32,
    /// The switch point: the end of the parent's last record that the child keeps.
    pub lsn: Lsn,
    /// When the switch was made, microseconds since the Unix epoch (UTC).
    pub time_us: i64,
    /// Why (for people): UTF-8, at most [`MAX_REASON_LEN`] bytes.
    pub reason: String,
}

/// The history of one timeline (2 or later; timeline 1 has no history file).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HistoryFile {
    pub timeline: u32,
    pub system_id: Uuid,
    /// Every switch from timeline 1 to `timeline`, oldest first; the last one's child is
    /// `timeline`.
    pub switches: Vec<Switch>,
}

/// What is wrong with a history file's bytes: the file, the byte offset, the reason.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{file}: offset {offset}: {reason}")]
pub struct HistoryError {
    pub file: String,
    pub offset: usize,
    pub reason: String,
}

/// The file name of timeline `timeline`'s history: 8 upper-case hex digits and `.history`.
pub fn history_file_name(timeline: u32) -> String {
    format!("{timeline:08X}.history")
}

/// The timeline a history file name names, `None` for any other name.
pub fn parse_history_file_name(name: &str) -> Option<u32> {
    let hex = name.strip_suffix(".history")?;
    if hex.len() != 8 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    u32::from_str_radix(hex, 16).ok()
}

fn padded(len: usize) -> usize {
    super::align_up(len)
}

impl HistoryFile {
    /// The history of the timeline that begins at `lsn` when `parent` (the history of the
    /// timeline being left, `None` for timeline 1) is left.
    pub fn child_of(
        parent: Option<&HistoryFile>,
        system_id: Uuid,
        parent_timeline: u32,
        lsn: Lsn,
        time_us: i64,
        reason: &str,
    ) -> Result<HistoryFile, String> {
        let child = parent_timeline
            .checked_add(1)
            .ok_or_else(|| format!("timeline {parent_timeline} is the last one"))?;
        let mut switches = parent.map(|p| p.switches.clone()).unwrap_or_default();
        switches.push(Switch {
            parent: parent_timeline,
            child,
            lsn,
            time_us,
            reason: reason.to_string(),
        });
        let h = HistoryFile {
            timeline: child,
            system_id,
            switches,
        };
        h.check().map_err(|(_, r)| r)?;
        Ok(h)
    }

    /// The switch that began this timeline.
    pub fn last_switch(&self) -> Option<&Switch> {
        self.switches.last()
    }

    /// The rules every history obeys (the decoder applies them too); the error gives the index
    /// of the offending switch (or `usize::MAX` for the whole file) and the reason.
    fn check(&self) -> Result<(), (usize, String)> {
        if self.timeline < 2 {
            return Err((
                usize::MAX,
                format!("timeline {} cannot have a history", self.timeline),
            ));
        }
        if self.switches.is_empty() {
            return Err((usize::MAX, "no switches".into()));
        }
        for (i, s) in self.switches.iter().enumerate() {
            if s.parent == 0 || s.child <= s.parent {
                return Err((
                    i,
                    format!(
                        "switch {i} goes from timeline {} to {}: timelines start at 1 and only grow",
                        s.parent, s.child
                    ),
                ));
            }
            if s.reason.len() > MAX_REASON_LEN {
                return Err((
                    i,
                    format!(
                        "switch {i}: reason is {} bytes, at most {MAX_REASON_LEN}",
                        s.reason.len()
                    ),
                ));
            }
            if let Some(prev) = i.checked_sub(1).map(|p| &self.switches[p]) {
                if prev.child != s.parent {
                    return Err((
                        i,
                        format!(
                            "switch {i} leaves timeline {}, but the switch before entered {}",
                            s.parent, prev.child
                        ),
                    ));
                }
                if s.lsn < prev.lsn {
                    return Err((
                        i,
                        format!(
                            "switch {i} is at {}, before the switch before it ({})",
                            s.lsn, prev.lsn
                        ),
                    ));
                }
            }
        }
        let last = &self.switches[self.switches.len() - 1];
        if last.child != self.timeline {
            return Err((
                self.switches.len() - 1,
                format!(
                    "the last switch enters timeline {}, but the file is timeline {}'s",
                    last.child, self.timeline
                ),
            ));
        }
        Ok(())
    }

    /// The encoded bytes; refuses a history that breaks the rules (see FORMAT.md).
    pub fn encode(&self) -> Result<Vec<u8>, String> {
        self.check().map_err(|(_, r)| r)?;
        let len = HISTORY_HEADER_LEN
            + self
                .switches
                .iter()
                .map(|s| SWITCH_FIXED_LEN + padded(s.reason.len()))
                .sum::<usize>()
            + HISTORY_TRAILER_LEN;
        let total = u32::try_from(len).map_err(|_| "history file too large".to_string())?;
        let mut b = vec![0u8; len];
        b[0..8].copy_from_slice(HISTORY_MAGIC);
        put_u32(&mut b, 8, HISTORY_VERSION);
        put_u32(&mut b, 12, self.timeline);
        b[16..32].copy_from_slice(self.system_id.as_bytes());
        put_u32(&mut b, 32, self.switches.len() as u32);
        put_u32(&mut b, 36, total);
        let mut at = HISTORY_HEADER_LEN;
        for s in &self.switches {
            put_u32(&mut b, at, s.parent);
            put_u32(&mut b, at + 4, s.child);
            put_u64(&mut b, at + 8, s.lsn.0);
            put_u64(&mut b, at + 16, s.time_us as u64);
            put_u32(&mut b, at + 24, s.reason.len() as u32);
            at += SWITCH_FIXED_LEN;
            b[at..at + s.reason.len()].copy_from_slice(s.reason.as_bytes());
            at += padded(s.reason.len());
        }
        let crc = crc32fast::hash(&b[..at]);
        put_u32(&mut b, at, crc);
        Ok(b)
    }

    /// Decodes and checks a history file; `file` names it in every error.
    pub fn decode(b: &[u8], file: &str) -> Result<HistoryFile, HistoryError> {
        let err = |offset: usize, reason: String| HistoryError {
            file: file.to_string(),
            offset,
            reason,
        };
        if b.len() < HISTORY_HEADER_LEN + HISTORY_TRAILER_LEN {
            return Err(err(
                b.len(),
                format!(
                    "history file is {} bytes, shorter than its header and checksum ({} bytes)",
                    b.len(),
                    HISTORY_HEADER_LEN + HISTORY_TRAILER_LEN
                ),
            ));
        }
        if &b[0..8] != HISTORY_MAGIC {
            return Err(err(
                0,
                "bad magic number (not a walship history file)".into(),
            ));
        }
        let total = get_u32(b, 36) as usize;
        if total != b.len() {
            return Err(err(
                36,
                format!(
                    "history file is {} bytes, its header says {total} (truncated or extended)",
                    b.len()
                ),
            ));
        }
        let crc_at = b.len() - HISTORY_TRAILER_LEN;
        let stored = get_u32(b, crc_at);
        let actual = crc32fast::hash(&b[..crc_at]);
        if stored != actual {
            return Err(err(
                crc_at,
                format!("checksum mismatch (stored {stored:08x}, computed {actual:08x})"),
            ));
        }
        let version = get_u32(b, 8);
        if version != HISTORY_VERSION {
            return Err(err(
                8,
                format!("history format version {version}; this walship reads version {HISTORY_VERSION}"),
            ));
        }
        let timeline = get_u32(b, 12);
        let mut id = [0u8; 16];
        id.copy_from_slice(&b[16..32]);
        let count = get_u32(b, 32) as usize;
        let mut switches = Vec::new();
        let mut at = HISTORY_HEADER_LEN;
        let mut starts = Vec::new();
        for i in 0..count {
            if crc_at - at < SWITCH_FIXED_LEN {
                return Err(err(
                    at,
                    format!("switch {i} of {count} does not fit in the file"),
                ));
            }
            if get_u32(b, at + 28) != 0 {
                return Err(err(at + 28, format!("switch {i}: reserved bytes not zero")));
            }
            let reason_len = get_u32(b, at + 24) as usize;
            if reason_len > MAX_REASON_LEN || crc_at - at - SWITCH_FIXED_LEN < padded(reason_len) {
                return Err(err(
                    at + 24,
                    format!("switch {i}: reason of {reason_len} bytes does not fit"),
                ));
            }
            let r = at + SWITCH_FIXED_LEN;
            let reason = std::str::from_utf8(&b[r..r + reason_len])
                .map_err(|_| err(r, format!("switch {i}: reason is not UTF-8")))?
                .to_string();
            if b[r + reason_len..r + padded(reason_len)]
                .iter()
                .any(|&x| x != 0)
            {
                return Err(err(r + reason_len, format!("switch {i}: padding not zero")));
            }
            starts.push(at);
            switches.push(Switch {
                parent: get_u32(b, at),
                child: get_u32(b, at + 4),
                lsn: Lsn(get_u64(b, at + 8)),
                time_us: get_u64(b, at + 16) as i64,
                reason,
            });
            at = r + padded(reason_len);
        }
        if at != crc_at {
            return Err(err(
                at,
                format!(
                    "{} bytes after the last switch, before the checksum",
                    crc_at - at
                ),
            ));
        }
        let h = HistoryFile {
            timeline,
            system_id: Uuid::from_bytes(id),
            switches,
        };
        h.check()
            .map_err(|(i, reason)| err(starts.get(i).copied().unwrap_or(12), reason))?;
        Ok(h)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> HistoryFile {
        let one = HistoryFile::child_of(None, Uuid::from_u128(7), 1, Lsn(4096), 10, "promote")
            .expect("first");
        HistoryFile::child_of(Some(&one), Uuid::from_u128(7), 2, Lsn(8192), 20, "again")
            .expect("second")
    }

    #[test]
    fn round_trip_names_and_every_flip_is_an_error_naming_the_file() {
        let h = sample();
        let b = h.encode().expect("encode");
        assert_eq!(HistoryFile::decode(&b, "x").expect("decode"), h);
        for i in 0..b.len() {
            for bit in 0..8 {
                let mut d = b.clone();
                d[i] ^= 1 << bit;
                let e = HistoryFile::decode(&d, "F.history").expect_err("flip");
                assert!(e.to_string().starts_with("F.history: "), "{e}");
            }
        }
        for n in 0..b.len() {
            assert!(HistoryFile::decode(&b[..n], "F").is_err());
        }
        assert_eq!(history_file_name(3), "00000003.history");
        assert_eq!(parse_history_file_name("0000000A.history"), Some(10));
        assert_eq!(parse_history_file_name("0000000A.history.tmp"), None);
        assert_eq!(parse_history_file_name("000000A.history"), None);
    }

    #[test]
    fn broken_chains_are_refused() {
        let mut h = sample();
        h.switches[1].parent = 3;
        assert!(h.encode().is_err());
        let mut h = sample();
        h.switches[1].lsn = Lsn(1);
        assert!(h.encode().is_err());
        let mut h = sample();
        h.timeline = 4;
        assert!(h.encode().is_err());
        assert!(HistoryFile::child_of(None, Uuid::nil(), u32::MAX, Lsn(0), 0, "").is_err());
        let long = "x".repeat(MAX_REASON_LEN + 1);
        assert!(HistoryFile::child_of(None, Uuid::nil(), 1, Lsn(0), 0, &long).is_err());
    }
}
