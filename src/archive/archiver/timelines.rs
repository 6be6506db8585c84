//! The archiver and timelines: which history the archive follows, the history files it pushes,
//! and which segment of which timeline each segment number is along the newest history.
//!
//! The archive and the data directory are compared by the one rule (`crate::timeline`'s
//! [`compatible`]): the same system, and histories that are equal or one an ancestor of the
//! other. The archive's history is that of the newest timeline it holds a history file for
//! (timeline 1's when it holds none). The path the archive keeps complete is the newer of the
//! two histories: timeline t's segments up to the segment holding the switch point where the
//! path leaves t, then the next timeline's (its switch segment under its own name), and so on.
//! A segment of timeline t holding records past that switch point is refused as what it is.

use super::*;
use crate::archive::history::{newest_history, put_history};
use crate::format::history::HistoryFile;
use crate::format::SystemIdentity;
use crate::timeline::{compatible, History};

/// The history of the directory's timeline and the history file of every timeline on it
/// (timeline 2 up to its own), oldest first. An ancestor's history file is the first switches
/// of its descendant's (a promotion copies its parent's switches), so the directory's own file
/// gives every one of them byte for byte.
pub(super) fn directory_histories(
    dir: &DataDir,
    control: &ControlFile,
) -> Result<(History, Vec<HistoryFile>)> {
    let history = dir.history(control)?;
    if control.timeline <= 1 {
        return Ok((history, Vec::new()));
    }
    let own = dir.read_history_file(control.timeline, control)?;
    let files = (0..own.switches.len())
        .map(|i| HistoryFile {
            timeline: own.switches[i].child,
            system_id: own.system_id,
            switches: own.switches[..=i].to_vec(),
        })
        .collect();
    Ok((history, files))
}

/// Checks the archive's history against the directory's by the one rule; returns the
/// archive's. `theirs` is the archive's identity (already the same system id).
pub(super) async fn check_histories<S: ArchiveStore>(
    store: &S,
    theirs: &ArchiveIdentity,
    ours: &SystemIdentity,
    our_history: &History,
) -> Result<History> {
    let loc = store.location();
    let their_history = newest_history(store, theirs.system_id).await?;
    let their_system = SystemIdentity {
        timeline: their_history.timeline,
        ..theirs.system
    };
    compatible(ours, our_history, &their_system, &their_history).map_err(|e| {
        Error::Refused(format!(
            "{loc} does not hold this data directory's history: {e}; nothing was pushed"
        ))
    })?;
    Ok(their_history)
}

impl<S: ArchiveStore> Archiver<S> {
    /// Before anything of a pass is stored: reads the directory's history again (a promotion
    /// may have happened), checks it against the archive's (a second promotion of the same
    /// timeline is refused here), pushes every history file of the directory's chain not yet
    /// pushed, and takes the newer history as the path the archive keeps complete.
    pub(super) async fn sync_timelines(&mut self) -> Result<()> {
        let control = self.dir.read_control()?;
        let (ours, files) = directory_histories(&self.dir, &control)?;
        let theirs =
            check_histories(&*self.store, &self.identity, &control.identity, &ours).await?;
        for f in files {
            // Looked at each pass: a history file lost from the archive while this archiver
            // runs would leave its timeline's segments unreadable (restore refuses them).
            let name = crate::archive::history::history_object_name(f.timeline);
            let pushed = self.histories_pushed.contains(&f.timeline);
            if pushed && self.store.exists(&name).await? {
                continue;
            }
            let done = put_history(&*self.store, &f).await?;
            if pushed {
                tracing::warn!(archive = %self.store.location(), object = %name, "the archive lost a history file this archiver had stored; stored it again");
            } else {
                tracing::info!(archive = %self.store.location(), timeline = f.timeline, outcome = ?done, "history file archived");
            }
            self.histories_pushed.insert(f.timeline);
        }
        self.path = if theirs.timeline > ours.timeline {
            theirs
        } else {
            ours
        };
        Ok(())
    }

    /// The timeline whose segment `segment_no` is along the archive's path.
    pub(super) fn path_timeline(&self, segment_no: u64) -> u32 {
        self.path
            .segment_timeline(segment_no, self.identity.segment_size)
    }

    /// Whether the local segment `name` is the archive's path segment for its number. A segment
    /// of a timeline the path left, holding records at or past the switch point, is refused:
    /// it is what an old primary wrote after the promotion. One that ends at or before the
    /// switch point is stored but is not on the path (the switch segment supersedes it).
    pub(super) fn check_on_path(
        &self,
        name: SegmentName,
        checked: &CheckedSegment,
    ) -> Result<bool> {
        let t = name.timeline;
        if t == self.path_timeline(name.segment_no.0) {
            return Ok(true);
        }
        let loc = self.store.location();
        let Some(end) = self.path.switch_point_after(t) else {
            return Err(Error::Refused(format!(
                "{name} is a segment of timeline {t}, which is not on the path of the archive's newest timeline ({}): nothing was stored",
                self.path
            )));
        };
        let start = checked.header.start_lsn();
        if checked.seal_lsn() > end || start >= end {
            return Err(Error::Refused(format!(
                "{name} is a segment of timeline {t} past its switch point {end} (the archive's newest history, {}, left timeline {t} there): it holds records up to {} that the newer timeline does not have. Nothing was stored in {loc}. This directory is an old primary: rewind it (`walship rewind`) and let it follow the new primary",
                self.path,
                checked.seal_lsn()
            )));
        }
        Ok(false)
    }
}
