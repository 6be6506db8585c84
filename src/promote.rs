//! Promotion: a standby's directory becomes a primary on the next timeline.
//!
//! Steps, in order (each one durable before the next; a rerun after a crash at any point
//! finishes the same promotion, because the history file, written first, fixes the switch
//! point):
//!
//! 1. take the directory's lock (a running `walship standby` holds it: promotion is refused
//!    while it does);
//! 2. find the durable end: the last valid record of the copy of the primary's open segment
//!    (`.wal.partial`) that follows the newest sealed segment; when the copy holds no record
//!    (or there is none), the first position of the segment after the newest sealed one: the
//!    sealed segment stays the old timeline's and the new timeline begins with the next. An
//!    end before the switch that began the standby's own timeline (it has not received that
//!    timeline yet) is refused, with nothing written, and so is a history file of timeline
//!    N+1 that no run of this promotion wrote (another standby was promoted to it); then
//!    record the target timeline in `state/promotion` (a rerun finishes that promotion, never
//!    starts another);
//! 3. write the history file of timeline N+1 (switch point = that end) durably;
//! 4. when the copy holds records, write the switch segment: the copy's header with timeline
//!    N+1, its records up to the switch point, zeros to the segment size, as
//!    `<N+1><segment>.wal.open` (temporary name, fsync, rename, fsync `wal/`);
//! 5. move every `.wal.partial` into `setaside/` (never deleted);
//! 6. replace the control file: timeline N+1;
//! 7. publish the switch point as the durable position (`state/flush_position`); rename
//!    `state/standby.json` to `state/standby.json.promoted`: the directory is no longer a
//!    standby's; remove `state/promotion`.

use std::fs;
use std::io::Write;

use crate::datadir::DataDir;
use crate::error::{Error, IoContext, Result};
use crate::format::history::{HistoryFile, MAX_REASON_LEN};
use crate::format::segment_header::SEGMENT_HEADER_LEN;
use crate::format::{ControlFile, SegmentFileKind, SegmentName, SegmentNo};
use crate::fsutil::{fsync_dir, write_atomic};
use crate::Lsn;

/// What a promotion did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Promoted {
    /// The new timeline.
    pub timeline: u32,
    /// Where the new timeline begins.
    pub switch_lsn: Lsn,
    /// True when the directory had already been promoted (nothing was done).
    pub already: bool,
    /// The files moved into `setaside/`.
    pub set_aside: Vec<std::path::PathBuf>,
}

const STANDBY_META: &str = "standby.json";
const PROMOTED_META: &str = "standby.json.promoted";
/// Present while a promotion is under way: the timeline it makes.
const INTENT: &str = "promotion";

/// Clears the intent of a promotion that never began its history file (refused, or killed
/// right after recording its intent), for a standby that goes on following its primary: the
/// intent would otherwise make a later promotion take a timeline this standby may receive from
/// another promoted standby for one of its own. An intent whose history file exists is a
/// promotion under way: refused, to be finished by `walship promote`.
pub fn clear_abandoned_intent(dd: &DataDir) -> Result<()> {
    let intent = dd.state_dir().join(INTENT);
    let text = match fs::read_to_string(&intent) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(Error::io(format!("read {}", intent.display()), e)),
    };
    let target = text
        .trim()
        .parse::<u32>()
        .map_err(|_| Error::CorruptState {
            path: intent.clone(),
            what: "promotion intent",
            reason: format!("{text:?} is not a timeline number"),
        })?;
    let control = dd.read_control()?;
    if target <= control.timeline || dd.history_path(target).exists() {
        return Err(Error::Refused(format!(
            "a promotion of {} to timeline {target} is under way ({}): finish it with `walship promote {}`",
            dd.root().display(),
            intent.display(),
            dd.root().display()
        )));
    }
    fs::remove_file(&intent).ctx(|| format!("remove {}", intent.display()))?;
    fsync_dir(&dd.state_dir())?;
    tracing::info!(intent = %intent.display(), timeline = target, "cleared the intent of a promotion that never began: this directory goes on following its primary");
    Ok(())
}

/// Promotes the standby directory `dd` to the next timeline (see the module's steps).
pub fn promote(dd: &DataDir, reason: &str) -> Result<Promoted> {
    // Checked before anything is written: a promotion refused later than its intent would
    // leave the intent behind.
    if reason.len() > MAX_REASON_LEN {
        return Err(Error::InvalidArgument(format!(
            "the reason is {} bytes, at most {MAX_REASON_LEN}: give a shorter --reason",
            reason.len()
        )));
    }
    // A directory that is no data directory is refused before a lock file is left in it (a
    // path that is no directory at all, by the lock, which names what it is).
    if dd.root().is_dir() {
        dd.read_control()?;
    }
    let _lock =
        dd.lock_or_refuse("stop `walship standby` (or the writer) on it, then promote again")?;
    let control = dd.read_control()?;
    let state = dd.state_dir();
    let meta = state.join(STANDBY_META);
    let intent = state.join(INTENT);
    // The promotion under way, if a run stopped before it finished: its target timeline.
    let target = match fs::read_to_string(&intent) {
        Ok(s) => Some(s.trim().parse::<u32>().map_err(|_| Error::CorruptState {
            path: intent.clone(),
            what: "promotion intent",
            reason: format!("{s:?} is not a timeline number"),
        })?),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(Error::io(format!("read {}", intent.display()), e)),
    };
    if target.is_none() && !meta.exists() {
        if state.join(PROMOTED_META).exists() && control.timeline > 1 {
            let h = dd.read_history_file(control.timeline, &control)?;
            return Ok(Promoted {
                timeline: control.timeline,
                switch_lsn: h.last_switch().map_or(Lsn(0), |s| s.lsn),
                already: true,
                set_aside: Vec::new(),
            });
        }
        return Err(Error::Refused(format!(
            "{} is not a standby's directory (no state/{STANDBY_META}): only a standby can be promoted",
            dd.root().display()
        )));
    }
    let new_timeline = match target {
        Some(t) => t,
        None => control.timeline.checked_add(1).ok_or_else(|| {
            Error::Refused(format!("timeline {} is the last one", control.timeline))
        })?,
    };
    if control.timeline == new_timeline {
        // Stopped after the control file: only the standby's state is left to retire.
        let h = dd.read_history_file(new_timeline, &control)?;
        let switch_lsn = h.last_switch().map_or(Lsn(0), |s| s.lsn);
        finish(dd, switch_lsn, &intent)?;
        return Ok(Promoted {
            timeline: new_timeline,
            switch_lsn,
            already: false,
            set_aside: Vec::new(),
        });
    }
    if control.timeline.checked_add(1) != Some(new_timeline) {
        return Err(Error::Refused(format!(
            "state/{INTENT} says a promotion to timeline {new_timeline} is under way, but the control file says timeline {}",
            control.timeline
        )));
    }
    let parent_history = if control.timeline > 1 {
        Some(dd.read_history_file(control.timeline, &control)?)
    } else {
        None
    };

    // 2. The durable end, and the copy of the open segment it lies in.
    let names = dd.list_segments()?;
    // The newest sealed segment must be whole (its header and seal marker checked).
    crate::sealed_set::newest_sealed_end(dd, &names, &control)?;
    let next_no = names
        .iter()
        .rev()
        .find(|n| n.kind == SegmentFileKind::Sealed)
        .map_or(SegmentNo(0), |n| n.segment_no.next());
    // The copy of the open segment; once the switch segment is written (a rerun after the
    // copy was set aside), the switch segment holds the same records.
    let switch = names.iter().find(|n| {
        n.kind == SegmentFileKind::Open && n.timeline == new_timeline && n.segment_no == next_no
    });
    let partial = switch.or_else(|| {
        names
            .iter()
            .find(|n| n.kind == SegmentFileKind::Partial && n.segment_no == next_no)
    });
    let copy = match partial {
        Some(name) => {
            let path = dd.segment_path(name);
            let buf = fs::read(&path).ctx(|| format!("read {}", path.display()))?;
            crate::segment_check::record_ends(&buf, name, &control)
                .and_then(|(h, ends)| ends.last().map(|&end| (*name, buf, h, end)))
        }
        None => None,
    };
    let end = match &copy {
        Some((_, _, h, end)) => h.start_lsn() + *end as u64,
        // Nothing past the newest sealed segment: timeline N+1 begins with the next segment,
        // and the switch point is where that segment begins. (The sealed segment's own end
        // would make the history say that the sealed segment is the new timeline's: every
        // reader of the history (archive, restore, standbys) would then look for it under
        // timeline N+1's name.)
        None => next_no.start_lsn(control.segment_size).ok_or_else(|| {
            Error::InvalidArgument(format!(
                "segment {} is past the end of the LSN space",
                next_no.0
            ))
        })?,
    };

    // A standby that has not yet received its own timeline (a new one, stopped while it still
    // copied the parent's segments) has no place on it to switch from. Refused before anything
    // is written, so it can go on following its primary.
    if let Some(began) = parent_history.as_ref().and_then(|h| h.last_switch()) {
        if end < began.lsn {
            if target.is_some() && !dd.history_path(new_timeline).exists() {
                // Left by a run refused before the history file: nothing else was done.
                fs::remove_file(&intent).ctx(|| format!("remove {}", intent.display()))?;
                fsync_dir(&state)?;
            }
            return Err(Error::Refused(format!(
                "{} holds the log up to {end} only, before timeline {} began (at {}): it has not received that timeline yet; let it follow its primary (`walship standby`) until it has, then promote it",
                dd.root().display(),
                control.timeline,
                began.lsn
            )));
        }
    }
    if target.is_none() {
        // A history file of the new timeline that no promotion of this directory wrote came
        // from a primary already promoted to it: a second one would make two timelines of
        // one number (split brain).
        if dd.history_path(new_timeline).exists() {
            return Err(Error::Refused(format!(
                "timeline {new_timeline} already exists: {} came from a primary promoted to it; promoting this standby too would make a second timeline {new_timeline} (split brain): point it at that primary (`walship standby --primary`) to follow it",
                dd.history_path(new_timeline).display()
            )));
        }
        crate::fault!("promote::intent", e => Error::io("record the promotion", e));
        write_atomic(&intent, format!("{new_timeline}\n").as_bytes())?;
    }

    // 3. The history file: written once; a rerun takes the switch point from it.
    let history = match dd.read_history_file(new_timeline, &control) {
        Ok(h) => h,
        Err(Error::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            crate::fault!("promote::history", e => Error::io("write the history file", e));
            let h = HistoryFile::child_of(
                parent_history.as_ref(),
                control.system_id,
                control.timeline,
                end,
                crate::now_us(),
                reason,
            )
            .map_err(Error::InvalidArgument)?;
            dd.write_history_file(&h)?;
            h
        }
        Err(e) => return Err(e),
    };
    let switch_lsn = history.last_switch().map_or(end, |s| s.lsn);
    if switch_lsn != end {
        return Err(Error::Refused(format!(
            "an earlier promotion to timeline {new_timeline} chose switch point {switch_lsn}, but the directory now ends at {end}: it changed since; check it with `walship verify`"
        )));
    }

    // 4. The switch segment.
    if let Some((name, buf, header, valid_end)) = &copy {
        let switch_name = SegmentName::new(new_timeline, name.segment_no.0, SegmentFileKind::Open);
        let path = dd.segment_path(&switch_name);
        if !path.exists() {
            crate::fault!("promote::switch_segment", e => Error::io("write the switch segment", e));
            let mut h = *header;
            h.timeline = new_timeline;
            let mut bytes = vec![0u8; control.segment_size as usize];
            bytes[..SEGMENT_HEADER_LEN].copy_from_slice(&h.encode());
            bytes[SEGMENT_HEADER_LEN..*valid_end]
                .copy_from_slice(&buf[SEGMENT_HEADER_LEN..*valid_end]);
            let tmp = dd
                .wal_dir()
                .join(crate::fsutil::temp_name(&switch_name.to_string()));
            let written = (|| -> Result<()> {
                let mut f = fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(&tmp)
                    .ctx(|| format!("create {}", tmp.display()))?;
                f.write_all(&bytes)
                    .ctx(|| format!("write {}", tmp.display()))?;
                f.sync_all().ctx(|| format!("fsync {}", tmp.display()))?;
                fs::rename(&tmp, &path)
                    .ctx(|| format!("rename {} to {}", tmp.display(), path.display()))
            })();
            if written.is_err() {
                let _ = fs::remove_file(&tmp);
            }
            written?;
            fsync_dir(&dd.wal_dir())?;
        }
    }

    // 5. Every copy still arriving is set aside.
    let mut set_aside = Vec::new();
    for name in dd.list_segments()? {
        if name.kind == SegmentFileKind::Partial {
            crate::fault!("promote::setaside", e => Error::io("set a partial segment aside", e));
            set_aside.push(crate::setaside::move_aside(dd, &dd.segment_path(&name))?);
        }
    }

    // 6. The control file says the new timeline.
    crate::fault!("promote::control", e => Error::io("write the control file", e));
    let mut new_control: ControlFile = control;
    new_control.identity.timeline = new_timeline;
    write_atomic(&dd.control_path(), &new_control.encode())?;

    // 7. No longer a standby's directory.
    finish(dd, switch_lsn, &intent)?;
    Ok(Promoted {
        timeline: new_timeline,
        switch_lsn,
        already: false,
        set_aside,
    })
}

/// The last step: the durable end is published as a writer publishes it (a `serve` started
/// before the first write ships up to it), the standby's identity file is renamed (kept, no
/// longer read), then the intent removed.
fn finish(dd: &DataDir, switch_lsn: Lsn, intent: &std::path::Path) -> Result<()> {
    crate::fault!("promote::finish", e => Error::io("retire the standby's state", e));
    let (state, meta) = (dd.state_dir(), dd.state_dir().join(STANDBY_META));
    let (state, meta) = (state.as_path(), meta.as_path());
    write_atomic(
        &crate::flush_position::flush_position_path(dd),
        &crate::flush_position::encode_position(switch_lsn.0),
    )?;
    if meta.exists() {
        let promoted = state.join(PROMOTED_META);
        fs::rename(meta, &promoted)
            .ctx(|| format!("rename {} to {}", meta.display(), promoted.display()))?;
        fsync_dir(state)?;
    }
    match fs::remove_file(intent) {
        Ok(()) => fsync_dir(state),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(format!("remove {}", intent.display()), e)),
    }
}
