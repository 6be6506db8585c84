//! `restore`: rebuild a data directory from an archive, to its end or to a point in time.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::Arc;

use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use walship::archive::restore::RestorePhase;
use walship::archive::{restore, RestoreOptions, RestoreProgress, RestoreTarget, TimelineChoice};
use walship::Lsn;

use super::runtime;
use super::{CmdResult, Failure};

/// Rebuild a data directory from an archive, optionally stopping at an LSN or a time.
#[derive(Args, Debug)]
#[command(
    after_help = "The whole archive up to the target is fetched and checked (identity, every \
record, the chain, gaps) before anything is written; the first missing or damaged segment is \
named. The new directory has the archive's identity, opens as a normal store and takes new \
writes. With --until-lsn it holds exactly the records whose end LSN is at most LSN; with \
--until-time exactly those stamped at or before TIME (RFC 3339). The target must lie within the \
archive: a target past its last record is refused, since later records may not be archived yet.\n\n\
After a promotion the archive holds several timelines: restore follows the history of the one \
--timeline names (by default the newest), taking each segment from the timeline that history \
says holds it; the new directory is on the timeline of its newest segment.\n\n\
Exit status: 0 restored, 1 the archive is damaged or has a missing segment, 2 could not run \
(bad usage, I/O, a destination in use, a target past the end of the archive, or a timeline \
the archive does not hold).\n\n\
Example:\n  walship restore /mnt/backup/app-wal ./data-restored --until-time 2026-11-26T05:30:00Z\n  \
walship restore s3://app-backups/wal/app1 ./data-restored\n  \
walship restore /mnt/backup/app-wal ./data-before-failover --timeline 1"
)]
pub struct RestoreArgs {
    /// The archive: a directory, file:///PATH or s3://BUCKET/PREFIX.
    pub archive: std::path::PathBuf,
    /// The data directory to create (missing or empty).
    pub data_dir: PathBuf,
    /// Keep exactly the records whose end LSN is at most this (HI/LO hex or decimal).
    #[arg(long, conflicts_with = "until_time")]
    pub until_lsn: Option<Lsn>,
    /// Keep exactly the records whose timestamp is at or before this (RFC 3339, like
    /// 2026-11-26T05:30:00.123456Z).
    #[arg(long, value_parser = parse_time)]
    pub until_time: Option<i64>,
    /// Replace a walship data directory at DATA_DIR (only its control, LOCK, wal/ and state/;
    /// any other file there makes restore refuse).
    #[arg(long)]
    pub force: bool,
    /// The timeline to restore along, after a promotion: a number, or `latest` (the newest
    /// timeline whose history file the archive holds). Records of other timelines past where
    /// this one's history leaves them are not restored.
    #[arg(long, default_value = "latest", value_name = "N|latest")]
    pub timeline: TimelineChoice,
    /// Segments fetched and checked ahead in parallel.
    #[arg(long, default_value_t = 4)]
    pub fetch_ahead: usize,
    /// Print one JSON summary object.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub s3: super::target::S3Args,
}

/// Parses RFC 3339 into microseconds since the Unix epoch (finer digits are dropped: record
/// timestamps are whole microseconds, so the comparison stays exact).
pub(super) fn parse_time(s: &str) -> Result<i64, String> {
    let t = chrono::DateTime::parse_from_rfc3339(s.trim()).map_err(|e| {
        format!("invalid time {s:?}: {e} (expected RFC 3339, like 2026-11-26T05:30:00Z)")
    })?;
    Ok(t.timestamp_micros())
}

pub fn run(a: RestoreArgs) -> CmdResult {
    let target = match (a.until_lsn, a.until_time) {
        (Some(l), _) => RestoreTarget::Lsn(l),
        (None, Some(t)) => RestoreTarget::Time(t),
        (None, None) => RestoreTarget::End,
    };
    let store = Arc::new(super::target::open(&a.archive, &a.s3)?);
    let bar = std::io::stderr().is_terminal().then(|| {
        let b = ProgressBar::new(0);
        b.set_style(
            ProgressStyle::with_template("{msg:8} [{bar:40}] {pos}/{len} segments {bytes_per_sec}")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        b
    });
    let progress = bar.clone().map(|b| {
        Arc::new(move |p: RestoreProgress| {
            b.set_length(p.total);
            b.set_position(p.done);
            b.set_message(match p.phase {
                RestorePhase::Verify => "checking",
                RestorePhase::Write => "writing",
            });
        }) as walship::archive::restore::ProgressFn
    });
    let opts = RestoreOptions {
        target,
        force: a.force,
        fetch_ahead: a.fetch_ahead.max(1),
        timeline: a.timeline,
        progress,
    };
    let result = runtime()?.block_on(restore(store, &a.data_dir, opts));
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    let r = result.map_err(Failure::from)?;
    if a.json {
        let line = serde_json::to_string(&r).map_err(|e| Failure::Error(e.to_string()))?;
        println!("{line}");
    } else {
        println!(
            "restored {} into {}: {} sealed segments{}, {} records, ending at {} on timeline {}",
            a.archive.display(),
            a.data_dir.display(),
            r.sealed_segments,
            r.open_segment
                .as_ref()
                .map(|o| format!(" and open segment {o}"))
                .unwrap_or_default(),
            r.records,
            r.end_lsn,
            r.timeline
        );
    }
    Ok(())
}
