//! Checking a data directory beside a running writer, which renames files (seals, rotations,
//! recycling) between a check's listing and its reads: a listing taken during a rename may
//! miss a file or hold it twice.

use std::path::Path;

use super::{data_dir_layout, VerifyReport};
use crate::error::Result;

/// How many times a check that found damage is done again because the directory's files
/// changed while it ran.
const RELISTED_CHECKS: usize = 10;

/// Runs `check` on `path` until it finds no damage, or finds it with the wal/ folder the
/// same before and after (or until the last try).
pub(super) fn until_unchanged(
    path: &Path,
    check: impl Fn(&Path) -> Result<VerifyReport>,
) -> Result<VerifyReport> {
    for _ in 0..RELISTED_CHECKS {
        let before = wal_listing(path);
        let report = check(path)?;
        if report.errors.is_empty() || before.is_none() || wal_listing(path) == before {
            return Ok(report);
        }
    }
    check(path)
}

/// The names in the wal/ folder `path` stands for, when it stands for one.
fn wal_listing(path: &Path) -> Option<Vec<std::ffi::OsString>> {
    if !path.is_dir() {
        return None;
    }
    let (_, wal) = data_dir_layout(path);
    let mut names: Vec<_> = std::fs::read_dir(wal)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.file_name()))
        .collect();
    names.sort();
    Some(names)
}
