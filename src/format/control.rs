//! The control file: a data directory's identity, 64 bytes, CRC-protected.

use uuid::Uuid;

use super::{get_u32, get_u64, put_u32, put_u64, SystemIdentity, FORMAT_VERSION};

pub const CONTROL_MAGIC: &[u8; 8] = b"WALSHIPC";
pub const CONTROL_LEN: usize = 64;

/// A data directory's control file: the system's identity (read through it: `control.segment_size`)
/// and when the directory was made.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ControlFile {
    pub identity: SystemIdentity,
    /// Creation time, microseconds since the Unix epoch (UTC).
    pub created_us: i64,
}

impl From<&ControlFile> for SystemIdentity {
    fn from(c: &ControlFile) -> Self {
        c.identity
    }
}

impl std::ops::Deref for ControlFile {
    type Target = SystemIdentity;
    fn deref(&self) -> &SystemIdentity {
        &self.identity
    }
}

impl ControlFile {
    pub fn encode(&self) -> [u8; CONTROL_LEN] {
        let mut b = [0u8; CONTROL_LEN];
        b[0..8].copy_from_slice(CONTROL_MAGIC);
        put_u32(&mut b, 8, self.format_version);
        put_u32(&mut b, 12, self.timeline);
        b[16..32].copy_from_slice(self.system_id.as_bytes());
        put_u64(&mut b, 32, self.segment_size);
        put_u64(&mut b, 40, self.created_us as u64);
        let crc = crc32fast::hash(&b[0..60]);
        put_u32(&mut b, 60, crc);
        b
    }

    /// Decodes and checks a control file; the error says what is wrong with it.
    pub fn decode(b: &[u8]) -> Result<ControlFile, String> {
        if b.len() != CONTROL_LEN {
            return Err(format!(
                "control file is {} bytes, expected {CONTROL_LEN}",
                b.len()
            ));
        }
        if &b[0..8] != CONTROL_MAGIC {
            return Err("control file has a bad magic number (not a walship control file)".into());
        }
        let stored = get_u32(b, 60);
        let actual = crc32fast::hash(&b[0..60]);
        if stored != actual {
            return Err(format!(
                "control file checksum mismatch (stored {stored:08x}, computed {actual:08x})"
            ));
        }
        if b[48..60].iter().any(|&x| x != 0) {
            return Err("control file: reserved bytes 48..60 are not zero".into());
        }
        let format_version = get_u32(b, 8);
        if format_version != FORMAT_VERSION {
            return Err(format!(
                "control file has format version {format_version}; this walship reads version {FORMAT_VERSION}"
            ));
        }
        let mut id = [0u8; 16];
        id.copy_from_slice(&b[16..32]);
        let segment_size = get_u64(b, 32);
        super::check_segment_size(segment_size).map_err(|e| format!("control file: {e}"))?;
        Ok(ControlFile {
            identity: SystemIdentity {
                format_version,
                timeline: get_u32(b, 12),
                system_id: Uuid::from_bytes(id),
                segment_size,
            },
            created_us: get_u64(b, 40) as i64,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_corruption() {
        let c = ControlFile {
            identity: SystemIdentity {
                format_version: FORMAT_VERSION,
                timeline: 1,
                system_id: Uuid::from_u128(0x1234),
                segment_size: 1 << 24,
            },
            created_us: 1_700_000_000_000_000,
        };
        let b = c.encode();
        assert_eq!(ControlFile::decode(&b).unwrap(), c);
        for i in 0..CONTROL_LEN {
            let mut d = b;
            d[i] ^= 0x01;
            assert!(
                ControlFile::decode(&d).is_err(),
                "flip at byte {i} not detected"
            );
        }
        assert!(ControlFile::decode(&b[..63]).is_err());
    }
}
