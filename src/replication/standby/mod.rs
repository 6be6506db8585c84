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
//!
//! This file holds the standby's lifecycle: its configuration, the state its parts share, the
//! public [`Standby`] handle, and the loop that reconnects with backoff. The parts:
//!
//! - [`directory`]: the standby's directory, its state files, and its first contact;
//!   `adoption`: a directory of the primary's system becoming a standby's.
//! - `connection`: one connection, from connect to close, and the status sender.
//! - `receiver`: what each message from the primary must be, as a pure state machine.
//! - `store`: writing and checking received segments and the copy of the open segment (a
//!   blocking task); `finish`: a complete segment made durable, checked and named.
//! - `apply`: the applier thread.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::watch;
use uuid::Uuid;

use super::applicator::Applicator;
use super::auth::AuthToken;
use super::frame::DEFAULT_MAX_FRAME;
use super::{ReplError, DEFAULT_HEARTBEAT, DEFAULT_PEER_TIMEOUT};
use crate::datadir::{DataDir, DirLock};
use crate::error::Error;
use crate::format::ControlFile;
use crate::Lsn;

mod adoption;
mod apply;
pub(crate) mod connection;
pub mod directory;
mod finish;
mod new_timeline;
pub(crate) mod partial;
mod receiver;
mod store;

use adoption::Adopting;
use apply::{applier, ApplyJob, Jobs};
use connection::connect_and_stream;
use directory::{open_dir, undo_created, Created, StandbyMeta};

/// How a standby runs.
#[derive(Clone, Debug)]
pub struct StandbyConfig {
    pub data_dir: PathBuf,
    /// The primary's address, `host:port`.
    pub primary: String,
    pub auth_token: Option<AuthToken>,
    /// TLS to the primary: the CA its certificate must be signed by, the name it must carry,
    /// and this standby's own certificate for a primary that requires one. The files are read
    /// again at each connection, so replacing them takes effect at the next one.
    pub tls: Option<crate::replication::tls::ClientTlsFiles>,
    /// Largest frame accepted from the primary.
    pub max_frame: usize,
    pub heartbeat_interval: Duration,
    pub peer_timeout: Duration,
    /// First wait before reconnecting; it doubles after each failure up to `backoff_max`.
    pub backoff_initial: Duration,
    pub backoff_max: Duration,
    /// The standby's name, for the primary's synchronous-commit policy. None: the name kept
    /// in its `state/standby.json`, or for a standby that has none, one made from its id.
    pub name: Option<String>,
}

impl StandbyConfig {
    pub fn new(data_dir: impl Into<PathBuf>, primary: impl Into<String>) -> StandbyConfig {
        StandbyConfig {
            data_dir: data_dir.into(),
            primary: primary.into(),
            auth_token: None,
            tls: None,
            max_frame: DEFAULT_MAX_FRAME,
            heartbeat_interval: DEFAULT_HEARTBEAT,
            peer_timeout: DEFAULT_PEER_TIMEOUT,
            backoff_initial: Duration::from_millis(100),
            backoff_max: Duration::from_secs(10),
            name: None,
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
    /// The name the primary's synchronous-commit policy knows it by.
    pub name: String,
    pub phase: StandbyPhase,
    pub flushed_lsn: Lsn,
    pub applied_lsn: Lsn,
    /// End of the primary's newest sealed segment, as last heard.
    pub primary_sealed_lsn: Lsn,
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
    /// Its name: given, kept in `state/standby.json`, or made from its id.
    name: String,
    held: Mutex<Held>,
    /// The history files it holds (by timeline, ascending): stated in `Identify`, compared
    /// with the primary's.
    histories: Mutex<Vec<crate::replication::handshake::HistoryBytes>>,
    /// End of the last record received and handed to the OS (not yet synced).
    written: AtomicU64,
    flushed: AtomicU64,
    applied: AtomicU64,
    primary_sealed: AtomicU64,
    phase: Mutex<(StandbyPhase, Option<String>)>,
    /// Bumped when a position moves: the connection sends a Status at once.
    bump: watch::Sender<u64>,
    /// Set when applying failed: the standby stops.
    failed: watch::Sender<Option<String>>,
    /// Set when the standby is asked to stop: the applier ends after the job it is on instead
    /// of working through its whole queue (each job ends with a durable write of the applied
    /// position, and a standby that nobody waits on to apply can be thousands of jobs behind).
    /// What is left is stored and is applied after the next start, from the durable applied
    /// position.
    stopping: std::sync::atomic::AtomicBool,
    /// The applier's error itself, kept with its kind (damage stays damage) for `join`.
    apply_error: Mutex<Option<Error>>,
    /// The standby's identity file as stored: None until the directory is a standby's (a
    /// fresh directory before its first contact, a directory of the same system before the
    /// primary accepted it).
    meta: Mutex<Option<StandbyMeta>>,
    /// A directory of the same system that is becoming a standby: its open segment, which
    /// the primary's sealed copy must extend.
    adopting: Mutex<Option<Adopting>>,
    /// Sealed segments of an adopted directory, applied once it is adopted.
    deferred: Mutex<Vec<ApplyJob>>,
    /// What this process created before the directory became a standby's: removed again
    /// when it stops before that (a refused first contact leaves nothing behind).
    created: Created,
    /// Held while anything of this standby runs.
    _lock: DirLock,
}

use crate::sync::lock;

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
        // The TLS files are checked before anything is created.
        if let Some(t) = &config.tls {
            super::tls::client_config(t)?;
            super::tls::server_name(t, &config.primary)?;
        }
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
        if let Some(n) = &config.name {
            super::synchronous::check_name(n)
                .map_err(|e| ReplError::Store(Error::InvalidArgument(e)))?;
        }
        let (bump, _) = watch::channel(0);
        let (failed, _) = watch::channel(None);
        let name = config
            .name
            .clone()
            .or_else(|| opened.meta.as_ref().and_then(|m| m.name.clone()))
            .unwrap_or_else(|| super::synchronous::default_name(&opened.id));
        let shared = Arc::new(Shared {
            dd: DataDir::new(&config.data_dir),
            config,
            id: opened.id,
            name,
            held: Mutex::new(opened.held),
            histories: Mutex::new(opened.histories),
            written: AtomicU64::new(opened.flushed.0),
            flushed: AtomicU64::new(opened.flushed.0),
            applied: AtomicU64::new(opened.applied.0),
            primary_sealed: AtomicU64::new(0),
            phase: Mutex::new((StandbyPhase::Connecting, None)),
            bump,
            failed,
            stopping: std::sync::atomic::AtomicBool::new(false),
            apply_error: Mutex::new(None),
            meta: Mutex::new(opened.meta),
            adopting: Mutex::new(opened.adopting),
            deferred: Mutex::new(Vec::new()),
            created: opened.created,
            _lock: opened.lock,
        });
        tracing::info!(
            dir = %shared.dd.root().display(),
            standby_id = %shared.id,
            name = %shared.name,
            flushed = %opened.flushed,
            applied = %opened.applied,
            "standby starting"
        );
        let (jobs, rx) = std::sync::mpsc::channel::<apply::Job>();
        if shared.meta.lock().map(|m| m.is_some()).unwrap_or(false) {
            for segment in opened.pending {
                let _ = jobs.send(ApplyJob::stored_earlier(segment).into());
            }
        } else {
            // Nothing is applied (or recorded) before the directory is a standby's.
            *lock(&shared.deferred) = opened
                .pending
                .into_iter()
                .map(ApplyJob::stored_earlier)
                .collect();
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
                let cause = lock(&s2.apply_error).take().unwrap_or(Error::Other(e));
                return Err(ReplError::Store(cause));
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

    /// The name the primary's synchronous-commit policy knows this standby by.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    pub fn is_running(&self) -> bool {
        self.task.as_ref().is_some_and(|t| !t.is_finished())
    }

    pub fn state(&self) -> StandbyState {
        let (phase, last_error) = lock(&self.shared.phase).clone();
        // Applied first: it never passes flushed, and both only grow, so flushed read after it
        // is at least as far (read the other way round, records synced and applied between
        // the two reads would show applied past flushed).
        let applied = Lsn(self.shared.applied.load(Ordering::Acquire));
        StandbyState {
            standby_id: self.shared.id.to_string(),
            name: self.shared.name.clone(),
            phase,
            flushed_lsn: Lsn(self.shared.flushed.load(Ordering::Acquire)),
            applied_lsn: applied,
            primary_sealed_lsn: Lsn(self.shared.primary_sealed.load(Ordering::Acquire)),
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

    /// Stops: closes the connection, lets the applier finish the job it is on (a segment or a
    /// synced batch of the open segment; the rest is applied after the next start), and waits
    /// up to `bound`; whatever still runs then is aborted.
    pub async fn stop(&mut self, bound: Duration) -> Result<(), ReplError> {
        self.shared.stopping.store(true, Ordering::Release);
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
        self.shared.stopping.store(true, Ordering::Release);
        let _ = self.shutdown.send(true);
    }
}

/// Connects, streams, and reconnects with capped exponential backoff until stopped or a fatal
/// error.
async fn run(
    shared: Arc<Shared>,
    mut shutdown: watch::Receiver<bool>,
    jobs: Jobs,
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
