//! A standby's directory moving onto its primary's new timeline: the control file names the
//! new timeline before the first segment of it is written; a directory still being adopted
//! moves in memory first and on disk once it is accepted.

use super::directory::adopting_path;
use super::{lock, Shared};
use crate::error::Result;
use crate::fsutil::write_atomic;
use crate::replication::ReplError;

/// Moves the directory onto `timeline`, a later timeline of the primary's path whose history
/// file it holds, before the first segment of that timeline is written: the control file is
/// replaced atomically and durably. Nothing to do when it is there already. A directory still
/// being adopted (a former primary, a restore) moves in memory only, until it becomes a
/// standby's ([`persist_timeline`]): until then it stays what it was, and a former primary
/// stopped meanwhile is not left on the new timeline as a second primary of it.
pub(super) fn enter_timeline(shared: &Shared, timeline: u32) -> Result<(), ReplError> {
    let Some(mut control) = shared.held().control else {
        return Ok(());
    };
    if timeline <= control.timeline {
        return Ok(());
    }
    let dd = &shared.dd;
    if !dd.history_path(timeline).exists() {
        return Err(ReplError::refused(
            crate::replication::messages::ErrorCode::Protocol,
            format!("a segment of timeline {timeline} arrived, but its history file did not"),
        ));
    }
    let from = control.timeline;
    control.identity.timeline = timeline;
    if lock(&shared.adopting).is_none() {
        write_atomic(&dd.control_path(), &control.encode())?;
    }
    lock(&shared.held).control = Some(control);
    tracing::info!(
        from,
        to = timeline,
        "following the primary onto a new timeline"
    );
    Ok(())
}

/// Writes the timeline a directory being adopted entered in memory ([`enter_timeline`]) into
/// its control file, durably: once the primary's copy of its open segment proved to hold its
/// records, before a segment of that timeline is stored under its name.
pub(super) fn persist_timeline(shared: &Shared) -> Result<()> {
    let Some(control) = shared.held().control else {
        return Ok(());
    };
    if shared.dd.read_control()?.timeline < control.timeline {
        // Writers refuse the directory from here until it is a standby's.
        write_atomic(&adopting_path(&shared.dd), b"")?;
        write_atomic(&shared.dd.control_path(), &control.encode())?;
    }
    Ok(())
}
