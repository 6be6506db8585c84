//! Where a path given by a user points: a data directory, its wal/ folder, a folder of
//! segments or one segment file, and the identity its segments must have.

use super::archive::ArchiveSource;
use super::*;

/// Where a path given by a user points.
#[derive(Clone, Debug)]
pub enum WalSource {
    /// A folder of segments (a data directory's wal/, or an archive).
    Dir(PathBuf),
    /// One segment file.
    File(PathBuf),
    /// A directory archive: its segments, compressed or not, along its newest timeline.
    Archive(Box<ArchiveSource>),
}

impl WalSource {
    /// Accepts a data directory, its wal/ folder, one segment file, or a folder of segments.
    /// A directory that has a `control` file or a `wal/` entry is a data directory and must
    /// have both; a path that is neither a regular file nor a directory is refused.
    pub fn resolve(path: &Path) -> Result<WalSource> {
        let meta = std::fs::metadata(path).ctx(|| format!("{}", path.display()))?;
        if meta.is_file() {
            return Ok(WalSource::File(path.to_path_buf()));
        }
        if !meta.is_dir() {
            return Err(Error::InvalidArgument(format!(
                "{}: is a {}: not a data directory, wal/ folder or segment file",
                path.display(),
                crate::fsutil::file_kind(&meta.file_type())
            )));
        }
        let has_control = std::fs::symlink_metadata(path.join("control")).is_ok();
        let wal = path.join("wal");
        if has_control || std::fs::symlink_metadata(&wal).is_ok() {
            if !has_control {
                return Err(Error::NotADataDir {
                    path: path.to_path_buf(),
                    reason: "it has a wal/ folder but no control file (its identity is missing)"
                        .into(),
                });
            }
            if !wal.is_dir() {
                return Err(Error::NotADataDir {
                    path: path.to_path_buf(),
                    reason: "it has a control file but no wal/ folder".into(),
                });
            }
            return Ok(WalSource::Dir(wal));
        }
        if crate::archive::is_archive(path) {
            return Ok(WalSource::Archive(Box::new(ArchiveSource::open(path)?)));
        }
        let source = WalSource::Dir(path.to_path_buf());
        // A folder of segments: a data directory's wal/ (which may be empty), or one that
        // holds segments. Any other directory is not a walship path.
        if source.data_dir().is_none()
            && !list_segments_in(path)?
                .iter()
                .any(|n| matches!(n.kind, SegmentFileKind::Sealed | SegmentFileKind::Open))
        {
            return Err(Error::InvalidArgument(format!(
                "{}: not a walship path: no control file or wal/ folder (a data directory) and no segment files",
                path.display()
            )));
        }
        Ok(source)
    }

    /// The data directory this source sits in, when it is one's wal/ folder or a file in it:
    /// what its segments must belong to.
    pub fn data_dir(&self) -> Option<DataDir> {
        let wal = match self {
            WalSource::Dir(d) => d.clone(),
            WalSource::Archive(_) => return None,
            // A bare file name sits in the current directory.
            WalSource::File(f) => match f.parent()? {
                p if p.as_os_str().is_empty() => PathBuf::from("."),
                p => p.to_path_buf(),
            },
        };
        // Resolved, so that `.`, `..` or a link still find the directory it sits in.
        let wal = wal.canonicalize().ok()?;
        let root = wal.parent()?;
        let is_wal = wal.file_name().is_some_and(|n| n == "wal");
        (is_wal && std::fs::symlink_metadata(root.join("control")).is_ok())
            .then(|| DataDir::new(root))
    }

    /// The identity every segment read from this source must have: the data directory's
    /// control file when the source sits in a data directory (a damaged control file is an
    /// error), an archive's identity file, otherwise none (the first segment's header then sets it).
    pub fn identity(&self) -> Result<Option<Identity>> {
        if let WalSource::Archive(a) = self {
            return Ok(Some(a.identity.system));
        }
        match self.data_dir() {
            Some(dd) => Ok(Some(Identity::from(&dd.read_control()?))),
            None => Ok(None),
        }
    }
}
