//! The archiver: pushes every sealed segment of a data directory to an archive, in LSN order,
//! and records its progress in the consumer registry so that a restart resumes and retention
//! keeps what it has not pushed yet. It never takes the writer lock: it reads sealed files only.
//!
//! Here: the archiver's position, the passes over pending segments and the watch loop;
//! `prepare.rs`: reading a local sealed segment, checking it whole (damage goes to the damage
//! register) and encoding it; `push.rs`: writing one prepared segment to the archive (its
//! continuity with the archived chain, an existing copy, the read-back); `completeness.rs`:
//! where the archive begins and the check that it holds every segment from there before the
//! archiver trusts its position; `retry.rs`: the pause and the log lines of a failing pass;
//! `timelines.rs`: the history the archive follows, the history files pushed, and which
//! timeline's segment each segment number is along it; `registration.rs`: the archiver's
//! registration as a consumer of the data directory, one per archive.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use super::{
    blocking, check_object_len, check_segment_bytes, decode_object, joined, object_name,
    parse_object_name, segment_objects, ArchiveIdentity, ArchiveStore, CheckedSegment, Compression,
    PutOutcome, IDENTITY_NAME,
};
use crate::consumers::{ConsumerKind, ConsumerRecord, ConsumerRegistry};
use crate::damage::{Component, DamageRegister};
use crate::datadir::{DataDir, CONTROL_NAME};
use crate::episode::Episode;
use crate::error::{Error, Result};
use crate::format::SegmentNo;
use crate::format::{ControlFile, SegmentFileKind, SegmentName};
use crate::Lsn;

mod completeness;
mod prepare;
mod push;
mod registration;
mod retry;
mod timelines;

use prepare::{prepare, Prepared};
use registration::{register, registration_of};
use retry::{Backoff, FailureStreak};

/// The default of [`ArchiverOptions::warn_lag_time`].
pub const DEFAULT_WARN_LAG_TIME: Duration = Duration::from_secs(300);

/// The archiver's id in the consumer registry; the archiver of a second archive of the same
/// data directory registers under an id of its own (`registration.rs`).
pub const ARCHIVER_ID: &str = "archiver";

#[derive(Clone, Debug)]
pub struct ArchiverOptions {
    pub compression: Compression,
    /// zstd level (1 fastest .. 19 smallest).
    pub zstd_level: i32,
    /// Warn (once per episode) when sealed segments not yet archived add up to more than this
    /// many bytes...
    pub warn_lag_bytes: u64,
    /// ...or when the oldest of them was sealed longer ago than this.
    pub warn_lag_time: Duration,
    /// How often the watch loop rescans wal/ even without a notification (watchers can drop
    /// events).
    pub rescan_interval: Duration,
    /// Segments written to the archive at the same time (at least 1). Progress is recorded in
    /// LSN order whatever order they complete in. Above 1, two archivers racing on one archive
    /// (a misconfiguration) can leave segments of both histories in it, which `verify` reports
    /// as a broken chain; at 1 the loser stops at its first conflicting segment.
    pub parallel: usize,
    /// When a written object is read back and compared with the local bytes.
    pub read_back: ReadBack,
}

/// When the archiver reads a written object back from the store and compares it with the
/// local segment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ReadBack {
    /// Only when the store's answer does not prove the bytes: always for a directory archive
    /// (read from the device), for an S3 store when the PUT's ETag is not the MD5 of what was
    /// sent (encryption with KMS keys or customer keys, some S3-compatible stores).
    #[default]
    Unproven,
    /// After every write, whatever the store answered (every byte crosses the link twice).
    Always,
}

impl Default for ArchiverOptions {
    fn default() -> Self {
        ArchiverOptions {
            compression: Compression::None,
            zstd_level: 3,
            warn_lag_bytes: 256 << 20,
            warn_lag_time: DEFAULT_WARN_LAG_TIME,
            rescan_interval: Duration::from_secs(10),
            parallel: 1,
            read_back: ReadBack::Unproven,
        }
    }
}

/// What pushing one segment did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PushOutcome {
    /// Written, and either read back and found identical (`read_back`) or proven identical by
    /// the store's answer.
    Archived {
        object: String,
        bytes: u64,
        stored_bytes: u64,
        read_back: bool,
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
    /// Segments written that were read back and compared (the others were proven by the
    /// store's answer to the write).
    pub read_back: u64,
    /// The archiver's position after the pass: the seal LSN of the last archived segment.
    pub position: Lsn,
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
    /// Its id in the registry (`registration.rs`); empty until it registers.
    consumer_id: String,
    /// Segments the archive holds: segment number to (object name, compression), as of the
    /// last listing.
    archived: BTreeMap<u64, (String, Compression)>,
    /// The segment the archive begins at: from its identity (layout 2), or for a version-1
    /// archive the first segment it holds.
    begin: Option<u64>,
    /// Segment number and seal checksum of the newest segment pushed or found, for the chain.
    last: Option<(u64, u32)>,
    position: Lsn,
    /// The archiver-behind warning, once per episode.
    behind: Episode,
    /// The history the archive is kept complete along: the newer of the archive's and the
    /// directory's, as of the last pass.
    path: crate::timeline::History,
    /// Timelines whose history files this archiver has pushed or found identical.
    histories_pushed: BTreeSet<u32>,
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
        let record = registration_of(&registry, &location)?;
        let position = match &record {
            Some(r) if r.lost => {
                return Err(Error::Refused(format!(
                    "the archiver of {} was marked lost by retention (it fell further behind than the cap) and segments it had not archived were removed; drop it with `walship checkpoint {} --drop-consumer {}` and start a new archive",
                    data_dir.root().display(),
                    data_dir.root().display(),
                    r.id
                )))
            }
            Some(r) if r.address.as_deref() == Some(location.as_str()) => r.position,
            _ => Lsn::ZERO,
        };
        let consumer_id = record.map(|r| r.id).unwrap_or_default();
        let objects = store.list().await?;
        // A data directory (this one, or another) given as the target by mistake: segments
        // pushed there would mix with its own files, and `status`/`verify` of it would report
        // on the archive instead.
        if objects.iter().any(|o| o.name == CONTROL_NAME) {
            return Err(Error::Refused(format!(
                "{location} holds a `{CONTROL_NAME}` file: it is a walship data directory, not an archive; nothing was written. Archive into a directory of its own (--to)"
            )));
        }
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
            consumer_id,
            archived: BTreeMap::new(),
            begin: None,
            last: None,
            position,
            behind: Episode::new("archiver behind"),
            path: crate::timeline::History::root(),
            histories_pushed: BTreeSet::new(),
        };
        // Register before looking at wal/, so retention keeps everything from here on.
        if a.consumer_id.is_empty() {
            a.consumer_id = register(&a.registry, &location)?;
        }
        a.save_position(position)?;
        if existing.is_none() {
            a.identity.first_segment = Some(a.first_segment_of_new_archive(position)?);
            a.write_identity().await?;
        }
        Ok(a)
    }

    /// The archiver's position: the seal LSN of the last archived segment.
    pub fn position(&self) -> Lsn {
        self.position
    }

    fn save_position(&mut self, position: Lsn) -> Result<()> {
        let mut rec = self.registry.get(&self.consumer_id)?.unwrap_or_else(|| {
            ConsumerRecord::new(&self.consumer_id, ConsumerKind::Archiver, Lsn(0))
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
    /// each one. The pass's success or failure goes to the library's archiver counters.
    pub async fn push_pending(&mut self) -> Result<PassSummary> {
        let r = self.pass().await;
        let lib = crate::metrics::library::library();
        let now = crate::metrics::library::now_seconds();
        match &r {
            Ok(_) => lib.archiver_success.set(now),
            Err(_) => {
                lib.archiver_failure.set(now);
                lib.archiver_failures.inc();
            }
        }
        r
    }

    async fn pass(&mut self) -> Result<PassSummary> {
        self.reconcile().await?;
        let pending = self.pending()?;
        let mut sum = PassSummary {
            lag_bytes: pending.iter().map(|(_, s)| s).sum(),
            ..PassSummary::default()
        };
        self.note_lag(&pending);
        // Up to `parallel` segments are written at once while up to five more (at most
        // `parallel` + 1) are read, checked and compressed; each is recorded as archived in LSN
        // order.
        let k = self.opts.parallel.max(1);
        let mut preparing: VecDeque<_> = VecDeque::new();
        let mut queued = pending.iter().map(|(n, _)| *n);
        let mut inflight: VecDeque<push::PushTask> = VecDeque::new();
        let result: Result<()> = async {
            loop {
                while preparing.len() <= k.min(4) {
                    let Some(n) = queued.next() else { break };
                    preparing.push_back(self.prepare(n));
                }
                let Some(task) = preparing.pop_front() else {
                    break;
                };
                let prepared = joined(task).await?;
                inflight.push_back(self.start_push(prepared).await?);
                while inflight.len() >= k {
                    if let Some(h) = inflight.pop_front() {
                        self.record(&mut sum, joined(h).await?)?;
                    }
                }
            }
            while let Some(h) = inflight.pop_front() {
                self.record(&mut sum, joined(h).await?)?;
            }
            Ok(())
        }
        .await;
        if let Err(e) = result {
            // Writes still in flight are stopped (an object store's put is whole or absent; a
            // directory's temporary file is removed by the next run), and what the archive
            // holds is listed again by the next pass.
            for h in inflight {
                h.abort();
            }
            self.last = None;
            return Err(e);
        }
        sum.position = self.position;
        if self.behind.active() {
            let pending = self.pending()?;
            self.note_lag(&pending);
        }
        Ok(sum)
    }

    /// The archiver-behind warning: over the threshold when the segments not archived add up
    /// to more than `warn_lag_bytes`, or the oldest of them was sealed (its file last written)
    /// longer than `warn_lag_time` ago.
    fn note_lag(&mut self, pending: &[(SegmentName, u64)]) {
        let bytes: u64 = pending.iter().map(|(_, s)| s).sum();
        let waited = pending.first().and_then(|(n, _)| {
            let m = std::fs::metadata(self.dir.segment_path(n)).ok()?;
            m.modified().ok()?.elapsed().ok()
        });
        let (bound, bound_time) = (self.opts.warn_lag_bytes, self.opts.warn_lag_time);
        let over = bytes > bound || waited.is_some_and(|w| w > bound_time);
        self.behind.observe(over, || {
            let oldest = match waited {
                Some(w) => format!(", the oldest sealed {} s ago", w.as_secs()),
                None => String::new(),
            };
            format!(
                "{bytes} bytes in {} sealed segments not archived{oldest} (thresholds {bound} bytes, {} s)",
                pending.len(),
                bound_time.as_secs()
            )
        });
    }

    /// Counts a finished push and records the archiver's position after it.
    fn record(
        &mut self,
        sum: &mut PassSummary,
        (outcome, checked): (PushOutcome, CheckedSegment),
    ) -> Result<()> {
        // The segment may have ended up under the other name (a racing archiver's copy kept).
        let (PushOutcome::Archived { object, .. } | PushOutcome::AlreadyArchived { object }) =
            &outcome;
        if let Some((n, c)) = parse_object_name(object) {
            if let Some(held) = self.archived.get_mut(&n.segment_no.0) {
                if parse_object_name(&held.0).is_some_and(|(h, _)| h == n) {
                    *held = (object.clone(), c);
                }
            }
        }
        match outcome {
            PushOutcome::Archived {
                bytes,
                stored_bytes,
                read_back,
                ..
            } => {
                sum.archived += 1;
                sum.read_back += u64::from(read_back);
                sum.bytes += bytes;
                sum.stored_bytes += stored_bytes;
            }
            PushOutcome::AlreadyArchived { .. } => sum.already_archived += 1,
        }
        self.save_position(checked.seal_lsn())
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
                            position = %s.position,
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
                            position = %s.position,
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
        // Listed a moment ago, gone now: the archive is being removed under the archiver. An I/O
        // error, so a watching archiver retries and its next pass sees what is left.
        .ok_or_else(|| {
            Error::io(
                format!("read {loc}/{IDENTITY_NAME}"),
                std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "it vanished after the archive was listed",
                ),
            )
        })?;
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
    // The timeline is compared with its history, each pass (`timelines.rs`).
    if theirs.segment_size != ours.segment_size || theirs.format_version != ours.format_version {
        return Err(Error::Refused(format!(
            "{loc} was made for segment size {}, format {}; this data directory has segment size {}, format {}",
            theirs.segment_size, theirs.format_version, ours.segment_size, ours.format_version
        )));
    }
    Ok(theirs)
}
