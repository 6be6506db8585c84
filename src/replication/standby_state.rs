//! A standby's own durable state in its data directory's state/: `standby.json` (its stable id,
//! made once, and its primary's address) and `applied.json` (its applied position). Both are
//! replaced atomically. Their presence is what makes a data directory a standby's.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::datadir::DataDir;
use crate::error::{Error, Result};
use crate::fsutil::write_atomic;

/// The standby's identity file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StandbyMeta {
    pub standby_id: Uuid,
    /// The primary's address as given on the command line.
    pub primary: String,
    pub created_us: i64,
}

/// The applied position file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppliedState {
    pub applied_lsn: u64,
    pub updated_us: i64,
}

pub fn meta_path(dd: &DataDir) -> std::path::PathBuf {
    dd.state_dir().join("standby.json")
}

pub fn applied_path(dd: &DataDir) -> std::path::PathBuf {
    dd.state_dir().join("applied.json")
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &std::path::Path) -> Result<Option<T>> {
    crate::fsutil::read_json(path, |e| Error::Corrupt {
        file: path.to_path_buf(),
        offset: 0,
        lsn: crate::Lsn(0),
        reason: format!("not a valid standby state file: {e}"),
    })
}

fn write_json<T: Serialize>(path: &std::path::Path, v: &T) -> Result<()> {
    let bytes = serde_json::to_vec_pretty(v)
        .map_err(|e| Error::Other(format!("encode {}: {e}", path.display())))?;
    write_atomic(path, &bytes)
}

/// The standby's identity, when this directory belongs to a standby.
pub fn read_meta(dd: &DataDir) -> Result<Option<StandbyMeta>> {
    read_json(&meta_path(dd))
}

pub fn write_meta(dd: &DataDir, meta: &StandbyMeta) -> Result<()> {
    let dir = dd.state_dir();
    if !dir.exists() {
        std::fs::create_dir_all(&dir)
            .map_err(|e| Error::io(format!("create {}", dir.display()), e))?;
        crate::fsutil::fsync_dir(dd.root())?;
    }
    write_json(&meta_path(dd), meta)
}

/// The applied position: 0 before the first apply.
pub fn read_applied(dd: &DataDir) -> Result<u64> {
    Ok(read_json::<AppliedState>(&applied_path(dd))?.map_or(0, |s| s.applied_lsn))
}

/// Records the applied position durably. Refuses to move it backwards.
pub fn write_applied(dd: &DataDir, applied_lsn: u64) -> Result<()> {
    let old = read_applied(dd)?;
    if applied_lsn < old {
        return Err(Error::InvalidArgument(format!(
            "applied_lsn may not move backwards (from {} to {})",
            crate::Lsn(old),
            crate::Lsn(applied_lsn)
        )));
    }
    write_json(
        &applied_path(dd),
        &AppliedState {
            applied_lsn,
            updated_us: crate::now_us(),
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn applied_never_moves_backwards() {
        let t = tempfile::tempdir().unwrap();
        let dd = DataDir::new(t.path());
        std::fs::create_dir_all(dd.state_dir()).unwrap();
        assert_eq!(read_applied(&dd).unwrap(), 0);
        write_applied(&dd, 100).unwrap();
        write_applied(&dd, 100).unwrap();
        assert!(write_applied(&dd, 99).is_err());
        assert_eq!(read_applied(&dd).unwrap(), 100);
        assert_eq!(read_meta(&dd).unwrap(), None);
        let m = StandbyMeta {
            standby_id: Uuid::new_v4(),
            primary: "127.0.0.1:5000".into(),
            created_us: 1,
        };
        write_meta(&dd, &m).unwrap();
        assert_eq!(read_meta(&dd).unwrap(), Some(m));
    }
}
