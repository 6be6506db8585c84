//! The writer: appends records through the open segment's mapping, seals and rotates segments,
//! and makes appends durable with group commit.
//!
//! One job per file, all sharing one `Inner`:
//! - `mod.rs` (here): the [`Wal`] API, opening (recovery, then the threads), closing, options
//!   and counters.
//! - `tail.rs`: the open segment's write position and checksum: append, seal, activate.
//! - `group_commit.rs`: which waiter syncs for which (leader election, no files).
//! - `durability.rs`: what a group-commit leader syncs, the one place `flush_lsn` moves, and the
//!   poison a failed sync leaves.
//! - `finisher.rs`: the seal finisher thread and the tickets that order durability across
//!   segments (what makes a record durable is told there).
//! - `pipeline.rs`: the preparer thread, which gets the next segment's file ready ahead of the
//!   writer and seals a segment that grew too old.
//! - `prefault.rs`: the prefault thread, which faults the prepared file's pages in on CPU time
//!   nothing else wants.
//!
//! Threads: callers append under the tail lock and wait for durability through group commit
//! (one of them, the leader, syncs for the others); `walship-seal` owns every step of a seal
//! after its marker is written, and starts early writeback; `walship-prepare` owns the prepared
//! slot's refills and seals aged segments, and starts `walship-prefault`, which runs in the idle
//! scheduling class and holds no lock of the writer's.
//!
//! Locks: the tail lock guards the open segment and the write position; group commit's lock
//! guards who leads and is never held while taking another (the leader syncs without it); the
//! prepared slot's lock is taken under the tail lock by a rotation, and alone by the preparer.
//! Lock order: tail, then the prepared slot, then the finisher's queue and progress, then the
//! poison.

mod durability;
mod finisher;
mod group_commit;
mod pipeline;
mod prefault;
mod seal_bound;
mod tail;
#[cfg(test)]
mod test_support;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use crate::datadir::{DataDir, DirLock};
use crate::entry::Entry;
use crate::error::Result;
use crate::flush_position::FlushPublisher;
use crate::format::{ControlFile, SegmentName};
use crate::recovery::{recover, Recovered, RecoveryMode};
pub use crate::segment_file::SegmentFill;
use crate::Lsn;

use finisher::{Finisher, FinisherMsg};
use group_commit::GroupCommit;
use pipeline::{Pipeline, PrepareMsg};
pub use seal_bound::DEFAULT_MAX_UNSYNCED_SEAL_BYTES;
use tail::{Tail, Writeback};

/// How a data directory is opened for writing.
#[derive(Clone, Debug)]
pub struct WalOptions {
    pub recovery_mode: RecoveryMode,
    /// Seal the open segment once it holds records and is this old (like PostgreSQL's
    /// `archive_timeout`), so that shipping and archiving never wait on a quiet writer.
    pub max_segment_age: Option<Duration>,
    /// Prepare the next segment in a background thread (on by default).
    pub prepare_ahead: bool,
    /// How new segment files get their blocks: reserved with `fallocate` (the default), or
    /// also zero-filled ahead so that syncs overwrite written blocks.
    pub segment_fill: SegmentFill,
    /// A group-commit sync that takes longer than this is logged as a warning, once per
    /// episode: the next warning only after a sync within the bound (logged too). One second
    /// by default, as etcd does for its fsyncs.
    pub slow_sync_warning: Duration,
    /// Bytes of sealed segments not yet durable that rotations may leave behind before one
    /// waits for the finisher, counted in whole segments and at least two: a writer that
    /// outruns the disk waits there. 256 MiB by default
    /// ([`DEFAULT_MAX_UNSYNCED_SEAL_BYTES`]).
    pub max_unsynced_seal_bytes: u64,
}

/// The default of [`WalOptions::slow_sync_warning`].
pub const DEFAULT_SLOW_SYNC_WARNING: Duration = Duration::from_secs(1);

impl Default for WalOptions {
    fn default() -> Self {
        WalOptions {
            recovery_mode: RecoveryMode::TolerateTail,
            max_segment_age: None,
            prepare_ahead: true,
            segment_fill: SegmentFill::Reserve,
            slow_sync_warning: DEFAULT_SLOW_SYNC_WARNING,
            max_unsynced_seal_bytes: DEFAULT_MAX_UNSYNCED_SEAL_BYTES,
        }
    }
}

/// Where an appended record sits.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Appended {
    /// The record's LSN (where its header starts).
    pub lsn: Lsn,
    /// Where the next record may start; the record is durable once `flush_lsn() >= end_lsn`.
    pub end_lsn: Lsn,
}

/// Counters a caller can read at any time.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WalStats {
    pub syncs: u64,
    /// The time group-commit leaders spent in those syncs, in all (each sync's msync and the
    /// unmap of the pages it writes back).
    pub sync_us: u64,
    pub records_appended: u64,
    /// Segments whose seal marker is durable (their sealed name may follow a moment later).
    pub segments_sealed: u64,
    /// Segment files prepared by reusing a recycled file rather than creating one.
    pub segments_recycled: u64,
    /// Group-commit leaders that, their msync done, still waited for the finisher (a rotation's
    /// seal marker or new name not yet durable), and the time they waited in all.
    pub rotation_waits: u64,
    pub rotation_wait_us: u64,
    /// Rotations that waited because the sealed segments not yet durable had reached
    /// [`WalOptions::max_unsynced_seal_bytes`], and the time they waited in all.
    pub seal_bound_waits: u64,
    pub seal_bound_wait_us: u64,
}

/// What the writer's threads share.
struct Inner {
    dir: DataDir,
    control: ControlFile,
    options: WalOptions,
    /// The open segment and the write position (`tail.rs`).
    tail: Mutex<Tail>,
    /// Who syncs for whom (`group_commit.rs`).
    commit: GroupCommit,
    /// `flush_lsn`; moves only in `Inner::advance_flushed` (`durability.rs`).
    flushed: AtomicU64,
    written: AtomicU64,
    sealed: AtomicU64,
    /// Set once a sync failed (see `Inner::poison`); read without a lock on every append.
    poisoned: AtomicBool,
    /// The first failure's reason. `flushed` moves only under this lock and only while it is
    /// `None`, so once the writer is poisoned `flush_lsn` never moves again.
    failure: Mutex<Option<String>>,
    syncs: AtomicU64,
    /// In nanoseconds, so that many short syncs add up without rounding.
    sync_ns: AtomicU64,
    appended: AtomicU64,
    seals: AtomicU64,
    /// Prepared files that were recycled ones (`pipeline.rs`).
    recycled: AtomicU64,
    /// Leaders that waited for the finisher after their sync, and for how long (µs).
    rotation_waits: AtomicU64,
    rotation_wait_us: AtomicU64,
    /// Rotations that waited at the bound on sealed segments not yet durable, and how long (µs).
    seal_bound_waits: AtomicU64,
    seal_bound_wait_us: AtomicU64,
    /// Sealed segments that may wait for the finisher before a rotation waits (`seal_bound.rs`).
    seals_in_flight: u64,
    /// The seal finisher's queue and progress (`finisher.rs`).
    finisher: Finisher,
    /// The next segment's file, prepared ahead (`pipeline.rs`).
    pipeline: Pipeline,
    /// `flush_lsn` as other processes and in-process shippers see it.
    published: FlushPublisher,
    /// The library's counters (`crate::metrics::library`), looked up once.
    lib: &'static crate::metrics::library::Library,
    /// Set while a group-commit leader gathers appenders (`durability.rs`): the prefault
    /// thread pauses meanwhile (`prefault.rs`).
    prefault_pause: Arc<AtomicBool>,
    /// The slow-sync warning, once per episode (`durability.rs`).
    slow_sync: Mutex<crate::episode::Episode>,
}

/// A data directory open for writing. Cheap to share: wrap it in an `Arc` and call from many
/// threads.
pub struct Wal {
    inner: Arc<Inner>,
    preparer_tx: Mutex<Option<mpsc::Sender<PrepareMsg>>>,
    preparer: Option<JoinHandle<()>>,
    finisher: Option<JoinHandle<()>>,
    _lock: DirLock,
}

use crate::sync::lock;

/// A standby's directory takes its records from its primary only: records a writer appended
/// there would sit at positions the standby has applied (or will), and it could never follow
/// its primary again.
fn refuse_standby(dir: &DataDir) -> Result<()> {
    // Being made a standby's (its control file may already name the new primary's timeline):
    // a writer there would be a second primary of that timeline.
    let adopting = crate::replication::standby::directory::adopting_path(dir);
    if adopting.exists() {
        return Err(crate::Error::Refused(format!(
            "{} is being made a standby's ({} exists): a `walship standby` stopped before it finished; run it again to finish (nothing may write to the directory meanwhile)",
            dir.root().display(),
            adopting.display()
        )));
    }
    let meta = crate::replication::standby::directory::meta_path(dir);
    match std::fs::symlink_metadata(&meta) {
        Ok(_) => Err(crate::Error::Refused(format!(
            "{} is a standby's data directory ({} exists): it receives its records from its primary, and nothing else may write to it; promote it first (`walship promote {}`) to make it a primary",
            dir.root().display(),
            meta.display(),
            dir.root().display()
        ))),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(crate::Error::io(format!("stat {}", meta.display()), e)),
    }
}

impl Wal {
    /// Opens a data directory made by [`DataDir::init`]: takes the writer lock, runs recovery
    /// and logs one summary line.
    pub fn open(root: impl Into<PathBuf>, options: WalOptions) -> Result<Wal> {
        let dir = DataDir::new(root);
        let control = dir.read_control()?;
        let lock_guard = dir.lock()?;
        refuse_standby(&dir)?;
        let started = std::time::Instant::now();
        let rec = recover(&dir, &control, options.recovery_mode)?;
        let lib = crate::metrics::library::library();
        lib.recovery_seconds.set(started.elapsed().as_secs_f64());
        lib.recovery_repairs
            .set(i64::try_from(rec.repairs.len()).unwrap_or(i64::MAX));
        let inner = Arc::new(Inner::from_recovered(dir, control, &rec, options)?);
        tracing::info!(
            dir = %inner.dir.root().display(),
            segments = rec.sealed.len() + rec.open.is_some() as usize,
            records = rec.records,
            end_lsn = %rec.end_lsn,
            repaired = %if rec.repairs.is_empty() { "nothing".to_string() } else { rec.repairs.join("; ") },
            "recovered data directory"
        );
        let finisher = finisher::start(&inner)?;
        let mut wal = Wal {
            inner,
            preparer_tx: Mutex::new(None),
            preparer: None,
            finisher: Some(finisher),
            _lock: lock_guard,
        };
        if wal.inner.options.prepare_ahead || wal.inner.options.max_segment_age.is_some() {
            let (tx, handle) = pipeline::start(&wal.inner)?;
            wal.preparer = Some(handle);
            *lock(&wal.preparer_tx) = Some(tx);
            let next = lock(&wal.inner.tail).next_segment_no;
            wal.request_prepare(next);
        }
        Ok(wal)
    }

    /// The directory's identity.
    pub fn control(&self) -> &ControlFile {
        &self.inner.control
    }

    pub fn data_dir(&self) -> &DataDir {
        &self.inner.dir
    }

    /// End of the last appended record.
    pub fn write_lsn(&self) -> Lsn {
        Lsn(self.inner.written.load(Ordering::Acquire))
    }

    /// `flush_lsn` as it moves, for a shipper running in this process (a shipper in another
    /// process reads `state/flush_position`, see [`crate::flush_position`]).
    pub fn flush_watch(&self) -> tokio::sync::watch::Receiver<u64> {
        self.inner.published.subscribe()
    }

    /// Everything below this LSN is durable. It never moves after a failed sync.
    pub fn flush_lsn(&self) -> Lsn {
        Lsn(self.inner.flushed.load(Ordering::Acquire))
    }

    /// End of the last record in a sealed segment.
    pub fn sealed_lsn(&self) -> Lsn {
        Lsn(self.inner.sealed.load(Ordering::Acquire))
    }

    pub fn stats(&self) -> WalStats {
        WalStats {
            syncs: self.inner.syncs.load(Ordering::Relaxed),
            sync_us: self.inner.sync_ns.load(Ordering::Relaxed) / 1000,
            records_appended: self.inner.appended.load(Ordering::Relaxed),
            segments_sealed: self.inner.seals.load(Ordering::Relaxed),
            segments_recycled: self.inner.recycled.load(Ordering::Relaxed),
            rotation_waits: self.inner.rotation_waits.load(Ordering::Relaxed),
            rotation_wait_us: self.inner.rotation_wait_us.load(Ordering::Relaxed),
            seal_bound_waits: self.inner.seal_bound_waits.load(Ordering::Relaxed),
            seal_bound_wait_us: self.inner.seal_bound_wait_us.load(Ordering::Relaxed),
        }
    }

    /// The largest payload one record can carry with this directory's segment size.
    pub fn max_payload(&self) -> usize {
        self.inner.max_payload()
    }

    /// Appends one entry; it is durable once `flush_lsn()` reaches the returned `end_lsn`
    /// (see [`Wal::wait_durable`]).
    pub fn append(&self, entry: &Entry<'_>) -> Result<Appended> {
        self.inner.check_poison()?;
        let mut st = lock(&self.inner.tail);
        let r = self.inner.append_locked(&mut st, entry, crate::now_us());
        let end = st.end_lsn.0;
        let activated = st.prepare_next.take();
        let writeback = st.writeback_due();
        drop(st);
        self.inner.written.fetch_max(end, Ordering::AcqRel);
        self.after_append(activated, writeback);
        r
    }

    /// Appends entries in order under one lock; stops at the first error (earlier entries stay
    /// appended: [`Wal::append_batch_partial`] returns their positions too). Returns each
    /// entry's position.
    pub fn append_batch(&self, entries: &[Entry<'_>]) -> Result<Vec<Appended>> {
        let (out, result) = self.append_batch_partial(entries);
        result.map(|()| out)
    }

    /// [`Wal::append_batch`], returning the positions of the entries appended before an error
    /// beside it: they are in the log, and a caller that must say where (or retry the rest)
    /// needs them.
    pub fn append_batch_partial(&self, entries: &[Entry<'_>]) -> (Vec<Appended>, Result<()>) {
        if let Err(e) = self.inner.check_poison() {
            return (Vec::new(), Err(e));
        }
        let mut out = Vec::with_capacity(entries.len());
        let mut st = lock(&self.inner.tail);
        let ts = crate::now_us();
        let mut result = Ok(());
        let mut activated = None;
        for e in entries {
            let r = self.inner.append_locked(&mut st, e, ts);
            if let Some(n) = st.prepare_next.take() {
                activated = Some(n);
            }
            match r {
                Ok(a) => out.push(a),
                Err(e) => {
                    result = Err(e);
                    break;
                }
            }
        }
        let end = st.end_lsn.0;
        let writeback = st.writeback_due();
        drop(st);
        self.inner.written.fetch_max(end, Ordering::AcqRel);
        self.after_append(activated, writeback);
        (out, result)
    }

    /// Appends and waits until the entry is durable.
    pub fn append_durable(&self, entry: &Entry<'_>) -> Result<Appended> {
        let a = self.append(entry)?;
        self.wait_durable(a.end_lsn)?;
        Ok(a)
    }

    /// Blocks until everything below `lsn` is durable. Concurrent callers share syncs: one
    /// msync covers every record appended before it started. Once a sync has failed it returns
    /// [`Error::Poisoned`](crate::Error::Poisoned), even for an LSN that was durable before the
    /// failure.
    pub fn wait_durable(&self, lsn: Lsn) -> Result<()> {
        self.inner.wait_durable(lsn.0)
    }

    /// Makes everything appended so far durable and returns the new `flush_lsn`.
    pub fn sync(&self) -> Result<Lsn> {
        let w = self.inner.written.load(Ordering::Acquire);
        self.inner.wait_durable(w)?;
        Ok(self.flush_lsn())
    }

    /// Seals the open segment now (when it holds records), like PostgreSQL's `pg_switch_wal`.
    /// Returns once the segment has its sealed name, with that name, or `None` when there was
    /// nothing to seal.
    pub fn seal(&self) -> Result<Option<SegmentName>> {
        self.inner.check_poison()?;
        let mut st = lock(&self.inner.tail);
        let sealed = self.inner.seal_locked(&mut st, false)?;
        let ticket = st.last_seal;
        drop(st);
        self.inner.wait_finishing(ticket, |f| f.named)?;
        Ok(sealed)
    }

    /// Returns once every segment sealed so far has its sealed name.
    pub fn wait_sealed_names(&self) -> Result<()> {
        let ticket = lock(&self.inner.tail).last_seal;
        self.inner.wait_finishing(ticket, |f| f.named)
    }

    /// Work an append leaves for after the tail lock is released: asking for the next segment
    /// to be prepared, and starting writeback of the filled part of the open one.
    fn after_append(&self, activated: Option<u64>, writeback: Option<Writeback>) {
        if let Some(n) = activated {
            self.request_prepare(n);
        }
        if let Some(w) = writeback {
            self.inner.to_finisher(FinisherMsg::Writeback(w));
        }
    }

    fn request_prepare(&self, segment_no: u64) {
        if !self.inner.options.prepare_ahead {
            return;
        }
        if let Some(tx) = &*lock(&self.preparer_tx) {
            let _ = tx.send(PrepareMsg::Prepare(segment_no));
        }
    }
}

impl Drop for Wal {
    fn drop(&mut self) {
        if let Some(tx) = lock(&self.preparer_tx).take() {
            let _ = tx.send(PrepareMsg::Stop);
        }
        if let Some(h) = self.preparer.take() {
            let _ = h.join();
        }
        if !self.inner.poisoned.load(Ordering::Acquire) {
            if let Err(e) = self.sync() {
                tracing::error!(error = %e, "final sync at close failed");
            }
        }
        // The finisher completes every seal queued before it sees the stop.
        if let Some(tx) = lock(&self.inner.finisher.tx).take() {
            let _ = tx.send(FinisherMsg::Stop);
        }
        if let Some(h) = self.finisher.take() {
            let _ = h.join();
        }
    }
}

impl Inner {
    fn from_recovered(
        dir: DataDir,
        control: ControlFile,
        rec: &Recovered,
        options: WalOptions,
    ) -> Result<Inner> {
        let tail = Tail::from_recovered(&dir, &control, rec)?;
        let sealed = rec.sealed.last().map_or(0, |s| s.end_lsn.0);
        let pipeline = Pipeline::from_recovered(rec, tail.next_segment_no, control.segment_size)?;
        let seals_in_flight =
            seal_bound::segments_in_flight(options.max_unsynced_seal_bytes, control.segment_size);
        Ok(Inner {
            control,
            commit: GroupCommit::default(),
            flushed: AtomicU64::new(rec.end_lsn.0),
            written: AtomicU64::new(rec.end_lsn.0),
            sealed: AtomicU64::new(sealed),
            tail: Mutex::new(tail),
            poisoned: AtomicBool::new(false),
            failure: Mutex::new(None),
            syncs: AtomicU64::new(0),
            sync_ns: AtomicU64::new(0),
            appended: AtomicU64::new(0),
            seals: AtomicU64::new(0),
            recycled: AtomicU64::new(0),
            rotation_waits: AtomicU64::new(0),
            rotation_wait_us: AtomicU64::new(0),
            seal_bound_waits: AtomicU64::new(0),
            seal_bound_wait_us: AtomicU64::new(0),
            seals_in_flight,
            finisher: Finisher::default(),
            published: FlushPublisher::open(&dir, rec.end_lsn.0),
            lib: crate::metrics::library::library(),
            slow_sync: Mutex::new(crate::episode::Episode::new("slow sync")),
            prefault_pause: Arc::default(),
            pipeline,
            options,
            dir,
        })
    }
}
