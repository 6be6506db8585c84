//! Telling a segment that retention released while a reader read it from damage.
//!
//! Retention releases sealed segments oldest first, and only those that end at or below the
//! checkpoint; a released file is removed or renamed for reuse, and a reused one is rewritten.
//! A reader that was still behind then finds its next segment missing, or its bytes changed
//! under it. When the segment concerned ends at or below the checkpoint and neither it nor any
//! older segment is kept, that is what happened, not damage.

use std::path::PathBuf;

use crate::error::Error;
use crate::format::{SegmentFileKind, SegmentName, SegmentNo};

use super::WalReader;

impl WalReader {
    /// `e` as [`Error::Released`] when it arose from reading a segment that retention released
    /// meanwhile; otherwise `e` unchanged.
    pub(super) fn released_instead(&self, e: Error) -> Error {
        let concerned = matches!(e, Error::Corrupt { .. })
            || matches!(&e, Error::Io { source, .. } if matches!(
                source.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::UnexpectedEof
            ));
        if !concerned {
            return e;
        }
        let (segment, file) = match (&self.cur, self.next_segment) {
            (Some(cur), _) => (cur.name.segment_no, Some(cur.path.clone())),
            (None, Some(next)) => (SegmentNo(next), None),
            (None, None) => return e,
        };
        self.released(segment, file).unwrap_or(e)
    }

    fn released(&self, segment: SegmentNo, file: Option<PathBuf>) -> Option<Error> {
        let dd = self.source.data_dir()?;
        let size = self.identity?.segment_size;
        let checkpoint = crate::retention::checkpoint_lsn(&dd).ok()?;
        if segment.end_lsn(size)? > checkpoint {
            return None;
        }
        let names = dd.list_segments().ok()?;
        let mut kept = names
            .iter()
            .filter(|n| matches!(n.kind, SegmentFileKind::Sealed | SegmentFileKind::Open));
        if kept.clone().any(|n| n.segment_no <= segment) {
            // It, or an older one, is still there: a hole or a changed file is damage.
            return None;
        }
        let oldest = kept.next().map(|n| n.to_string());
        let file = match file {
            Some(f) => f,
            None => {
                let timeline = dd.read_control().ok()?.timeline;
                dd.segment_path(&SegmentName::new(
                    timeline,
                    segment.0,
                    SegmentFileKind::Sealed,
                ))
            }
        };
        Some(Error::Released {
            file,
            checkpoint,
            oldest,
        })
    }
}

impl WalReader {
    /// For a reader asked to start at a position (`dump --start`): refuses one before the
    /// oldest segment a data directory holds, rather than starting later without a word. The
    /// error says where the directory's records begin, and that retention released those
    /// before them when the checkpoint is past that point.
    pub fn refuse_start_before_oldest(&self) -> Result<(), Error> {
        let (Some(dd), Some(id)) = (self.source.data_dir(), self.identity) else {
            return Ok(());
        };
        let names = dd.list_segments()?;
        let Some(oldest) = names.iter().find(|n| {
            matches!(
                n.kind,
                SegmentFileKind::Sealed | SegmentFileKind::Open | SegmentFileKind::Partial
            )
        }) else {
            return Ok(());
        };
        let begins = oldest.segment_no.start_lsn_saturating(id.segment_size);
        if self.from >= begins {
            return Ok(());
        }
        let checkpoint = crate::retention::checkpoint_lsn(&dd)?;
        // The segment before the oldest ended (its seal) within the segment's span before
        // `begins`: a checkpoint there or later released it.
        let why = if checkpoint.0 > begins.0.saturating_sub(id.segment_size) {
            format!("retention released the segments before it (the checkpoint is {checkpoint})")
        } else {
            "no segment before it is in this data directory".to_string()
        };
        Err(Error::InvalidArgument(format!(
            "{}: LSN {} is before the records held here: the log here begins with segment {oldest}, at {begins}, and {why}; start at {begins} or later, or read the earlier records from an archive",
            dd.root().display(),
            self.from
        )))
    }
}
