//! Timeline history files on disk: where they live in a data directory (`wal/0000000N.history`,
//! beside the segments) and reading, checking and writing them. The bytes are
//! `src/format/history.rs`'s; the rules over them are `src/timeline.rs`'s.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use crate::error::{Error, IoContext, Result};
use crate::format::history::{history_file_name, parse_history_file_name, HistoryFile};
use crate::format::ControlFile;
use crate::fsutil::write_atomic;
use crate::timeline::History;
use crate::DataDir;

/// The largest history file read (one switch is at most 32 + 1024 bytes; timelines only grow).
const MAX_HISTORY_FILE: u64 = 64 * 1024 * 1024;

impl DataDir {
    /// Where timeline `timeline`'s history file lives in this directory.
    pub fn history_path(&self, timeline: u32) -> PathBuf {
        self.wal_dir().join(history_file_name(timeline))
    }

    /// Timeline `timeline`'s history file, checked (its name, its bytes, its system).
    pub fn read_history_file(&self, timeline: u32, control: &ControlFile) -> Result<HistoryFile> {
        let file = read_history_at(&self.history_path(timeline), timeline)?;
        if file.system_id != control.system_id {
            return Err(Error::Corrupt {
                file: self.history_path(timeline),
                offset: 16,
                lsn: crate::Lsn(0),
                reason: format!(
                    "history of system {}, this directory is system {}",
                    file.system_id, control.system_id
                ),
            });
        }
        Ok(file)
    }

    /// The history of the directory's timeline (the control file's): timeline 1 has none;
    /// any later one must have its history file, checked.
    pub fn history(&self, control: &ControlFile) -> Result<History> {
        if control.timeline <= 1 {
            return Ok(History::root());
        }
        match self.read_history_file(control.timeline, control) {
            Ok(f) => Ok(History::of(&f)),
            Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
                Err(Error::Corrupt {
                    file: self.history_path(control.timeline),
                    offset: 0,
                    lsn: crate::Lsn(0),
                    reason: format!(
                        "the control file says timeline {}, but its history file is missing",
                        control.timeline
                    ),
                })
            }
            Err(e) => Err(e),
        }
    }

    /// Writes a history file durably (temporary, fsync, rename, fsync `wal/`). An existing
    /// file with the same bytes is left as it is; one with other bytes is refused (two
    /// histories for one timeline).
    pub fn write_history_file(&self, file: &HistoryFile) -> Result<()> {
        write_history_at(&self.history_path(file.timeline), file)
    }

    /// The timelines whose history files are in `wal/`, ascending.
    pub fn history_timelines(&self) -> Result<Vec<u32>> {
        history_timelines_in(&self.wal_dir())
    }
}

/// Reads and checks the history file at `path`, which must be timeline `timeline`'s.
pub fn read_history_at(path: &Path, timeline: u32) -> Result<HistoryFile> {
    let f = crate::fsutil::open_regular(path)?;
    let mut bytes = Vec::new();
    f.take(MAX_HISTORY_FILE)
        .read_to_end(&mut bytes)
        .ctx(|| format!("read {}", path.display()))?;
    decode_history(path, &bytes, timeline)
}

/// Decodes `bytes` read from `path` as timeline `timeline`'s history.
pub fn decode_history(path: &Path, bytes: &[u8], timeline: u32) -> Result<HistoryFile> {
    let corrupt = |offset: usize, reason: String| Error::Corrupt {
        file: path.to_path_buf(),
        offset: offset as u64,
        lsn: crate::Lsn(0),
        reason,
    };
    let file = HistoryFile::decode(bytes, &path.display().to_string())
        .map_err(|e| corrupt(e.offset, e.reason))?;
    if file.timeline != timeline {
        return Err(corrupt(
            12,
            format!(
                "the file says timeline {}, its name says {timeline}",
                file.timeline
            ),
        ));
    }
    Ok(file)
}

/// Writes `file` at `path` durably; refuses to replace a different history for its timeline.
pub fn write_history_at(path: &Path, file: &HistoryFile) -> Result<()> {
    let bytes = file.encode().map_err(Error::InvalidArgument)?;
    match fs::read(path) {
        Ok(existing) if existing == bytes => return Ok(()),
        Ok(_) => {
            return Err(Error::Refused(format!(
                "{} already holds a different history for timeline {} (two promotions made the same timeline)",
                path.display(),
                file.timeline
            )))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::io(format!("read {}", path.display()), e)),
    }
    write_atomic(path, &bytes)
}

/// The timelines whose history files are in `dir`, ascending.
pub fn history_timelines_in(dir: &Path) -> Result<Vec<u32>> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).ctx(|| format!("list {}", dir.display()))? {
        let entry = entry.ctx(|| format!("list {}", dir.display()))?;
        if let Some(t) = entry.file_name().to_str().and_then(parse_history_file_name) {
            out.push(t);
        }
    }
    out.sort_unstable();
    Ok(out)
}
