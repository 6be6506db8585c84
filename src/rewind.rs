//! Rewind: a directory whose timeline a promotion left (a former primary that went on writing
//! after its standby was promoted) is cut back to the switch point, so that it can follow the
//! new primary as a standby. Nothing is deleted: what lies past the switch point is moved into
//! `setaside/`.
//!
//! Steps, each durable before the next; a rerun after a crash at any point (with the same
//! source) reaches the outcome of an uninterrupted run, because each step is judged again from
//! what the directory holds:
//!
//! 1. take the directory's lock (a running writer, `serve` or `standby` holds it: refused);
//!    check the source is the same system, and that the directory's timeline is on the
//!    source's path, left at a switch point; find the directory's end. Nothing past the switch
//!    point: say so and change nothing;
//! 2. store the source's history files in `wal/` (as a standby would at its first contact),
//!    each checked before any is stored; then lower the published durable position and, in a
//!    standby's directory, the applied position to the switch point;
//! 3. move every segment file numbered past the one holding the switch point into `setaside/`,
//!    newest first;
//! 4. the segment holding the switch point, when it holds records past it or is sealed here
//!    (its records ending right at the switch point: on the source's path that segment is the
//!    new timeline's, and the source's copy must take its place): copy it whole into
//!    `setaside/`, then write its records up to the switch point as an open segment of the
//!    same name (in a standby's directory, which holds no open segment, as its copy of the
//!    primary's open segment, `.wal.partial`) (temporary name, fsync, rename, fsync `wal/`),
//!    and remove the sealed file if it was sealed.
//!
//! Set-aside files are named `<segment file name>.diverged-<switch LSN, 16 hex digits>`: the
//! same name on a rerun, so a rerun never makes a second copy. A later rewind to the same
//! switch point (the directory written again after the first) adds `.2`, `.3`, ...: no
//! set-aside file is ever replaced. The segment left at the end is what a standby adopting the
//! directory compares with the new primary's copy, or what a standby continues.

use std::fs;
use std::path::{Path, PathBuf};

use crate::datadir::DataDir;
use crate::error::{Error, IoContext, Result};
use crate::format::segment_header::SEGMENT_HEADER_LEN;
use crate::format::{ControlFile, SegmentFileKind, SegmentName};
use crate::fsutil::fsync_dir;
use crate::timeline::History;
use crate::Lsn;

/// The timelines of the primary a directory is rewound onto.
#[derive(Clone, Debug)]
pub struct Source {
    pub system_id: uuid::Uuid,
    pub segment_size: u64,
    /// Its path, to its own timeline.
    pub path: History,
    /// The history file of every timeline after the first on its path: timeline and bytes.
    pub files: Vec<(u32, Vec<u8>)>,
}

/// What a rewind did (or, in a dry run, would do).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rewound {
    /// The directory's timeline, which the source's path left.
    pub timeline: u32,
    /// Where the source's path left it.
    pub switch_lsn: Lsn,
    /// The end of the directory's records before the rewind: `[switch_lsn, end)` diverged.
    pub end: Lsn,
    /// True when nothing lay past the switch point (nothing was changed).
    pub nothing_diverged: bool,
    /// The segment cut back to the switch point, if one held it.
    pub cut: Option<SegmentName>,
    /// The files moved or copied into `setaside/` (in a dry run, the ones that would be).
    pub set_aside: Vec<PathBuf>,
}

/// One segment file: its name and the end of its valid records (None: it holds none).
struct Held {
    name: SegmentName,
    end: Option<Lsn>,
}

/// The name a file set aside by a rewind to `switch` gets.
pub fn diverged_name(file_name: &str, switch: Lsn) -> String {
    format!("{file_name}.diverged-{:016X}", switch.0)
}

/// Rewinds `dd` onto `source`'s timeline (see the module's steps). A dry run changes nothing
/// and returns what would be done.
pub fn rewind(dd: &DataDir, source: &Source, dry_run: bool) -> Result<Rewound> {
    let _lock = dd.lock_or_refuse(
        "stop the writer (`walship write`, `serve`, `standby`) on it, then rewind again",
    )?;
    let control = dd.read_control()?;
    let switch = switch_point(dd, &control, source)?;
    let held = held_segments(dd, &control)?;
    let end = held.iter().filter_map(|h| h.end).max().unwrap_or(Lsn::ZERO);
    let size = control.segment_size;
    // The segment holding the switch point: its records end at or after it. A switch point at
    // a segment's first position (a promotion at a sealed segment's end) is held by none:
    // that segment and every later one lie wholly past it.
    let at = switch.0 / size;
    let cut_at = (switch.0 % size != 0).then_some(at);
    let past = |h: &&Held| h.end.is_some_and(|e| e > switch);
    // The segment holding the switch point is the new timeline's on the source's path: one
    // sealed here under this timeline's name is unsealed even when its records end right at
    // the switch point, so that the source's copy takes its place (as a standby's copy of an
    // open segment is continued under the new timeline's name).
    let straddling: Vec<&Held> = held
        .iter()
        .filter(|h| {
            Some(h.name.segment_no.0) == cut_at
                && h.name.kind != SegmentFileKind::Partial
                && (past(h) || (h.name.kind == SegmentFileKind::Sealed && h.end == Some(switch)))
        })
        .collect();
    let mut out = Rewound {
        timeline: control.timeline,
        switch_lsn: switch,
        end,
        nothing_diverged: end <= switch && straddling.is_empty(),
        cut: None,
        set_aside: Vec::new(),
    };
    if out.nothing_diverged {
        return Ok(out);
    }
    let aside_dir = crate::setaside::setaside_dir(dd);
    // A copy still arriving (a standby's) holding records past it goes whole: it is fetched
    // again.
    let later: Vec<&Held> = held
        .iter()
        .rev()
        .filter(|h| {
            h.name.segment_no.0 > at
                || (h.name.segment_no.0 == at
                    && (cut_at.is_none() || h.name.kind == SegmentFileKind::Partial)
                    && past(h))
        })
        .collect();
    let standby = crate::replication::standby_state::meta_path(dd).exists();
    for h in &later {
        out.set_aside
            .push(aside_name(&aside_dir, &h.name, switch, None)?.0);
    }
    for h in &straddling {
        let bytes = read_segment(dd, &h.name)?;
        out.set_aside
            .push(aside_name(&aside_dir, &h.name, switch, Some(&bytes))?.0);
        out.cut = Some(SegmentName::new(h.name.timeline, at, cut_kind(standby)));
    }
    if dry_run {
        return Ok(out);
    }

    // 2. The source's history files, every one checked before any is stored: one this
    // directory holds differently refuses the rewind with nothing changed.
    crate::fault!("rewind::history", e => Error::io("store the history files", e));
    let files = source
        .files
        .iter()
        .map(|(tl, bytes)| crate::history::decode_history(&dd.history_path(*tl), bytes, *tl))
        .collect::<Result<Vec<_>>>()?;
    for file in &files {
        dd.write_history_file(file)?;
    }

    // The records past the switch point leave the log on purpose: the published durable
    // position comes down to it first, so that recovery never takes them for lost ones, and a
    // standby's applied position with it, so that it applies the new timeline's records there.
    crate::flush_position::lower_published(dd, switch)?;
    crate::replication::standby_state::lower_applied(dd, switch)?;

    // 3. Whole segments past the switch point, newest first.
    for h in &later {
        crate::fault!("rewind::aside", e => Error::io("set a segment aside", e));
        move_aside_as(dd, &h.name, switch)?;
    }

    // 4. The segment holding the switch point.
    for h in straddling {
        cut_back(dd, &control, &h.name, switch, cut_kind(standby))?;
    }
    Ok(out)
}

/// Where the source's path left the directory's timeline, checked: the same system, the
/// directory's timeline on the path and left, its history the source's.
fn switch_point(dd: &DataDir, control: &ControlFile, source: &Source) -> Result<Lsn> {
    if source.system_id != control.system_id || source.segment_size != control.segment_size {
        return Err(Error::Refused(format!(
            "the source is system {} (segment size {}), this directory system {} (segment size {}): it is not this system's primary",
            source.system_id, source.segment_size, control.system_id, control.segment_size
        )));
    }
    let t = control.timeline;
    let path = &source.path;
    if t >= path.timeline {
        return Err(Error::Refused(format!(
            "this directory is on timeline {t} and the source on timeline {}: rewind brings back a directory whose timeline the source's history left (a standby on the same timeline just follows)",
            path.timeline
        )));
    }
    let Some(switch) = path.switch_point_after(t) else {
        return Err(Error::Refused(format!(
            "timeline {t} is not on the source's path ({path}): this directory is on another branch of the system; rebuild it from the archive or the new primary"
        )));
    };
    if t > 1 {
        let ours = fs::read(dd.history_path(t))
            .ctx(|| format!("read {}", dd.history_path(t).display()))?;
        let theirs = source.files.iter().find(|(tl, _)| *tl == t);
        if theirs.map(|(_, b)| b) != Some(&ours) {
            return Err(Error::Refused(format!(
                "this directory's history of timeline {t} is not the source's: it is on another branch of the system; rebuild it"
            )));
        }
    }
    Ok(switch)
}

/// Every segment file of the directory (sealed, open, partial copies) and where its valid
/// records end.
fn held_segments(dd: &DataDir, control: &ControlFile) -> Result<Vec<Held>> {
    let mut out = Vec::new();
    for name in dd.list_segments()? {
        let end = match name.kind {
            SegmentFileKind::Sealed => {
                let s =
                    crate::segment_check::check_sealed(&dd.segment_path(&name), &name, control)?;
                (s.end_lsn > s.header.start_lsn() + SEGMENT_HEADER_LEN as u64).then_some(s.end_lsn)
            }
            SegmentFileKind::Open | SegmentFileKind::Partial => {
                let path = dd.segment_path(&name);
                let buf = fs::read(&path).ctx(|| format!("read {}", path.display()))?;
                crate::segment_check::record_ends(&buf, &name, control)
                    .and_then(|(h, ends)| ends.last().map(|o| h.start_lsn() + *o as u64))
            }
            _ => continue,
        };
        out.push(Held { name, end });
    }
    Ok(out)
}

/// What the segment holding the switch point is cut back to: an open segment, or in a
/// standby's directory (which holds sealed segments and copies of its primary's open one) a
/// copy that the new primary's switch segment continues, as if it had been received up to the
/// switch point.
fn cut_kind(standby: bool) -> SegmentFileKind {
    if standby {
        SegmentFileKind::Partial
    } else {
        SegmentFileKind::Open
    }
}

fn read_segment(dd: &DataDir, name: &SegmentName) -> Result<Vec<u8>> {
    let path = dd.segment_path(name);
    fs::read(&path).ctx(|| format!("read {}", path.display()))
}

/// The path in `setaside/` that a rewind to `switch` gives `name`'s file, and whether a file
/// there already holds `own` bytes, when given: a rerun after a crash finds its own copy. An
/// earlier rewind to the same switch point may have set aside other bytes under the rewind
/// name (the directory was written again after it): then `.2`, `.3`, ... follow it, so that
/// no set-aside file is ever replaced.
fn aside_name(
    aside: &Path,
    name: &SegmentName,
    switch: Lsn,
    own: Option<&[u8]>,
) -> Result<(PathBuf, bool)> {
    let base = diverged_name(&name.to_string(), switch);
    for n in 1u32..10_000 {
        let path = if n == 1 {
            aside.join(&base)
        } else {
            aside.join(format!("{base}.{n}"))
        };
        match fs::symlink_metadata(&path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((path, false)),
            Err(e) => return Err(Error::io(format!("stat {}", path.display()), e)),
            Ok(m) => {
                if let Some(own) = own.filter(|b| b.len() as u64 == m.len()) {
                    if fs::read(&path).ctx(|| format!("read {}", path.display()))? == own {
                        return Ok((path, true));
                    }
                }
            }
        }
    }
    Err(Error::Other(format!(
        "{} holds 10,000 files set aside as {base}: remove the ones you no longer need",
        aside.display()
    )))
}

/// Moves a segment file into `setaside/` under its rewind name, durably.
fn move_aside_as(dd: &DataDir, name: &SegmentName, switch: Lsn) -> Result<PathBuf> {
    let aside = ensure_setaside(dd)?;
    let from = dd.segment_path(name);
    // The directory's lock is held: no other process takes the name between.
    let (to, _) = aside_name(&aside, name, switch, None)?;
    fs::rename(&from, &to).ctx(|| format!("rename {} to {}", from.display(), to.display()))?;
    fsync_dir(&aside)?;
    fsync_dir(&dd.wal_dir())?;
    Ok(to)
}

fn ensure_setaside(dd: &DataDir) -> Result<PathBuf> {
    let aside = crate::setaside::setaside_dir(dd);
    if !aside.is_dir() {
        fs::create_dir(&aside).ctx(|| format!("create directory {}", aside.display()))?;
        fsync_dir(dd.root())?;
    }
    Ok(aside)
}

/// Cuts the segment holding the switch point back to it: a whole copy set aside first, then
/// its records up to the switch point as a file of `kind` (open, or a standby's copy), then
/// the sealed file (if it was one) removed.
fn cut_back(
    dd: &DataDir,
    control: &ControlFile,
    name: &SegmentName,
    switch: Lsn,
    kind: SegmentFileKind,
) -> Result<()> {
    let path = dd.segment_path(name);
    let buf = read_segment(dd, name)?;
    let Some((header, ends)) = crate::segment_check::record_ends(&buf, name, control) else {
        return Err(Error::Corrupt {
            file: path,
            offset: 0,
            lsn: switch,
            reason: "no valid segment header".into(),
        });
    };
    let at = (switch - header.start_lsn()) as usize;
    if at != SEGMENT_HEADER_LEN && !ends.contains(&at) {
        return Err(Error::Refused(format!(
            "the switch point {switch} falls inside a record of {name} here: this directory's records before it are not the source's; it cannot be rewound (rebuild it from the archive or the new primary)"
        )));
    }
    // The whole segment, as it was, kept.
    let aside = ensure_setaside(dd)?;
    let (copy, held) = aside_name(&aside, name, switch, Some(&buf))?;
    if !held {
        crate::fault!("rewind::copy", e => Error::io("set the diverged segment aside", e));
        crate::fsutil::write_atomic(&copy, &buf)?;
    }
    // Its records up to the switch point.
    crate::fault!("rewind::cut", e => Error::io("cut the segment back", e));
    let cut = SegmentName::new(name.timeline, name.segment_no.0, kind);
    let mut bytes = vec![0u8; control.segment_size as usize];
    bytes[..at].copy_from_slice(&buf[..at]);
    crate::fsutil::write_atomic(&dd.segment_path(&cut), &bytes)?;
    if name.kind != kind {
        crate::fault!("rewind::unseal", e => Error::io("remove the sealed segment", e));
        fs::remove_file(&path).ctx(|| format!("remove {}", path.display()))?;
        fsync_dir(&dd.wal_dir())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_aside_names_say_the_switch_point() {
        assert_eq!(
            diverged_name("000000010000000000000003.wal.open", Lsn(0x1_0000_FF90)),
            "000000010000000000000003.wal.open.diverged-000000010000FF90"
        );
    }
}
