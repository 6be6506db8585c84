//! The archiver: pushes every sealed segment of a data directory to an archive, in LSN order,
//! and records its progress in the consumer registry so that a restart resumes and retention
//! keeps what it has not pushed yet. It never takes the writer lock: it reads sealed files only.
//!
//! Here: pushing (reading, checking, writing, reading back) and the watch loop;
//! `prepare.rs`: reading a local sealed segment, checking it whole
//! (damage goes to the damage register) and encoding it; `completeness.rs`: where the archive begins and the check that it holds every segment from
//! there before the archiver trusts its position; `retry.rs`: the pause and the log lines of a
//! failing pass.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::{
    blocking, check_object_len, check_segment_bytes, decode_object, joined, object_name,
    segment_objects, ArchiveIdentity, ArchiveStore, CheckedSegment, Compression, PutOutcome,
    IDENTITY_NAME,
};
use crate::consumers::{ConsumerKind, ConsumerRecord, ConsumerRegistry};
use crate::damage::{Component, DamageRegister};
use crate::datadir::DataDir;
use crate::error::{Error, Result};
use crate::format::SegmentNo;
use crate::format::{ControlFile, SegmentFileKind, SegmentName};
use crate::Lsn;

mod completeness;
mod prepare;
mod retry;

use prepare::{prepare, Prepared};
use retry::{Backoff, FailureStreak};

/// The archiver's id in the consumer registry.
pub const ARCHIVER_ID: &str = "archiver";

#[derive(Clone, Debug)]
pub struct ArchiverOptions {
    pub compression: Compression,
    /// zstd level (1 fastest .. 19 smallest).
    pub zstd_level: i32,
    /// Warn when sealed segments not yet archived add up to more than this many bytes.
    pub warn_lag_bytes: u64,
    /// How often the watch loop rescans wal/ even without a notification (watchers can drop
    /// events).
    pub rescan_interval: Duration,
}

impl Default for ArchiverOptions {
    fn default() -> Self {
        ArchiverOptions {
            compression: Compression::None,
            zstd_level: 3,
            warn_lag_bytes: 256 << 20,
            rescan_interval: Duration::from_secs(10),
        }
    }
}

/// What pushing one segment did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PushOutcome {
    /// Written, read back and found identical.
    Archived {
        object: String,
        bytes: u64,
        stored_bytes: u64,
    },
    /// An identical copy was already in the archive.
    AlreadyArchived { object: String },
}

/// The result of one pass over wal/.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PassSummary {
    pub archived: u64,
    pub already_archived: u64,
    /// Segment bytes pushed (uncompressed).
    pub bytes: u64,
    /// Bytes written to the archive.
    pub stored_bytes: u64,
    /// The archiver's position after the pass: the seal LSN of the last archived segment.
    pub position: u64,
    /// Sealed bytes that were waiting when the pass started.
    pub lag_bytes: u64,
}

/// Pushes a data directory's sealed segments to one archive.
pub struct Archiver<S: ArchiveStore> {
    dir: DataDir,
    control: ControlFile,
    identity: ArchiveIdentity,
    store: Arc<S>,
    opts: ArchiverOptions,
    registry: ConsumerRegistry,
    /// Segments the archive holds: segment number to (object name, compression), as of the
    /// last listing.
    archived: BTreeMap<u64, (String, Compression)>,
    /// The segment the archive begins at: from its identity (layout 2), or for a version-1
    /// archive the first segment it holds.
    begin: Option<u64>,
    /// Segment number and seal checksum of the newest segment pushed or found, for the chain.
    last: Option<(u64, u32)>,
    position: u64,
}

impl<S: ArchiveStore> Archiver<S> {
    /// Checks (or creates) the archive's identity, then registers the archiver as a consumer
    /// of `data_dir`. Another system's archive is refused before anything is written.
    pub async fn new(data_dir: DataDir, store: Arc<S>, opts: ArchiverOptions) -> Result<Self> {
        let control = data_dir.read_control()?;
        let ours = ArchiveIdentity::from_control(&control);
        // A lost archiver stops before touching the archive.
        let registry = ConsumerRegistry::new(&data_dir);
        let location = store.location();
        let position = match registry.get(ARCHIVER_ID)? {
            Some(r) if r.lost => {
                return Err(Error::Refused(format!(
                    "the archiver of {} was marked lost by retention (it fell further behind than the cap) and segments it had not archived were removed; drop it with `walship checkpoint {} --drop-consumer {ARCHIVER_ID}` and start a new archive",
                    data_dir.root().display(),
                    data_dir.root().display()
                )))
            }
            Some(r) if r.address.as_deref() == Some(location.as_str()) => r.position,
            Some(r) => {
                tracing::warn!(previous = ?r.address, archive = %location, "the archiver last pushed to another archive; starting over from the oldest sealed segment");
                0
            }
            None => 0,
        };
        let objects = store.list().await?;
        let segments = segment_objects(&objects);
        let existing = if objects.iter().any(|o| o.name == IDENTITY_NAME) {
            Some(check_identity(&*store, &ours).await?)
        } else if let Some((n, _, _)) = segments.first() {
            return Err(Error::Refused(format!(
                "{location} holds segments ({n} and others) but no {IDENTITY_NAME} file: not a walship archive, or a damaged one"
            )));
        } else {
            None
        };
        let mut a = Archiver {
            dir: data_dir,
            control,
            identity: existing.unwrap_or(ours),
            store,
            opts,
            registry,
            archived: BTreeMap::new(),
            begin: None,
            last: None,
            position,
        };
        // Register before looking at wal/, so retention keeps everything from here on.
        a.save_position(position)?;
        if existing.is_none() {
            a.identity.first_segment = Some(a.first_segment_of_new_archive(position)?);
            a.write_identity().await?;
        }
        Ok(a)
    }

    /// The archiver's position: the seal LSN of the last archived segment.
    pub fn position(&self) -> Lsn {
        Lsn(self.position)
    }

    fn save_position(&mut self, position: u64) -> Result<()> {
        let mut rec = self
            .registry
            .get(ARCHIVER_ID)?
            .unwrap_or_else(|| ConsumerRecord {
                id: ARCHIVER_ID.into(),
                kind: ConsumerKind::Archiver,
                position: 0,
                applied_lsn: None,
                address: None,
                last_contact_us: None,
                lost: false,
            });
        if rec.lost {
            return Err(Error::Refused(format!(
                "the archiver of {} was marked lost by retention while it ran; segments it had not archived may be gone",
                self.dir.root().display()
            )));
        }
        rec.position = position;
        rec.address = Some(self.store.location());
        rec.last_contact_us = Some(crate::now_us());
        self.registry.save(&rec)?;
        self.position = position;
        Ok(())
    }

    /// Sealed segments not yet archived, oldest first, with their sizes.
    fn pending(&self) -> Result<Vec<(SegmentName, u64)>> {
        let mut out = Vec::new();
        for n in self.dir.list_segments()? {
            // Segments before the beginning a (version 2) archive records are not its to hold;
            // a version-1 archive's beginning is only inferred, so older segments may extend it.
            if n.kind != SegmentFileKind::Sealed
                || n.segment_no.start_lsn_saturating(self.control.segment_size) < self.position
                || self
                    .identity
                    .first_segment
                    .is_some_and(|b| n.segment_no.0 < b)
            {
                continue;
            }
            let size = std::fs::metadata(self.dir.segment_path(&n))
                .map(|m| m.len())
                .unwrap_or(0);
            out.push((n, size));
        }
        Ok(out)
    }

    /// Pushes every sealed segment not yet archived, oldest first, recording progress after
    /// each one.
    pub async fn push_pending(&mut self) -> Result<PassSummary> {
        self.reconcile().await?;
        let pending = self.pending()?;
        let mut sum = PassSummary {
            lag_bytes: pending.iter().map(|(_, s)| s).sum(),
            ..PassSummary::default()
        };
        if sum.lag_bytes > self.opts.warn_lag_bytes {
            tracing::warn!(
                behind_bytes = sum.lag_bytes,
                segments = pending.len(),
                bound = self.opts.warn_lag_bytes,
                "the archiver is behind by more than the bound"
            );
        }
        // Segment i+1 is read, checked and compressed while segment i is written and read
        // back.
        let mut next = pending.first().map(|(n, _)| self.prepare(*n));
        for i in 0..pending.len() {
            let Some(task) = next.take() else { break };
            let prepared = joined(task).await?;
            next = pending.get(i + 1).map(|(n, _)| self.prepare(*n));
            let (outcome, checked) = self.push_prepared(prepared).await?;
            match outcome {
                PushOutcome::Archived {
                    bytes,
                    stored_bytes,
                    ..
                } => {
                    sum.archived += 1;
                    sum.bytes += bytes;
                    sum.stored_bytes += stored_bytes;
                }
                PushOutcome::AlreadyArchived { .. } => sum.already_archived += 1,
            }
            self.save_position(checked.seal_lsn())?;
        }
        sum.position = self.position;
        Ok(sum)
    }

    /// Pushes one sealed segment: checks it, refuses a gap or a broken chain in the archive,
    /// writes it (or finds an identical copy), reads it back and compares.
    pub async fn push_segment(
        &mut self,
        name: SegmentName,
    ) -> Result<(PushOutcome, CheckedSegment)> {
        let prepared = joined(self.prepare(name)).await?;
        self.push_prepared(prepared).await
    }

    /// Reads, checks and encodes a segment off the async threads.
    fn prepare(&self, name: SegmentName) -> tokio::task::JoinHandle<Result<Prepared>> {
        let dir = self.dir.clone();
        let (identity, c, level) = (self.identity, self.opts.compression, self.opts.zstd_level);
        tokio::task::spawn_blocking(move || prepare(&dir, name, &identity, c, level))
    }

    async fn push_prepared(&mut self, p: Prepared) -> Result<(PushOutcome, CheckedSegment)> {
        self.check_continuity(p.name, &p.checked).await?;
        let outcome = match self.archived.get(&p.name.segment_no.0).cloned() {
            Some((object, c)) => self.compare_existing(&object, c, &p.bytes).await?,
            None => self.put_new(p.name, p.bytes, p.stored).await?,
        };
        self.last = Some((p.name.segment_no.0, p.checked.seal.segment_checksum));
        Ok((outcome, p.checked))
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
                let prev_name = SegmentName::new(name.timeline, prev_no, SegmentFileKind::Sealed);
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

    /// Compares an object already in the archive with the local segment. Identical counts as
    /// archived only once the object is durable: it may be what a push that crashed before its
    /// directory sync left behind, or a copy made by hand.
    async fn compare_existing(
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
        let (local, size) = (local.clone(), self.identity.segment_size);
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

    async fn put_new(
        &mut self,
        name: SegmentName,
        bytes: Arc<Vec<u8>>,
        stored: Arc<Vec<u8>>,
    ) -> Result<PushOutcome> {
        let c = self.opts.compression;
        let object = object_name(name, c);
        let local_len = bytes.len() as u64;
        // The other form of the name may hold this segment already.
        let other = match c {
            Compression::None => Compression::Zstd,
            Compression::Zstd => Compression::None,
        };
        let other_name = object_name(name, other);
        if self.store.exists(&other_name).await? {
            self.archived
                .insert(name.segment_no.0, (other_name.clone(), other));
            return self.compare_existing(&other_name, other, &bytes).await;
        }
        match self.store.put(&object, stored.clone()).await? {
            PutOutcome::AlreadyExists => {
                self.archived.insert(name.segment_no.0, (object.clone(), c));
                return self.compare_existing(&object, c, &bytes).await;
            }
            PutOutcome::Created => {}
        }
        self.archived.insert(name.segment_no.0, (object.clone(), c));
        // Read back from storage and compare with the local file.
        let back = self.store.get(&object).await?;
        let file = PathBuf::from(self.store.location()).join(&object);
        let size = self.identity.segment_size;
        let same = blocking(move || {
            Ok(match back {
                Some(d) => decode_object(&file, c, d, size).is_ok_and(|d| d == *bytes),
                None => false,
            })
        })
        .await?;
        if !same {
            return Err(Error::Corrupt {
                file: PathBuf::from(self.store.location()).join(&object),
                offset: 0,
                lsn: Lsn(name
                    .segment_no
                    .start_lsn_saturating(self.control.segment_size)),
                reason: "read back from the archive differs from what was written".into(),
            });
        }
        tracing::debug!(object = %object, stored = stored.len(), "archived segment");
        Ok(PushOutcome::Archived {
            object,
            bytes: local_len,
            stored_bytes: stored.len() as u64,
        })
    }

    /// Archives continuously until `shutdown` completes: a pass at start, then one whenever
    /// wal/ changes (notify) and at least every `rescan_interval`. A pass that fails on storage
    /// I/O or on damage is retried after a capped exponential backoff with jitter (wal/
    /// notifications do not cut the pause short); the first failure is logged at once, repeats
    /// as a count, and the recovery too. Refusals stop the loop.
    pub async fn run(&mut self, shutdown: impl std::future::Future<Output = ()>) -> Result<()> {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<()>(1);
        let watcher = watch(&self.dir.wal_dir(), tx);
        let watching = watcher.is_some();
        tokio::pin!(shutdown);
        let mut streak: Option<FailureStreak> = None;
        let mut backoff = Backoff::default();
        loop {
            let pause = match self.push_pending().await {
                Ok(s) => {
                    if let Some(f) = streak.take() {
                        tracing::info!(
                            failures = f.count,
                            position = %Lsn(s.position),
                            "archive pass succeeded again after {} failed attempts since {}",
                            f.count,
                            f.since
                        );
                    }
                    backoff = Backoff::default();
                    if s.archived + s.already_archived > 0 {
                        tracing::info!(
                            archived = s.archived,
                            already_archived = s.already_archived,
                            position = %Lsn(s.position),
                            "archive pass done"
                        );
                    }
                    None
                }
                Err(e @ (Error::Io { .. } | Error::Corrupt { .. })) => {
                    FailureStreak::record(&mut streak, &e);
                    Some(backoff.next_pause())
                }
                Err(e) => return Err(e),
            };
            match pause {
                Some(pause) => {
                    tokio::select! {
                        _ = &mut shutdown => return Ok(()),
                        _ = tokio::time::sleep(pause) => {}
                    }
                    // Changes seen meanwhile are covered by the next pass.
                    while rx.try_recv().is_ok() {}
                }
                None => {
                    tokio::select! {
                        _ = &mut shutdown => return Ok(()),
                        _ = rx.recv(), if watching => {}
                        _ = tokio::time::sleep(self.opts.rescan_interval) => {}
                    }
                }
            }
        }
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

/// Watches `dir` and sends a wake-up on every change; `None` (with a warning) when watching is
/// not possible, in which case the periodic rescan alone finds new segments.
fn watch(dir: &std::path::Path, tx: tokio::sync::mpsc::Sender<()>) -> Option<impl Drop> {
    use notify::Watcher;
    let w = notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
        if ev.is_ok() {
            let _ = tx.try_send(());
        }
    });
    match w.and_then(|mut w| {
        w.watch(dir, notify::RecursiveMode::NonRecursive)?;
        Ok(w)
    }) {
        Ok(w) => Some(w),
        Err(e) => {
            tracing::warn!(error = %e, dir = %dir.display(), "cannot watch the directory; relying on periodic rescans");
            None
        }
    }
}

/// Reads the archive's identity and checks that it describes this data directory's segments;
/// returns it (with the segment the archive begins at).
async fn check_identity<S: ArchiveStore>(
    store: &S,
    ours: &ArchiveIdentity,
) -> Result<ArchiveIdentity> {
    let loc = store.location();
    let data = store
        .get(IDENTITY_NAME)
        .await?
        .ok_or_else(|| Error::Other(format!("{loc}: {IDENTITY_NAME} vanished")))?;
    let theirs = ArchiveIdentity::decode(&data).map_err(|reason| Error::Corrupt {
        file: PathBuf::from(&loc).join(IDENTITY_NAME),
        offset: 0,
        lsn: Lsn(0),
        reason,
    })?;
    if theirs.system_id != ours.system_id {
        return Err(Error::Refused(format!(
            "{loc} is the archive of system {}; this data directory is system {}: nothing was pushed",
            theirs.system_id, ours.system_id
        )));
    }
    if !theirs.same_system(ours) {
        return Err(Error::Refused(format!(
            "{loc} was made for timeline {}, segment size {}, format {}; this data directory has timeline {}, segment size {}, format {}",
            theirs.timeline, theirs.segment_size, theirs.format_version, ours.timeline, ours.segment_size, ours.format_version
        )));
    }
    Ok(theirs)
}
