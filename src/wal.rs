//! The writer: appends records through the open segment's mapping, seals and rotates segments,
//! and makes appends durable with group commit.
//!
//! Locks: `state` guards the open segment and the write position; `sync` guards who leads the
//! group commit. A waiter takes `sync` and finds its LSN already durable (a leader covered it),
//! or a leader at work (it waits on the `synced` condition variable), or no leader (it becomes
//! the leader: it notes the write position, releases `sync`, and its one msync covers every
//! record written so far). Lock order: `sync` before `state`.
//!
//! Sealing runs off the append path. The writer writes the seal marker into the mapping and
//! moves on to the next segment; a finisher thread makes the sealed segment durable (msync),
//! cuts it to its used length, syncs it, renames it to its sealed name and syncs the directory.
//! No record of the next segment counts as durable before the previous segment's seal marker
//! and the next segment's name are: a group-commit leader waits for both. So after a crash, an
//! older open segment either
//! ends with a durable seal marker (recovery finishes its seal) or holds the last durable records
//! (recovery cuts the log there and sets the newer open segments aside: they hold no
//! acknowledged record).
//!
//! Failed syncs: every sync of a segment (a leader's msync, the finisher's msync and fsync, the
//! early write-back) goes through `Inner::sync_segment`. The segment runs its syncs one at a
//! time and keeps the first failure for every later one, because Linux reports a write-back
//! error to only one sync of an open file; the failure poisons the writer. `flush_lsn` moves
//! only under the poison lock and only while the writer is healthy, so a sync that succeeded
//! beside a failed one never advances it, and every wait checks the poison flag before it.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::datadir::{DataDir, DirLock};
use crate::entry::Entry;
use crate::error::{Error, IoContext, Result};
use crate::format::record::{encode_record, encode_seal, encoded_len, SEAL_LEN};
use crate::format::segment_header::SEGMENT_HEADER_LEN;
use crate::format::{
    ControlFile, SealInfo, SegmentFileKind, SegmentHeader, SegmentName, SEGMENT_FORMAT_VERSION,
};
use crate::fsutil::fsync_dir;
use crate::recovery::{recover, Recovered, RecoveryMode};
use crate::segment_file::{ActiveSegment, PreparedSegment};
use crate::Lsn;

/// How a data directory is opened for writing.
#[derive(Clone, Debug)]
pub struct WalOptions {
    pub recovery_mode: RecoveryMode,
    /// Seal the open segment once it holds records and is this old (like PostgreSQL's
    /// `archive_timeout`), so that shipping and archiving never wait on a quiet writer.
    pub max_segment_age: Option<Duration>,
    /// Prepare the next segment in a background thread (on by default).
    pub prepare_ahead: bool,
}

impl Default for WalOptions {
    fn default() -> Self {
        WalOptions {
            recovery_mode: RecoveryMode::TolerateTail,
            max_segment_age: None,
            prepare_ahead: true,
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
    pub records_appended: u64,
    /// Segments whose seal marker is durable (their sealed name may follow a moment later).
    pub segments_sealed: u64,
}

struct WriterState {
    seg: Option<Arc<ActiveSegment>>,
    off: usize,
    hasher: crc32fast::Hasher,
    seg_records: u64,
    seg_last_lsn: u64,
    /// The open segment's records carry the durable offset (format version 2 on); a version 1
    /// segment adopted by recovery keeps those bytes zero.
    seg_durable_offsets: bool,
    end_lsn: u64,
    prev_checksum: Option<u32>,
    next_segment_no: u64,
    opened_at: Instant,
    /// Set by an activation: the segment number the preparer should get ready next.
    prepare_next: Option<u64>,
    /// Writeback of the open segment has been started up to here (see `writeback_due`).
    writeback_to: usize,
    /// Work handed to the finisher that durability depends on (seals and activations), counted;
    /// each piece's ticket is its number in this count.
    tickets: u64,
    /// The ticket of the newest seal.
    last_seal: u64,
}

/// A range of the open segment to start writing back: `(segment, from, to)`.
type Writeback = (Arc<ActiveSegment>, usize, usize);

/// Writeback of the open segment is started in steps of this many bytes, behind the write
/// position, so that the disk works while appends go on and a seal's msync finds little left
/// to write (a 16 MiB segment written without syncs would otherwise stall the writer for a whole
/// segment's worth of disk time at rotation).
const WRITEBACK_CHUNK: usize = 1 << 20;

impl WriterState {
    /// The whole chunks filled since writeback was last started, if any.
    fn writeback_due(&mut self) -> Option<Writeback> {
        let upto = self.off & !(WRITEBACK_CHUNK - 1);
        if upto <= self.writeback_to {
            return None;
        }
        let seg = self.seg.clone()?;
        let from = std::mem::replace(&mut self.writeback_to, upto);
        Some((seg, from, upto))
    }
}

struct SyncState {
    segment_no: u64,
    synced_to: usize,
    /// A leader is syncing (without holding the lock); the others wait on `Inner::synced`.
    leader_active: bool,
    /// Records appended when the last leader started, and how many it covered.
    appended_at_last_sync: u64,
    last_group: u64,
}

struct Inner {
    dir: DataDir,
    control: ControlFile,
    state: Mutex<WriterState>,
    sync: Mutex<SyncState>,
    /// Signalled when a leader's sync ends.
    synced: Condvar,
    flushed: AtomicU64,
    written: AtomicU64,
    sealed: AtomicU64,
    /// Set once a sync failed (see `Inner::poison`); read without a lock on every append.
    poisoned: AtomicBool,
    /// The first failure's reason. `flushed` moves only under this lock and only while it is
    /// `None`, so once the writer is poisoned `flush_lsn` never moves again.
    failure: Mutex<Option<String>>,
    syncs: AtomicU64,
    appended: AtomicU64,
    seals: AtomicU64,
    /// A prepared file ready for the given segment number. The preparer holds this lock while
    /// it works, so a rotation that needs the file waits for it instead of racing it.
    prepared: Mutex<Option<(u64, PreparedSegment)>>,
    /// Segment numbers below this have been activated; a request to prepare one is stale.
    /// Written and read under the `prepared` lock.
    activated: AtomicU64,
    /// Work for the finisher thread; `None` once it stopped (then the work is done inline).
    finisher_tx: Mutex<Option<mpsc::Sender<FinisherMsg>>>,
    /// How far the finisher has got with the seals handed to it.
    finishing: Mutex<Finishing>,
    /// Signalled when `finishing` moves.
    finishing_cv: Condvar,
    options: WalOptions,
}

enum BgMsg {
    Prepare(u64),
    Stop,
}

/// The tickets the finisher has reached. Work that failed poisons the writer and still counts
/// as reached, so that nobody waits for it forever.
#[derive(Default)]
struct Finishing {
    /// Every sealed segment and activated name handed over up to this ticket is durable.
    durable: u64,
    /// Every sealed segment up to this ticket also has its sealed name.
    named: u64,
}

/// Seals handed to the finisher and not yet durable are bounded by this many bytes (at least
/// two segments), so that a writer outrunning the disk waits instead of filling the page cache.
const MAX_UNFINISHED_SEAL_BYTES: u64 = 256 << 20;

/// A sealed segment, marker written, still under its open name.
struct SealedOpen {
    seg: Arc<ActiveSegment>,
    /// Bytes up to the end of the seal marker.
    used: usize,
    end_lsn: u64,
    /// The ticket of its `Durable` step.
    ticket: u64,
}

/// A sync of a segment, made through `Inner::sync_segment`.
enum SegmentSync {
    /// msync of `[from, to)`.
    Range(usize, usize),
    /// fsync of the file.
    File,
    /// Start writing `[from, to)` back (no wait); only its own I/O error counts.
    StartWriteback(usize, usize),
}

/// Work for the finisher thread, done in the order sent.
enum FinisherMsg {
    /// Make a sealed segment durable (msync up to the end of its marker).
    Durable(Arc<SealedOpen>),
    /// Make an activated segment's name durable (directory fsync), with this ticket.
    Activated(u64),
    /// Cut a durable sealed segment to its used length and give it its sealed name.
    Name(Arc<SealedOpen>),
    Writeback(Writeback),
    Stop,
}

/// A data directory open for writing. Cheap to share: wrap it in an `Arc` and call from many
/// threads.
pub struct Wal {
    inner: Arc<Inner>,
    bg_tx: Mutex<Option<mpsc::Sender<BgMsg>>>,
    bg: Option<JoinHandle<()>>,
    finisher: Option<JoinHandle<()>>,
    _lock: DirLock,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding a lock leaves plain counters behind, never half-written bytes that
    // are published: the state stays usable.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Wal {
    /// Opens a data directory made by [`DataDir::init`]: takes the writer lock, runs recovery
    /// and logs one summary line.
    pub fn open(root: impl Into<PathBuf>, options: WalOptions) -> Result<Wal> {
        let dir = DataDir::new(root);
        let control = dir.read_control()?;
        let lock_guard = dir.lock()?;
        let rec = recover(&dir, &control, options.recovery_mode)?;
        let inner = Arc::new(Inner::from_recovered(dir, control, &rec, options)?);
        tracing::info!(
            dir = %inner.dir.root().display(),
            segments = rec.sealed.len() + rec.open.is_some() as usize,
            records = rec.records,
            end_lsn = %Lsn(rec.end_lsn),
            repaired = %if rec.repairs.is_empty() { "nothing".to_string() } else { rec.repairs.join("; ") },
            "recovered data directory"
        );
        let (ftx, frx) = mpsc::channel();
        let finisher = {
            let inner = inner.clone();
            std::thread::Builder::new()
                .name("walship-seal".into())
                .spawn(move || finisher(inner, frx))
                .ctx(|| "start the seal finishing thread".to_string())?
        };
        *lock(&inner.finisher_tx) = Some(ftx);
        let mut wal = Wal {
            inner,
            bg_tx: Mutex::new(None),
            bg: None,
            finisher: Some(finisher),
            _lock: lock_guard,
        };
        if wal.inner.options.prepare_ahead || wal.inner.options.max_segment_age.is_some() {
            let (tx, rx) = mpsc::channel();
            let inner = wal.inner.clone();
            wal.bg = Some(
                std::thread::Builder::new()
                    .name("walship-prepare".into())
                    .spawn(move || background(inner, rx))
                    .ctx(|| "start the segment preparation thread".to_string())?,
            );
            *lock(&wal.bg_tx) = Some(tx);
            let next = lock(&wal.inner.state).next_segment_no;
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
            records_appended: self.inner.appended.load(Ordering::Relaxed),
            segments_sealed: self.inner.seals.load(Ordering::Relaxed),
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
        let mut st = lock(&self.inner.state);
        let r = self.inner.append_locked(&mut st, entry, crate::now_us());
        let end = st.end_lsn;
        let activated = st.prepare_next.take();
        let writeback = st.writeback_due();
        drop(st);
        self.inner.written.fetch_max(end, Ordering::AcqRel);
        self.after_append(activated, writeback);
        r
    }

    /// Appends entries in order under one lock; stops at the first error (earlier entries stay
    /// appended). Returns each entry's position.
    pub fn append_batch(&self, entries: &[Entry<'_>]) -> Result<Vec<Appended>> {
        self.inner.check_poison()?;
        let mut out = Vec::with_capacity(entries.len());
        let mut st = lock(&self.inner.state);
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
        let end = st.end_lsn;
        let writeback = st.writeback_due();
        drop(st);
        self.inner.written.fetch_max(end, Ordering::AcqRel);
        self.after_append(activated, writeback);
        result.map(|_| out)
    }

    /// Appends and waits until the entry is durable.
    pub fn append_durable(&self, entry: &Entry<'_>) -> Result<Appended> {
        let a = self.append(entry)?;
        self.wait_durable(a.end_lsn)?;
        Ok(a)
    }

    /// Blocks until everything below `lsn` is durable. Concurrent callers share syncs: one
    /// msync covers every record appended before it started. Once a sync has failed it returns
    /// [`Error::Poisoned`], even for an LSN that was durable before the failure.
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
        let mut st = lock(&self.inner.state);
        let sealed = self.inner.seal_locked(&mut st, false)?;
        let ticket = st.last_seal;
        drop(st);
        self.inner.wait_finishing(ticket, |f| f.named)?;
        Ok(sealed)
    }

    /// Returns once every segment sealed so far has its sealed name.
    pub fn wait_sealed_names(&self) -> Result<()> {
        let ticket = lock(&self.inner.state).last_seal;
        self.inner.wait_finishing(ticket, |f| f.named)
    }

    /// Work an append leaves for after the state lock is released: asking for the next segment
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
        if let Some(tx) = &*lock(&self.bg_tx) {
            let _ = tx.send(BgMsg::Prepare(segment_no));
        }
    }
}

impl Drop for Wal {
    fn drop(&mut self) {
        if let Some(tx) = lock(&self.bg_tx).take() {
            let _ = tx.send(BgMsg::Stop);
        }
        if let Some(h) = self.bg.take() {
            let _ = h.join();
        }
        if !self.inner.poisoned.load(Ordering::Acquire) {
            if let Err(e) = self.sync() {
                tracing::error!(error = %e, "final sync at close failed");
            }
        }
        // The finisher completes every seal queued before it sees the stop.
        if let Some(tx) = lock(&self.inner.finisher_tx).take() {
            let _ = tx.send(FinisherMsg::Stop);
        }
        if let Some(h) = self.finisher.take() {
            let _ = h.join();
        }
    }
}

fn finisher(inner: Arc<Inner>, rx: mpsc::Receiver<FinisherMsg>) {
    while let Ok(msg) = rx.recv() {
        match msg {
            FinisherMsg::Stop => return,
            other => inner.run_finisher_msg(other),
        }
    }
}

fn background(inner: Arc<Inner>, rx: mpsc::Receiver<BgMsg>) {
    let tick = inner
        .options
        .max_segment_age
        .map(|a| (a / 4).clamp(Duration::from_millis(10), Duration::from_secs(1)))
        .unwrap_or(Duration::from_secs(3600));
    loop {
        match rx.recv_timeout(tick) {
            Ok(BgMsg::Stop) | Err(mpsc::RecvTimeoutError::Disconnected) => return,
            Ok(BgMsg::Prepare(no)) => {
                let mut slot = lock(&inner.prepared);
                let stale = no < inner.activated.load(Ordering::Acquire);
                if stale || matches!(&*slot, Some((n, _)) if *n == no) {
                    continue;
                }
                // A request queued before the rotation that already used this number: preparing
                // it again would truncate the file the writer is using.
                let open = SegmentName::new(inner.control.timeline, no, SegmentFileKind::Open);
                if inner.dir.segment_path(&open).exists()
                    || inner
                        .dir
                        .segment_path(&open.with_kind(SegmentFileKind::Sealed))
                        .exists()
                {
                    continue;
                }
                if let Some((_, old)) = slot.take() {
                    let _ = std::fs::remove_file(&old.path);
                }
                match inner.prepare(no) {
                    Ok(p) => {
                        // Prefaulting takes tens of milliseconds: the writer may take the
                        // segment meanwhile rather than wait for it.
                        let prefault = p.prefault();
                        *slot = Some((no, p));
                        drop(slot);
                        prefault.run();
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "preparing the next segment failed; the next rotation will try again")
                    }
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
        }
        if let Some(max) = inner.options.max_segment_age {
            if inner.poisoned.load(Ordering::Acquire) {
                continue;
            }
            let mut st = lock(&inner.state);
            if st.seg.is_some() && st.seg_records > 0 && st.opened_at.elapsed() >= max {
                if let Err(e) = inner.seal_locked(&mut st, false) {
                    tracing::error!(error = %e, "sealing an aged segment failed");
                }
            }
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
        let mut st = WriterState {
            seg: None,
            off: 0,
            hasher: crc32fast::Hasher::new(),
            seg_records: 0,
            seg_last_lsn: 0,
            seg_durable_offsets: true,
            end_lsn: rec.end_lsn,
            prev_checksum: rec.prev_checksum,
            next_segment_no: rec.next_segment_no,
            opened_at: Instant::now(),
            prepare_next: None,
            writeback_to: 0,
            tickets: 0,
            last_seal: 0,
        };
        if let Some(open) = &rec.open {
            let path = dir.segment_path(&open.name);
            let seg = ActiveSegment::map(path, open.name, control.segment_size, open.offset)?;
            st.seg = Some(Arc::new(seg));
            st.off = open.offset;
            st.writeback_to = open.offset & !(WRITEBACK_CHUNK - 1);
            st.hasher = crc32fast::Hasher::new_with_initial_len(open.crc, open.offset as u64);
            st.seg_records = open.record_count;
            st.seg_last_lsn = open.last_lsn;
            st.seg_durable_offsets = open.header.has_durable_offsets();
            st.prev_checksum = open.header.prev_checksum;
            st.next_segment_no = open.name.segment_no.next().0;
        }
        let sealed = rec.sealed.last().map(|s| s.end_lsn).unwrap_or(0);
        let next_segment_no = st.next_segment_no;
        let prepared = match &rec.prepared {
            Some(p) => {
                let p = PreparedSegment::open(p.clone(), control.segment_size)?;
                p.prefault().run();
                Some((rec.next_segment_no, p))
            }
            None => None,
        };
        Ok(Inner {
            dir,
            control,
            sync: Mutex::new(SyncState {
                segment_no: u64::MAX,
                synced_to: 0,
                leader_active: false,
                appended_at_last_sync: 0,
                last_group: 0,
            }),
            synced: Condvar::new(),
            flushed: AtomicU64::new(rec.end_lsn),
            written: AtomicU64::new(rec.end_lsn),
            sealed: AtomicU64::new(sealed),
            state: Mutex::new(st),
            poisoned: AtomicBool::new(false),
            failure: Mutex::new(None),
            syncs: AtomicU64::new(0),
            appended: AtomicU64::new(0),
            seals: AtomicU64::new(0),
            prepared: Mutex::new(prepared),
            activated: AtomicU64::new(next_segment_no),
            finisher_tx: Mutex::new(None),
            finishing: Mutex::new(Finishing::default()),
            finishing_cv: Condvar::new(),
            options,
        })
    }

    fn max_payload(&self) -> usize {
        let room = self.control.segment_size as usize
            - SEGMENT_HEADER_LEN
            - SEAL_LEN
            - crate::format::record::RECORD_HEADER_LEN;
        room & !(crate::format::ALIGN - 1)
    }

    /// Creates and maps the file for segment `no` under its prepared name.
    fn prepare(&self, no: u64) -> Result<PreparedSegment> {
        PreparedSegment::create(self.prepared_path(no), self.control.segment_size)
    }

    fn prepared_path(&self, no: u64) -> PathBuf {
        self.dir.segment_path(&SegmentName::new(
            self.control.timeline,
            no,
            SegmentFileKind::Prepared,
        ))
    }

    fn check_poison(&self) -> Result<()> {
        if self.poisoned.load(Ordering::Acquire) {
            return Err(Error::Poisoned(
                lock(&self.failure).clone().unwrap_or_default(),
            ));
        }
        Ok(())
    }

    /// Marks the writer failed after a sync error; every later call gets the error.
    fn poison(&self, what: String, e: std::io::Error) -> Error {
        let reason = format!("{what}: {e}");
        tracing::error!(%reason, "sync failed: the writer refuses further appends");
        let mut failure = lock(&self.failure);
        let first = failure.get_or_insert(reason).clone();
        self.poisoned.store(true, Ordering::Release);
        Error::Poisoned(first)
    }

    /// Moves `flush_lsn` up to `end` after a sync that covered it, unless the writer was
    /// poisoned meanwhile: a sync that succeeded says nothing once another one failed.
    fn advance_flushed(&self, end: u64) -> Result<()> {
        let failure = lock(&self.failure);
        if let Some(reason) = &*failure {
            return Err(Error::Poisoned(reason.clone()));
        }
        self.flushed.fetch_max(end, Ordering::AcqRel);
        Ok(())
    }

    /// Every sync of a segment goes through here: the segment serializes its syncs and keeps
    /// its first failure (see `ActiveSegment::synced`); a failure poisons the writer; and a sync
    /// that succeeded still fails when the writer was poisoned before it returned.
    fn sync_segment(&self, seg: &ActiveSegment, sync: SegmentSync) -> Result<()> {
        let (what, r) = match sync {
            SegmentSync::Range(from, to) => ("msync", seg.sync_range(from, to)),
            SegmentSync::File => ("fsync", seg.sync_all()),
            SegmentSync::StartWriteback(from, to) => ("write back", seg.start_writeback(from, to)),
        };
        r.map_err(|e| self.poison(format!("{what} {}", seg.path.display()), e))?;
        self.check_poison()
    }

    fn append_locked(&self, st: &mut WriterState, e: &Entry<'_>, ts: i64) -> Result<Appended> {
        let len = encoded_len(e.payload.len());
        if e.payload.len() > self.max_payload() {
            return Err(Error::RecordTooLarge {
                len: e.payload.len(),
                max: self.max_payload(),
                segment_size: self.control.segment_size,
            });
        }
        if st.seg.is_some() && st.off + len + SEAL_LEN > self.control.segment_size as usize {
            self.seal_locked(st, true)?;
        }
        if st.seg.is_none() {
            self.activate_locked(st)?;
        }
        let Some(seg) = st.seg.as_ref() else {
            return Err(Error::Other("no open segment after activation".into()));
        };
        let lsn = seg.start_lsn + st.off as u64;
        // SAFETY: we hold the state lock and write past everything published.
        let dst = unsafe { seg.slice_mut(st.off, len) };
        let durable = self.durable_offset(st, seg.start_lsn);
        encode_record(
            dst,
            lsn,
            durable,
            e.entry_type.code(),
            e.tx_id,
            ts,
            e.payload,
        );
        st.hasher.update(dst);
        st.off += len;
        st.seg_records += 1;
        st.seg_last_lsn = lsn;
        st.end_lsn = lsn + len as u64;
        self.appended.fetch_add(1, Ordering::Relaxed);
        Ok(Appended {
            lsn: Lsn(lsn),
            end_lsn: Lsn(st.end_lsn),
        })
    }

    /// How far into the open segment (starting at `start`) the log is durable now: written into
    /// each record, so that recovery can tell bytes that were never synced (a torn tail, even
    /// one persisted out of order) from bytes that were (damage).
    fn durable_offset(&self, st: &WriterState, start: u64) -> u32 {
        if !st.seg_durable_offsets {
            return 0;
        }
        let flushed = self.flushed.load(Ordering::Acquire);
        // At most the write position, which is below the segment size (at most 1 GiB).
        flushed.saturating_sub(start).min(st.off as u64) as u32
    }

    /// Lets every appender that is ready to run append before the leader syncs: yields the CPU
    /// while the write position still moves (at most 200 µs). With more writers than cores, a
    /// leader that syncs at once covers only the few that were quick to come back; the rest
    /// each wait a whole sync longer.
    fn gather_appenders(&self) {
        let start = Instant::now();
        let mut seen = self.written.load(Ordering::Acquire);
        loop {
            std::thread::yield_now();
            let now = self.written.load(Ordering::Acquire);
            if now == seen || start.elapsed() > Duration::from_micros(200) {
                return;
            }
            seen = now;
        }
    }

    fn wait_durable(&self, target: u64) -> Result<()> {
        // The poison flag before `flushed`: once a sync failed, no wait succeeds, not even for
        // a position `flush_lsn` passed before (the caller asks now, and the writer can no
        // longer vouch for anything).
        self.check_poison()?;
        if self.flushed.load(Ordering::Acquire) >= target {
            return Ok(());
        }
        let mut s = lock(&self.sync);
        loop {
            self.check_poison()?;
            if self.flushed.load(Ordering::Acquire) >= target {
                return Ok(());
            }
            if !s.leader_active {
                break;
            }
            // A leader is syncing: it wakes everyone when done, and each waiter either finds
            // its LSN covered or becomes the next leader.
            s = self.synced.wait(s).unwrap_or_else(|p| p.into_inner());
        }
        s.leader_active = true;
        if s.last_group > 1 {
            // Others were writing along: let them catch up (a lone writer only loses time).
            drop(s);
            self.gather_appenders();
            s = lock(&self.sync);
        }
        let appended = self.appended.load(Ordering::Relaxed);
        s.last_group = appended - s.appended_at_last_sync;
        s.appended_at_last_sync = appended;
        let (seg, to, end, seals) = {
            let st = lock(&self.state);
            (st.seg.clone(), st.off, st.end_lsn, st.tickets)
        };
        if target > end {
            self.resign(s);
            return Err(Error::InvalidArgument(format!(
                "cannot wait for LSN {}: nothing has been written past {}",
                Lsn(target),
                Lsn(end)
            )));
        }
        let Some(seg) = seg else {
            // No open segment: everything written is in sealed segments.
            self.resign(s);
            self.wait_finishing(seals, |f| f.durable)?;
            return self.advance_flushed(end);
        };
        let from = if s.segment_no == seg.name.segment_no.0 {
            s.synced_to
        } else {
            0
        };
        drop(s);
        // The msync runs without the sync lock, so that waiters whose records an earlier sync
        // already covered are not queued behind this one.
        crate::sync_point!("wal::group_commit::sync");
        let r = if to > from {
            self.sync_segment(&seg, SegmentSync::Range(from, to))
                .map(|()| true)
        } else {
            Ok(false)
        };
        // Records of this segment count only once every earlier segment (and this one's name)
        // is durable too. The finisher works on that meanwhile: after a crash before it is
        // done, recovery ends the log before this segment.
        let r = r.and_then(|synced| self.wait_finishing(seals, |f| f.durable).map(|()| synced));
        let mut s = lock(&self.sync);
        let r = r.and_then(|synced| self.advance_flushed(end).map(|()| synced));
        if let Ok(synced) = r {
            if synced {
                self.syncs.fetch_add(1, Ordering::Relaxed);
            }
            if s.segment_no != seg.name.segment_no.0 || s.synced_to < to {
                s.segment_no = seg.name.segment_no.0;
                s.synced_to = to;
            }
        }
        self.resign(s);
        r.map(drop)
    }

    /// Ends this thread's turn as group-commit leader and wakes the waiters: each finds its LSN
    /// covered or becomes the next leader.
    fn resign(&self, mut s: MutexGuard<'_, SyncState>) {
        s.leader_active = false;
        drop(s);
        self.synced.notify_all();
    }

    /// Writes the seal marker and hands the segment to the finisher (see the module comment);
    /// with `then_activate`, activates the next segment before the sealed one is renamed, so
    /// that the new segment's name becomes durable first. The seal's ticket is `st.last_seal`.
    fn seal_locked(
        &self,
        st: &mut WriterState,
        then_activate: bool,
    ) -> Result<Option<SegmentName>> {
        let Some(seg) = st.seg.clone() else {
            return Ok(None);
        };
        if st.seg_records == 0 {
            return Ok(None);
        }
        let seal = SealInfo {
            record_count: st.seg_records,
            last_lsn: st.seg_last_lsn,
            segment_checksum: st.hasher.clone().finalize(),
        };
        let lsn = seg.start_lsn + st.off as u64;
        // SAFETY: state lock held; the marker goes right after the last record.
        let dst = unsafe { seg.slice_mut(st.off, SEAL_LEN) };
        let durable = self.durable_offset(st, seg.start_lsn);
        encode_seal(dst, lsn, durable, crate::now_us(), &seal);
        // Bound the sealed segments not yet durable (two tickets per rotation).
        let in_flight = (MAX_UNFINISHED_SEAL_BYTES / self.control.segment_size).max(2);
        if let Some(oldest) = st.tickets.checked_sub(2 * in_flight) {
            self.wait_finishing(oldest, |f| f.durable)?;
        }
        self.seals.fetch_add(1, Ordering::Relaxed);
        st.tickets += 1;
        st.last_seal = st.tickets;
        let sealed = Arc::new(SealedOpen {
            seg: seg.clone(),
            used: st.off + SEAL_LEN,
            end_lsn: st.end_lsn,
            ticket: st.tickets,
        });
        self.to_finisher(FinisherMsg::Durable(sealed.clone()));
        st.prev_checksum = Some(seal.segment_checksum);
        st.next_segment_no = seg.name.segment_no.next().0;
        st.seg = None;
        let activated = if then_activate {
            self.activate_locked(st)
        } else {
            Ok(())
        };
        self.to_finisher(FinisherMsg::Name(sealed));
        activated?;
        Ok(Some(seg.name.with_kind(SegmentFileKind::Sealed)))
    }

    /// Queues work for the finisher thread, or does it here when the thread is gone.
    fn to_finisher(&self, msg: FinisherMsg) {
        let msg = match &*lock(&self.finisher_tx) {
            Some(tx) => match tx.send(msg) {
                Ok(()) => return,
                Err(mpsc::SendError(m)) => m,
            },
            None => msg,
        };
        self.run_finisher_msg(msg);
    }

    fn run_finisher_msg(&self, msg: FinisherMsg) {
        // After a failure the writer is poisoned: leave the rest to recovery, but still count
        // every ticket as reached so that nobody waits forever.
        let healthy = !self.poisoned.load(Ordering::Acquire);
        match msg {
            FinisherMsg::Durable(s) => {
                if healthy {
                    crate::sync_point!("wal::finisher::sync");
                    // A failure has poisoned the writer and been logged.
                    let _ = self
                        .sync_segment(&s.seg, SegmentSync::Range(0, s.used))
                        .and_then(|()| self.advance_flushed(s.end_lsn));
                }
                self.reached(s.ticket, |f| &mut f.durable);
            }
            FinisherMsg::Activated(ticket) => {
                if healthy {
                    if let Err(e) = self.sync_wal_dir() {
                        tracing::error!(error = %e, "making an activated segment's name durable failed");
                    }
                }
                self.reached(ticket, |f| &mut f.durable);
            }
            FinisherMsg::Name(s) => {
                if healthy {
                    if let Err(e) = self.name_sealed(&s) {
                        tracing::error!(error = %e, "naming a sealed segment failed");
                    }
                }
                self.reached(s.ticket, |f| &mut f.named);
            }
            FinisherMsg::Writeback((seg, from, to)) => {
                // Only a hint to start writing early: durability still comes from msync. An
                // I/O error it meets poisons like a failed sync (and has been logged).
                if healthy {
                    let _ = self.sync_segment(&seg, SegmentSync::StartWriteback(from, to));
                }
            }
            FinisherMsg::Stop => {}
        }
    }

    /// Syncs the `wal/` directory; a failure poisons the writer.
    fn sync_wal_dir(&self) -> Result<()> {
        fsync_dir(&self.dir.wal_dir()).map_err(|e| match e {
            Error::Io { context, source } => self.poison(context, source),
            other => other,
        })
    }

    /// Cuts a durable sealed segment to its used length and gives it its sealed name.
    fn name_sealed(&self, s: &SealedOpen) -> Result<()> {
        let seg = &s.seg;
        let p = |what: &str| format!("{what} {}", seg.path.display());
        // Nothing maps past `used` any more: the tail is only zeros we never wrote.
        crate::fault!("wal::seal::truncate", e => self.poison(p("truncate"), e));
        seg.truncate(s.used as u64)
            .map_err(|e| self.poison(p("truncate"), e))?;
        self.sync_segment(seg, SegmentSync::File)?;
        let sealed_name = seg.name.with_kind(SegmentFileKind::Sealed);
        let sealed_path = self.dir.segment_path(&sealed_name);
        crate::fault!("wal::seal::rename", e => self.poison(p("rename"), e));
        std::fs::rename(&seg.path, &sealed_path).map_err(|e| self.poison(p("rename"), e))?;
        crate::fault!("wal::seal::dir_fsync", e => self.poison(format!("fsync directory {}", self.dir.wal_dir().display()), e));
        self.sync_wal_dir()?;
        self.sealed.fetch_max(s.end_lsn, Ordering::AcqRel);
        tracing::debug!(segment = %sealed_name, "sealed segment");
        Ok(())
    }

    fn reached(&self, ticket: u64, stage: impl Fn(&mut Finishing) -> &mut u64) {
        let mut f = lock(&self.finishing);
        let t = stage(&mut f);
        *t = (*t).max(ticket);
        drop(f);
        self.finishing_cv.notify_all();
    }

    /// Blocks until the finisher's `stage` reaches `ticket`; fails when the writer was poisoned
    /// on the way.
    fn wait_finishing(&self, ticket: u64, stage: impl Fn(&Finishing) -> u64) -> Result<()> {
        let mut f = lock(&self.finishing);
        while stage(&f) < ticket {
            f = self.finishing_cv.wait(f).unwrap_or_else(|p| p.into_inner());
        }
        drop(f);
        self.check_poison()
    }

    fn activate_locked(&self, st: &mut WriterState) -> Result<()> {
        let no = st.next_segment_no;
        let name = SegmentName::new(self.control.timeline, no, SegmentFileKind::Open);
        let path = self.dir.segment_path(&name);
        // The slot stays locked until the rename is done, so the preparer never sees the file
        // taken but not yet renamed (and recreates it under the writer's feet).
        let mut slot = lock(&self.prepared);
        let prepared = match slot.take() {
            Some((n, p)) if n == no => p,
            other => {
                if let Some((_, p)) = other {
                    let _ = std::fs::remove_file(&p.path);
                }
                tracing::debug!(
                    segment = no,
                    "no prepared segment ready; preparing in the append path"
                );
                self.prepare(no)?
            }
        };
        let from = &prepared.path;
        crate::fault!("wal::activate::rename", e => Error::io(format!("rename {} to {}", from.display(), path.display()), e));
        std::fs::rename(from, &path)
            .ctx(|| format!("rename {} to {}", from.display(), path.display()))?;
        self.activated.store(no + 1, Ordering::Release);
        drop(slot);
        // The new name becomes durable in the background; no record of this segment counts as
        // durable before it has.
        st.tickets += 1;
        self.to_finisher(FinisherMsg::Activated(st.tickets));
        let seg = ActiveSegment::from_prepared(prepared, path, name);
        let header = SegmentHeader {
            format_version: SEGMENT_FORMAT_VERSION,
            timeline: self.control.timeline,
            segment_size: self.control.segment_size,
            segment_no: no,
            system_id: self.control.system_id,
            prev_checksum: st.prev_checksum,
            created_us: crate::now_us(),
        };
        let hb = header.encode();
        // SAFETY: state lock held; nothing of this segment is published yet. The header
        // becomes durable with the segment's first sync, which starts at offset 0; recovery
        // discards a segment whose header never did (none of its records were acknowledged).
        unsafe { seg.slice_mut(0, SEGMENT_HEADER_LEN) }.copy_from_slice(&hb);
        st.hasher = crc32fast::Hasher::new();
        st.hasher.update(&hb);
        st.off = SEGMENT_HEADER_LEN;
        st.seg_durable_offsets = true;
        st.writeback_to = 0;
        st.seg_records = 0;
        st.seg_last_lsn = 0;
        st.opened_at = Instant::now();
        st.seg = Some(Arc::new(seg));
        st.next_segment_no = no + 1;
        st.prepare_next = Some(no + 1);
        Ok(())
    }
}
