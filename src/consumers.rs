//! The registry of WAL consumers (each standby slot, the archiver) in `state/consumers/`.
//!
//! Each consumer is one small JSON file, replaced atomically, holding the position below which
//! it no longer needs WAL. Retention reads them all and removes only segments every consumer
//! (not marked lost) is past. The file name is derived from the consumer's id, which is
//! checked to be a plain token, so no path is ever built from untrusted text.
//!
//! Several processes write these files (the shipper saves a standby's slot, the archiver its
//! progress, a checkpoint marks a consumer lost), without a lock between them. So that a
//! progress save can never undo a lost mark, the mark is a file of its own, `<id>.lost`: a
//! consumer is lost when that file exists (or its record says so), and only
//! [`ConsumerRegistry::remove`] (`--drop-consumer`) deletes it.

use std::fs;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::datadir::DataDir;
use crate::error::{Error, IoContext, Result};
use crate::fsutil::{fsync_dir, read_json, write_atomic};
use crate::Lsn;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConsumerKind {
    Standby,
    Archiver,
}

/// One consumer's durable progress.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsumerRecord {
    /// Stable id: a standby's UUID, or "archiver".
    pub id: String,
    pub kind: ConsumerKind,
    /// End LSN of everything this consumer has safely taken (a standby's flushed position, the
    /// archiver's archived position): WAL below it is no longer needed for this consumer.
    pub position: Lsn,
    /// A standby's applied position.
    #[serde(default)]
    pub applied_lsn: Option<Lsn>,
    /// A standby's name (absent for other consumers, and in slots saved before names existed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// A standby's written position (received, maybe not yet synced).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub written_lsn: Option<Lsn>,
    /// A standby's lag in time at its last acknowledgement, in µs: how long before it the
    /// primary had made durable the WAL the standby had not flushed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flush_lag_us: Option<i64>,
    /// Where it was last seen (a standby's address, an archive target).
    #[serde(default)]
    pub address: Option<String>,
    /// Last contact, microseconds since the Unix epoch.
    #[serde(default)]
    pub last_contact_us: Option<i64>,
    /// Marked lost when it fell further behind than the retention cap: it holds no WAL back.
    #[serde(default)]
    pub lost: bool,
}

impl ConsumerRecord {
    /// A consumer at `position` and nothing else known yet: no other position, no name or
    /// address, never heard from, not lost.
    pub fn new(id: impl Into<String>, kind: ConsumerKind, position: Lsn) -> Self {
        ConsumerRecord {
            id: id.into(),
            kind,
            position,
            applied_lsn: None,
            name: None,
            written_lsn: None,
            flush_lag_us: None,
            address: None,
            last_contact_us: None,
            lost: false,
        }
    }
}

/// Reads and writes the consumer files of one data directory.
#[derive(Clone, Debug)]
pub struct ConsumerRegistry {
    dir: PathBuf,
}

/// True when `id` is safe to use as a file name: 1 to 64 ASCII letters, digits, '-' or '_'.
pub fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

impl ConsumerRegistry {
    pub fn new(data_dir: &DataDir) -> Self {
        ConsumerRegistry {
            dir: data_dir.state_dir().join("consumers"),
        }
    }

    fn path(&self, id: &str) -> Result<PathBuf> {
        if !valid_id(id) {
            return Err(Error::InvalidArgument(format!(
                "invalid consumer id {id:?}: use 1 to 64 letters, digits, '-' or '_'"
            )));
        }
        Ok(self.dir.join(format!("{id}.json")))
    }

    fn lost_path(&self, id: &str) -> Result<PathBuf> {
        self.path(id)?;
        Ok(self.dir.join(format!("{id}.lost")))
    }

    fn is_marked_lost(&self, id: &str) -> Result<bool> {
        let p = self.lost_path(id)?;
        match fs::symlink_metadata(&p) {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(Error::io(format!("stat {}", p.display()), e)),
        }
    }

    fn ensure_dir(&self) -> Result<()> {
        if !self.dir.exists() {
            fs::create_dir_all(&self.dir).ctx(|| format!("create {}", self.dir.display()))?;
            if let Some(p) = self.dir.parent() {
                fsync_dir(p)?;
            }
        }
        Ok(())
    }

    /// Marks a consumer lost, durably and for good: no later [`save`](Self::save) of its
    /// progress clears the mark; only [`remove`](Self::remove) does. Returns its record as it is
    /// now (None when it was not registered).
    pub fn mark_lost(&self, id: &str) -> Result<Option<ConsumerRecord>> {
        let Some(mut rec) = self.get(id)? else {
            return Ok(None);
        };
        self.ensure_dir()?;
        // The marker first: from here on, whatever the record file says, the consumer is lost.
        write_atomic(
            &self.lost_path(id)?,
            format!("{}\n", crate::now_us()).as_bytes(),
        )?;
        rec.lost = true;
        self.save(&rec)?;
        Ok(Some(rec))
    }

    /// Writes (creates or replaces) a consumer's record durably. A consumer marked lost stays
    /// lost whatever `rec.lost` says.
    pub fn save(&self, rec: &ConsumerRecord) -> Result<()> {
        let path = self.path(&rec.id)?;
        self.ensure_dir()?;
        let mut rec = rec.clone();
        let marked = self.is_marked_lost(&rec.id)?;
        if rec.lost && !marked {
            // However it was marked, a lost mark sticks.
            write_atomic(
                &self.lost_path(&rec.id)?,
                format!("{}\n", crate::now_us()).as_bytes(),
            )?;
        }
        rec.lost |= marked;
        let bytes = serde_json::to_vec_pretty(&rec)
            .map_err(|e| Error::Other(format!("encode consumer {}: {e}", rec.id)))?;
        write_atomic(&path, &bytes)
    }

    /// Saves `rec` only when no record of its id exists; false when one does (another process
    /// registered it first: of two racing, exactly one wins).
    pub fn register_new(&self, rec: &ConsumerRecord) -> Result<bool> {
        let path = self.path(&rec.id)?;
        self.ensure_dir()?;
        let bytes = serde_json::to_vec_pretty(rec)
            .map_err(|e| Error::Other(format!("encode consumer {}: {e}", rec.id)))?;
        crate::fsutil::write_new(&path, &bytes)
    }

    pub fn get(&self, id: &str) -> Result<Option<ConsumerRecord>> {
        let path = self.path(id)?;
        let invalid = |e| Error::corrupt_state(&path, "consumer record", e);
        match read_json::<ConsumerRecord>(&path, invalid)? {
            Some(mut rec) => {
                rec.lost |= self.is_marked_lost(id)?;
                Ok(Some(rec))
            }
            None => Ok(None),
        }
    }

    /// Every registered consumer, ordered by id.
    pub fn list(&self) -> Result<Vec<ConsumerRecord>> {
        let mut out = Vec::new();
        let entries = match fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(Error::io(format!("list {}", self.dir.display()), e)),
        };
        for entry in entries {
            let entry = entry.ctx(|| format!("list {}", self.dir.display()))?;
            let name = entry.file_name();
            let Some(id) = name.to_str().and_then(|n| n.strip_suffix(".json")) else {
                continue;
            };
            if !valid_id(id) {
                continue;
            }
            if let Some(rec) = self.get(id)? {
                out.push(rec);
            }
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }

    /// Moves every standby's record, and its lost mark, into `setaside/` (never deleted): for a
    /// directory that becomes a standby's, whose standbys were a former primary's and follow
    /// another now. They would hold its WAL back, and show in its status, for good. A standby
    /// that comes to follow this directory again gets a new record at its first contact, as
    /// any does. Returns the ids moved.
    pub fn set_aside_standbys(&self, dd: &DataDir) -> Result<Vec<String>> {
        let mut moved = Vec::new();
        for rec in self.list()? {
            if rec.kind != ConsumerKind::Standby {
                continue;
            }
            // The record first, as `remove` does: a mark left by a crash between is read by no one.
            for path in [self.path(&rec.id)?, self.lost_path(&rec.id)?] {
                if path.exists() {
                    crate::setaside::move_aside(dd, &path)?;
                }
            }
            moved.push(rec.id);
        }
        Ok(moved)
    }

    /// Drops a consumer: it no longer holds WAL back, and its lost mark goes with it. Returns
    /// false when it was not registered.
    pub fn remove(&self, id: &str) -> Result<bool> {
        let path = self.path(id)?;
        let removed = match fs::remove_file(&path) {
            Ok(()) => true,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
            Err(e) => return Err(Error::io(format!("remove {}", path.display()), e)),
        };
        // The record first: a crash in between leaves a marker without a record, which no one
        // reads (a new consumer under this id would start lost, and be dropped again).
        let lost = self.lost_path(id)?;
        let unmarked = match fs::remove_file(&lost) {
            Ok(()) => true,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
            Err(e) => return Err(Error::io(format!("remove {}", lost.display()), e)),
        };
        if removed || unmarked {
            fsync_dir(&self.dir)?;
        }
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn save_list_remove() {
        let t = tempfile::tempdir().unwrap();
        let dd = DataDir::new(t.path());
        let reg = ConsumerRegistry::new(&dd);
        assert!(reg.list().unwrap().is_empty());
        let rec = ConsumerRecord {
            address: Some("/backup".into()),
            ..ConsumerRecord::new("archiver", ConsumerKind::Archiver, Lsn(4096))
        };
        reg.save(&rec).unwrap();
        assert_eq!(reg.list().unwrap(), vec![rec.clone()]);
        assert_eq!(reg.get("archiver").unwrap(), Some(rec));
        assert!(reg.get("../etc/passwd").is_err());
        assert!(reg.remove("archiver").unwrap());
        assert!(!reg.remove("archiver").unwrap());
    }

    #[test]
    fn a_lost_mark_survives_progress_saves_until_removed() {
        let t = tempfile::tempdir().unwrap();
        let reg = ConsumerRegistry::new(&DataDir::new(t.path()));
        let mut rec = ConsumerRecord::new("s1", ConsumerKind::Standby, Lsn(10));
        assert_eq!(reg.mark_lost("s1").unwrap(), None);
        reg.save(&rec).unwrap();
        assert!(reg.mark_lost("s1").unwrap().unwrap().lost);
        // A save made from a copy read before the mark.
        rec.position = Lsn(20);
        reg.save(&rec).unwrap();
        let got = reg.get("s1").unwrap().unwrap();
        assert!(got.lost);
        assert_eq!(got.position, Lsn(20));
        assert!(reg.list().unwrap()[0].lost);
        assert!(reg.remove("s1").unwrap());
        reg.save(&rec).unwrap();
        assert!(!reg.get("s1").unwrap().unwrap().lost);
    }
}
