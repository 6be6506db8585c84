//! A local sealed segment made ready to push: read, checked whole (damage is recorded in the
//! damage register and said as what it is), and encoded for the archive.

use super::*;

/// A sealed segment read, fully checked, and encoded for the archive.
pub(super) struct Prepared {
    pub(super) name: SegmentName,
    pub(super) bytes: Arc<Vec<u8>>,
    pub(super) checked: CheckedSegment,
    /// What goes into the archive: the bytes themselves, or their zstd frame.
    pub(super) stored: Arc<Vec<u8>>,
}

pub(super) fn prepare(
    dir: &DataDir,
    name: SegmentName,
    identity: &ArchiveIdentity,
    c: Compression,
    level: i32,
) -> Result<Prepared> {
    let path = dir.segment_path(&name);
    let bytes = match std::fs::read(&path) {
        Ok(b) => Arc::new(b),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(Error::Other(format!(
                "{}: removed before it was archived",
                path.display()
            )))
        }
        Err(e) => return Err(Error::io(format!("read {}", path.display()), e)),
    };
    // Damage is recorded where operators look (`walship status`), and cleared once the
    // segment checks intact again.
    let register = DamageRegister::new(dir);
    let file = name.to_string();
    let checked = match check_segment_bytes(&path, &name, &bytes, identity, None) {
        Ok(c) => {
            register.clear(Component::Archiver, &file)?;
            c
        }
        Err(e) => {
            let e = local_damage(e);
            if let Some(report) = crate::damage::report_for(Component::Archiver, &file, &e) {
                register.record(&report)?;
            }
            return Err(e);
        }
    };
    let stored = match c {
        Compression::None => bytes.clone(),
        Compression::Zstd => Arc::new(
            zstd::bulk::compress(&bytes, level)
                .map_err(|e| Error::Other(format!("zstd compression failed: {e}")))?,
        ),
    };
    Ok(Prepared {
        name,
        bytes,
        checked,
        stored,
    })
}

/// Damage in a local sealed segment, said as what it is: where (the error's file, offset and
/// LSN), why, that nothing was archived from it on, and what to do.
fn local_damage(e: Error) -> Error {
    match e {
        Error::Corrupt {
            file,
            offset,
            lsn,
            reason,
        } => Error::Corrupt {
            file,
            offset,
            lsn,
            reason: format!(
                "{reason}; this sealed segment in the data directory is damaged, so it and every later segment were not archived: find the cause (disk, memory, another writer), replace the file with an intact copy (a standby's; `walship verify` must pass on it), and the archiver goes on"
            ),
        },
        other => other,
    }
}
