//! The damage register of a data directory: `state/damage/`, one small JSON file per damaged
//! file and per component that found it, replaced atomically.
//!
//! Damage found by a process that cannot stop the writer (the shipper finding a sealed segment
//! that fails its checks, a standby refusing one it received, the archiver) is recorded
//! here so that it is seen where operators look (`walship status`), not only in one process's
//! log. An entry says which component found it, the file, the offset in that file and its LSN,
//! the reason, what to do, when it was first and last seen, and how many times.
//!
//! An entry is cleared by the component that recorded it when it checks the same file again and
//! finds it intact (for example after an operator replaced the segment with a good copy), or
//! when that file no longer exists in the directory (retention removed it, or the operator did).

use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::datadir::DataDir;
use crate::error::{Error, IoContext, Result};
use crate::fsutil::{fsync_dir, write_atomic};
use crate::Lsn;

/// What found the damage.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Component {
    /// The primary's shipper, checking a segment before sending it.
    Shipper,
    /// A standby that refused a segment it received (reported to the primary).
    Standby,
    /// The archiver, checking a segment before pushing it.
    Archiver,
}

impl Component {
    pub fn as_str(self) -> &'static str {
        match self {
            Component::Shipper => "shipper",
            Component::Standby => "standby",
            Component::Archiver => "archiver",
        }
    }
}

/// One finding, as a component reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DamageReport {
    pub component: Component,
    /// The damaged file's name in `wal/` (a segment's sealed name), or a path.
    pub file: String,
    /// Offset of the first bad byte in the file.
    pub offset: u64,
    pub lsn: crate::Lsn,
    pub reason: String,
    /// What an operator should do.
    pub action: String,
    /// Who reported it, when it is not this process (a standby's id and address).
    pub reporter: Option<String>,
}

/// A recorded finding.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DamageEntry {
    pub component: Component,
    pub file: String,
    pub offset: u64,
    pub lsn: crate::Lsn,
    pub reason: String,
    pub action: String,
    #[serde(default)]
    pub reporter: Option<String>,
    /// Microseconds since the Unix epoch.
    pub first_seen_us: i64,
    pub last_seen_us: i64,
    /// How many times it was found (each check that found it again).
    pub count: u64,
}

impl std::fmt::Display for DamageEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} found {} damaged at offset {} (LSN {}): {}{}; {}",
            self.component.as_str(),
            self.file,
            self.offset,
            self.lsn,
            self.reason,
            self.reporter
                .as_deref()
                .map_or(String::new(), |r| format!(" (reported by {r})")),
            self.action
        )
    }
}

/// The operator's action for a damaged sealed segment on a primary.
pub const SEALED_SEGMENT_ACTION: &str = "do not edit the file: stop the writer, check a copy from a standby's wal/ or an uncompressed archive with `walship verify FILE`, put it in place of the damaged one, and run `walship verify` on the data directory";

/// Reads and writes the damage entries of one data directory.
#[derive(Clone, Debug)]
pub struct DamageRegister {
    dir: PathBuf,
}

/// A file name made only of safe characters: anything else becomes '_'.
fn key_part(s: &str) -> String {
    let base = Path::new(s)
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or(s);
    let mut out: String = base
        .chars()
        .take(120)
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if out.is_empty() || out.starts_with('.') {
        out.insert(0, '_');
    }
    out
}

impl DamageRegister {
    pub fn new(data_dir: &DataDir) -> Self {
        DamageRegister {
            dir: data_dir.state_dir().join("damage"),
        }
    }

    fn path(&self, component: Component, file: &str) -> PathBuf {
        self.dir
            .join(format!("{}--{}.json", component.as_str(), key_part(file)))
    }

    /// Records a finding durably: a new entry, or the existing one for the same component and
    /// file with its details, last-seen time and count brought up to date. Returns the entry.
    pub fn record(&self, report: &DamageReport) -> Result<DamageEntry> {
        if !self.dir.exists() {
            fs::create_dir_all(&self.dir).ctx(|| format!("create {}", self.dir.display()))?;
            if let Some(p) = self.dir.parent() {
                fsync_dir(p)?;
            }
        }
        let path = self.path(report.component, &report.file);
        let now = crate::now_us();
        let old = read_entry(&path)?;
        let entry = DamageEntry {
            component: report.component,
            file: report.file.clone(),
            offset: report.offset,
            lsn: report.lsn,
            reason: report.reason.clone(),
            action: report.action.clone(),
            reporter: report.reporter.clone(),
            first_seen_us: old.as_ref().map_or(now, |o| o.first_seen_us),
            last_seen_us: now,
            count: old.as_ref().map_or(1, |o| o.count.saturating_add(1)),
        };
        let bytes = serde_json::to_vec_pretty(&entry)
            .map_err(|e| Error::Other(format!("encode damage entry: {e}")))?;
        write_atomic(&path, &bytes)?;
        crate::metrics::library::damage_found(report.component.as_str(), 1);
        Ok(entry)
    }

    /// Clears the entry of `component` for `file`, if any. Returns true when there was one.
    pub fn clear(&self, component: Component, file: &str) -> Result<bool> {
        let path = self.path(component, file);
        match fs::remove_file(&path) {
            Ok(()) => {
                fsync_dir(&self.dir)?;
                Ok(true)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(Error::io(format!("remove {}", path.display()), e)),
        }
    }

    /// Every entry, oldest finding first. Unreadable entries are reported as errors: a damage
    /// register that cannot be read must not look empty.
    pub fn list(&self) -> Result<Vec<DamageEntry>> {
        let entries = match fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(Error::io(format!("list {}", self.dir.display()), e)),
        };
        let mut out = Vec::new();
        for e in entries {
            let e = e.ctx(|| format!("list {}", self.dir.display()))?;
            let name = e.file_name();
            let Some(name) = name.to_str() else { continue };
            if name.starts_with('.') || !name.ends_with(".json") {
                continue; // temporaries of a write in progress
            }
            if let Some(entry) = read_entry(&e.path())? {
                out.push(entry);
            }
        }
        out.sort_by(|a, b| {
            (a.first_seen_us, &a.file, a.component.as_str()).cmp(&(
                b.first_seen_us,
                &b.file,
                b.component.as_str(),
            ))
        });
        Ok(out)
    }

    /// Clears every entry whose file is a segment name no longer present in `wal/`.
    pub fn clear_missing(&self, data_dir: &DataDir) -> Result<()> {
        for e in self.list()? {
            if crate::format::SegmentName::parse(&e.file).is_some()
                && !data_dir.wal_dir().join(&e.file).exists()
                && self.clear(e.component, &e.file)?
            {
                tracing::info!(file = %e.file, component = e.component.as_str(), "damage entry cleared: the file is no longer in wal/");
            }
        }
        Ok(())
    }
}

fn read_entry(path: &Path) -> Result<Option<DamageEntry>> {
    crate::fsutil::read_json(path, |e| Error::corrupt_state(path, "damage entry", e))
}

/// The report for a damage error (`Error::Corrupt`) found by `component` in the segment file
/// `file`; None for any other error.
pub fn report_for(component: Component, file: &str, e: &Error) -> Option<DamageReport> {
    match e {
        Error::Corrupt {
            offset,
            lsn,
            reason,
            ..
        } => Some(DamageReport {
            component,
            file: file.to_string(),
            offset: *offset,
            lsn: Lsn(lsn.0),
            reason: reason.clone(),
            action: SEALED_SEGMENT_ACTION.to_string(),
            reporter: None,
        }),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_update_list_clear() {
        let t = tempfile::tempdir().unwrap();
        let dd = DataDir::new(t.path());
        let reg = DamageRegister::new(&dd);
        assert!(reg.list().unwrap().is_empty());
        let mut r = DamageReport {
            component: Component::Shipper,
            file: "000000010000000000000003.wal".into(),
            offset: 4096,
            lsn: Lsn(3 * 65536 + 4096),
            reason: "record CRC mismatch".into(),
            action: SEALED_SEGMENT_ACTION.into(),
            reporter: None,
        };
        let first = reg.record(&r).unwrap();
        assert_eq!(first.count, 1);
        r.offset = 4104;
        let second = reg.record(&r).unwrap();
        assert_eq!(second.count, 2);
        assert_eq!(second.first_seen_us, first.first_seen_us);
        r.component = Component::Standby;
        r.file = "../../etc/passwd".into();
        reg.record(&r).unwrap();
        let all = reg.list().unwrap();
        assert_eq!(all.len(), 2);
        assert!(t.path().join("state/damage/standby--passwd.json").exists());
        assert!(reg
            .clear(Component::Shipper, "000000010000000000000003.wal")
            .unwrap());
        assert!(!reg
            .clear(Component::Shipper, "000000010000000000000003.wal")
            .unwrap());
        assert_eq!(reg.list().unwrap().len(), 1);
    }
}
