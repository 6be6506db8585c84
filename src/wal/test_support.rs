//! A writer's shared state over a real data directory, without its threads, for the unit tests
//! of the writer's parts: work for the finisher is then done inline (as when its thread is
//! gone), and a rotation prepares its file in the append path.

use std::path::Path;

use super::{Inner, WalOptions};
use crate::datadir::DataDir;
use crate::entry::{Entry, EntryType};
use crate::format::{SegmentFileKind, SegmentName};
use crate::recovery::recover;

/// The smallest segment size, so that a few records fill a segment.
pub(super) const SEG: u64 = 64 << 10;

/// A new data directory at `root` with segments of `segment_size`.
pub(super) fn init(root: &Path, segment_size: u64) {
    DataDir::init(root, segment_size).expect("init a data directory");
}

/// Runs recovery over the data directory at `root` and builds the writer's state from it, as
/// `Wal::open` does, without starting any thread.
pub(super) fn open(root: &Path, options: WalOptions) -> Inner {
    let dir = DataDir::new(root);
    let control = dir.read_control().expect("read the control file");
    let rec = recover(&dir, &control, options.recovery_mode).expect("recover");
    Inner::from_recovered(dir, control, &rec, options).expect("the writer's state")
}

/// An insert of `payload`.
pub(super) fn entry(payload: &[u8]) -> Entry<'_> {
    Entry::new(EntryType::Insert, None, payload)
}

/// The names of the files in `wal/`, sorted.
pub(super) fn wal_files(root: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(root.join("wal"))
        .expect("list wal/")
        .map(|e| {
            e.expect("a wal/ entry")
                .file_name()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    names.sort();
    names
}

/// The file name of segment `no` of timeline 1 as a file of `kind`.
pub(super) fn name(no: u64, kind: SegmentFileKind) -> String {
    SegmentName::new(1, no, kind).to_string()
}
