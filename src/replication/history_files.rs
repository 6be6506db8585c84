//! The history files replication reads and stores (I/O around `handshake/timelines.rs`): the
//! bytes of every history file a directory holds, the primary's path with the files that tell
//! it, and storing the files a standby lacks, durably, before anything of a newer timeline.

use crate::datadir::DataDir;
use crate::error::{Error, Result};
use crate::format::ControlFile;
use crate::replication::handshake::{Histories, HistoryBytes};

/// The bytes of every history file in `wal/`, by timeline, ascending (none when `wal/` does
/// not exist yet). Each is checked as the history of the timeline its name gives.
pub(crate) fn read_all(dd: &DataDir) -> Result<Vec<HistoryBytes>> {
    if !dd.wal_dir().exists() {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    for tl in dd.history_timelines()? {
        let path = dd.history_path(tl);
        let bytes =
            std::fs::read(&path).map_err(|e| Error::io(format!("read {}", path.display()), e))?;
        crate::history::decode_history(&path, &bytes, tl)?;
        out.push((tl, bytes));
    }
    Ok(out)
}

/// The primary's path to its timeline (the control file's) and the history files on it, as
/// the handshake sends them.
pub(crate) fn primary_histories(dd: &DataDir, control: &ControlFile) -> Result<Histories> {
    if control.timeline <= 1 {
        return Ok(Histories::first());
    }
    // The directory's own history must be there and whole.
    let path = dd.history(control)?;
    let files: Vec<HistoryBytes> = read_all(dd)?
        .into_iter()
        .filter(|(tl, _)| *tl <= control.timeline && path.has_timeline(*tl))
        .collect();
    Histories::from_files(files, control.system_id).map_err(|e| Error::Corrupt {
        file: dd.history_path(control.timeline),
        offset: 0,
        lsn: crate::Lsn(0),
        reason: e,
    })
}

/// Stores history files received from the primary, durably, oldest first. A file already
/// there with other bytes is refused (two histories for one timeline).
pub(crate) fn store(dd: &DataDir, files: &[HistoryBytes]) -> Result<()> {
    for (tl, bytes) in files {
        let path = dd.history_path(*tl);
        let file = crate::history::decode_history(&path, bytes, *tl)?;
        dd.write_history_file(&file)?;
    }
    Ok(())
}
