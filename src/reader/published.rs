//! Where the reader finds a data directory's log to end, the evidence of acknowledged records
//! past it, judged as recovery judges it: the position the writer published
//! (`state/flush_position`) and a prepared file that had been the open segment.

use std::os::unix::fs::FileExt;

use super::{WalReader, WalSource};
use crate::datadir::DataDir;
use crate::error::{Error, Result};
use crate::format::segment_header::SEGMENT_HEADER_LEN;
use crate::format::{SegmentFileKind, SegmentHeader, SegmentName};

impl WalReader {
    /// At the end of the log of a data directory, as recovery and `verify` judge it: nothing
    /// acknowledged may lie past it. The published position is read first, then the log once
    /// more: records a running writer published meanwhile are read (true), not taken for lost.
    pub(super) fn more_past_the_end(&mut self) -> Result<bool> {
        if !matches!(self.source, WalSource::Dir(_)) {
            return Ok(false);
        }
        let Some(dd) = self.source.data_dir() else {
            return Ok(false);
        };
        let published = crate::flush_position::published_evidence(&dd);
        let (path, offset, next) = match &self.cur {
            Some(cur) => (
                cur.path.clone(),
                cur.off,
                cur.header.start_lsn() + cur.off as u64,
            ),
            None => {
                let control = dd.read_control()?;
                let no = self.next_segment.unwrap_or(0);
                let name = SegmentName::new(control.timeline, no, SegmentFileKind::Open);
                prepared_checked(&dd, &control, name.with_kind(SegmentFileKind::Prepared))?;
                let start = name.segment_no.start_lsn_saturating(control.segment_size);
                (dd.segment_path(&name), 0, start + SEGMENT_HEADER_LEN as u64)
            }
        };
        let Some(reason) = crate::flush_position::lost_acknowledged(published, self.last_end, next)
        else {
            return self.planned_damage(&dd);
        };
        let more = match self.cur.is_some() {
            true => self.refresh_open(0)?,
            false => self.load_next()?,
        };
        if more {
            return Ok(true);
        }
        Err(Error::Corrupt {
            file: path,
            offset: offset as u64,
            lsn: self.last_end,
            reason,
        })
    }
}

impl WalReader {
    /// For a reader starting past the log's beginning (`dump --start`), which skips the
    /// segments where recovery's plan may end the log: asks the plan before the first record,
    /// so that no record past the log's end is read as if the log went on (a reader from the
    /// beginning asks it at the end). A running writer may be between two renames: damage is
    /// asked about again (a few times) before it is reported. Reads every open segment.
    pub fn refuse_damage_before_start(&mut self) -> Result<()> {
        if self.standby || self.planned || !matches!(self.source, WalSource::Dir(_)) {
            return Ok(());
        }
        self.planned = true;
        let Some(dd) = self.source.data_dir() else {
            return Ok(());
        };
        let control = dd.read_control()?;
        let mut tries = 0;
        loop {
            match crate::recovery::plan_only(&dd, &control) {
                Err(e @ Error::Corrupt { .. }) if tries == 4 => return Err(e),
                Err(Error::Corrupt { .. }) => {
                    tries += 1;
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                _ => return Ok(()),
            }
        }
    }

    /// The rest of recovery's judgement of where the log ends (a newer open segment whose
    /// records prove an older one's seal marker was durable, a prepared file of any number
    /// that had been the open segment): what `write` refuses, a reader refuses alike. Judged
    /// once per reader (a follower does not plan again at every poll), and not in a standby's
    /// directory, which recovery judges by other rules. Damage that a running writer's next
    /// records resolve is not reported: the log is read again first.
    fn planned_damage(&mut self, dd: &DataDir) -> Result<bool> {
        if self.standby || self.planned {
            return Ok(false);
        }
        self.planned = true;
        let control = dd.read_control()?;
        match crate::recovery::plan_only(dd, &control) {
            Err(e @ Error::Corrupt { .. }) => {
                let more = match self.cur.is_some() {
                    true => self.refresh_open(0)?,
                    false => self.load_next()?,
                };
                if more {
                    self.planned = false;
                    return Ok(true);
                }
                Err(e)
            }
            _ => Ok(false),
        }
    }
}

/// The prepared file the log would continue in, as recovery judges it
/// ([`crate::recovery::prepared_damage`]); read whole only when its header is one the writer
/// gives that segment (a prepared file's is zeros, a recycled one's cleared).
fn prepared_checked(
    dd: &DataDir,
    control: &crate::format::ControlFile,
    name: SegmentName,
) -> Result<()> {
    let path = dd.segment_path(&name);
    let mut head = [0u8; SEGMENT_HEADER_LEN];
    let Ok(f) = crate::fsutil::open_regular(&path) else {
        return Ok(());
    };
    if f.read_exact_at(&mut head, 0).is_err() || SegmentHeader::decode(&head).is_err() {
        return Ok(());
    }
    let buf = crate::reader::read_segment(&path)?;
    match crate::recovery::prepared_damage(control, &name, &buf) {
        Some(reason) => Err(Error::Corrupt {
            file: path,
            offset: 0,
            lsn: name.segment_no.start_lsn_saturating(control.segment_size),
            reason,
        }),
        None => Ok(()),
    }
}
