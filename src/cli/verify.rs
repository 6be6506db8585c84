//! `verify`: check every byte of stored WAL.

use clap::Args;
use walship::archive::ArchiveTarget;
use walship::verify::{verify_path, verify_store};
use walship::Lsn;

use super::{CmdResult, Failure};

/// Check segments, records, seal markers, checksums and the chain between segments.
#[derive(Args, Debug)]
#[command(
    after_help = "Exit status: 0 clean (a torn tail in the open segment is repairable, not damage), 1 damage found, 2 could not run or PATH is not a walship path.\n\nOnly an empty but valid data directory or archive is ok with no segments. A directory that is partly a data directory (wal/ without control, a damaged control) or holds segments with no control or IDENTITY file to check them against is damage.\n\nExample:\n  walship verify ./data --json"
)]
pub struct VerifyArgs {
    /// A data directory, its wal/ folder, one segment file, or an archive (a directory,
    /// file:///PATH or s3://BUCKET/PREFIX).
    pub path: std::path::PathBuf,
    /// Print one JSON summary object.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub s3: super::target::S3Args,
}

pub fn run(a: VerifyArgs) -> CmdResult {
    let report = match super::target::parse(&a.path, &a.s3)? {
        ArchiveTarget::Dir(p) => verify_path(&p)?,
        t @ ArchiveTarget::S3(_) => {
            let store = t.open()?;
            let rt = super::runtime()?;
            verify_store(rt.handle(), &store)?
        }
    };
    if a.json {
        let line = serde_json::to_string(&report).map_err(|e| Failure::Error(e.to_string()))?;
        println!("{line}");
    } else {
        println!(
            "{}: {} segments, {} records, {} bytes, LSN {} to {}",
            a.path.display(),
            report.segments,
            report.records,
            report.bytes,
            report.first_lsn.unwrap_or(Lsn(0)),
            report.end_lsn
        );
        for n in &report.notes {
            println!("note: {n}");
        }
        for e in &report.errors {
            // A problem of the directory itself (its control, wal/ or IDENTITY) has no position.
            if walship::format::SegmentName::parse(&e.segment).is_none() {
                println!("error: {}: {}", e.segment, e.reason);
                continue;
            }
            println!(
                "error: {} offset {} (LSN {}): {}",
                e.segment, e.offset, e.lsn, e.reason
            );
        }
        println!("{}", if report.ok { "ok" } else { "DAMAGED" });
    }
    if report.ok {
        Ok(())
    } else {
        Err(Failure::Damage(format!(
            "{} problem(s) found in {}",
            report.errors.len(),
            a.path.display()
        )))
    }
}
