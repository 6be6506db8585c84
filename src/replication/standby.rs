//! The receiving side: connects to a primary, receives sealed segments, stores each durably
//! under a sealed name only after checking it, acknowledges it as flushed, then applies its
//! records through an [`Applicator`] and records `applied_lsn`.
//!
//! The standby is the writer of its own data directory: it holds the directory's lock. An
//! incoming segment is written as `.wal.partial`, fsynced, verified (every record, the seal
//! marker, the segment checksum, the chain to its predecessor), renamed to `.wal`, and the
//! directory fsynced; only then is it acknowledged. A `.wal.partial` left by a crash is
//! discarded at start. File names are always made from validated numbers, never from text that
//! came over the network.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::TcpStream;
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use uuid::Uuid;

use super::applicator::Applicator;
use super::auth::{nonce, AuthToken};
use super::codec;
use super::frame::{write_message, DEFAULT_MAX_FRAME, HANDSHAKE_MAX_FRAME};
use super::messages::{
    ErrorCode, Message, MAGIC, MIN_PROTOCOL_VERSION, PROTOCOL_VERSION, SEGMENT_REJECTED_VERSION,
};
use super::segments::verify_incoming;
use super::standby_state::{self, StandbyMeta};
use super::{read_msg, refuse, ReplError, DEFAULT_HEARTBEAT, DEFAULT_PEER_TIMEOUT};
use crate::datadir::{DataDir, DirLock};
use crate::decoder::{ScanEnd, SegmentScanner};
use crate::error::Error;
use crate::format::record::SEAL_LEN;
use crate::format::segment_header::SEGMENT_HEADER_LEN;
use crate::format::{ControlFile, SegmentFileKind, SegmentName, FORMAT_VERSION};
use crate::fsutil::fsync_dir;
use crate::recovery::{recover, RecoveryMode};
use crate::segment_check::check_sealed;
use crate::Lsn;

/// How a standby runs.
#[derive(Clone, Debug)]
pub struct StandbyConfig {
    pub data_dir: PathBuf,
    /// The primary's address, `host:port`.
    pub primary: String,
    pub auth_token: Option<AuthToken>,
    /// Largest frame accepted from the primary.
    pub max_frame: usize,
    pub heartbeat_interval: Duration,
    pub peer_timeout: Duration,
    /// First wait before reconnecting; it doubles after each failure up to `backoff_max`.
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
}

impl StandbyConfig {
    pub fn new(data_dir: impl Into<PathBuf>, primary: impl Into<String>) -> StandbyConfig {
        StandbyConfig {
            data_dir: data_dir.into(),
            primary: primary.into(),
            auth_token: None,
            max_frame: DEFAULT_MAX_FRAME,
            heartbeat_interval: DEFAULT_HEARTBEAT,
            peer_timeout: DEFAULT_PEER_TIMEOUT,
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_secs(10),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StandbyPhase {
    Connecting,
    Streaming,
    /// Waiting before the next connection attempt.
    Waiting,
    Stopped,
    Failed,
}

/// A standby's state as the library reports it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct StandbyState {
    pub standby_id: String,
    pub phase: StandbyPhase,
    pub flushed_lsn: u64,
    pub applied_lsn: u64,
    /// End of the primary's newest sealed segment, as last heard.
    pub primary_sealed_lsn: u64,
    pub last_error: Option<String>,
}

/// What the standby holds: its identity (once known) and where its sealed segments end.
#[derive(Clone, Copy, Debug, Default)]
struct Held {
    control: Option<ControlFile>,
    next_segment: Option<u64>,
    prev_checksum: Option<u32>,
}

struct Shared {
    config: StandbyConfig,
    dd: DataDir,
    id: Uuid,
    held: Mutex<Held>,
    flushed: AtomicU64,
    applied: AtomicU64,
    primary_sealed: AtomicU64,
    phase: Mutex<(StandbyPhase, Option<String>)>,
    /// Bumped when a position moves: the connection sends a Status at once.
    bump: watch::Sender<u64>,
    /// Set when applying failed: the standby stops.
    failed: watch::Sender<Option<String>>,
    /// The standby's identity file as stored: None until the directory is a standby's (a
    /// fresh directory before its first contact, a directory of the same system before the
    /// primary accepted it).
    meta: Mutex<Option<StandbyMeta>>,
    /// A directory of the same system that is becoming a standby: its open segment, which
    /// the primary's sealed copy must extend.
    adopting: Mutex<Option<Adopting>>,
    /// Sealed segments of an adopted directory, applied once it is adopted.
    deferred: Mutex<Vec<SegmentName>>,
    /// What this process created before the directory became a standby's: removed again
    /// when it stops before that (a refused first contact leaves nothing behind).
    created: Created,
    /// Held while anything of this standby runs.
    _lock: DirLock,
}

/// A data directory of the primary's system (restored from the archive, or a former primary)
/// that becomes a standby once the primary accepts it.
#[derive(Clone, Debug)]
struct Adopting {
    /// Its open segment, if any: the records up to `valid_end` must be a prefix of the
    /// primary's sealed segment of the same number; that sealed copy then replaces it.
    open: Option<OpenPrefix>,
}

#[derive(Clone, Debug)]
struct OpenPrefix {
    name: SegmentName,
    /// End of its last valid record (offset in the file).
    valid_end: usize,
}

#[derive(Clone, Debug, Default)]
struct Created {
    /// The directories this process made, innermost (the data directory) first.
    dirs: Vec<PathBuf>,
    lock_file: bool,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Shared {
    fn set_phase(&self, p: StandbyPhase, err: Option<String>) {
        let mut g = lock(&self.phase);
        g.0 = p;
        if err.is_some() {
            g.1 = err;
        }
    }
    fn held(&self) -> Held {
        *lock(&self.held)
    }
    fn notify(&self) {
        self.bump.send_modify(|n| *n += 1);
    }
}

/// A running standby.
pub struct Standby {
    shared: Arc<Shared>,
    shutdown: watch::Sender<bool>,
    task: Option<tokio::task::JoinHandle<Result<(), ReplError>>>,
}

impl Standby {
    /// Takes the data directory's lock, checks what it holds (discarding any leftover
    /// `.wal.partial`), applies sealed segments not yet applied, and starts replicating in the
    /// current tokio runtime.
    pub async fn start(
        config: StandbyConfig,
        applicator: impl Applicator,
    ) -> Result<Standby, ReplError> {
        super::frame::check_max_frame(config.max_frame)
            .map_err(|e| ReplError::Store(Error::InvalidArgument(e)))?;
        super::check_address(&config.primary, false)
            .map_err(|e| ReplError::Store(Error::InvalidArgument(e)))?;
        super::check_timing(config.heartbeat_interval, config.peer_timeout)?;
        if config.backoff_initial.is_zero() || config.backoff_max < config.backoff_initial {
            return Err(ReplError::Store(Error::InvalidArgument(format!(
                "the reconnection backoff must start above zero and its cap ({:?}) be at least its start ({:?})",
                config.backoff_max, config.backoff_initial
            ))));
        }
        let c2 = config.clone();
        let opened = tokio::task::spawn_blocking(move || open_dir(&c2))
            .await
            .map_err(|e| ReplError::io("open the standby directory", std::io::Error::other(e)))??;
        let (bump, _) = watch::channel(0);
        let (failed, _) = watch::channel(None);
        let shared = Arc::new(Shared {
            dd: DataDir::new(&config.data_dir),
            config,
            id: opened.id,
            held: Mutex::new(opened.held),
            flushed: AtomicU64::new(opened.flushed),
            applied: AtomicU64::new(opened.applied),
            primary_sealed: AtomicU64::new(0),
            phase: Mutex::new((StandbyPhase::Connecting, None)),
            bump,
            failed,
            meta: Mutex::new(opened.meta),
            adopting: Mutex::new(opened.adopting),
            deferred: Mutex::new(Vec::new()),
            created: opened.created,
            _lock: opened.lock,
        });
        tracing::info!(
            dir = %shared.dd.root().display(),
            standby_id = %shared.id,
            flushed = %Lsn(opened.flushed),
            applied = %Lsn(opened.applied),
            "standby starting"
        );
        let (jobs, rx) = std::sync::mpsc::channel::<SegmentName>();
        if shared.meta.lock().map(|m| m.is_some()).unwrap_or(false) {
            for name in opened.pending {
                let _ = jobs.send(name);
            }
        } else {
            // Nothing is applied (or recorded) before the directory is a standby's.
            *lock(&shared.deferred) = opened.pending;
        }
        let s2 = shared.clone();
        let applier = std::thread::Builder::new()
            .name("walship-apply".into())
            .spawn(move || applier(s2, rx, applicator))
            .map_err(|e| ReplError::io("start the applier thread", e))?;
        let (shutdown, shutdown_rx) = watch::channel(false);
        let s2 = shared.clone();
        let task = tokio::spawn(async move {
            let r = run(s2.clone(), shutdown_rx, jobs).await;
            // The job channel is closed now: the applier finishes its segment and ends.
            let _ = tokio::task::spawn_blocking(move || applier.join()).await;
            if lock(&s2.meta).is_none() {
                let s3 = s2.clone();
                let _ = tokio::task::spawn_blocking(move || undo_created(&s3)).await;
            }
            if let Some(e) = s2.failed.borrow().clone() {
                s2.set_phase(StandbyPhase::Failed, Some(e.clone()));
                return Err(ReplError::Store(Error::Other(e)));
            }
            match &r {
                Ok(()) => s2.set_phase(StandbyPhase::Stopped, None),
                Err(e) => s2.set_phase(StandbyPhase::Failed, Some(e.to_string())),
            }
            r
        });
        Ok(Standby {
            shared,
            shutdown,
            task: Some(task),
        })
    }

    pub fn standby_id(&self) -> Uuid {
        self.shared.id
    }

    pub fn is_running(&self) -> bool {
        self.task.as_ref().is_some_and(|t| !t.is_finished())
    }

    pub fn state(&self) -> StandbyState {
        let (phase, last_error) = lock(&self.shared.phase).clone();
        StandbyState {
            standby_id: self.shared.id.to_string(),
            phase,
            flushed_lsn: self.shared.flushed.load(Ordering::Acquire),
            applied_lsn: self.shared.applied.load(Ordering::Acquire),
            primary_sealed_lsn: self.shared.primary_sealed.load(Ordering::Acquire),
            last_error,
        }
    }

    /// Waits until the standby ends by itself (a fatal error) or is stopped.
    pub async fn join(&mut self) -> Result<(), ReplError> {
        match self.task.as_mut() {
            Some(t) => {
                let r = t.await;
                self.task = None;
                r.map_err(|e| ReplError::io("standby task", std::io::Error::other(e)))?
            }
            None => Ok(()),
        }
    }

    /// Stops: closes the connection, lets the applier finish its segment, and waits up to
    /// `bound`; whatever still runs then is aborted.
    pub async fn stop(&mut self, bound: Duration) -> Result<(), ReplError> {
        let _ = self.shutdown.send(true);
        if let Some(mut t) = self.task.take() {
            match tokio::time::timeout(bound, &mut t).await {
                Ok(r) => {
                    return r
                        .map_err(|e| ReplError::io("standby task", std::io::Error::other(e)))?
                }
                Err(_) => {
                    tracing::warn!("standby did not stop within {bound:?}; aborting it");
                    t.abort();
                }
            }
        }
        Ok(())
    }
}

impl Drop for Standby {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
    }
}

struct Opened {
    lock: DirLock,
    id: Uuid,
    held: Held,
    flushed: u64,
    applied: u64,
    /// Sealed segments not yet fully applied, in order.
    pending: Vec<SegmentName>,
    meta: Option<StandbyMeta>,
    adopting: Option<Adopting>,
    created: Created,
}

/// Removes what this process created in a directory that never became a standby's: the lock
/// file, and the directory itself when it made it (only if empty).
fn undo_created(shared: &Shared) {
    let dd = &shared.dd;
    if shared.created.lock_file {
        let _ = std::fs::remove_file(dd.lock_path());
    }
    if !shared.created.dirs.is_empty() {
        for d in [dd.wal_dir(), dd.state_dir()] {
            let _ = std::fs::remove_dir(d);
        }
        // Only empty directories go: anything someone else put there stays.
        for d in &shared.created.dirs {
            if std::fs::remove_dir(d).is_err() {
                break;
            }
        }
    } else if shared.created.lock_file {
        let _ = fsync_dir(dd.root());
    }
}

fn not_standby_dir(dd: &DataDir, reason: impl Into<String>) -> ReplError {
    ReplError::Store(Error::NotADataDir {
        path: dd.root().to_path_buf(),
        reason: reason.into(),
    })
}

/// Opens (or prepares to create) the standby's directory.
fn open_dir(config: &StandbyConfig) -> Result<Opened, ReplError> {
    let dd = DataDir::new(&config.data_dir);
    // The directories about to be made, innermost first.
    let dirs: Vec<PathBuf> = dd
        .root()
        .ancestors()
        .take_while(|a| !a.as_os_str().is_empty() && !a.exists())
        .map(|a| a.to_path_buf())
        .collect();
    crate::datadir::create_private_dir(dd.root())?;
    let lock_existed = dd.lock_path().exists();
    let created = Created {
        dirs,
        lock_file: !lock_existed,
    };
    let lock = match dd.lock() {
        Ok(l) => l,
        Err(e) => {
            if !created.dirs.is_empty() {
                let _ = std::fs::remove_file(dd.lock_path());
                for d in &created.dirs {
                    let _ = std::fs::remove_dir(d);
                }
            }
            return Err(e.into());
        }
    };
    let meta = standby_state::read_meta(&dd)?;
    if !dd.is_initialized() {
        // Absent or empty: it gets the primary's identity at first contact. Only what an
        // earlier attempt left may be here.
        check_fresh(&dd)?;
        discard_partials(&dd)?;
        return Ok(Opened {
            lock,
            id: meta.as_ref().map_or_else(Uuid::new_v4, |m| m.standby_id),
            held: Held::default(),
            flushed: 0,
            applied: 0,
            pending: Vec::new(),
            meta: None,
            adopting: None,
            created,
        });
    }
    let control = dd.read_control()?;
    let Some(meta) = meta else {
        // A directory of some system: it may follow a primary of the same system once the
        // primary accepts its history. Nothing is written until then.
        let (held, flushed, pending, open) = examine_for_adoption(&dd, &control)?;
        tracing::info!(
            dir = %dd.root().display(),
            flushed = %Lsn(flushed),
            open = open.as_ref().map_or("none".to_string(), |o| format!("{} up to offset {}", o.name, o.valid_end)),
            "not a standby's directory yet: it becomes one once the primary accepts its history"
        );
        return Ok(Opened {
            lock,
            id: Uuid::new_v4(),
            held,
            flushed,
            applied: 0,
            pending,
            meta: None,
            adopting: Some(Adopting { open }),
            created,
        });
    };
    discard_partials(&dd)?;
    let rec = recover(&dd, &control, RecoveryMode::Strict)?;
    if let Some(open) = &rec.open {
        return Err(not_standby_dir(
            &dd,
            format!(
                "it holds an open segment {}: standbys only hold sealed segments",
                open.name
            ),
        ));
    }
    let applied = standby_state::read_applied(&dd)?;
    let last = rec.sealed.last();
    let flushed = last.map_or(0, |s| s.end_lsn);
    if applied > flushed {
        tracing::warn!(applied = %Lsn(applied), flushed = %Lsn(flushed), "applied_lsn is past the stored segments; keeping it (it never moves backwards)");
    }
    Ok(Opened {
        lock,
        id: meta.standby_id,
        held: Held {
            control: Some(control),
            next_segment: last.map(|s| s.name.segment_no.next().0),
            prev_checksum: last.map(|s| s.seal.segment_checksum),
        },
        flushed,
        applied,
        pending: rec
            .sealed
            .iter()
            .filter(|s| s.end_lsn > applied)
            .map(|s| s.name)
            .collect(),
        meta: Some(meta),
        adopting: None,
        created,
    })
}

/// Looks at a data directory that has a control file and is not a standby's yet, without
/// changing anything: its sealed segments must be whole and chained, and it may end in one open
/// segment, of which the records up to the first invalid byte count (as recovery would keep
/// them). Returns what it holds as a standby would, its end, the sealed segments to apply, and
/// its open segment.
#[allow(clippy::type_complexity)]
fn examine_for_adoption(
    dd: &DataDir,
    control: &ControlFile,
) -> Result<(Held, u64, Vec<SegmentName>, Option<OpenPrefix>), ReplError> {
    let names = dd.list_segments()?;
    let mut sealed: Vec<crate::segment_check::SealedSegment> = Vec::new();
    let mut opens = Vec::new();
    for name in names {
        match name.kind {
            SegmentFileKind::Sealed => {
                let seg = check_sealed(&dd.segment_path(&name), &name, control)?;
                if let Some(prev) = sealed.last() {
                    if seg.name.segment_no.0 != prev.name.segment_no.next().0
                        || seg.header.prev_checksum != Some(prev.seal.segment_checksum)
                    {
                        return Err(not_standby_dir(
                            dd,
                            format!(
                                "its sealed segments do not form one chain ({} after {}): it cannot follow a primary",
                                seg.name, prev.name
                            ),
                        ));
                    }
                }
                sealed.push(seg);
            }
            SegmentFileKind::Open => opens.push(name),
            _ => {}
        }
    }
    if opens.len() > 1 {
        return Err(not_standby_dir(
            dd,
            format!(
                "it holds {} open segments: open it for writing once (recovery decides which records count), then try again",
                opens.len()
            ),
        ));
    }
    let last = sealed.last();
    let mut held = Held {
        control: Some(*control),
        next_segment: last.map(|s| s.name.segment_no.next().0),
        prev_checksum: last.map(|s| s.seal.segment_checksum),
    };
    let mut open = None;
    if let Some(name) = opens.first().copied() {
        let path = dd.segment_path(&name);
        let bytes = crate::reader::read_segment(&path)?;
        let mut scan = SegmentScanner::new(&bytes).map_err(|r| Error::Corrupt {
            file: path.clone(),
            offset: 0,
            lsn: Lsn(name.segment_no.start_lsn_saturating(control.segment_size)),
            reason: r,
        })?;
        crate::segment_check::check_identity(&path, scan.header(), &name, control)?;
        let header_prev = scan.header().prev_checksum;
        for _ in scan.by_ref() {}
        let valid_end = scan.end().map_or(scan.offset(), |e| e.offset());
        match last {
            // Left by an adoption cut short after the primary's copy was stored: that copy
            // supersedes it when these records are a prefix of it.
            Some(l) if l.name.segment_no == name.segment_no => {
                let sealed_bytes = crate::reader::read_segment(&dd.segment_path(&l.name))?;
                if let Some(at) = prefix_mismatch(
                    &bytes,
                    valid_end,
                    &sealed_bytes,
                    l.end_lsn - name.segment_no.start_lsn_saturating(control.segment_size),
                ) {
                    return Err(not_standby_dir(dd, format!("its open segment {name} and its sealed segment {} differ at offset {at}", l.name)));
                }
            }
            Some(l) if l.name.segment_no.next().0 != name.segment_no.0 => {
                return Err(not_standby_dir(
                    dd,
                    format!(
                        "its open segment {name} does not follow its newest sealed segment {}",
                        l.name
                    ),
                ))
            }
            _ => {
                if let (Some(l), Some(h)) = (last, header_prev) {
                    if h != l.seal.segment_checksum {
                        return Err(not_standby_dir(
                            dd,
                            format!("its open segment {name} does not chain to {}", l.name),
                        ));
                    }
                }
                held.next_segment = Some(name.segment_no.0);
                if held.prev_checksum.is_none() {
                    held.prev_checksum = header_prev;
                }
                open = Some(OpenPrefix { name, valid_end });
            }
        }
    }
    let flushed = last.map_or(0, |s| s.end_lsn);
    Ok((held, flushed, sealed.iter().map(|s| s.name).collect(), open))
}

/// Where the records of an open segment (up to `valid_end`) stop matching a sealed segment of
/// the same number whose records end at `sealed_end`; None when they are a prefix of it.
fn prefix_mismatch(open: &[u8], valid_end: usize, sealed: &[u8], sealed_end: u64) -> Option<usize> {
    let start = SEGMENT_HEADER_LEN;
    if valid_end <= start {
        return None;
    }
    if (valid_end as u64) > sealed_end || sealed.len() < valid_end || open.len() < valid_end {
        // The sealed copy ends before these records do.
        return Some((sealed_end as usize).max(start));
    }
    (start..valid_end).find(|&i| open[i] != sealed[i])
}

/// A fresh standby directory may hold only the lock file, and wal/ and state/ as an
/// interrupted first contact left them.
fn check_fresh(dd: &DataDir) -> Result<(), ReplError> {
    let entries = std::fs::read_dir(dd.root())
        .map_err(|e| ReplError::io(format!("list {}", dd.root().display()), e))?;
    for e in entries {
        let e = e.map_err(|e| ReplError::io(format!("list {}", dd.root().display()), e))?;
        let name = e.file_name();
        let ok = match name.to_str() {
            Some("LOCK") => true,
            Some("wal") => std::fs::read_dir(e.path()).is_ok_and(|mut d| {
                d.all(|f| {
                    f.is_ok_and(|f| {
                        f.file_name()
                            .to_str()
                            .and_then(SegmentName::parse)
                            .is_some_and(|n| n.kind == SegmentFileKind::Partial)
                    })
                })
            }),
            Some("state") => std::fs::read_dir(e.path()).is_ok_and(|mut d| {
                d.all(|f| {
                    f.is_ok_and(|f| {
                        f.file_name().to_str().is_some_and(|n| {
                            n == "standby.json" || crate::fsutil::is_temp_name_of(n, "standby.json")
                        })
                    })
                })
            }),
            _ => false,
        };
        if !ok {
            return Err(not_standby_dir(dd, format!("it is not empty ({} is there) and has no control file: give an empty or absent directory", name.to_string_lossy())));
        }
    }
    Ok(())
}

fn discard_partials(dd: &DataDir) -> Result<(), ReplError> {
    if !dd.wal_dir().exists() {
        return Ok(());
    }
    let mut removed = false;
    for name in dd.list_segments()? {
        if name.kind == SegmentFileKind::Partial {
            let p = dd.segment_path(&name);
            tracing::info!(file = %p.display(), "discarding a partial segment left by an interrupted transfer");
            std::fs::remove_file(&p)
                .map_err(|e| ReplError::io(format!("remove {}", p.display()), e))?;
            removed = true;
        }
    }
    if removed {
        fsync_dir(&dd.wal_dir())?;
    }
    Ok(())
}

/// Applies sealed segments in order, recording applied_lsn after each.
fn applier(
    shared: Arc<Shared>,
    rx: std::sync::mpsc::Receiver<SegmentName>,
    mut app: impl Applicator,
) {
    for name in rx {
        if let Err(e) = apply_segment(&shared, &name, &mut app) {
            let msg = format!("applying {name} failed: {e}");
            tracing::error!("{msg}");
            shared.failed.send_replace(Some(msg));
            return;
        }
    }
}

fn apply_segment(
    shared: &Shared,
    name: &SegmentName,
    app: &mut impl Applicator,
) -> crate::Result<()> {
    let path = shared.dd.segment_path(name);
    let file =
        std::fs::File::open(&path).map_err(|e| Error::io(format!("open {}", path.display()), e))?;
    // SAFETY: the standby holds the directory's lock and never changes a sealed file, so the
    // mapped bytes cannot change or shrink under us.
    let map = unsafe { memmap2::Mmap::map(&file) }
        .map_err(|e| Error::io(format!("mmap {}", path.display()), e))?;
    let applied = shared.applied.load(Ordering::Acquire);
    let start = name
        .segment_no
        .start_lsn_saturating(shared.dd.read_control()?.segment_size);
    let mut scan = SegmentScanner::new(&map).map_err(|r| Error::Corrupt {
        file: path.clone(),
        offset: 0,
        lsn: Lsn(start),
        reason: r,
    })?;
    let mut end = applied;
    for r in scan.by_ref() {
        if r.end_lsn() > applied {
            app.apply(&r)?;
            end = r.end_lsn();
        }
    }
    if let Some(ScanEnd::Invalid { offset, error }) = scan.end() {
        return Err(Error::Corrupt {
            file: path,
            offset: *offset as u64,
            lsn: Lsn(start + *offset as u64),
            reason: error.to_string(),
        });
    }
    app.flush()?;
    if end > applied {
        standby_state::write_applied(&shared.dd, end)?;
        shared.applied.store(end, Ordering::Release);
        tracing::debug!(segment = %name, applied = %Lsn(end), "applied segment");
        shared.notify();
    }
    Ok(())
}

/// Connects, streams, and reconnects with capped exponential backoff until stopped or a fatal
/// error.
async fn run(
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
    jobs: std::sync::mpsc::Sender<SegmentName>,
) -> Result<(), ReplError> {
    let cfg = shared.config.clone();
    let mut backoff = cfg.backoff_initial;
    let mut failed = shared.failed.subscribe();
    let mut attempt: u64 = 0;
    loop {
        if *shutdown.borrow() || failed.borrow().is_some() {
            return Ok(());
        }
        attempt += 1;
        shared.set_phase(StandbyPhase::Connecting, None);
        tracing::info!(primary = %cfg.primary, attempt, "connecting to the primary");
        let mut streamed = false;
        let (flushed_before, started) = (
            shared.flushed.load(Ordering::Acquire),
            std::time::Instant::now(),
        );
        let mut sd = shutdown.clone();
        let r = tokio::select! {
            r = connect_and_stream(&shared, &jobs, &mut sd, &mut streamed) => r,
            _ = failed.changed() => return Ok(()),
        };
        if *shutdown.borrow() {
            return Ok(());
        }
        let e = match r {
            Ok(()) => return Ok(()),
            Err(e) => e,
        };
        if e.is_fatal() {
            tracing::error!(primary = %cfg.primary, error = %e, "replication stopped");
            return Err(e);
        }
        // Start over with short waits after a connection that got somewhere; a connection
        // that fails again and again right after the handshake keeps backing off.
        let progressed = shared.flushed.load(Ordering::Acquire) > flushed_before
            || (streamed && started.elapsed() >= cfg.peer_timeout);
        if progressed {
            backoff = cfg.backoff_initial;
        }
        shared.set_phase(StandbyPhase::Waiting, Some(e.to_string()));
        if let ReplError::InvalidSegment {
            segment,
            offset,
            lsn,
            reason,
        } = &e
        {
            // Damage, not a network event: the primary was told and records it too.
            tracing::error!(primary = %cfg.primary, file = %segment, offset, lsn = %lsn, reason = %reason, retry_in = ?backoff, "DAMAGE: {e}; the primary was told; asking for it again");
        } else {
            tracing::warn!(primary = %cfg.primary, error = %e, retry_in = ?backoff, "replication connection ended");
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = shutdown.changed() => return Ok(()),
            _ = failed.changed() => return Ok(()),
        }
        backoff = (backoff * 2).min(cfg.backoff_max);
    }
}

fn from_primary(m: &Message<'_>, want: &str) -> ReplError {
    match m {
        Message::Error { code, message } => ReplError::PeerRefused {
            peer: "primary",
            code: *code,
            message: super::printable(message),
        },
        other => ReplError::refused(
            ErrorCode::Protocol,
            format!("expected {want} from the primary, got {}", other.name()),
        ),
    }
}

/// One connection: handshake, then receive segments until the connection ends.
async fn connect_and_stream(
    shared: &Arc<Shared>,
    jobs: &std::sync::mpsc::Sender<SegmentName>,
    shutdown: &mut watch::Receiver<bool>,
    streamed: &mut bool,
) -> Result<(), ReplError> {
    let cfg = &shared.config;
    let (max, t) = (cfg.max_frame, cfg.peer_timeout);
    let mut stream = match tokio::time::timeout(t, TcpStream::connect(&cfg.primary)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Err(ReplError::io(format!("connect to {}", cfg.primary), e)),
        Err(_) => {
            return Err(ReplError::Timeout(format!(
                "connecting to {} took longer than {t:?}",
                cfg.primary
            )))
        }
    };
    let _ = stream.set_nodelay(true);
    let my_nonce = nonce();
    write_message(
        &mut stream,
        &Message::Hello {
            magic: MAGIC,
            protocol_version: PROTOCOL_VERSION,
            nonce: my_nonce,
        },
    )
    .await?;
    let body = read_msg("primary", &mut stream, HANDSHAKE_MAX_FRAME, t, "Challenge").await?;
    let (primary_nonce, auth_required, version) = match codec::decode(&body) {
        Ok(Message::Challenge {
            protocol_version,
            nonce,
            auth_required,
        }) => {
            if !(MIN_PROTOCOL_VERSION..=PROTOCOL_VERSION).contains(&protocol_version) {
                return Err(refuse(&mut stream, ErrorCode::Version, format!("the primary speaks protocol version {protocol_version}, this standby versions {MIN_PROTOCOL_VERSION} to {PROTOCOL_VERSION}")).await);
            }
            (nonce, auth_required, protocol_version)
        }
        Ok(other) => return Err(from_primary(&other, "Challenge")),
        Err(e) => return Err(refuse(&mut stream, ErrorCode::Protocol, e.to_string()).await),
    };
    let proof = match (&cfg.auth_token, auth_required) {
        (Some(_), false) => {
            return Err(refuse(&mut stream, ErrorCode::Auth, "the primary does not authenticate, but this standby has a token: refusing a primary that cannot prove it knows it".into()).await)
        }
        (Some(tok), true) => Some(tok.standby_proof(&my_nonce, &primary_nonce)),
        (None, _) => None,
    };
    write_message(&mut stream, &Message::Auth { proof }).await?;
    let body = read_msg("primary", &mut stream, HANDSHAKE_MAX_FRAME, t, "AuthOk").await?;
    match codec::decode(&body) {
        Ok(Message::AuthOk { proof }) => {
            if let Some(tok) = &cfg.auth_token {
                if !proof.is_some_and(|p| tok.verify_primary(&primary_nonce, &my_nonce, &p)) {
                    return Err(refuse(
                        &mut stream,
                        ErrorCode::Auth,
                        "authentication failed: the primary did not prove it knows the token"
                            .into(),
                    )
                    .await);
                }
            }
        }
        Ok(other) => return Err(from_primary(&other, "AuthOk")),
        Err(e) => return Err(refuse(&mut stream, ErrorCode::Protocol, e.to_string()).await),
    }
    let held = shared.held();
    write_message(
        &mut stream,
        &Message::Identify {
            standby_id: *shared.id.as_bytes(),
            system_id: held.control.map(|c| *c.system_id.as_bytes()),
            timeline: held.control.map_or(0, |c| c.timeline),
            segment_size: held.control.map_or(0, |c| c.segment_size),
            next_segment: held.next_segment,
            prev_checksum: held.prev_checksum,
            flushed_lsn: shared.flushed.load(Ordering::Acquire),
            applied_lsn: shared.applied.load(Ordering::Acquire),
            max_frame: max as u32,
        },
    )
    .await?;
    let body = read_msg("primary", &mut stream, HANDSHAKE_MAX_FRAME, t, "Welcome").await?;
    let (system_id, timeline, segment_size, sealed_lsn) = match codec::decode(&body) {
        Ok(Message::Welcome {
            system_id,
            timeline,
            segment_size,
            sealed_lsn,
        }) => (
            Uuid::from_bytes(system_id),
            timeline,
            segment_size,
            sealed_lsn,
        ),
        Ok(other) => return Err(from_primary(&other, "Welcome")),
        Err(e) => return Err(refuse(&mut stream, ErrorCode::Protocol, e.to_string()).await),
    };
    match held.control {
        Some(c) => {
            if c.system_id != system_id || c.timeline != timeline || c.segment_size != segment_size
            {
                return Err(refuse(&mut stream, ErrorCode::Identity, format!(
                    "the primary is system {system_id} (timeline {timeline}, segment size {segment_size}), this standby holds system {} (timeline {}, segment size {})",
                    c.system_id, c.timeline, c.segment_size
                )).await);
            }
        }
        None => {
            if let Err(e) = crate::format::check_segment_size(segment_size) {
                return Err(refuse(
                    &mut stream,
                    ErrorCode::Identity,
                    format!("the primary's segment size is invalid: {e}"),
                )
                .await);
            }
            let control = ControlFile {
                format_version: FORMAT_VERSION,
                timeline,
                system_id,
                segment_size,
                created_us: crate::now_us(),
            };
            let (dd, meta) = (
                shared.dd.clone(),
                StandbyMeta {
                    standby_id: shared.id,
                    primary: cfg.primary.clone(),
                    created_us: crate::now_us(),
                },
            );
            tokio::task::spawn_blocking(move || -> crate::Result<()> {
                // The id first: a crash before the control file leaves a fresh directory
                // that keeps its id.
                standby_state::write_meta(&dd, &meta)?;
                DataDir::create_with_identity(dd.root(), &control)?;
                Ok(())
            })
            .await
            .map_err(|e| {
                ReplError::io("create the standby directory", std::io::Error::other(e))
            })??;
            tracing::info!(system_id = %system_id, timeline, segment_size, "created the standby directory with the primary's identity");
            lock(&shared.held).control = Some(control);
            *lock(&shared.meta) = Some(StandbyMeta {
                standby_id: shared.id,
                primary: cfg.primary.clone(),
                created_us: crate::now_us(),
            });
        }
    }
    // Only a primary that accepted this standby's identity and history may be recorded as its
    // primary, or make a directory of its system a standby's.
    let current = lock(&shared.meta).clone();
    match current {
        Some(mut meta) if meta.primary != cfg.primary => {
            tracing::info!(old = %meta.primary, new = %cfg.primary, "the primary's address changed");
            meta.primary = cfg.primary.clone();
            let (dd, m2) = (shared.dd.clone(), meta.clone());
            tokio::task::spawn_blocking(move || standby_state::write_meta(&dd, &m2))
                .await
                .map_err(|e| ReplError::io("record the primary", std::io::Error::other(e)))??;
            *lock(&shared.meta) = Some(meta);
        }
        Some(_) => {}
        None => {
            let adopting = lock(&shared.adopting).clone();
            if let Some(Adopting { open: None }) = adopting {
                let s2 = shared.clone();
                let j2 = jobs.clone();
                tokio::task::spawn_blocking(move || adopt(&s2, &j2))
                    .await
                    .map_err(|e| {
                        ReplError::io("adopt the directory", std::io::Error::other(e))
                    })??;
            }
        }
    }
    shared.primary_sealed.store(sealed_lsn, Ordering::Release);
    *streamed = true;
    shared.set_phase(StandbyPhase::Streaming, None);
    tracing::info!(primary = %cfg.primary, "streaming from the primary");

    let (mut rd, wr) = stream.into_split();
    let (last_word, last_rx) = tokio::sync::oneshot::channel();
    let mut writer = tokio::spawn(send_status(shared.clone(), wr, last_rx));
    // Segments are stored by a blocking task of their own, so that receiving the next segment
    // overlaps with syncing and checking the last one.
    let (store_tx, store_rx) = tokio::sync::mpsc::channel(STORE_QUEUE);
    let budget = Arc::new(Semaphore::new(STORE_BUDGET.max(max)));
    let (s2, j2) = (shared.clone(), jobs.clone());
    let mut store = tokio::task::spawn_blocking(move || store_segments(&s2, store_rx, &j2));
    let mut rx = Receiver {
        shared: shared.clone(),
        store: store_tx,
        budget,
        expected: held.next_segment,
        cur: None,
    };
    let result = loop {
        let body = tokio::select! {
            r = read_msg("primary", &mut rd, max, t, "segments or a keepalive") => r,
            _ = shutdown.changed() => break Ok(()),
            r = &mut writer => break Err(match r {
                Ok(Err(e)) => e,
                _ => ReplError::Timeout("the status sender stopped".into()),
            }),
            r = &mut store => break Err(store_ended(r)),
        };
        let body = match body {
            Ok(b) => b,
            Err(e) => break Err(e),
        };
        let r = match codec::decode(&body) {
            Ok(m) => rx.handle(m).await,
            Err(e) => Err(ReplError::refused(ErrorCode::Protocol, e.to_string())),
        };
        if let Err(e) = r {
            break Err(e);
        }
    };
    // A segment refused for its bytes: tell the primary where and why before closing, so that
    // it reports damage rather than a dropped connection.
    if let Err(ReplError::InvalidSegment {
        segment,
        offset,
        lsn,
        reason,
    }) = &result
    {
        let word = if version >= SEGMENT_REJECTED_VERSION {
            LastWord::Rejected {
                segment_no: segment.segment_no.0,
                offset: *offset,
                reason: reason.clone(),
            }
        } else {
            LastWord::Error(format!(
                "received segment {segment} is invalid at offset {offset} (LSN {lsn}): {reason}"
            ))
        };
        if last_word.send(word).is_ok() {
            let _ = tokio::time::timeout(Duration::from_secs(2), &mut writer).await;
        }
    }
    writer.abort();
    // Let the store task finish what it holds before a new connection reads the positions.
    drop(rx);
    if !store.is_finished() {
        store.await.map_err(|e| store_ended(Err(e)))??;
    }
    result
}

/// Chunks queued between the network and the store task.
const STORE_QUEUE: usize = 8;
/// Bytes queued between the network and the store task, whatever the chunk size (raised to
/// the maximum frame when that is larger, so that one chunk always fits).
const STORE_BUDGET: usize = 16 << 20;

fn store_ended(r: Result<Result<(), ReplError>, tokio::task::JoinError>) -> ReplError {
    match r {
        Ok(Err(e)) => e,
        Ok(Ok(())) => ReplError::Timeout("the segment store stopped".into()),
        Err(e) => ReplError::io("store segments", std::io::Error::other(e)),
    }
}

/// What the standby says last on a connection it ends.
enum LastWord {
    Rejected {
        segment_no: u64,
        offset: u64,
        reason: String,
    },
    /// For a version-1 primary, which has no `SegmentRejected`.
    Error(String),
}

/// Sends a Status at start, whenever a position moves, and every heartbeat interval; and the
/// last word when the connection ends on a refused segment.
async fn send_status(
    shared: Arc<Shared>,
    mut wr: OwnedWriteHalf,
    mut last: tokio::sync::oneshot::Receiver<LastWord>,
) -> Result<(), ReplError> {
    let mut bump = shared.bump.subscribe();
    let mut beat = tokio::time::interval(shared.config.heartbeat_interval);
    let t = shared.config.peer_timeout;
    loop {
        let m = Message::Status {
            flushed_lsn: shared.flushed.load(Ordering::Acquire),
            applied_lsn: shared.applied.load(Ordering::Acquire),
            now_us: crate::now_us(),
        };
        match tokio::time::timeout(t, write_message(&mut wr, &m)).await {
            Ok(r) => r?,
            Err(_) => {
                return Err(ReplError::Timeout(format!(
                    "the primary took no data for {t:?}"
                )))
            }
        }
        tokio::select! {
            _ = beat.tick() => {}
            r = bump.changed() => if r.is_err() { return Ok(()) },
            w = &mut last => {
                let Ok(w) = w else { return Ok(()) };
                let m = match &w {
                    LastWord::Rejected { segment_no, offset, reason } => Message::SegmentRejected {
                        segment_no: *segment_no,
                        offset: *offset,
                        reason,
                    },
                    LastWord::Error(message) => Message::Error { code: ErrorCode::Protocol, message },
                };
                let _ = tokio::time::timeout(t, write_message(&mut wr, &m)).await;
                return Ok(());
            }
        }
    }
}

/// What the network side hands the store task.
enum Store {
    Start {
        name: SegmentName,
        len: u64,
    },
    /// Bytes, and their share of the queue's byte budget, given back once written.
    Data(Vec<u8>, OwnedSemaphorePermit),
}

/// Checks each message against what came before; passes segment bytes to the store task.
struct Receiver {
    shared: Arc<Shared>,
    store: tokio::sync::mpsc::Sender<Store>,
    /// Bytes that may be queued for the store task.
    budget: Arc<Semaphore>,
    /// The segment number that must come next (None before the first one).
    expected: Option<u64>,
    /// The segment being received: (number, length, bytes so far).
    cur: Option<(SegmentName, u64, u64)>,
}

impl Receiver {
    async fn pass(&self, m: Store) -> Result<(), ReplError> {
        self.store
            .send(m)
            .await
            .map_err(|_| ReplError::Timeout("the segment store stopped".into()))
    }

    async fn handle(&mut self, m: Message<'_>) -> Result<(), ReplError> {
        let protocol = |msg: String| Err(ReplError::refused(ErrorCode::Protocol, msg));
        match m {
            Message::Keepalive { sealed_lsn, .. } => {
                self.shared
                    .primary_sealed
                    .store(sealed_lsn, Ordering::Release);
                Ok(())
            }
            Message::SegmentStart {
                timeline,
                segment_no,
                len,
            } => {
                if let Some((name, _, _)) = &self.cur {
                    return protocol(format!(
                        "segment {segment_no:X} started before {name} was complete"
                    ));
                }
                let Some(control) = self.shared.held().control else {
                    return protocol("a segment arrived before the identity".into());
                };
                if timeline != control.timeline {
                    return Err(ReplError::refused(ErrorCode::Identity, format!("the primary sent a segment of timeline {timeline}; this standby follows timeline {}", control.timeline)));
                }
                if let Some(want) = self.expected {
                    if segment_no != want {
                        return protocol(format!(
                            "the primary sent segment {segment_no:X}, the standby needs {want:X}"
                        ));
                    }
                }
                // Its end must be an LSN: numbers past that would overflow every computation.
                if segment_no
                    .checked_add(1)
                    .and_then(|n| n.checked_mul(control.segment_size))
                    .is_none()
                {
                    return protocol(format!(
                        "segment number {segment_no:X} lies beyond the end of the LSN space"
                    ));
                }
                if len < (SEGMENT_HEADER_LEN + SEAL_LEN) as u64 || len > control.segment_size {
                    return protocol(format!(
                        "segment {segment_no:X} announced with an impossible length of {len} bytes"
                    ));
                }
                let name = SegmentName::new(timeline, segment_no, SegmentFileKind::Partial);
                self.cur = Some((name, len, 0));
                self.pass(Store::Start { name, len }).await
            }
            Message::SegmentData {
                segment_no,
                offset,
                data,
            } => {
                let Some((name, len, got)) = self.cur.as_mut() else {
                    return protocol("segment data arrived without a SegmentStart".into());
                };
                let n = data.0.len() as u64;
                if segment_no != name.segment_no.0 || offset != *got || *got + n > *len {
                    return protocol(format!(
                        "segment data for {segment_no:X} at offset {offset} (+{n} bytes) does not continue {name} at {got} of {len} bytes"
                    ));
                }
                *got += n;
                if *got == *len {
                    self.expected = Some(segment_no + 1);
                    self.cur = None;
                }
                let permit = self
                    .budget
                    .clone()
                    .acquire_many_owned(data.0.len() as u32)
                    .await
                    .map_err(|_| ReplError::Timeout("the segment store stopped".into()))?;
                self.pass(Store::Data(data.0.to_vec(), permit)).await
            }
            other => Err(from_primary(&other, "segments or a keepalive")),
        }
    }
}

/// The store task: writes each segment as `.wal.partial`, then makes it durable, checks it,
/// gives it its sealed name and hands it to the applier. Messages arrive already checked for
/// order and length by the [`Receiver`].
fn store_segments(
    shared: &Shared,
    mut rx: tokio::sync::mpsc::Receiver<Store>,
    jobs: &std::sync::mpsc::Sender<SegmentName>,
) -> Result<(), ReplError> {
    use std::io::Write;
    use std::os::fd::AsRawFd;
    let mut cur: Option<(SegmentName, PathBuf, std::fs::File, u64, u64)> = None;
    while let Some(m) = rx.blocking_recv() {
        match m {
            Store::Start { name, len } => {
                let path = shared.dd.segment_path(&name);
                // Readable too: the finished file is checked through a read-only mapping.
                let file = std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .create(true)
                    .truncate(true)
                    .open(&path)
                    .map_err(|e| ReplError::io(format!("create {}", path.display()), e))?;
                cur = Some((name, path, file, len, 0));
            }
            Store::Data(bytes, _permit) => {
                let Some((_, path, file, len, got)) = cur.as_mut() else {
                    return Err(ReplError::refused(
                        ErrorCode::Protocol,
                        "segment data without a segment",
                    ));
                };
                crate::fault!("standby::write", e => ReplError::io(format!("write {}", path.display()), crate::faults::short_write(file, &bytes, e)));
                file.write_all(&bytes)
                    .map_err(|e| ReplError::io(format!("write {}", path.display()), e))?;
                // Start writeback now, so that the sync at the end has little left to do.
                // SAFETY: a plain syscall on a descriptor we own; failure only loses the hint.
                unsafe {
                    libc::sync_file_range(
                        file.as_raw_fd(),
                        *got as i64,
                        bytes.len() as i64,
                        libc::SYNC_FILE_RANGE_WRITE,
                    );
                }
                *got += bytes.len() as u64;
                if *got == *len {
                    if let Some((name, path, file, _, _)) = cur.take() {
                        finish_segment(shared, name, &path, file, jobs)?;
                    }
                }
            }
        }
    }
    Ok(())
}

/// Makes a directory of the primary's system a standby's: records its id and primary.
fn adopt(shared: &Shared, jobs: &std::sync::mpsc::Sender<SegmentName>) -> Result<(), ReplError> {
    // A standby holds sealed segments only. What goes: files prepared ahead by a former
    // writer (they hold no records), transfers an earlier attempt left, and an open segment that a sealed copy of the same number
    // already supersedes (checked to be its prefix when the directory was examined).
    let names = shared.dd.list_segments()?;
    let newest_sealed = names
        .iter()
        .filter(|n| n.kind == SegmentFileKind::Sealed)
        .map(|n| n.segment_no)
        .max();
    let mut removed = false;
    for n in &names {
        let stale = matches!(n.kind, SegmentFileKind::Prepared | SegmentFileKind::Partial)
            || (n.kind == SegmentFileKind::Open
                && newest_sealed.is_some_and(|s| n.segment_no <= s));
        if stale {
            let path = shared.dd.segment_path(n);
            if n.kind == SegmentFileKind::Open {
                // An open segment may hold bytes past what the sealed copy proves: keep them.
                let aside = crate::setaside::move_aside(&shared.dd, &path)?;
                tracing::info!(file = %path.display(), set_aside_as = %aside.display(), "set aside: a standby holds sealed segments only");
            } else {
                std::fs::remove_file(&path)
                    .map_err(|e| ReplError::io(format!("remove {}", path.display()), e))?;
                tracing::info!(file = %path.display(), "removed: a standby holds sealed segments only");
            }
            removed = true;
        }
    }
    if removed {
        fsync_dir(&shared.dd.wal_dir())?;
    }
    let meta = StandbyMeta {
        standby_id: shared.id,
        primary: shared.config.primary.clone(),
        created_us: crate::now_us(),
    };
    standby_state::write_meta(&shared.dd, &meta)?;
    *lock(&shared.meta) = Some(meta);
    *lock(&shared.adopting) = None;
    for name in std::mem::take(&mut *lock(&shared.deferred)) {
        let _ = jobs.send(name);
    }
    tracing::info!(primary = %shared.config.primary, standby_id = %shared.id, "this directory is now a standby: its history matches the primary's");
    Ok(())
}

/// Why a received segment was not stored.
enum NotStored {
    /// A local failure: ours, retried.
    Local(Error),
    /// Its bytes fail the checks.
    Invalid(Error),
    /// It shows that this directory's own open segment is not a prefix of the primary's
    /// history: refused for good, the directory left as it was.
    Diverged(String),
}

/// Makes a complete segment durable, checks it, renames it to its sealed name, fsyncs the
/// directory, and only then counts it as flushed.
fn finish_segment(
    shared: &Shared,
    name: SegmentName,
    path: &std::path::Path,
    file: std::fs::File,
    jobs: &std::sync::mpsc::Sender<SegmentName>,
) -> Result<(), ReplError> {
    let held = shared.held();
    let Some(control) = held.control else {
        return Err(ReplError::refused(ErrorCode::Protocol, "no identity"));
    };
    let adopting = lock(&shared.adopting).clone();
    let expected_prev = if held.next_segment == Some(name.segment_no.0) {
        held.prev_checksum
    } else {
        None
    };
    // For a directory becoming a standby, a first segment that does not chain to what it holds
    // shows another history, not damage: checked apart below.
    let chain = if adopting.is_some() {
        None
    } else {
        expected_prev
    };
    let own_open = adopting
        .as_ref()
        .and_then(|a| a.open.clone())
        .filter(|o| o.name.segment_no == name.segment_no);
    let stored = (|| -> Result<crate::segment_check::SealedSegment, NotStored> {
        crate::fault!("standby::fsync", e => NotStored::Local(Error::io(format!("fsync {}", path.display()), e)));
        file.sync_all()
            .map_err(|e| NotStored::Local(Error::io(format!("fsync {}", path.display()), e)))?;
        // SAFETY: the file is ours (the directory's lock is held) and nothing changes it.
        let map = unsafe { memmap2::Mmap::map(&file) }
            .map_err(|e| NotStored::Local(Error::io(format!("mmap {}", path.display()), e)))?;
        let sealed_name = name.with_kind(SegmentFileKind::Sealed);
        let seg =
            verify_incoming(&map, path, &sealed_name, &control, chain).map_err(|e| match e {
                Error::Io { .. } => NotStored::Local(e),
                other => NotStored::Invalid(other),
            })?;
        if adopting.is_some() {
            if let Some(want) = expected_prev {
                if seg.header.prev_checksum != Some(want) {
                    return Err(NotStored::Diverged(format!(
                        "the primary's segment {sealed_name} follows a segment with checksum {}, this directory's previous segment has {want:08x}: the histories diverged",
                        seg.header.prev_checksum.map_or("none".into(), |c| format!("{c:08x}"))
                    )));
                }
            }
        }
        if let Some(open) = &own_open {
            let open_path = shared.dd.segment_path(&open.name);
            let ours = crate::reader::read_segment(&open_path).map_err(NotStored::Local)?;
            let sealed_end =
                seg.end_lsn - name.segment_no.start_lsn_saturating(control.segment_size);
            if let Some(at) = prefix_mismatch(&ours, open.valid_end, &map, sealed_end) {
                return Err(NotStored::Diverged(if at as u64 >= sealed_end {
                    format!("this directory's open segment {} holds records up to offset {}, past the end of the primary's sealed copy (offset {sealed_end}): it is ahead of the primary", open.name, open.valid_end)
                } else {
                    format!("this directory's open segment {} differs from the primary's sealed copy at offset {at} (LSN {}): the histories diverged", open.name, Lsn(name.segment_no.start_lsn_saturating(control.segment_size) + at as u64))
                }));
            }
        }
        let target = shared.dd.segment_path(&sealed_name);
        crate::fault!("standby::rename", e => NotStored::Local(Error::io(format!("rename {} to {}", path.display(), target.display()), e)));
        std::fs::rename(path, &target).map_err(|e| {
            NotStored::Local(Error::io(
                format!("rename {} to {}", path.display(), target.display()),
                e,
            ))
        })?;
        fsync_dir(&shared.dd.wal_dir()).map_err(NotStored::Local)?;
        Ok(seg)
    })();
    let seg = match stored {
        Ok(s) => s,
        Err(e) => {
            let _ = std::fs::remove_file(path);
            return Err(match e {
                // A local I/O failure is ours, not the primary's: report it as it is and retry.
                NotStored::Local(e) => ReplError::Store(e),
                NotStored::Invalid(Error::Corrupt {
                    offset,
                    lsn,
                    reason,
                    ..
                }) => ReplError::InvalidSegment {
                    segment: name.with_kind(SegmentFileKind::Sealed),
                    offset,
                    lsn,
                    reason,
                },
                NotStored::Invalid(e) => ReplError::InvalidSegment {
                    segment: name.with_kind(SegmentFileKind::Sealed),
                    offset: 0,
                    lsn: Lsn(name.segment_no.start_lsn_saturating(control.segment_size)),
                    reason: e.to_string(),
                },
                NotStored::Diverged(msg) => ReplError::refused(ErrorCode::Identity, msg),
            });
        }
    };
    if let Some(open) = own_open {
        // The primary's sealed copy holds every record of our open segment: it replaces it,
        // and only then does the directory become a standby's.
        // Whatever followed its last valid record is kept aside, never deleted.
        let open_path = shared.dd.segment_path(&open.name);
        let aside = crate::setaside::move_aside(&shared.dd, &open_path)?;
        tracing::info!(file = %open_path.display(), set_aside_as = %aside.display(), "replaced by the primary's sealed copy, which holds every record of it");
        adopt(shared, jobs)?;
    }
    {
        let mut h = lock(&shared.held);
        h.next_segment = Some(seg.name.segment_no.next().0);
        h.prev_checksum = Some(seg.seal.segment_checksum);
    }
    shared.flushed.fetch_max(seg.end_lsn, Ordering::AcqRel);
    tracing::debug!(segment = %seg.name, flushed = %Lsn(seg.end_lsn), "stored segment");
    shared.notify();
    let _ = jobs.send(seg.name);
    Ok(())
}
