//! The archive identity file: which system an archive belongs to and, from layout version 2 on,
//! the segment it begins at, so that a missing first segment is seen as missing. Plain text, the
//! last line a CRC over the others, so a person can read it and a damaged one is refused.
//!
//! ```text
//! walship-archive 2
//! system_id 6f1c2e1a-3b0d-4e8e-9a57-2d2b4c1e0f11
//! timeline 1
//! segment_size 16777216
//! format_version 1
//! first_segment 0
//! crc32 1a2b3c4d
//! ```
//!
//! Version 1 (still read, never written) has no `first_segment` line.

use uuid::Uuid;

use crate::format::{ControlFile, SystemIdentity};

/// The object name of the identity file at the archive's root.
pub const IDENTITY_NAME: &str = "IDENTITY";
/// The layout version of the archives walship creates (identity file and object names).
pub const ARCHIVE_VERSION: u32 = 2;
/// The first layout version, without `first_segment`: still read.
pub const ARCHIVE_VERSION_1: u32 = 1;
const MAGIC: &str = "walship-archive";

/// The system an archive belongs to (read through it: `identity.segment_size`; its
/// `format_version` is the archived segments') and the segment it begins at.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ArchiveIdentity {
    pub system: SystemIdentity,
    /// The segment number the archive begins at: it holds every segment from this one on.
    /// `None` for a version-1 archive, which did not record it.
    pub first_segment: Option<u64>,
}

impl std::ops::Deref for ArchiveIdentity {
    type Target = SystemIdentity;
    fn deref(&self) -> &SystemIdentity {
        &self.system
    }
}

/// Whether the identity file `bytes` names a first segment after `segment_no`: the archive was
/// pruned past it (or began later), so it is not the archive's to hold. False when the file
/// does not decode or records no beginning.
pub fn begins_after(bytes: &[u8], segment_no: u64) -> bool {
    ArchiveIdentity::decode(bytes)
        .ok()
        .and_then(|id| id.first_segment)
        .is_some_and(|first| first > segment_no)
}

/// Why the archive whose identity file is `bytes` (None: it has none) cannot hold segments of
/// the directory of `control`: no identity, one that does not decode, or another system's or
/// segment size's. None when it is this directory's archive. For retention, which may remove a
/// segment only when this directory's own archive holds it.
pub fn not_archive_of(bytes: Option<&[u8]>, control: &ControlFile) -> Option<String> {
    let Some(bytes) = bytes else {
        return Some(format!("it has no {} file", super::IDENTITY_NAME));
    };
    let id = match ArchiveIdentity::decode(bytes) {
        Ok(id) => id,
        Err(e) => {
            return Some(format!(
                "its {} file is not valid: {e}",
                super::IDENTITY_NAME
            ))
        }
    };
    (id.system_id != control.system_id || id.segment_size != control.segment_size).then(|| {
        format!(
            "it is the archive of system {} (segment size {}), and this directory is system {} (segment size {})",
            id.system_id, id.segment_size, control.system_id, control.segment_size
        )
    })
}

impl ArchiveIdentity {
    pub fn from_control(c: &ControlFile) -> Self {
        ArchiveIdentity {
            system: c.identity,
            first_segment: None,
        }
    }

    /// True when both describe the same system's segments (what the archive begins at aside).
    pub fn same_system(&self, other: &ArchiveIdentity) -> bool {
        self.system == other.system
    }

    /// The layout version this identity is written in: 2 when it records its first segment.
    pub fn layout_version(&self) -> u32 {
        if self.first_segment.is_some() {
            ARCHIVE_VERSION
        } else {
            ARCHIVE_VERSION_1
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut body = format!(
            "{MAGIC} {}\nsystem_id {}\ntimeline {}\nsegment_size {}\nformat_version {}\n",
            self.layout_version(),
            self.system_id.hyphenated(),
            self.timeline,
            self.segment_size,
            self.format_version
        );
        if let Some(first) = self.first_segment {
            body.push_str(&format!("first_segment {first}\n"));
        }
        let crc = crc32fast::hash(body.as_bytes());
        format!("{body}crc32 {crc:08x}\n").into_bytes()
    }

    /// Decodes and checks an identity file; the error says what is wrong.
    pub fn decode(b: &[u8]) -> Result<ArchiveIdentity, String> {
        let text = std::str::from_utf8(b).map_err(|_| "identity file is not text".to_string())?;
        let body_len = text
            .rfind("crc32 ")
            .ok_or("identity file has no crc32 line")?;
        let (body, crc_line) = text.split_at(body_len);
        let stored = crc_line
            .strip_prefix("crc32 ")
            .and_then(|s| s.strip_suffix('\n'))
            .filter(|s| s.len() == 8)
            .and_then(|s| u32::from_str_radix(s, 16).ok())
            .ok_or("identity file has a malformed crc32 line")?;
        let computed = crc32fast::hash(body.as_bytes());
        if stored != computed {
            return Err(format!(
                "identity file checksum mismatch (stored {stored:08x}, computed {computed:08x})"
            ));
        }
        let lines: Vec<&str> = body.lines().collect();
        let field = |i: usize, key: &str| -> Result<&str, String> {
            lines
                .get(i)
                .and_then(|l| l.strip_prefix(key))
                .and_then(|l| l.strip_prefix(' '))
                .ok_or_else(|| format!("identity file line {} should start with {key:?}", i + 1))
        };
        let version = field(0, MAGIC)?;
        let expected_lines = if version == ARCHIVE_VERSION.to_string() {
            6
        } else if version == ARCHIVE_VERSION_1.to_string() {
            5
        } else {
            return Err(format!(
                "archive layout version {version}; this walship reads versions {ARCHIVE_VERSION_1} and {ARCHIVE_VERSION}"
            ));
        };
        if lines.len() != expected_lines {
            return Err(format!(
                "identity file has {} lines before crc32, expected {expected_lines}",
                lines.len()
            ));
        }
        let bad = |what: &str| format!("identity file has an invalid {what}");
        let id = ArchiveIdentity {
            system: SystemIdentity {
                system_id: Uuid::parse_str(field(1, "system_id")?).map_err(|_| bad("system_id"))?,
                timeline: field(2, "timeline")?.parse().map_err(|_| bad("timeline"))?,
                segment_size: field(3, "segment_size")?
                    .parse()
                    .map_err(|_| bad("segment_size"))?,
                format_version: field(4, "format_version")?
                    .parse()
                    .map_err(|_| bad("format_version"))?,
            },
            first_segment: match expected_lines {
                6 => Some(
                    field(5, "first_segment")?
                        .parse()
                        .map_err(|_| bad("first_segment"))?,
                ),
                _ => None,
            },
        };
        crate::format::check_segment_size(id.segment_size)
            .map_err(|e| format!("identity file: {e}"))?;
        // Only an exact encoding is accepted, so two archives agree byte for byte.
        if id.encode() != b {
            return Err("identity file is not in canonical form".into());
        }
        Ok(id)
    }

    /// The control file a restored data directory gets.
    pub fn to_control(&self) -> ControlFile {
        ControlFile {
            identity: crate::format::SystemIdentity {
                format_version: self.format_version,
                timeline: self.timeline,
                system_id: self.system_id,
                segment_size: self.segment_size,
            },
            created_us: crate::now_us(),
        }
    }
}

/// Reads and checks the identity file of the archive in `store`: an archive without one is
/// "not a walship archive" (an invalid argument), one that does not decode is damage.
pub async fn read_identity<S: super::store::ArchiveStore>(
    store: &S,
) -> crate::Result<ArchiveIdentity> {
    let loc = store.location();
    match store.get(IDENTITY_NAME).await? {
        Some(b) => ArchiveIdentity::decode(&b).map_err(|reason| crate::Error::Corrupt {
            file: std::path::PathBuf::from(&loc).join(IDENTITY_NAME),
            offset: 0,
            lsn: crate::Lsn(0),
            reason,
        }),
        None => Err(crate::Error::InvalidArgument(format!(
            "{loc}: not a walship archive (no {IDENTITY_NAME} object)"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_damage() {
        let id = ArchiveIdentity {
            system: SystemIdentity {
                system_id: Uuid::from_u128(0x6f1c_2e1a_3b0d_4e8e_9a57_2d2b_4c1e_0f11),
                timeline: 1,
                segment_size: 1 << 24,
                format_version: 1,
            },
            first_segment: None,
        };
        let b = id.encode();
        let text = String::from_utf8(b.clone()).unwrap();
        assert!(text.starts_with(
            "walship-archive 1\nsystem_id 6f1c2e1a-3b0d-4e8e-9a57-2d2b4c1e0f11\ntimeline 1\nsegment_size 16777216\nformat_version 1\ncrc32 "
        ));
        assert_eq!(ArchiveIdentity::decode(&b).unwrap(), id);
        for i in 0..b.len() {
            let mut d = b.clone();
            d[i] ^= 0x01;
            assert!(ArchiveIdentity::decode(&d).is_err(), "flip at {i} passed");
        }
        assert!(ArchiveIdentity::decode(&b[..b.len() - 1]).is_err());

        let v2 = ArchiveIdentity {
            first_segment: Some(0x2A),
            ..id
        };
        let b = v2.encode();
        let text = String::from_utf8(b.clone()).unwrap();
        assert!(text.starts_with(
            "walship-archive 2\nsystem_id 6f1c2e1a-3b0d-4e8e-9a57-2d2b4c1e0f11\ntimeline 1\nsegment_size 16777216\nformat_version 1\nfirst_segment 42\ncrc32 "
        ));
        assert_eq!(ArchiveIdentity::decode(&b).unwrap(), v2);
        assert!(v2.same_system(&id));
        for i in 0..b.len() {
            let mut d = b.clone();
            d[i] ^= 0x01;
            assert!(ArchiveIdentity::decode(&d).is_err(), "flip at {i} passed");
        }
    }
}
