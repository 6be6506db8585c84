//! What an archive holds, as `walship status ARCHIVE` shows it: whose it is, where it begins
//! and ends, how many objects and bytes. Reads the listing, the identity and the newest
//! segment only (`walship verify` checks everything).

use std::path::PathBuf;

use serde::Serialize;

use super::{blocking, check_segment_bytes, decode_object, segment_objects, ArchiveStore};
use crate::error::{Error, Result};
use crate::status::TimelineParent;
use crate::Lsn;

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ArchiveStatus {
    pub location: String,
    pub system_id: String,
    /// The newest timeline: the newest whose history file the archive holds (1 when none).
    pub timeline: u32,
    /// The timelines left on the way to it, oldest first, each with its switch point (empty
    /// on timeline 1).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub timeline_parents: Vec<TimelineParent>,
    /// The timelines whose history files the archive holds, ascending.
    pub history_files: Vec<u32>,
    /// Segments of earlier timelines past where the newest history leaves them (an old
    /// primary's, archived before the promotion was known): not on any restore of the newest
    /// timeline.
    pub off_path_segments: u64,
    pub segment_size: u64,
    /// The segment the archive begins at (its identity's `first_segment`), when recorded.
    pub first_segment: Option<u64>,
    /// Segment objects along the newest timeline's history, and their bytes as stored.
    pub segments: u64,
    pub stored_bytes: u64,
    /// Every object under the archive (the identity and stray objects included).
    pub objects: u64,
    /// The newest archived segment's object name, along the newest timeline's history.
    pub newest: Option<String>,
    /// Where the archive ends: the seal LSN of its newest segment (0 when it holds none).
    pub archived_lsn: Lsn,
}

/// Reads an archive's status.
pub async fn archive_status<S: ArchiveStore>(store: &S) -> Result<ArchiveStatus> {
    let loc = store.location();
    let identity = super::identity::read_identity(store).await?;
    let objects = store.list().await?;
    super::history::timeline_without_history(&loc, &objects)?;
    let path = super::history::newest_history(store, identity.system_id).await?;
    let mut segs = segment_objects(&objects);
    let off_path_segments = super::retain_on_path(&mut segs, &path, identity.segment_size) as u64;
    let mut archived_lsn = Lsn::ZERO;
    let newest = segs.last().map(|(n, c, o)| (*n, *c, o.name.clone()));
    if let Some((name, c, object)) = &newest {
        let file = PathBuf::from(&loc).join(object);
        let data = store.get(object).await?.ok_or_else(|| Error::Corrupt {
            file: file.clone(),
            offset: 0,
            lsn: Lsn(0),
            reason: "vanished from the archive while it was read".into(),
        })?;
        let (name, c) = (*name, *c);
        archived_lsn = blocking(move || {
            let bytes = decode_object(&file, c, data, identity.segment_size)?;
            Ok(check_segment_bytes(&file, &name, &bytes, &identity, None)?.seal_lsn())
        })
        .await?;
    }
    Ok(ArchiveStatus {
        location: loc,
        system_id: identity.system_id.to_string(),
        timeline: path.timeline,
        timeline_parents: TimelineParent::all_of(&path),
        history_files: super::history::history_timelines(&objects),
        off_path_segments,
        segment_size: identity.segment_size,
        first_segment: identity.first_segment,
        segments: segs.len() as u64,
        stored_bytes: segs.iter().map(|(_, _, o)| o.size).sum(),
        objects: objects.len() as u64,
        newest: newest.map(|(_, _, o)| o),
        archived_lsn,
    })
}
