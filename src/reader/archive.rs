//! A directory archive read as a folder of segments: its objects (compressed or not) along the
//! history of the newest timeline it holds, from the segment it begins at, as `restore` takes
//! them.

use crate::archive::history::{chosen_history, TimelineChoice};
use crate::archive::identity::{ArchiveIdentity, IDENTITY_NAME};
use crate::archive::store::{list_dir, LocalDirStore};
use crate::archive::{decode_object, object_name, retain_on_path, segment_objects, Compression};
use crate::timeline::History;

use super::*;

/// A directory archive and the path through it that a reader follows.
#[derive(Clone, Debug)]
pub struct ArchiveSource {
    pub root: PathBuf,
    pub identity: ArchiveIdentity,
    /// The newest timeline's history: which timeline's copy of each segment is read.
    pub history: History,
}

impl ArchiveSource {
    /// Reads the archive's identity file and its newest history (a damaged one, or one of
    /// another system, is damage named by its file).
    pub fn open(root: &Path) -> Result<ArchiveSource> {
        let id_path = root.join(IDENTITY_NAME);
        let bytes = std::fs::read(&id_path).ctx(|| format!("read {}", id_path.display()))?;
        let identity = ArchiveIdentity::decode(&bytes).map_err(|reason| Error::Corrupt {
            file: id_path.clone(),
            offset: 0,
            lsn: Lsn(0),
            reason,
        })?;
        let store = LocalDirStore::open(root)?;
        let history = tokio::runtime::Builder::new_current_thread()
            .build()
            .map_err(|e| Error::io("start a runtime to read the archive", e))?
            .block_on(chosen_history(
                &store,
                TimelineChoice::Latest,
                identity.system_id,
            ))?;
        Ok(ArchiveSource {
            root: root.to_path_buf(),
            identity,
            history,
        })
    }

    /// The segments the archive holds now along the history, in order, each with the form it is
    /// stored in. One segment stored under both names is damage (a restore refuses it too).
    pub fn segments(&self) -> Result<Vec<(SegmentName, Compression)>> {
        let mut segs = segment_objects(&list_dir(&self.root)?);
        retain_on_path(&mut segs, &self.history, self.identity.segment_size);
        // Segments before the one the archive begins at are pruning's leftovers.
        let begin = self.identity.first_segment.unwrap_or(0);
        segs.retain(|(n, _, _)| n.segment_no.0 >= begin);
        if let Some(w) = segs.windows(2).find(|w| w[0].0 == w[1].0) {
            let (n, a, b) = (w[0].0, &w[0].2.name, &w[1].2.name);
            return Err(Error::Corrupt {
                file: self.root.join(b),
                offset: 0,
                lsn: n
                    .segment_no
                    .start_lsn_saturating(self.identity.segment_size),
                reason: format!("segment {n} is stored twice, as {a} and {b}"),
            });
        }
        Ok(segs.into_iter().map(|(n, c, _)| (n, c)).collect())
    }

    /// The path of segment `name`'s object in its form `c`.
    pub fn object_path(&self, name: SegmentName, c: Compression) -> PathBuf {
        self.root.join(object_name(name, c))
    }

    /// The segment's bytes from its object at `path`, inflated when compressed.
    pub fn read(&self, path: &Path, c: Compression, buf: &mut Vec<u8>) -> Result<()> {
        let f = crate::fsutil::open_regular(path)?;
        let mut data = Vec::new();
        std::io::Read::read_to_end(&mut &f, &mut data)
            .ctx(|| format!("read {}", path.display()))?;
        *buf = decode_object(path, c, data, self.identity.segment_size)?;
        Ok(())
    }
}

impl WalReader {
    /// The history a reader of an archive follows (`None` for any other source).
    pub fn archive_history(&self) -> Option<&History> {
        match &self.source {
            WalSource::Archive(a) => Some(&a.history),
            _ => None,
        }
    }
}
