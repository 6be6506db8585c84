//! Writing one prepared segment to the archive: refusing a hole or a broken chain, taking an
//! identical copy already there (once durable), or putting it and reading it back unless the
//! store's answer to the put proved the bytes.

use super::*;

impl<S: ArchiveStore> Archiver<S> {
    /// Checks `p`'s continuity with the archive (in LSN order, on this task), then starts
    /// writing it (or comparing the copy already there) on its own task, so that several
    /// segments can be in flight. The archiver's view of the archive counts it from here; a
    /// failure ends the pass and the next one lists the archive again.
    pub(super) async fn start_push(&mut self, p: Prepared) -> Result<PushTask> {
        let on_path = self.check_on_path(p.name, &p.checked)?;
        self.check_continuity(p.name, &p.checked).await?;
        let up = self.uploader();
        let no = p.name.segment_no.0;
        // A segment off the path (its timeline's, superseded by a switch segment) is stored
        // under its own name and compared with nothing of the path's.
        let existing = if on_path {
            self.archived.get(&no).cloned()
        } else {
            None
        };
        if existing.is_none() && on_path {
            let c = self.opts.compression;
            self.archived.insert(no, (object_name(p.name, c), c));
        }
        self.last = Some((no, p.checked.seal.segment_checksum));
        // A segment the archive already holds is compared before any later one is written:
        // a different copy (another history) refuses the pass with nothing added after it.
        if let Some((object, c)) = existing {
            let outcome = up.compare_existing(&object, c, &p.bytes).await?;
            return Ok(tokio::spawn(async move { Ok((outcome, p.checked)) }));
        }
        Ok(tokio::spawn(async move {
            let outcome = up.put_new(p.name, p.bytes, p.stored).await?;
            Ok((outcome, p.checked))
        }))
    }

    pub(super) async fn push_prepared(
        &mut self,
        p: Prepared,
    ) -> Result<(PushOutcome, CheckedSegment)> {
        let task = self.start_push(p).await?;
        joined(task).await
    }

    pub(super) fn uploader(&self) -> Uploader<S> {
        Uploader {
            store: self.store.clone(),
            segment_size: self.identity.segment_size,
            compression: self.opts.compression,
            read_back: self.opts.read_back,
        }
    }

    /// Refuses to leave a hole in the archive or to add a segment that does not follow the
    /// archived one before it.
    async fn check_continuity(
        &mut self,
        name: SegmentName,
        checked: &CheckedSegment,
    ) -> Result<()> {
        let loc = self.store.location();
        let Some(prev_no) = name.segment_no.0.checked_sub(1) else {
            return Ok(());
        };
        let has_earlier = self.archived.range(..name.segment_no.0).next().is_some();
        if !has_earlier {
            return Ok(());
        }
        let Some((prev_obj, prev_c)) = self.archived.get(&prev_no).cloned() else {
            let (last, _) = self
                .archived
                .range(..name.segment_no.0)
                .next_back()
                .map(|(n, v)| (*n, v.clone()))
                .unwrap_or_default();
            return Err(Error::Refused(format!(
                "{loc} ends at segment {last:X} but the next segment to archive is {name}: segments {:X} to {prev_no:X} were removed from the data directory before they were archived; start a new archive",
                last + 1
            )));
        };
        let prev_sum = match self.last {
            Some((n, s)) if n == prev_no => s,
            _ => {
                // The one before a switch segment is the timeline left's: its own name says.
                let prev_name = parse_object_name(&prev_obj).map_or(
                    SegmentName::new(name.timeline, prev_no, SegmentFileKind::Sealed),
                    |(n, _)| n,
                );
                let data = self
                    .store
                    .get(&prev_obj)
                    .await?
                    .ok_or_else(|| vanished(&loc, &prev_obj))?;
                let identity = self.identity;
                let file = PathBuf::from(&loc).join(&prev_obj);
                blocking(move || {
                    let bytes = decode_object(&file, prev_c, data, identity.segment_size)?;
                    check_segment_bytes(&file, &prev_name, &bytes, &identity, None)
                })
                .await?
                .seal
                .segment_checksum
            }
        };
        if checked.header.prev_checksum != Some(prev_sum) {
            return Err(Error::Refused(format!(
                "{name} does not follow the archived segment before it in {loc} (chain checksum {} vs {prev_sum:08x}): the archive holds a different history",
                checked
                    .header
                    .prev_checksum
                    .map_or("none".into(), |c| format!("{c:08x}"))
            )));
        }
        Ok(())
    }
}

/// A segment being written (or compared) on its own task.
pub(super) type PushTask = tokio::task::JoinHandle<Result<(PushOutcome, CheckedSegment)>>;

/// What writing one segment needs from the archiver, cloned into its task.
pub(super) struct Uploader<S: ArchiveStore> {
    store: Arc<S>,
    segment_size: u64,
    compression: Compression,
    read_back: ReadBack,
}

impl<S: ArchiveStore> Uploader<S> {
    /// Compares an object already in the archive with the local segment. Identical counts as
    /// archived only once the object is durable: it may be what a push that crashed before its
    /// directory sync left behind, or a copy made by hand.
    async fn compare_existing(
        &self,
        object: &str,
        c: Compression,
        local: &Arc<Vec<u8>>,
    ) -> Result<PushOutcome> {
        let held = self.compare_held(object, c, local).await;
        if held.is_err() && c == Compression::Zstd {
            // Removed meanwhile by an archiver that found the segment under both names: it
            // kept the `.wal` one, which must then hold these bytes.
            if let Some((name, _)) = parse_object_name(object) {
                let raw = object_name(name, Compression::None);
                if !self.store.exists(object).await? && self.store.exists(&raw).await? {
                    return self.compare_held(&raw, Compression::None, local).await;
                }
            }
        }
        held
    }

    /// [`Self::compare_existing`] of `object` as it is.
    async fn compare_held(
        &self,
        object: &str,
        c: Compression,
        local: &Arc<Vec<u8>>,
    ) -> Result<PushOutcome> {
        let loc = self.store.location();
        let data = self
            .store
            .get(object)
            .await?
            .ok_or_else(|| vanished(&loc, object))?;
        let file = PathBuf::from(&loc).join(object);
        let (local, size) = (local.clone(), self.segment_size);
        // An object that does not decode (or inflates past a segment) is damage, said as such.
        let same = blocking(move || Ok(decode_object(&file, c, data, size)? == *local)).await?;
        if !same {
            return Err(Error::Refused(format!(
                "{loc} already holds {object} with different content; the archive was left unchanged"
            )));
        }
        self.store.sync(object).await?;
        Ok(PushOutcome::AlreadyArchived {
            object: object.into(),
        })
    }

    /// Stores a segment the archive did not hold when the pass listed it, under the name its
    /// compression gives, and makes sure it ends up under one name only (see [`Self::one_name`]).
    async fn put_new(
        &self,
        name: SegmentName,
        bytes: Arc<Vec<u8>>,
        stored: Arc<Vec<u8>>,
    ) -> Result<PushOutcome> {
        let c = self.compression;
        let object = object_name(name, c);
        let local_len = bytes.len() as u64;
        // The other form of the name may hold this segment already.
        let other = other_form(c);
        let other_name = object_name(name, other);
        if self.store.exists(&other_name).await? {
            let found = self.compare_existing(&other_name, other, &bytes).await?;
            return self.one_name(name, other, found, &bytes).await;
        }
        let outcome = match self.store.put(&object, stored.clone()).await? {
            PutOutcome::AlreadyExists => self.compare_existing(&object, c, &bytes).await?,
            PutOutcome::Created { verified } => {
                let proven = verified && self.read_back == ReadBack::Unproven;
                if !proven && !self.read_back(name, &object, bytes.clone()).await? {
                    // Removed since: an archiver writing the other form found both and kept
                    // its copy, which must then hold these bytes.
                    return self.compare_existing(&other_name, other, &bytes).await;
                }
                tracing::debug!(object = %object, stored = stored.len(), read_back = !proven, "archived segment");
                PushOutcome::Archived {
                    object,
                    bytes: local_len,
                    stored_bytes: stored.len() as u64,
                    read_back: !proven,
                }
            }
        };
        self.one_name(name, c, outcome, &bytes).await
    }

    /// After the segment was found or written under its `c` form (`outcome`): an archiver
    /// with the other compression may have written the other form meanwhile, since no store
    /// creates one of two names atomically. Each of two racing archivers looks at the other
    /// name only once its own object is there, so at least one of them sees both. Both names
    /// resolve the same way whoever sees them: the `.wal` object stays, and the `.wal.zst`
    /// one is removed once it is shown to decompress to the same bytes (the local segment's,
    /// which the kept one was compared with). Different content under the two names is
    /// refused with both left for the operator: neither is known to be the right one.
    async fn one_name(
        &self,
        name: SegmentName,
        c: Compression,
        outcome: PushOutcome,
        local: &Arc<Vec<u8>>,
    ) -> Result<PushOutcome> {
        let loc = self.store.location();
        let other = other_form(c);
        let Some(same) = self.other_name_holds(name, other, local.clone()).await? else {
            return Ok(outcome);
        };
        let (raw, zst) = (
            object_name(name, Compression::None),
            object_name(name, Compression::Zstd),
        );
        if !same {
            return Err(Error::Refused(format!(
                "{loc} holds segment {name} under both names, {raw} and {zst}, with different content (two archivers of different histories wrote it at once): a restore refuses the archive until one is removed; nothing was removed"
            )));
        }
        self.store.delete(&zst).await?;
        tracing::warn!(archive = %loc, kept = %raw, removed = %zst, "another archiver stored the same segment under the other name at the same time; kept one");
        match c {
            Compression::None => Ok(outcome),
            Compression::Zstd => {
                self.store.sync(&raw).await?;
                Ok(PushOutcome::AlreadyArchived { object: raw })
            }
        }
    }

    /// Whether segment `name`'s object under its `form` name decodes to `expect`; `None` when
    /// there is no such object (never written, or removed by a racing archiver).
    async fn other_name_holds(
        &self,
        name: SegmentName,
        form: Compression,
        expect: Arc<Vec<u8>>,
    ) -> Result<Option<bool>> {
        let object = object_name(name, form);
        if !self.store.exists(&object).await? {
            return Ok(None);
        }
        let Some(data) = self.store.get(&object).await? else {
            return Ok(None);
        };
        let file = PathBuf::from(self.store.location()).join(&object);
        let size = self.segment_size;
        let same =
            blocking(
                move || Ok(decode_object(&file, form, data, size).is_ok_and(|d| d == *expect)),
            )
            .await?;
        Ok(Some(same))
    }

    /// Segment `name` found under both names when the archive is listed (an archiver stopped
    /// between storing its object and looking at the other name, see [`Self::one_name`]):
    /// settled as a racing archiver settles them, the `.wal.zst` object removed when it
    /// decodes to the same bytes as the `.wal` one. False when they differ or the `.wal` one
    /// does not decode: both are left for the operator.
    pub(super) async fn settle_both_names(&self, name: SegmentName) -> Result<bool> {
        let (raw, zst) = (
            object_name(name, Compression::None),
            object_name(name, Compression::Zstd),
        );
        let Some(data) = self.store.get(&raw).await? else {
            return Ok(true);
        };
        let file = PathBuf::from(self.store.location()).join(&raw);
        let size = self.segment_size;
        let Ok(kept) = blocking(move || decode_object(&file, Compression::None, data, size)).await
        else {
            return Ok(false);
        };
        match self
            .other_name_holds(name, Compression::Zstd, Arc::new(kept))
            .await?
        {
            Some(false) => Ok(false),
            Some(true) => {
                self.store.delete(&zst).await?;
                tracing::warn!(archive = %self.store.location(), kept = %raw, removed = %zst, "the archive held one segment under both names with the same content (an archiver stopped before it settled them); kept one");
                Ok(true)
            }
            None => Ok(true),
        }
    }

    /// Reads a written object back from storage and compares it with the local bytes; false
    /// when it is gone.
    async fn read_back(
        &self,
        name: SegmentName,
        object: &str,
        bytes: Arc<Vec<u8>>,
    ) -> Result<bool> {
        let c = self.compression;
        let Some(back) = self.store.get(object).await? else {
            return Ok(false);
        };
        let file = PathBuf::from(self.store.location()).join(object);
        let size = self.segment_size;
        let same =
            blocking(move || Ok(decode_object(&file, c, back, size).is_ok_and(|d| d == *bytes)))
                .await?;
        if !same {
            return Err(Error::Corrupt {
                file: PathBuf::from(self.store.location()).join(object),
                offset: 0,
                lsn: name.segment_no.start_lsn_saturating(self.segment_size),
                reason: "read back from the archive differs from what was written".into(),
            });
        }
        Ok(true)
    }
}

/// The other way a segment may be stored.
fn other_form(c: Compression) -> Compression {
    match c {
        Compression::None => Compression::Zstd,
        Compression::Zstd => Compression::None,
    }
}

/// An object listed a moment ago is gone: the archive is losing objects (being removed?), which
/// the next pass's completeness check sorts out.
fn vanished(loc: &str, object: &str) -> Error {
    Error::Corrupt {
        file: PathBuf::from(loc).join(object),
        offset: 0,
        lsn: Lsn(0),
        reason: "vanished from the archive while the archiver was using it".into(),
    }
}
