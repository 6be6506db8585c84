//! `verify` of a data directory's timeline history files: each one in `wal/` must decode (its
//! checksum, its rules, its name) and belong to the directory's system; a timeline after 1
//! must have its history; and each segment's timeline must lie on that history's path where
//! the segment begins.

use std::path::Path;

use super::{VerifyIssue, VerifyReport};
use crate::format::history::history_file_name;
use crate::format::SegmentName;
use crate::timeline::History;
use crate::{DataDir, Error, Lsn};

/// Adds a problem for each damaged or missing history file, and for each segment whose
/// timeline is not on the directory's history where it begins.
pub(super) fn check_histories(root: &Path, segments: &[SegmentName], report: &mut VerifyReport) {
    let dd = DataDir::new(root);
    let Ok(control) = dd.read_control() else {
        return; // reported by the caller
    };
    let issue = |report: &mut VerifyReport, file: String, offset: u64, reason: String| {
        report.errors.push(VerifyIssue {
            segment: file,
            offset,
            lsn: Lsn(0),
            reason,
        })
    };
    let timelines = match dd.history_timelines() {
        Ok(t) => t,
        Err(e) => {
            issue(report, "wal".into(), 0, e.to_string());
            return;
        }
    };
    for t in timelines {
        if let Err(e) = dd.read_history_file(t, &control) {
            let offset = match &e {
                Error::Corrupt { offset, .. } => *offset,
                _ => 0,
            };
            issue(report, history_file_name(t), offset, e.to_string());
        }
    }
    let history: History = match dd.history(&control) {
        Ok(h) => h,
        Err(e) => {
            if !matches!(e, Error::Corrupt { ref reason, .. } if !reason.contains("missing")) {
                issue(
                    report,
                    history_file_name(control.timeline),
                    0,
                    e.to_string(),
                );
            }
            return;
        }
    };
    for name in segments {
        let Ok(start) = name.start_lsn(control.segment_size) else {
            continue;
        };
        if !history.has_timeline(name.timeline) || !history.contains(name.timeline, start) {
            issue(
                report,
                name.to_string(),
                0,
                format!(
                    "segment of timeline {} at {start} is not on the directory's history ({history})",
                    name.timeline
                ),
            );
        }
    }
}
