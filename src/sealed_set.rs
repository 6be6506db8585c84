//! The sealed segments of a directory and where they end, for those that decide from the list:
//! retention (which may go), the shipper (what to ship: [`SealedSet`], rescanned as the writer
//! seals) and status (how far the sealed log reaches). Each listing reads only names and sizes,
//! and at most the newest segment's seal marker.

use std::collections::BTreeMap;
use std::path::PathBuf;

use crate::datadir::DataDir;
use crate::error::{Error, Result};
use crate::format::record::SEAL_LEN;
use crate::format::{ControlFile, SegmentFileKind, SegmentName};
use crate::segment_check::check_sealed;
use crate::Lsn;

/// A sealed segment file as listed.
#[derive(Clone, Debug)]
pub struct SealedFile {
    pub name: SegmentName,
    pub path: PathBuf,
    /// LSN of its seal marker: the end of its last record.
    pub end: Lsn,
    pub size: u64,
}

/// The sealed segment files of `dir`, oldest first, with their sizes and where each ends (read
/// from its size: a sealed file ends right after its seal marker). A file removed while the
/// list is made is left out.
pub fn sealed_files(dir: &DataDir, segment_size: u64) -> Result<Vec<SealedFile>> {
    let mut out = Vec::new();
    for name in dir.list_segments()? {
        if name.kind != SegmentFileKind::Sealed {
            continue;
        }
        let path = dir.segment_path(&name);
        let size = match std::fs::metadata(&path) {
            Ok(m) => m.len(),
            // Removed meanwhile (another checkpoint): nothing to decide about it.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(Error::io(format!("stat {}", path.display()), e)),
        };
        // A sealed file ends right after its seal marker.
        let start = name.start_lsn(segment_size)?;
        out.push(SealedFile {
            name,
            path,
            end: start + size.saturating_sub(SEAL_LEN as u64),
            size,
        });
    }
    Ok(out)
}

/// Sealed segments by number, and where the newest ends.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SealedSet {
    pub by_no: BTreeMap<u64, SegmentName>,
    /// End of the last record of the newest sealed segment (0 when there is none).
    pub sealed_lsn: Lsn,
}

impl SealedSet {
    pub fn oldest(&self) -> Option<u64> {
        self.by_no.keys().next().copied()
    }
    pub fn newest(&self) -> Option<u64> {
        self.by_no.keys().next_back().copied()
    }
}

/// Lists the sealed segments of `dd` (cheap: one directory listing and the newest one's seal
/// marker). Open, prepared and partial files are not for shipping and are left out, and so are
/// segments of a later timeline than `control`'s: they appear when the directory is promoted
/// or rewound after `control` was read, and are not on the timeline its reader serves.
pub fn scan_sealed(dd: &DataDir, control: &ControlFile, previous: &SealedSet) -> Result<SealedSet> {
    let mut set = SealedSet::default();
    for name in dd.list_segments()? {
        if name.kind == SegmentFileKind::Sealed && name.timeline <= control.timeline {
            set.by_no.insert(name.segment_no.0, name);
        }
    }
    if let Some((_, newest)) = set.by_no.iter().next_back() {
        set.sealed_lsn = if previous.newest() == Some(newest.segment_no.0) {
            previous.sealed_lsn
        } else {
            sealed_end(dd, newest, control)?
        };
    }
    Ok(set)
}

/// Where the newest sealed segment among `names` ends (its seal marker's LSN, checked), 0 when
/// there is none.
pub fn newest_sealed_end(
    dd: &DataDir,
    names: &[SegmentName],
    control: &ControlFile,
) -> Result<Lsn> {
    match names
        .iter()
        .rev()
        .find(|n| n.kind == SegmentFileKind::Sealed)
    {
        Some(newest) => sealed_end(dd, newest, control),
        None => Ok(Lsn::ZERO),
    }
}

/// Where the sealed segment `name` ends, once its header and seal marker are checked.
fn sealed_end(dd: &DataDir, name: &SegmentName, control: &ControlFile) -> Result<Lsn> {
    Ok(check_sealed(&dd.segment_path(name), name, control)?.end_lsn)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SIZE: u64 = 1 << 16;

    /// A data directory holding files under the given names, each `len` bytes of garbage: the
    /// listings read names and sizes, and only a checked end reads a file.
    fn dir_with(names: &[(u64, SegmentFileKind, usize)]) -> (tempfile::TempDir, DataDir) {
        let tmp = tempfile::tempdir().expect("tempdir");
        let root = tmp.path().join("data");
        DataDir::init(&root, SIZE).expect("init");
        let dd = DataDir::new(&root);
        for &(no, kind, len) in names {
            let name = SegmentName::new(1, no, kind);
            std::fs::write(dd.segment_path(&name), vec![0xAB; len]).expect("write");
        }
        (tmp, dd)
    }

    #[test]
    fn sealed_files_end_where_their_seal_marker_sits() {
        let (_tmp, dd) = dir_with(&[
            (3, SegmentFileKind::Sealed, 4096),
            (4, SegmentFileKind::Sealed, 100),
            (5, SegmentFileKind::Open, 4096),
        ]);
        let files = sealed_files(&dd, SIZE).expect("list");
        let got: Vec<(u64, u64, Lsn)> = files
            .iter()
            .map(|f| (f.name.segment_no.0, f.size, f.end))
            .collect();
        assert_eq!(
            got,
            vec![
                (3, 4096, Lsn(3 * SIZE + 4096 - SEAL_LEN as u64)),
                (4, 100, Lsn(4 * SIZE + 100 - SEAL_LEN as u64)),
            ]
        );
    }

    #[test]
    fn a_rescan_reads_the_newest_segment_only_when_it_changed() {
        let (_tmp, dd) = dir_with(&[
            (3, SegmentFileKind::Sealed, 4096),
            (4, SegmentFileKind::Sealed, 4096),
            (5, SegmentFileKind::Open, 4096),
        ]);
        let control = dd.read_control().expect("control");
        // Same newest segment as before: its end is taken from the previous scan, unread.
        let previous = SealedSet {
            by_no: BTreeMap::new(),
            sealed_lsn: Lsn(77),
        };
        let mut known = previous.clone();
        known
            .by_no
            .insert(4, SegmentName::new(1, 4, SegmentFileKind::Sealed));
        let set = scan_sealed(&dd, &control, &known).expect("rescan");
        assert_eq!(set.sealed_lsn, Lsn(77));
        assert_eq!((set.oldest(), set.newest()), (Some(3), Some(4)));
        // A new newest segment is checked: garbage is refused.
        assert!(scan_sealed(&dd, &control, &previous).is_err());
        let names = dd.list_segments().expect("names");
        assert!(newest_sealed_end(&dd, &names, &control).is_err());
        assert_eq!(
            newest_sealed_end(&dd, &names[2..], &control).expect("none"),
            Lsn(0)
        );
    }

    #[test]
    fn a_scan_leaves_out_segments_of_a_later_timeline_than_its_control() {
        let (_tmp, dd) = dir_with(&[(3, SegmentFileKind::Sealed, 4096)]);
        let newer = SegmentName::new(2, 4, SegmentFileKind::Sealed);
        std::fs::write(dd.segment_path(&newer), vec![0xAB; 4096]).expect("write");
        let control = dd.read_control().expect("control");
        let mut known = SealedSet {
            by_no: BTreeMap::new(),
            sealed_lsn: Lsn(77),
        };
        known
            .by_no
            .insert(3, SegmentName::new(1, 3, SegmentFileKind::Sealed));
        let set = scan_sealed(&dd, &control, &known).expect("rescan");
        assert_eq!(
            set, known,
            "timeline 2's segment is not timeline 1's to ship"
        );
    }
}
