//! The primary side: serves the sealed segments of a data directory to any number of standbys,
//! each from its own position, and keeps each standby's slot in state/consumers/.
//!
//! It never takes the directory's writer lock: it only reads sealed segments (so it can serve a
//! standby's directory onward as well). Sealed segments are found by watching wal/ and by
//! rescanning at start, after watcher errors and every `rescan_interval`.
//!
//! This file holds the shipper's configuration, what it reports, and its lifecycle. The parts:
//! `accept` (the accept loop and its connection limit), `watcher` (keeping the set of sealed
//! segments current), `session` (one standby's connection, streaming segments), `admission`
//! (whether a standby that completed the handshake can be served), `identity` (TLS on the
//! connection, the standby's name, revoking it) and `slots` (each standby's positions, in
//! memory and in state/consumers/).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::{broadcast, watch};
use tokio::task::JoinSet;

use super::auth::AuthToken;
use super::frame::DEFAULT_MAX_FRAME;
use super::identities::TokenDir;
use super::segments::{scan_sealed, SealedSet};
use super::tls::{ServerTls, ServerTlsFiles};
use super::{ReplError, DEFAULT_HEARTBEAT, DEFAULT_PEER_TIMEOUT};
use crate::consumers::ConsumerRegistry;
use crate::damage::{DamageEntry, DamageRegister};
use crate::datadir::DataDir;
use crate::format::{ControlFile, SegmentName};

mod accept;
mod admission;
mod durable;
mod identity;
mod session;
mod slots;
mod sync_state;
mod watcher;

use super::synchronous::lag::LagRing;
use super::synchronous::{Released, SyncConfig, SyncLevel, SyncState, SyncWaiter, WaitError};
use crate::Lsn;
use accept::accept_loop;
use sync_state::SyncRep;
use watcher::watch_segments;

/// Default bound on the connections a shipper serves at once.
pub const DEFAULT_MAX_CONNECTIONS: usize = 64;

/// How a shipper runs.
#[derive(Clone, Debug)]
pub struct ShipperConfig {
    pub data_dir: PathBuf,
    /// Address to listen on, `host:port` (port 0 picks a free port).
    pub listen: String,
    /// Require standbys to prove they know this token.
    pub auth_token: Option<AuthToken>,
    /// Standbys' own tokens: a directory with one token file per standby name (instead of
    /// `auth_token`). Read again at every connection; removing a file revokes that standby.
    pub token_dir: Option<PathBuf>,
    /// TLS on the port: the primary's certificate and key, and the CA that signs standbys'
    /// certificates when they must present one.
    pub tls: Option<ServerTlsFiles>,
    /// Allow listening on a non-loopback address without TLS and standby authentication.
    pub insecure: bool,
    /// Largest frame accepted from a standby.
    pub max_frame: usize,
    /// Segment bytes per SegmentData frame (lowered to fit the standby's maximum frame).
    pub chunk_size: usize,
    pub heartbeat_interval: Duration,
    pub peer_timeout: Duration,
    pub rescan_interval: Duration,
    /// Time a new connection has to authenticate and identify itself.
    pub handshake_timeout: Duration,
    /// Connections served at once, handshaking or streaming; more are refused with `Busy`.
    pub max_connections: usize,
    /// The writer's durable position, for a shipper in the writer's process
    /// ([`crate::Wal::flush_watch`]); None: read from `state/flush_position`.
    pub flush_watch: Option<watch::Receiver<u64>>,
    /// Synchronous commit: the policy, its level and timeout. The shipper then computes the
    /// confirmed position at every acknowledgement, serves it to [`Shipper::sync_waiter`] and
    /// publishes it in `state/` for writers in other processes (only one shipper per data
    /// directory may run with a policy). None: every standby is asynchronous.
    pub sync: Option<SyncConfig>,
}

impl ShipperConfig {
    pub fn new(data_dir: impl Into<PathBuf>, listen: impl Into<String>) -> ShipperConfig {
        ShipperConfig {
            data_dir: data_dir.into(),
            listen: listen.into(),
            auth_token: None,
            token_dir: None,
            tls: None,
            insecure: false,
            max_frame: DEFAULT_MAX_FRAME,
            chunk_size: 1 << 20,
            heartbeat_interval: DEFAULT_HEARTBEAT,
            peer_timeout: DEFAULT_PEER_TIMEOUT,
            rescan_interval: Duration::from_secs(2),
            handshake_timeout: super::DEFAULT_HANDSHAKE_TIMEOUT,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            flush_watch: None,
            sync: None,
        }
    }
}

/// A standby as the running shipper knows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct StandbyInfo {
    pub id: String,
    /// The name it gave (the synchronous-commit policy names standbys by it).
    pub name: String,
    pub address: String,
    pub connected: bool,
    /// Received by the standby (handed to its OS, not yet synced).
    pub written_lsn: Lsn,
    pub flushed_lsn: Lsn,
    pub applied_lsn: Lsn,
    /// End of the last segment (or durable part of the open segment) sent to it.
    pub shipped_lsn: Lsn,
    /// Segment bytes sent to it since the shipper started.
    pub sent_bytes: u64,
    pub last_contact_us: i64,
    /// Its part in synchronous commit (`async` when no policy runs).
    pub sync_state: SyncState,
    /// How long ago (µs) this primary made durable the WAL the standby had not flushed at its
    /// last acknowledgement (0: caught up); None before the first sample.
    pub flush_lag_us: Option<i64>,
}

/// Synchronous commit as the running shipper sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct SyncStatus {
    /// The policy in its canonical form.
    pub policy: String,
    pub level: SyncLevel,
    /// Everything below is confirmed by the policy.
    pub confirmed_lsn: Lsn,
    /// Everything below may be acknowledged (past `confirmed_lsn` only while degraded).
    pub released_lsn: Lsn,
    /// Commits continue without the standbys' confirmations (after the timeout).
    pub degraded: bool,
}

/// What a subscriber hears about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ShipperEvent {
    Connected {
        id: String,
        address: SocketAddr,
    },
    Disconnected {
        id: Option<String>,
        address: SocketAddr,
        reason: String,
    },
    /// A segment was sent whole to a standby.
    Shipped {
        id: String,
        segment: SegmentName,
        end_lsn: Lsn,
    },
    /// A standby reported new positions.
    Acknowledged {
        id: String,
        flushed_lsn: Lsn,
        applied_lsn: Lsn,
    },
    /// Damage was found (by the shipper) or reported (by a standby) and recorded in the
    /// directory's damage register.
    Damaged {
        id: Option<String>,
        entry: Box<DamageEntry>,
    },
    /// Synchronous commit: no confirmation for the timeout; commits continue on local
    /// durability alone (WAL past `confirmed` may be lost with this primary).
    SyncDegraded {
        confirmed: Lsn,
        durable: Lsn,
    },
    /// Synchronous commit: the standbys caught up; commits wait for them again.
    SyncRestored {
        confirmed: Lsn,
    },
}

struct Shared {
    config: ShipperConfig,
    dd: DataDir,
    control: ControlFile,
    /// The timeline path of `control`'s timeline and the history files that tell it, sent
    /// to every standby before `Welcome`.
    histories: crate::replication::handshake::Histories,
    registry: ConsumerRegistry,
    damage: DamageRegister,
    standbys: Mutex<HashMap<String, StandbyInfo>>,
    events: broadcast::Sender<ShipperEvent>,
    running: AtomicBool,
    segments: watch::Receiver<Arc<SealedSet>>,
    /// The writer's durable position: the open segment is streamed up to it, never past.
    durable: watch::Receiver<u64>,
    tls: Option<ServerTls>,
    token_dir: Option<TokenDir>,
    sessions: identity::Sessions,
    /// Synchronous commit, when a policy runs.
    sync: Option<SyncRep>,
    /// (durable position, time) samples: lag in time.
    lag: Mutex<LagRing>,
    /// Marks the directory as served while the shipper lives (`DataDir::mark_served`).
    _served: Option<crate::datadir::ServedMark>,
}

impl Shared {
    fn emit(&self, e: ShipperEvent) {
        let _ = self.events.send(e);
    }

    fn update<R>(&self, id: &str, f: impl FnOnce(&mut StandbyInfo) -> R) -> Option<R> {
        let mut m = crate::sync::lock(&self.standbys);
        m.get_mut(id).map(f)
    }
}

/// A running shipper.
pub struct Shipper {
    shared: Arc<Shared>,
    local_addr: SocketAddr,
    shutdown: watch::Sender<bool>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl Shipper {
    /// Checks the directory and the address, binds, and starts serving in the current tokio
    /// runtime.
    pub async fn start(config: ShipperConfig) -> Result<Shipper, ReplError> {
        super::frame::check_max_frame(config.max_frame)
            .map_err(|e| ReplError::Store(crate::Error::InvalidArgument(e)))?;
        super::check_address(&config.listen, true)
            .map_err(|e| ReplError::Store(crate::Error::InvalidArgument(e)))?;
        super::check_timing(config.heartbeat_interval, config.peer_timeout)?;
        if config.rescan_interval.is_zero() || config.handshake_timeout.is_zero() {
            return Err(ReplError::Store(crate::Error::InvalidArgument(
                "the rescan interval and the handshake timeout must be above zero".into(),
            )));
        }
        if config.max_connections == 0 {
            return Err(ReplError::Store(crate::Error::InvalidArgument(
                "the maximum number of connections must be at least 1".into(),
            )));
        }
        let dd = DataDir::new(&config.data_dir);
        let control = dd.read_control()?;
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host(&config.listen)
            .await
            .map_err(|e| ReplError::io(format!("resolve listen address {}", config.listen), e))?
            .collect();
        let Some(first) = addrs.first().copied() else {
            return Err(ReplError::Store(crate::Error::InvalidArgument(format!(
                "listen address {} resolves to nothing",
                config.listen
            ))));
        };
        if config.auth_token.is_some() && config.token_dir.is_some() {
            return Err(ReplError::Store(crate::Error::InvalidArgument(
                "give either a shared token or a token directory, not both".into(),
            )));
        }
        // Strict at start: a token file others may read stops the start, naming it.
        let token_dir = config.token_dir.as_ref().map(TokenDir::new);
        if let Some(d) = &token_dir {
            d.load()?;
        }
        let tls = config.tls.clone().map(ServerTls::load).transpose()?;
        let authenticated = config.auth_token.is_some()
            || token_dir.is_some()
            || config.tls.as_ref().is_some_and(|t| t.client_ca.is_some());
        let safe_anywhere = tls.is_some() && authenticated;
        if !safe_anywhere && !config.insecure {
            if let Some(a) = addrs.iter().find(|a| !a.ip().is_loopback()) {
                let missing = match (tls.is_some(), authenticated) {
                    (false, false) => "without TLS and without authenticating standbys: give --tls-cert and --tls-key, and --tls-client-ca or --token-dir",
                    (false, true) => "without TLS (a token proves who connects, but nothing protects the stream after it): give --tls-cert and --tls-key",
                    _ => "without authenticating standbys (TLS alone lets anyone connect as a standby): give --tls-client-ca, --token-dir or --auth-token-file",
                };
                return Err(ReplError::Store(crate::Error::InvalidArgument(format!(
                    "refusing to listen on {a}, which is not a loopback address, {missing}; or --insecure to allow it anyway"
                ))));
            }
        }
        let listener = TcpListener::bind(first)
            .await
            .map_err(|e| ReplError::io(format!("listen on {first}"), e))?;
        let local_addr = listener
            .local_addr()
            .map_err(|e| ReplError::io("read the listening address", e))?;
        let initial = {
            let (dd2, c2) = (dd.clone(), control);
            tokio::task::spawn_blocking(move || scan_sealed(&dd2, &c2, &SealedSet::default()))
                .await
                .map_err(|e| ReplError::io("scan wal/", std::io::Error::other(e)))??
        };
        let histories = {
            let (dd2, c2) = (dd.clone(), control);
            tokio::task::spawn_blocking(move || {
                crate::replication::history_files::primary_histories(&dd2, &c2)
            })
            .await
            .map_err(|e| ReplError::io("read the history files", std::io::Error::other(e)))??
        };
        let (seg_tx, seg_rx) = watch::channel(Arc::new(initial));
        let (durable_tx, durable) = match &config.flush_watch {
            Some(rx) => (None, rx.clone()),
            None => {
                let first = crate::flush_position::read_flush_position(&dd)
                    .ok()
                    .flatten()
                    .unwrap_or(0);
                let (tx, rx) = watch::channel(first);
                (Some(tx), rx)
            }
        };
        let sync = match config.sync.clone() {
            Some(sc) => {
                let dd2 = dd.clone();
                let rep = tokio::task::spawn_blocking(move || SyncRep::start(&dd2, sc))
                    .await
                    .map_err(|e| {
                        ReplError::io("publish the synchronous policy", std::io::Error::other(e))
                    })??;
                tracing::info!(policy = %rep.config.policy, level = %rep.config.level, timeout = ?rep.config.timeout, "synchronous commit");
                Some(rep)
            }
            None => None,
        };
        let (shutdown, shutdown_rx) = watch::channel(false);
        let (events, _) = broadcast::channel(1024);
        // Without the mark (a directory it may not write in) it serves all the same; only the
        // check that a standby is not pointed at its own directory is lost.
        let served = dd
            .mark_served(local_addr)
            .inspect_err(|e| tracing::warn!(error = %e, "cannot mark the directory as served"))
            .ok();
        let shared = Arc::new(Shared {
            _served: served,
            registry: ConsumerRegistry::new(&dd),
            damage: DamageRegister::new(&dd),
            dd,
            control,
            histories,
            config,
            standbys: Mutex::new(HashMap::new()),
            events,
            running: AtomicBool::new(true),
            segments: seg_rx,
            durable: durable.clone(),
            sync,
            lag: Mutex::new(LagRing::new()),
            tls,
            token_dir,
            sessions: identity::Sessions::default(),
        });
        tracing::info!(address = %local_addr, dir = %shared.dd.root().display(), "shipper listening");
        let s2 = shared.clone();
        let task = tokio::spawn(async move {
            let mut tasks = JoinSet::new();
            tasks.spawn(watch_segments(s2.clone(), seg_tx, shutdown_rx.clone()));
            if let Some(tx) = durable_tx {
                tasks.spawn(durable::watch_durable(s2.clone(), tx, shutdown_rx.clone()));
            }
            if s2.token_dir.is_some() {
                tasks.spawn(watch_revocations(s2.clone(), shutdown_rx.clone()));
            }
            tasks.spawn(sync_state::follow(s2.clone(), durable, shutdown_rx.clone()));
            accept_loop(s2.clone(), listener, shutdown_rx, &mut tasks).await;
            while tasks.join_next().await.is_some() {}
            if let Some(sync) = &s2.sync {
                sync.close();
            }
            s2.running.store(false, Ordering::Release);
        });
        Ok(Shipper {
            shared,
            local_addr,
            shutdown,
            task: Some(task),
        })
    }

    /// The address actually listened on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The timeline served: the directory's when the shipper started.
    pub fn timeline(&self) -> u32 {
        self.shared.control.timeline
    }

    pub fn is_running(&self) -> bool {
        self.shared.running.load(Ordering::Acquire)
    }

    /// Every standby seen since start, by id.
    pub fn standbys(&self) -> Vec<StandbyInfo> {
        let m = crate::sync::lock(&self.shared.standbys);
        let mut v: Vec<StandbyInfo> = m.values().cloned().collect();
        v.sort_by(|a, b| a.id.cmp(&b.id));
        v
    }

    /// Each standby with its lag behind this directory's flush_lsn: (standby, lag_bytes,
    /// lag_seconds). Reads the directory's files.
    pub fn lag(&self) -> Result<Vec<(StandbyInfo, u64, Option<f64>)>, ReplError> {
        let (flush, _) = crate::log_ends::wal_ends(&self.shared.dd, &self.shared.control)?;
        let now = crate::now_us();
        Ok(self
            .standbys()
            .into_iter()
            .map(|s| {
                let secs =
                    crate::log_ends::lag_seconds(self.shared.dd.root(), s.applied_lsn, flush, now);
                let bytes = flush.saturating_sub(s.applied_lsn);
                (s, bytes, secs)
            })
            .collect())
    }

    /// Reloads the TLS certificate, key and client CA from their files (established streams
    /// keep theirs; new connections get the new ones) and cuts the streams of standbys whose
    /// token was removed from the token directory. On an error the TLS configuration in use
    /// stays.
    pub fn reload(&self) -> Result<(), ReplError> {
        if let Some(d) = &self.shared.token_dir {
            self.shared.sessions.revoke_missing(|n| d.holds(n));
        }
        if let Some(t) = &self.shared.tls {
            t.reload()?;
        }
        Ok(())
    }

    /// Where commits wait for the policy's confirmation (None without a policy). Waiters
    /// share every confirmation: see [`SyncWaiter`].
    pub fn sync_waiter(&self) -> Option<SyncWaiter> {
        self.shared.sync.as_ref().map(|s| s.waiter.clone())
    }

    /// Waits until WAL up to `lsn` (an end position: a record's `end_lsn`) is confirmed by the
    /// policy, or released because the primary runs degraded. Without a policy it returns at
    /// once with [`Released::Degraded`]: nothing confirms anything.
    pub async fn wait_confirmed(&self, lsn: Lsn) -> Result<Released, WaitError> {
        match &self.shared.sync {
            Some(s) => s.waiter.wait(lsn).await,
            None => Ok(Released::Degraded),
        }
    }

    /// The policy, the confirmed position and whether the primary runs degraded.
    pub fn sync_status(&self) -> Option<SyncStatus> {
        self.shared.sync.as_ref().map(|s| {
            let snap = s.waiter.snapshot();
            SyncStatus {
                policy: s.config.policy.to_string(),
                level: s.config.level,
                confirmed_lsn: snap.confirmed,
                released_lsn: snap.released,
                degraded: s.degraded(),
            }
        })
    }

    /// Shipping and acknowledgement events from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<ShipperEvent> {
        self.shared.events.subscribe()
    }

    /// Stops accepting, tells connected standbys, saves their slots, and waits up to `bound`
    /// for everything to finish; whatever is still running then is aborted.
    pub async fn stop(&mut self, bound: Duration) {
        let _ = self.shutdown.send(true);
        if let Some(mut task) = self.task.take() {
            if tokio::time::timeout(bound, &mut task).await.is_err() {
                tracing::warn!("shipper did not stop within {bound:?}; aborting its tasks");
                task.abort();
                let _ = task.await;
            }
        }
        if let Some(sync) = &self.shared.sync {
            sync.close();
        }
        self.shared.running.store(false, Ordering::Release);
    }
}

/// Checks the token directory every rescan interval and cuts the streams of standbys whose
/// token file is gone.
async fn watch_revocations(shared: Arc<Shared>, mut shutdown: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(shared.config.rescan_interval);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = shutdown.changed() => return,
        }
        if let Some(d) = &shared.token_dir {
            shared.sessions.revoke_missing(|n| d.holds(n));
        }
    }
}

impl Drop for Shipper {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
    }
}
