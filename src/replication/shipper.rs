//! The primary side: serves the sealed segments of a data directory to any number of standbys,
//! each from its own position, and keeps each standby's slot in state/consumers/.
//!
//! It never takes the directory's writer lock: it only reads sealed segments (so it can serve a
//! standby's directory onward as well). Sealed segments are found by watching wal/ and by
//! rescanning at start, after watcher errors and every `rescan_interval`.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{broadcast, mpsc, watch, Semaphore};
use tokio::task::JoinSet;
use uuid::Uuid;

use super::auth::{nonce, AuthToken};
use super::codec;
use super::frame::{
    write_message, DATA_OVERHEAD, DEFAULT_MAX_FRAME, HANDSHAKE_MAX_FRAME, MIN_FRAME_LIMIT,
};
use super::messages::{Bytes, ErrorCode, Message, MAGIC, MIN_PROTOCOL_VERSION, PROTOCOL_VERSION};
use super::segments::{check_for_shipping, scan_sealed, SealedSet};
use super::{read_msg, refuse, ReplError, DEFAULT_HEARTBEAT, DEFAULT_PEER_TIMEOUT};
use crate::consumers::{ConsumerKind, ConsumerRecord, ConsumerRegistry};
use crate::damage::{self, Component, DamageEntry, DamageRegister, DamageReport};
use crate::datadir::DataDir;
use crate::format::SegmentNo;
use crate::format::{ControlFile, SegmentFileKind, SegmentName};
use crate::segment_check::check_sealed;
use crate::Lsn;

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
    /// Allow listening on a non-loopback address without a token.
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
}

impl ShipperConfig {
    pub fn new(data_dir: impl Into<PathBuf>, listen: impl Into<String>) -> ShipperConfig {
        ShipperConfig {
            data_dir: data_dir.into(),
            listen: listen.into(),
            auth_token: None,
            insecure: false,
            max_frame: DEFAULT_MAX_FRAME,
            chunk_size: 1 << 20,
            heartbeat_interval: DEFAULT_HEARTBEAT,
            peer_timeout: DEFAULT_PEER_TIMEOUT,
            rescan_interval: Duration::from_secs(2),
            handshake_timeout: super::DEFAULT_HANDSHAKE_TIMEOUT,
            max_connections: DEFAULT_MAX_CONNECTIONS,
        }
    }
}

/// A standby as the running shipper knows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct StandbyInfo {
    pub id: String,
    pub address: String,
    pub connected: bool,
    pub flushed_lsn: u64,
    pub applied_lsn: u64,
    /// End of the last segment sent to it.
    pub shipped_lsn: u64,
    pub last_contact_us: i64,
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
        end_lsn: u64,
    },
    /// A standby reported new positions.
    Acknowledged {
        id: String,
        flushed_lsn: u64,
        applied_lsn: u64,
    },
    /// Damage was found (by the shipper) or reported (by a standby) and recorded in the
    /// directory's damage register.
    Damaged {
        id: Option<String>,
        entry: Box<DamageEntry>,
    },
}

struct Shared {
    config: ShipperConfig,
    dd: DataDir,
    control: ControlFile,
    registry: ConsumerRegistry,
    damage: DamageRegister,
    standbys: Mutex<HashMap<String, StandbyInfo>>,
    events: broadcast::Sender<ShipperEvent>,
    running: AtomicBool,
    segments: watch::Receiver<Arc<SealedSet>>,
}

impl Shared {
    fn emit(&self, e: ShipperEvent) {
        let _ = self.events.send(e);
    }

    fn update<R>(&self, id: &str, f: impl FnOnce(&mut StandbyInfo) -> R) -> Option<R> {
        let mut m = self.standbys.lock().unwrap_or_else(|p| p.into_inner());
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
        if config.auth_token.is_none() && !config.insecure {
            if let Some(a) = addrs.iter().find(|a| !a.ip().is_loopback()) {
                return Err(ReplError::Store(crate::Error::InvalidArgument(format!(
                    "refusing to listen on {a}, which is not a loopback address, without authentication: give --auth-token-file, or --insecure to allow any standby"
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
        let (seg_tx, seg_rx) = watch::channel(Arc::new(initial));
        let (shutdown, shutdown_rx) = watch::channel(false);
        let (events, _) = broadcast::channel(1024);
        let shared = Arc::new(Shared {
            registry: ConsumerRegistry::new(&dd),
            damage: DamageRegister::new(&dd),
            dd,
            control,
            config,
            standbys: Mutex::new(HashMap::new()),
            events,
            running: AtomicBool::new(true),
            segments: seg_rx,
        });
        tracing::info!(address = %local_addr, dir = %shared.dd.root().display(), "shipper listening");
        let s2 = shared.clone();
        let task = tokio::spawn(async move {
            let mut tasks = JoinSet::new();
            tasks.spawn(watch_segments(s2.clone(), seg_tx, shutdown_rx.clone()));
            accept_loop(s2.clone(), listener, shutdown_rx, &mut tasks).await;
            while tasks.join_next().await.is_some() {}
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

    pub fn is_running(&self) -> bool {
        self.shared.running.load(Ordering::Acquire)
    }

    /// Every standby seen since start, by id.
    pub fn standbys(&self) -> Vec<StandbyInfo> {
        let m = self
            .shared
            .standbys
            .lock()
            .unwrap_or_else(|p| p.into_inner());
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
        self.shared.running.store(false, Ordering::Release);
    }
}

impl Drop for Shipper {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
    }
}

async fn accept_loop(
    shared: Arc<Shared>,
    listener: TcpListener,
    mut shutdown: watch::Receiver<bool>,
    tasks: &mut JoinSet<()>,
) {
    let slots = Arc::new(Semaphore::new(shared.config.max_connections));
    let mut refused = Refusals::default();
    loop {
        tokio::select! {
            r = listener.accept() => match r {
                Ok((stream, addr)) => {
                    let Ok(slot) = slots.clone().try_acquire_owned() else {
                        refused.refuse(stream, addr, shared.config.max_connections);
                        continue;
                    };
                    let _ = stream.set_nodelay(true);
                    let (s2, sd) = (shared.clone(), shutdown.clone());
                    tasks.spawn(async move {
                        connection(s2, stream, addr, sd).await;
                        drop(slot);
                    });
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            _ = shutdown.changed() => return,
            // Reap finished connections so the set stays small.
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
        }
    }
}

/// Connections refused for want of a slot: each gets a `Busy` error and is closed at once, with
/// no task and no buffer of its own. Logged at most once a second, so that a flood of
/// connections cannot flood the log.
#[derive(Default)]
struct Refusals {
    since_log: u64,
    last_log: Option<Instant>,
}

impl Refusals {
    fn refuse(&mut self, stream: TcpStream, addr: SocketAddr, max: usize) {
        let msg = Message::Error {
            code: ErrorCode::Busy,
            message: "the primary serves its maximum number of connections; retry later",
        };
        // A fresh socket's send buffer takes these few bytes at once; if not, the peer gets
        // the bare close.
        if let Ok(frame) = super::frame::encode_frame(&msg) {
            let _ = stream.try_write(&frame);
        }
        drop(stream);
        self.since_log += 1;
        if self
            .last_log
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(1))
        {
            tracing::warn!(peer = %addr, refused = self.since_log, max_connections = max, "refused connections: too many connections");
            self.since_log = 0;
            self.last_log = Some(Instant::now());
        }
    }
}

/// Keeps the set of sealed segments current: notify events trigger a rescan, and so does a
/// timer, since watchers can drop events.
async fn watch_segments(
    shared: Arc<Shared>,
    tx: watch::Sender<Arc<SealedSet>>,
    mut shutdown: watch::Receiver<bool>,
) {
    use notify::Watcher;
    let (ev_tx, mut ev_rx) = mpsc::channel::<()>(1);
    let handler = move |res: notify::Result<notify::Event>| {
        match &res {
            Err(e) => tracing::warn!(error = %e, "watching wal/ failed; rescanning"),
            // Only names appearing, changing or going matter. Reads (our own included: a
            // rescan reads the newest seal marker) and data writes (the writer filling a
            // segment) would only cause pointless rescans.
            Ok(ev) if !ev.need_rescan() && is_content_event(&ev.kind) => return,
            Ok(_) => {}
        }
        let _ = ev_tx.try_send(());
    };
    let wal_dir = shared.dd.wal_dir();
    let _watcher = match notify::recommended_watcher(handler) {
        Ok(mut w) => match w.watch(&wal_dir, notify::RecursiveMode::NonRecursive) {
            Ok(()) => Some(w),
            Err(e) => {
                tracing::warn!(error = %e, dir = %wal_dir.display(), "cannot watch wal/; relying on periodic rescans");
                None
            }
        },
        Err(e) => {
            tracing::warn!(error = %e, "cannot create a file watcher; relying on periodic rescans");
            None
        }
    };
    let mut tick = tokio::time::interval(shared.config.rescan_interval);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            Some(()) = ev_rx.recv() => {}
            _ = shutdown.changed() => return,
        }
        let prev = tx.borrow().clone();
        let (dd, control) = (shared.dd.clone(), shared.control);
        match tokio::task::spawn_blocking(move || scan_sealed(&dd, &control, &prev)).await {
            Ok(Ok(set)) => {
                let changed = tx.send_if_modified(|cur| {
                    if **cur != set {
                        *cur = Arc::new(set);
                        true
                    } else {
                        false
                    }
                });
                if changed {
                    // A damaged file that is gone (retention, an operator) is no longer damage
                    // here.
                    let (reg, dd) = (shared.damage.clone(), shared.dd.clone());
                    if let Ok(Err(e)) =
                        tokio::task::spawn_blocking(move || reg.clear_missing(&dd)).await
                    {
                        tracing::warn!(error = %e, "reading the damage register failed");
                    }
                }
            }
            Ok(Err(e)) => tracing::error!(error = %e, "scanning wal/ failed"),
            Err(e) => tracing::error!(error = %e, "scanning wal/ failed"),
        }
    }
}

fn is_content_event(kind: &notify::EventKind) -> bool {
    use notify::event::{EventKind, ModifyKind};
    matches!(
        kind,
        EventKind::Access(_) | EventKind::Modify(ModifyKind::Data(_) | ModifyKind::Metadata(_))
    )
}

/// What the reading half passes to the sending half.
enum Incoming {
    Status {
        flushed_lsn: u64,
        applied_lsn: u64,
    },
    /// The standby refused a segment it received (protocol version 2 on).
    Rejected {
        segment_no: u64,
        offset: u64,
        reason: String,
    },
    Ended(ReplError),
}

async fn connection(
    shared: Arc<Shared>,
    stream: TcpStream,
    addr: SocketAddr,
    shutdown: watch::Receiver<bool>,
) {
    tracing::info!(peer = %addr, "standby connected");
    let mut id = None;
    let mut status_seen = false;
    let result = serve_standby(&shared, stream, addr, shutdown, &mut id, &mut status_seen).await;
    let reason = match &result {
        Ok(()) => "shutting down".to_string(),
        Err(e) => e.to_string(),
    };
    match &result {
        Ok(()) => {
            tracing::info!(peer = %addr, standby = id.as_deref().unwrap_or("-"), "standby disconnected: shipper shutting down")
        }
        // Damage is not a network event: it was logged as damage where it was recorded.
        Err(ReplError::Damaged(_)) => {
            tracing::info!(peer = %addr, standby = id.as_deref().unwrap_or("-"), "standby connection ended after damage was reported")
        }
        Err(e) => {
            tracing::warn!(peer = %addr, standby = id.as_deref().unwrap_or("-"), reason = %e, "standby connection closed")
        }
    }
    // A slot starts at the standby's first Status (a handshake alone makes none).
    if let Some(id) = id.as_ref().filter(|_| status_seen) {
        let info = shared.update(id, |s| {
            s.connected = false;
            s.clone()
        });
        if let Some(info) = info {
            save_slot(&shared, &info).await;
        }
    }
    shared.emit(ShipperEvent::Disconnected {
        id,
        address: addr,
        reason,
    });
}

fn unexpected(got: &Message<'_>, want: &str) -> (ErrorCode, String) {
    match got {
        Message::Error { code, message } => (
            *code,
            format!(
                "the standby ended the connection: {}",
                super::printable(message)
            ),
        ),
        other => (
            ErrorCode::Protocol,
            format!("expected {want}, got {}", other.name()),
        ),
    }
}

/// Hello, Challenge, Auth, AuthOk and Identify. Every message read here is small, so frames
/// are limited to [`HANDSHAKE_MAX_FRAME`] bytes whatever the configured maximum.
async fn handshake(shared: &Arc<Shared>, stream: &mut TcpStream) -> Result<Identified, ReplError> {
    let cfg = &shared.config;
    let (max, t) = (HANDSHAKE_MAX_FRAME, cfg.peer_timeout);
    // Hello.
    let body = read_msg("peer", stream, max, t, "Hello").await?;
    let (standby_nonce, version) = match codec::decode(&body) {
        Ok(Message::Hello {
            magic,
            protocol_version,
            nonce,
        }) => {
            if magic != MAGIC {
                return Err(refuse(
                    stream,
                    ErrorCode::Protocol,
                    "not a walship standby (bad magic)".into(),
                )
                .await);
            }
            if !(MIN_PROTOCOL_VERSION..=PROTOCOL_VERSION).contains(&protocol_version) {
                return Err(refuse(stream, ErrorCode::Version, format!("protocol version {protocol_version} is not supported; this primary speaks versions {MIN_PROTOCOL_VERSION} to {PROTOCOL_VERSION}")).await);
            }
            (nonce, protocol_version)
        }
        Ok(other) => {
            let (c, m) = unexpected(&other, "Hello");
            return Err(refuse(stream, c, m).await);
        }
        Err(e) => return Err(refuse(stream, ErrorCode::Protocol, e.to_string()).await),
    };
    // Challenge and Auth.
    let primary_nonce = nonce();
    write_message(
        stream,
        &Message::Challenge {
            // The standby's version when it is older: the connection goes on in it.
            protocol_version: version,
            nonce: primary_nonce,
            auth_required: cfg.auth_token.is_some(),
        },
    )
    .await?;
    let body = read_msg("peer", stream, max, t, "Auth").await?;
    let proof = match codec::decode(&body) {
        Ok(Message::Auth { proof }) => proof,
        Ok(other) => {
            let (c, m) = unexpected(&other, "Auth");
            return Err(refuse(stream, c, m).await);
        }
        Err(e) => return Err(refuse(stream, ErrorCode::Protocol, e.to_string()).await),
    };
    let reply = match (&cfg.auth_token, proof) {
        (None, _) => None,
        (Some(_), None) => {
            return Err(refuse(stream, ErrorCode::Auth, "authentication required: the primary has a token; give the standby the same --auth-token-file".into()).await)
        }
        (Some(tok), Some(p)) => {
            if !tok.verify_standby(&standby_nonce, &primary_nonce, &p) {
                return Err(refuse(stream, ErrorCode::Auth, "authentication failed: wrong token".into()).await);
            }
            Some(tok.primary_proof(&primary_nonce, &standby_nonce))
        }
    };
    write_message(stream, &Message::AuthOk { proof: reply }).await?;
    // Identify.
    let body = read_msg("peer", stream, max, t, "Identify").await?;
    let (id, next_segment, prev_checksum, max_frame, flushed_lsn, applied_lsn) = match codec::decode(
        &body,
    ) {
        Ok(Message::Identify {
            standby_id,
            system_id,
            timeline,
            segment_size,
            next_segment,
            prev_checksum,
            flushed_lsn,
            applied_lsn,
            max_frame,
        }) => {
            let c = &shared.control;
            if let Some(sys) = system_id {
                let sys = Uuid::from_bytes(sys);
                if sys != c.system_id {
                    return Err(refuse(
                        stream,
                        ErrorCode::Identity,
                        format!(
                            "the standby belongs to system {sys}, this primary is system {}",
                            c.system_id
                        ),
                    )
                    .await);
                }
                if timeline != c.timeline || segment_size != c.segment_size {
                    return Err(refuse(stream, ErrorCode::Identity, format!("the standby has timeline {timeline} and segment size {segment_size}, this primary timeline {} and segment size {}", c.timeline, c.segment_size)).await);
                }
            }
            (
                Uuid::from_bytes(standby_id).to_string(),
                next_segment,
                prev_checksum,
                max_frame as usize,
                flushed_lsn,
                applied_lsn,
            )
        }
        Ok(other) => {
            let (c, m) = unexpected(&other, "Identify");
            return Err(refuse(stream, c, m).await);
        }
        Err(e) => return Err(refuse(stream, ErrorCode::Protocol, e.to_string()).await),
    };
    if max_frame < MIN_FRAME_LIMIT {
        return Err(refuse(
            stream,
            ErrorCode::Protocol,
            format!(
                "the standby's maximum frame {max_frame} is below the minimum {MIN_FRAME_LIMIT}"
            ),
        )
        .await);
    }
    let set = shared.segments.borrow().clone();
    // A standby may not hold what this primary has not sealed: it is ahead of this primary
    // (a former primary that took writes this one never had), or this primary lost WAL.
    let ahead = next_segment.is_some_and(|n| set.newest().is_none_or(|newest| n > newest + 1))
        || flushed_lsn > set.sealed_lsn;
    if ahead {
        return Err(refuse(
            stream,
            ErrorCode::Identity,
            format!(
                "the standby holds WAL up to {} (segments before {}), past this primary's newest sealed segment{} (ending at {}): it is ahead of this primary or diverged from it; it cannot follow this primary",
                Lsn(flushed_lsn),
                next_segment.map_or("-".to_string(), |n| format!("{n:X}")),
                set.newest().map_or(" (none)".to_string(), |n| format!(" {n:X}")),
                Lsn(set.sealed_lsn)
            ),
        )
        .await);
    }
    // A standby marked lost by retention: the WAL it needs may be gone, and what it would
    // take again no longer holds anything back. It must be rebuilt or its slot dropped.
    let reg = shared.registry.clone();
    let id2 = id.clone();
    let lost = tokio::task::spawn_blocking(move || reg.get(&id2))
        .await
        .map_err(|e| ReplError::io("read the standby's slot", std::io::Error::other(e)))??
        .is_some_and(|r| r.lost);
    if lost {
        return Err(refuse(
            stream,
            ErrorCode::Unavailable,
            format!(
                "standby {id} was marked lost by retention: this primary no longer keeps WAL for it; rebuild it (walship restore from the archive), or drop its slot on the primary with `walship checkpoint DATA_DIR --drop-consumer {id}` to let it try again"
            ),
        )
        .await);
    }
    // WAL it needs that is gone: said before Welcome, so that a directory offered to become a
    // standby is refused before it changes anything.
    if let (Some(n), Some(oldest), Some(newest)) = (next_segment, set.oldest(), set.newest()) {
        if n < oldest {
            return Err(refuse(stream, ErrorCode::Unavailable, format!("segment {n:X} is no longer on the primary (its oldest is {oldest:X}): the standby needs a fresh copy")).await);
        }
        if n <= newest && !set.by_no.contains_key(&n) {
            return Err(refuse(stream, ErrorCode::Unavailable, format!("segment {n:X} is missing on the primary, which holds segments up to {newest:X}")).await);
        }
    }
    // A standby holding the segment before the one it asks for must share our history.
    if let (Some(n), Some(sum)) = (next_segment, prev_checksum) {
        if let Some(prev) = n.checked_sub(1).and_then(|p| set.by_no.get(&p)).copied() {
            let (path, control) = (shared.dd.segment_path(&prev), shared.control);
            let ours = tokio::task::spawn_blocking(move || check_sealed(&path, &prev, &control))
                .await
                .map_err(|e| ReplError::io("check segment", std::io::Error::other(e)))?;
            match ours {
                Ok(s) if s.seal.segment_checksum != sum => {
                    return Err(refuse(stream, ErrorCode::Identity, format!("histories diverged: the standby's {prev} has checksum {sum:08x}, the primary's {:08x}", s.seal.segment_checksum)).await)
                }
                Ok(_) => {}
                Err(e) => return Err(refuse(stream, ErrorCode::Internal, format!("primary cannot read {prev}: {e}")).await),
            }
        }
    }
    Ok(Identified {
        id,
        next_segment,
        max_frame,
        flushed_lsn,
        applied_lsn,
    })
}

/// What a standby said in a handshake that succeeded.
struct Identified {
    id: String,
    next_segment: Option<u64>,
    max_frame: usize,
    flushed_lsn: u64,
    applied_lsn: u64,
}

async fn serve_standby(
    shared: &Arc<Shared>,
    mut stream: TcpStream,
    addr: SocketAddr,
    mut shutdown: watch::Receiver<bool>,
    id_out: &mut Option<String>,
    status_seen: &mut bool,
) -> Result<(), ReplError> {
    let cfg = &shared.config;
    let (max, t, hs) = (cfg.max_frame, cfg.peer_timeout, cfg.handshake_timeout);
    // One deadline for the whole handshake: a peer that trickles bytes cannot hold a
    // connection slot longer than this before it has authenticated and identified itself.
    let Identified {
        id: standby_id,
        next_segment,
        max_frame: standby_max,
        flushed_lsn: flushed,
        applied_lsn: applied,
    } = match tokio::time::timeout(hs, handshake(shared, &mut stream)).await {
        Ok(r) => r?,
        Err(_) => {
            return Err(refuse(
                &mut stream,
                ErrorCode::Protocol,
                format!("handshake not completed within {hs:?}"),
            )
            .await)
        }
    };
    let set = shared.segments.borrow().clone();
    write_message(
        &mut stream,
        &Message::Welcome {
            system_id: *shared.control.system_id.as_bytes(),
            timeline: shared.control.timeline,
            segment_size: shared.control.segment_size,
            sealed_lsn: set.sealed_lsn,
        },
    )
    .await?;
    *id_out = Some(standby_id.clone());
    {
        let mut m = shared.standbys.lock().unwrap_or_else(|p| p.into_inner());
        let e = m.entry(standby_id.clone()).or_insert_with(|| StandbyInfo {
            id: standby_id.clone(),
            address: addr.to_string(),
            connected: true,
            flushed_lsn: flushed,
            applied_lsn: applied,
            shipped_lsn: 0,
            last_contact_us: crate::now_us(),
        });
        e.address = addr.to_string();
        e.connected = true;
        e.flushed_lsn = flushed;
        e.applied_lsn = applied;
        e.last_contact_us = crate::now_us();
    }
    tracing::info!(peer = %addr, standby = %standby_id, flushed = %Lsn(flushed), applied = %Lsn(applied), "standby identified");
    shared.emit(ShipperEvent::Connected {
        id: standby_id.clone(),
        address: addr,
    });

    let (rd, mut wr) = stream.into_split();
    let (in_tx, mut in_rx) = mpsc::channel(64);
    let reader = tokio::spawn(read_standby(rd, max, t, in_tx));
    let chunk = cfg.chunk_size.min(standby_max - DATA_OVERHEAD).max(4096);
    let mut conn = Conn {
        shared: shared.clone(),
        id: standby_id,
        addr,
        last_save: None,
        acked_limit: flushed,
        status_seen: false,
        unconfirmed: None,
        sent: None,
    };
    let result = conn
        .stream_segments(&mut wr, next_segment, chunk, &mut in_rx, &mut shutdown)
        .await;
    *status_seen = conn.status_seen;
    reader.abort();
    if result.is_ok() {
        let _ = refuse(
            &mut wr,
            ErrorCode::ShuttingDown,
            "the primary is shutting down".into(),
        )
        .await;
    }
    result
}

async fn read_standby(
    mut rd: OwnedReadHalf,
    max: usize,
    timeout: Duration,
    tx: mpsc::Sender<Incoming>,
) {
    loop {
        let msg = match read_msg("peer", &mut rd, max, timeout, "a standby status").await {
            Ok(body) => match codec::decode(&body) {
                Ok(Message::Status {
                    flushed_lsn,
                    applied_lsn,
                    ..
                }) => Incoming::Status {
                    flushed_lsn,
                    applied_lsn,
                },
                Ok(Message::Error { code, message }) => Incoming::Ended(ReplError::PeerRefused {
                    peer: "standby",
                    code,
                    message: super::printable(message),
                }),
                Ok(Message::SegmentRejected {
                    segment_no,
                    offset,
                    reason,
                }) => Incoming::Rejected {
                    segment_no,
                    offset,
                    reason: super::printable(reason),
                },
                Ok(other) => Incoming::Ended(ReplError::refused(
                    ErrorCode::Protocol,
                    format!("unexpected {} from the standby", other.name()),
                )),
                Err(e) => Incoming::Ended(ReplError::refused(ErrorCode::Protocol, e.to_string())),
            },
            Err(e) => Incoming::Ended(e),
        };
        let end = matches!(msg, Incoming::Ended(_) | Incoming::Rejected { .. });
        if tx.send(msg).await.is_err() || end {
            return;
        }
    }
}

struct Conn {
    shared: Arc<Shared>,
    id: String,
    addr: SocketAddr,
    last_save: Option<Instant>,
    /// The most a Status may claim as flushed: what the standby said it held, or the end of
    /// the last segment shipped to it on this connection.
    acked_limit: u64,
    /// A Status arrived on this connection (its slot exists from then on).
    status_seen: bool,
    /// The last segment shipped and not yet acknowledged, with its end: a standby's damage
    /// report about it is cleared once the standby stores it.
    unconfirmed: Option<(SegmentName, u64)>,
    /// The first and last segment numbers started on this connection: a standby may refuse
    /// only a segment it was sent.
    sent: Option<(u64, u64)>,
}

impl Conn {
    /// Records damage in the register and logs it as damage; returns the error that ends the
    /// connection.
    async fn damaged(&self, report: DamageReport) -> ReplError {
        let reg = self.shared.damage.clone();
        let r2 = report.clone();
        let recorded = tokio::task::spawn_blocking(move || reg.record(&r2)).await;
        let entry = match recorded {
            Ok(Ok(e)) => e,
            other => {
                let why = match other {
                    Ok(Err(e)) => e.to_string(),
                    Err(e) => e.to_string(),
                    Ok(Ok(_)) => String::new(),
                };
                tracing::error!(error = %why, "recording damage in state/damage/ failed");
                DamageEntry {
                    component: report.component,
                    file: report.file,
                    offset: report.offset,
                    lsn: report.lsn,
                    reason: report.reason,
                    action: report.action,
                    reporter: report.reporter,
                    first_seen_us: crate::now_us(),
                    last_seen_us: crate::now_us(),
                    count: 1,
                }
            }
        };
        tracing::error!(
            component = entry.component.as_str(),
            file = %entry.file,
            offset = entry.offset,
            lsn = %Lsn(entry.lsn),
            reason = %entry.reason,
            action = %entry.action,
            times = entry.count,
            standby = %self.id,
            "DAMAGE: {entry}"
        );
        self.shared.emit(ShipperEvent::Damaged {
            id: Some(self.id.clone()),
            entry: Box::new(entry.clone()),
        });
        ReplError::Damaged(Box::new(entry))
    }

    /// Handles what the standby sent; a refusal of ours is told to the standby.
    async fn handle_on(&mut self, wr: &mut OwnedWriteHalf, m: Incoming) -> Result<(), ReplError> {
        match self.handle(m).await {
            Err(ReplError::Refused { code, message }) => Err(refuse(wr, code, message).await),
            r => r,
        }
    }

    async fn handle(&mut self, m: Incoming) -> Result<(), ReplError> {
        match m {
            Incoming::Ended(e) => Err(e),
            Incoming::Rejected {
                segment_no,
                offset,
                reason,
            } => {
                if !self
                    .sent
                    .is_some_and(|(first, last)| (first..=last).contains(&segment_no))
                {
                    return Err(ReplError::refused(
                        ErrorCode::Protocol,
                        format!("the standby refused segment {segment_no:X}, which was not sent to it on this connection"),
                    ));
                }
                let size = self.shared.control.segment_size;
                let name = SegmentName::new(
                    self.shared.control.timeline,
                    segment_no,
                    SegmentFileKind::Sealed,
                );
                Err(self
                    .damaged(DamageReport {
                        component: Component::Standby,
                        file: name.to_string(),
                        offset,
                        lsn: SegmentNo(segment_no).start_lsn_saturating(size).saturating_add(offset),
                        reason: format!("the standby refused the segment it received: {reason}"),
                        action: "run `walship verify DATA_DIR` on the primary: if it finds this segment damaged, replace it with a good copy (see the runbook for damage); if the primary's copy is intact, the bytes changed on the way or on the standby (check its disk, memory and the network); the standby asks for the segment again".into(),
                        reporter: Some(format!("standby {} at {}", self.id, self.addr)),
                    })
                    .await)
            }
            Incoming::Status {
                flushed_lsn,
                applied_lsn,
            } => {
                if flushed_lsn > self.acked_limit {
                    // Checked before anything is updated: the slot stays as it was.
                    return Err(ReplError::refused(
                        ErrorCode::Protocol,
                        format!(
                            "the standby acknowledged WAL up to {} but only WAL up to {} was shipped to it",
                            Lsn(flushed_lsn),
                            Lsn(self.acked_limit)
                        ),
                    ));
                }
                self.status_seen = true;
                if let Some((name, end)) = self.unconfirmed {
                    if flushed_lsn >= end {
                        self.unconfirmed = None;
                        let reg = self.shared.damage.clone();
                        let file = name.to_string();
                        let cleared = tokio::task::spawn_blocking(move || {
                            reg.clear(Component::Standby, &file)
                        })
                        .await;
                        if let Ok(Ok(true)) = cleared {
                            tracing::info!(file = %name, standby = %self.id, "damage report cleared: the standby stored the segment");
                        }
                    }
                }
                let now = crate::now_us();
                let (changed, info) = self
                    .shared
                    .update(&self.id, |s| {
                        let changed = s.flushed_lsn != flushed_lsn || s.applied_lsn != applied_lsn;
                        s.flushed_lsn = flushed_lsn;
                        s.applied_lsn = applied_lsn;
                        s.last_contact_us = now;
                        (changed, s.clone())
                    })
                    .unwrap_or((
                        false,
                        StandbyInfo {
                            id: self.id.clone(),
                            address: self.addr.to_string(),
                            connected: true,
                            flushed_lsn,
                            applied_lsn,
                            shipped_lsn: 0,
                            last_contact_us: now,
                        },
                    ));
                if changed {
                    tracing::debug!(standby = %self.id, flushed = %Lsn(flushed_lsn), applied = %Lsn(applied_lsn), "standby acknowledged");
                    self.shared.emit(ShipperEvent::Acknowledged {
                        id: self.id.clone(),
                        flushed_lsn,
                        applied_lsn,
                    });
                }
                if changed
                    || self
                        .last_save
                        .is_none_or(|t| t.elapsed() >= Duration::from_secs(1))
                {
                    save_slot(&self.shared, &info).await;
                    self.last_save = Some(Instant::now());
                }
                Ok(())
            }
        }
    }

    async fn drain(
        &mut self,
        wr: &mut OwnedWriteHalf,
        rx: &mut mpsc::Receiver<Incoming>,
    ) -> Result<(), ReplError> {
        while let Ok(m) = rx.try_recv() {
            self.handle_on(wr, m).await?;
        }
        Ok(())
    }

    async fn stream_segments(
        &mut self,
        wr: &mut OwnedWriteHalf,
        mut next: Option<u64>,
        chunk: usize,
        rx: &mut mpsc::Receiver<Incoming>,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<(), ReplError> {
        let shared = self.shared.clone();
        let t = shared.config.peer_timeout;
        let mut segments = shared.segments.clone();
        let mut beat = tokio::time::interval(shared.config.heartbeat_interval);
        let mut buf = vec![0u8; chunk];
        loop {
            if *shutdown.borrow() {
                return Ok(());
            }
            self.drain(wr, rx).await?;
            let set = segments.borrow_and_update().clone();
            let want = next.or(set.oldest());
            if let Some(n) = want {
                if let Some(name) = set.by_no.get(&n).copied() {
                    let pred = n.checked_sub(1).and_then(|p| set.by_no.get(&p)).copied();
                    if self
                        .send_segment(wr, name, pred, &mut buf, rx, shutdown)
                        .await?
                    {
                        next = Some(n + 1);
                    }
                    continue;
                }
                if let (Some(oldest), Some(newest)) = (set.oldest(), set.newest()) {
                    if n < oldest {
                        return Err(refuse(wr, ErrorCode::Unavailable, format!("segment {n:X} is no longer on the primary (its oldest is {oldest:X}): the standby needs a fresh copy")).await);
                    }
                    if n < newest {
                        return Err(refuse(wr, ErrorCode::Unavailable, format!("segment {n:X} is missing on the primary, which holds segments up to {newest:X}")).await);
                    }
                }
            }
            tokio::select! {
                r = segments.changed() => if r.is_err() { return Ok(()) },
                _ = beat.tick() => {
                    let m = Message::Keepalive { sealed_lsn: set.sealed_lsn, now_us: crate::now_us() };
                    timed_write(wr, &m, t).await?;
                }
                m = rx.recv() => match m {
                    Some(m) => self.handle_on(wr, m).await?,
                    None => return Err(ReplError::Timeout("the standby's reader stopped".into())),
                },
                _ = shutdown.changed() => return Ok(()),
            }
        }
    }

    /// Checks one sealed segment whole, then sends it in chunks. Returns false when the file
    /// vanished meanwhile (removed by retention): the caller looks again. Damage found here is
    /// recorded and ends the connection: the standby is told, and retries later.
    async fn send_segment(
        &mut self,
        wr: &mut OwnedWriteHalf,
        name: SegmentName,
        predecessor: Option<SegmentName>,
        buf: &mut [u8],
        rx: &mut mpsc::Receiver<Incoming>,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<bool, ReplError> {
        let shared = self.shared.clone();
        let t = shared.config.peer_timeout;
        let (dd, control) = (shared.dd.clone(), shared.control);
        let checked = tokio::task::spawn_blocking(move || {
            check_for_shipping(&dd, &name, predecessor.as_ref(), &control)
        })
        .await
        .map_err(|e| ReplError::io("check segment", std::io::Error::other(e)))?;
        let checked = match checked {
            Ok(Some(c)) => c,
            Ok(None) => return Ok(false),
            Err(e) => {
                let file = name.to_string();
                let Some(report) = damage::report_for(Component::Shipper, &file, &e) else {
                    // A local failure (I/O): not the standby's business beyond "try later".
                    return Err(refuse(
                        wr,
                        ErrorCode::Internal,
                        format!("the primary cannot read {name}: {e}"),
                    )
                    .await);
                };
                // A Status that already arrived still counts (the standby's slot is kept).
                let _ = self.drain(wr, rx).await;
                let err = self.damaged(report).await;
                let _ = refuse(
                    wr,
                    ErrorCode::Internal,
                    format!("the primary's segment {name} is damaged and is not shipped: {e}"),
                )
                .await;
                return Err(err);
            }
        };
        {
            // Intact now: a damage entry of ours for it is stale (the file was replaced).
            let (reg, file) = (shared.damage.clone(), name.to_string());
            if let Ok(Ok(true)) =
                tokio::task::spawn_blocking(move || reg.clear(Component::Shipper, &file)).await
            {
                tracing::info!(file = %name, "damage entry cleared: the segment checks intact now");
            }
        }
        let end_lsn = checked.segment.end_lsn;
        let len = checked.map.len() as u64;
        self.sent = Some(match self.sent {
            Some((first, _)) => (first, name.segment_no.0),
            None => (name.segment_no.0, name.segment_no.0),
        });
        timed_write(
            wr,
            &Message::SegmentStart {
                timeline: name.timeline,
                segment_no: name.segment_no.0,
                len,
            },
            t,
        )
        .await?;
        let mut off = 0u64;
        while off < len {
            let n = (buf.len() as u64).min(len - off) as usize;
            let o = off as usize;
            buf[..n].copy_from_slice(&checked.map[o..o + n]);
            timed_write(
                wr,
                &Message::SegmentData {
                    segment_no: name.segment_no.0,
                    offset: off,
                    data: Bytes(&buf[..n]),
                },
                t,
            )
            .await?;
            off += n as u64;
            if off == len {
                // The standby may acknowledge it from now on.
                self.acked_limit = self.acked_limit.max(end_lsn);
                self.unconfirmed = Some((name, end_lsn));
            }
            self.drain(wr, rx).await?;
            if *shutdown.borrow() {
                return Ok(false);
            }
        }
        tracing::debug!(standby = %self.id, segment = %name, "segment shipped");
        shared.update(&self.id, |s| s.shipped_lsn = end_lsn);
        shared.emit(ShipperEvent::Shipped {
            id: self.id.clone(),
            segment: name,
            end_lsn,
        });
        Ok(true)
    }
}

async fn timed_write(
    wr: &mut OwnedWriteHalf,
    m: &Message<'_>,
    t: Duration,
) -> Result<(), ReplError> {
    match tokio::time::timeout(t, write_message(wr, m)).await {
        Ok(r) => Ok(r?),
        Err(_) => Err(ReplError::Timeout(format!(
            "the standby took no data for {t:?}"
        ))),
    }
}

/// Saves a standby's slot; a failure is logged, not fatal (the next acknowledgement retries).
async fn save_slot(shared: &Arc<Shared>, info: &StandbyInfo) {
    let reg = shared.registry.clone();
    let info = info.clone();
    let r = tokio::task::spawn_blocking(move || {
        // A lost mark is kept by the registry whatever this record says.
        reg.save(&ConsumerRecord {
            id: info.id.clone(),
            kind: ConsumerKind::Standby,
            position: info.flushed_lsn,
            applied_lsn: Some(info.applied_lsn),
            address: Some(info.address.clone()),
            last_contact_us: Some(info.last_contact_us),
            lost: false,
        })
    })
    .await;
    match r {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::error!(error = %e, "saving a standby slot failed"),
        Err(e) => tracing::error!(error = %e, "saving a standby slot failed"),
    }
}
