//! `archive-prune`: remove from an archive the segments no restore to a kept point or later
//! needs.

use std::sync::Arc;

use clap::Args;
use walship::archive::{prune, KeepSince};
use walship::Lsn;

use super::CmdResult;

/// Remove archived segments older than the oldest restore point still needed.
#[derive(Args, Debug)]
#[command(
    after_help = "A restore to the kept point, or to any later one, still works afterwards: the \
segment holding the last record at or before the point and every later segment are kept, and so \
is the identity file, which records the segment the archive now begins at. That is written \
first; the older segments are removed after it, oldest first, so an interrupted run leaves a \
whole archive (readers skip segments before its beginning) and running it again finishes. A point \
before the archive's first record or after its last is refused and nothing is removed. A \
layout-version-1 archive (no recorded beginning) is refused. Run it while the archiver runs if \
you like: the archiver follows the new beginning, and retention no longer looks for the pruned \
segments in the archive.\n\n\
Exit status: 0 done (or nothing to remove), 1 the archive is damaged or refused, 2 could not run \
(bad usage, I/O, a point outside the archive).\n\n\
Example:\n  walship archive-prune /mnt/backup/app-wal --keep-since 2026-11-01T00:00:00Z --dry-run\n  \
walship archive-prune s3://app-backups/wal/app1 --keep-since 0/A3000000"
)]
pub struct ArchivePruneArgs {
    /// The archive: a directory, file:///PATH or s3://BUCKET/PREFIX.
    pub archive: std::path::PathBuf,
    /// The oldest restore point to keep: an LSN (HI/LO hex or decimal) or a time (RFC 3339,
    /// like 2026-11-01T00:00:00Z).
    #[arg(long, value_name = "TIME|LSN", value_parser = parse_point)]
    pub keep_since: KeepSince,
    /// Say what would be removed; remove nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Print one JSON summary object.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub s3: super::target::S3Args,
}

fn parse_point(s: &str) -> Result<KeepSince, String> {
    if let Ok(l) = s.parse::<Lsn>() {
        return Ok(KeepSince::Lsn(l));
    }
    if s.contains(['-', 'T', 't', ':']) {
        return super::restore::parse_time(s).map(KeepSince::TimeUs);
    }
    Err(format!(
        "invalid restore point {s:?}: expected an LSN (HI/LO hex like 0/A3000000, or decimal) or an RFC 3339 time (like 2026-11-01T00:00:00Z)"
    ))
}

pub fn run(a: ArchivePruneArgs) -> CmdResult {
    let store = Arc::new(super::target::open(&a.archive, &a.s3)?);
    let r = super::runtime()?.block_on(prune(&store, a.keep_since, a.dry_run))?;
    if a.json {
        let v = serde_json::json!({
            "location": r.location,
            "dry_run": r.dry_run,
            "first_segment_before": r.first_segment_before,
            "first_segment": r.first_segment,
            "removed": r.removed.iter().map(|o| &o.name).collect::<Vec<_>>(),
            "removed_bytes": r.removed_bytes(),
            "kept_segments": r.kept_segments,
        });
        println!("{v}");
        return Ok(());
    }
    let verb = if r.dry_run { "would remove" } else { "removed" };
    for o in &r.removed {
        println!("{verb} {} ({} bytes)", o.name, o.size);
    }
    if r.removed.is_empty() {
        println!(
            "{}: nothing to remove; the archive begins at segment {} ({} segments)",
            r.location,
            segment(r.first_segment),
            r.kept_segments
        );
    } else {
        let begins = if r.dry_run { "would begin" } else { "begins" };
        println!(
            "{}: {verb} {} objects ({} bytes); the archive {begins} at segment {} (was {}), {} segments kept",
            r.location,
            r.removed.len(),
            r.removed_bytes(),
            segment(r.first_segment),
            segment(r.first_segment_before),
            r.kept_segments
        );
    }
    Ok(())
}

/// A segment number as the identity file and `--json` give it, with the hex of its file name.
fn segment(no: u64) -> String {
    format!("{no} (0x{no:X})")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn points() {
        assert_eq!(
            parse_point("0/A3000000"),
            Ok(KeepSince::Lsn(Lsn(0xA300_0000)))
        );
        assert_eq!(parse_point("4096"), Ok(KeepSince::Lsn(Lsn(4096))));
        assert_eq!(
            parse_point("1970-01-01T00:00:01Z"),
            Ok(KeepSince::TimeUs(1_000_000))
        );
        assert!(parse_point("yesterday").is_err());
        assert!(parse_point("2026-13-01T00:00:00Z").is_err());
    }
}
