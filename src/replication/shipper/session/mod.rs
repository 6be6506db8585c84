//! One standby's session, from accept to close: the handshake and admission, then two halves.
//! The reading half passes what the standby says (acknowledgements, a refused segment, the
//! end) to the sending half, which streams sealed segments in order, each checked whole before
//! it is sent, with heartbeats in between, and handles each message as it comes. Damage found
//! on either side is recorded in the damage register and ends the session.
//!
//! Here: the session's lifecycle, the reading half and the handling of what the standby says;
//! `sending.rs`: the sending half (streaming segments, each checked whole, and heartbeats).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};

use super::admission::admit;
use super::identity;
use super::slots::{register, save_slot};
use super::{Shared, ShipperEvent};
use crate::damage::{Component, DamageEntry, DamageReport};
use crate::format::SegmentNo;
use crate::format::{SegmentFileKind, SegmentName};
use crate::replication::frame::DATA_OVERHEAD;
use crate::replication::handshake::{self, Identified};
use crate::replication::messages::{ErrorCode, Message};
use crate::replication::transport::{ReadHalf, WriteHalf};
use crate::replication::{codec, read_msg, refuse, ReplError};
use crate::Lsn;

mod sending;

/// What the reading half passes to the sending half.
enum Incoming {
    Status {
        written_lsn: Lsn,
        flushed_lsn: Lsn,
        applied_lsn: Lsn,
    },
    /// The standby refused a segment it received (protocol version 2 on).
    Rejected {
        segment_no: u64,
        offset: u64,
        reason: String,
    },
    Ended(ReplError),
}

pub(super) async fn connection(
    shared: Arc<Shared>,
    stream: TcpStream,
    addr: SocketAddr,
    shutdown: watch::Receiver<bool>,
) {
    tracing::info!(peer = %addr, "standby connected");
    let mut id = None;
    let mut ended = Ended::default();
    let result = serve_standby(&shared, stream, addr, shutdown, &mut id, &mut ended).await;
    let reason = match &result {
        Ok(()) => "shutting down".to_string(),
        Err(e) => e.to_string(),
    };
    match &result {
        Ok(()) if ended.superseded => {
            tracing::info!(peer = %addr, standby = id.as_deref().unwrap_or("-"), "standby's older connection closed: it connected again")
        }
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
    // The standby was marked disconnected as its connection ended (`serve_standby`), unless a
    // later connection had taken its place.
    if id.is_some() && !ended.superseded {
        super::sync_state::refresh(&shared);
        // A slot starts at the standby's first Status (a handshake alone makes none).
        if let Some(info) = ended.last.take().filter(|_| ended.status_seen) {
            save_slot(&shared.registry, &info).await;
        }
    }
    shared.emit(ShipperEvent::Disconnected {
        id,
        address: addr,
        reason,
    });
}

/// How a connection ended, as its end is recorded.
#[derive(Default)]
struct Ended {
    /// A Status arrived on it (the standby's slot exists).
    status_seen: bool,
    /// A later connection of the same standby took its place.
    superseded: bool,
    /// The standby as it was marked disconnected, when this connection still spoke for it.
    last: Option<super::StandbyInfo>,
}

async fn serve_standby(
    shared: &Arc<Shared>,
    tcp: TcpStream,
    addr: SocketAddr,
    shutdown: watch::Receiver<bool>,
    id_out: &mut Option<String>,
    ended: &mut Ended,
) -> Result<(), ReplError> {
    let cfg = &shared.config;
    let (max, t, hs) = (cfg.max_frame, cfg.peer_timeout, cfg.handshake_timeout);
    // One deadline for the whole handshake, TLS's included: a peer that trickles bytes cannot
    // hold a connection slot longer than this before it has authenticated and identified
    // itself.
    let deadline = tokio::time::Instant::now() + hs;
    let (mut stream, cert_name) =
        match tokio::time::timeout_at(deadline, identity::open(shared, tcp)).await {
            Ok(r) => r?,
            Err(_) => {
                return Err(ReplError::Timeout(format!(
                    "TLS handshake not completed within {hs:?}"
                )))
            }
        };
    let Identified {
        id: standby_id,
        token_name,
        next_segment,
        max_frame: standby_max,
        flushed_lsn: flushed,
        applied_lsn: applied,
        name,
        ..
    } = match tokio::time::timeout_at(deadline, admit(shared, &mut stream)).await {
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
    // The name the standby gives itself must be the one its certificate or its own token
    // proves, when it has either.
    let by_token = token_name.is_some();
    let proven = match identity::name(cert_name, token_name) {
        Ok(n) => n,
        Err(m) => return Err(refuse(&mut stream, ErrorCode::Auth, m).await),
    };
    if let Some(p) = proven.as_ref().filter(|p| **p != name) {
        return Err(refuse(&mut stream, ErrorCode::Auth, format!("the standby calls itself {name:?}, but its credentials name it {p:?}: start it with --name {p}")).await);
    }
    // A standby proven to be X may not take over the slot (the positions that hold back
    // retention, the place in the synchronous policy that slot stands for) of a standby
    // registered under another name.
    if let Some(p) = &proven {
        match slot_owner(shared, &standby_id).await {
            Ok(Some(owner)) if owner != *p => {
                return Err(refuse(&mut stream, ErrorCode::Auth, format!("the standby authenticated as {p:?} presents the id {standby_id}, whose slot belongs to the standby {owner:?}: a standby may not take over another's slot; start {p:?} from its own directory")).await);
            }
            Ok(_) => {}
            Err(e) => {
                return Err(refuse(
                    &mut stream,
                    ErrorCode::Internal,
                    format!("the slot of standby id {standby_id} cannot be read: {e}"),
                )
                .await);
            }
        }
    }
    let by_identity = proven.is_some();
    let (registered, mut shutdown) =
        shared
            .sessions
            .register(proven.as_deref(), by_token, shutdown);
    let set = shared.segments.borrow().clone();
    handshake::welcome(
        &mut stream,
        &shared.control,
        &shared.histories,
        set.sealed_lsn,
    )
    .await?;
    *id_out = Some(standby_id.clone());
    if registered.take_over(&standby_id) {
        tracing::warn!(peer = %addr, standby = %standby_id, name = %name, "the standby connected again while its older connection was open: the older one is closed (two standbys started from copies of one directory would take turns like this: give each its own directory)");
    }
    register(shared, &standby_id, &name, addr, flushed, applied);
    tracing::info!(peer = %addr, standby = %standby_id, name = %name, authenticated = by_identity, tls = stream.is_tls(), flushed = %flushed, applied = %applied, "standby identified");
    shared.emit(ShipperEvent::Connected {
        id: standby_id.clone(),
        address: addr,
    });

    let (rd, mut wr) = stream.split();
    let (in_tx, mut in_rx) = mpsc::channel(64);
    let reader = tokio::spawn(read_standby(rd, max, t, in_tx));
    let chunk = cfg.chunk_size.min(standby_max - DATA_OVERHEAD).max(4096);
    // What the standby holds of the segment it needs next (version 3: a prefix streamed while
    // it was open): its flushed position says, when it lies inside that segment.
    let size = shared.control.segment_size;
    let held = next_segment
        .map(|n| Lsn(n.saturating_mul(size)))
        .filter(|start| flushed > *start)
        .map_or(0, |start| flushed - start);
    let mut conn = Conn {
        shared: shared.clone(),
        id: standby_id,
        name: name.clone(),
        addr,
        last_save: None,
        pending_save: None,
        acked_limit: flushed,
        status_seen: false,
        unconfirmed: None,
        sent: None,
    };
    let result = conn
        .stream_segments(
            &mut wr,
            next_segment,
            held,
            chunk,
            &mut in_rx,
            &mut shutdown,
        )
        .await;
    ended.status_seen = conn.status_seen;
    // The standby is disconnected when the connection that speaks for it ends, whether it
    // reported or not (a rewind's, a first contact cut short); one that a later connection
    // took the place of leaves it to that one.
    let mut last = None;
    ended.superseded = !registered.while_current(&conn.id, || {
        last = shared.update(&conn.id, |s| {
            s.connected = false;
            s.clone()
        });
    });
    ended.last = last;
    // The last save of the slot (by the caller) comes after any save still in flight.
    conn.saves_settled().await;
    reader.abort();
    if result.is_ok()
        && registered
            .cut
            .revoked
            .load(std::sync::atomic::Ordering::Acquire)
    {
        return Err(refuse(
            &mut wr,
            ErrorCode::Auth,
            format!(
                "standby {name} was revoked: its token was removed from the primary's token directory"
            ),
        )
        .await);
    }
    if result.is_ok() {
        let why = if ended.superseded {
            "another connection of this standby took this one's place"
        } else {
            "the primary is shutting down"
        };
        let _ = refuse(&mut wr, ErrorCode::ShuttingDown, why.into()).await;
    }
    result
}

/// The name the slot of standby `id` is registered under, if it has one: as this shipper knows
/// it since it started, else as its slot on disk says.
async fn slot_owner(shared: &Arc<Shared>, id: &str) -> Result<Option<String>, ReplError> {
    if let Some(name) = shared.update(id, |s| s.name.clone()) {
        return Ok(Some(name));
    }
    let (reg, id) = (shared.registry.clone(), id.to_string());
    let rec = tokio::task::spawn_blocking(move || reg.get(&id))
        .await
        .map_err(|e| ReplError::Internal(format!("reading a standby slot: {e}")))?
        .map_err(ReplError::Store)?;
    Ok(rec.and_then(|r| r.name))
}

async fn read_standby(mut rd: ReadHalf, max: usize, timeout: Duration, tx: mpsc::Sender<Incoming>) {
    loop {
        let msg = match read_msg("peer", &mut rd, max, timeout, "a standby status").await {
            Ok(body) => match codec::decode(&body) {
                Ok(Message::Status {
                    written_lsn,
                    flushed_lsn,
                    applied_lsn,
                    ..
                }) => Incoming::Status {
                    written_lsn,
                    flushed_lsn,
                    applied_lsn,
                },
                Ok(Message::Error { code, message }) => Incoming::Ended(ReplError::PeerRefused {
                    peer: "standby",
                    code,
                    message: crate::replication::printable(message),
                }),
                Ok(Message::SegmentRejected {
                    segment_no,
                    offset,
                    reason,
                }) => Incoming::Rejected {
                    segment_no,
                    offset,
                    reason: crate::replication::printable(reason),
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

pub(super) struct Conn {
    pub(super) shared: Arc<Shared>,
    pub(super) id: String,
    /// The name the standby gave.
    pub(super) name: String,
    pub(super) addr: SocketAddr,
    /// When the slot was last saved, and that save while it runs (see `slots.rs`).
    pub(super) last_save: Option<Instant>,
    pub(super) pending_save: Option<tokio::task::JoinHandle<()>>,
    /// The most a Status may claim as flushed: what the standby said it held, or the end of
    /// the last segment shipped to it on this connection.
    pub(super) acked_limit: Lsn,
    /// A Status arrived on this connection (its slot exists from then on).
    pub(super) status_seen: bool,
    /// The last segment shipped and not yet acknowledged, with its end: a standby's damage
    /// report about it is cleared once the standby stores it.
    pub(super) unconfirmed: Option<(SegmentName, Lsn)>,
    /// The first and last segment numbers started on this connection: a standby may refuse
    /// only a segment it was sent.
    pub(super) sent: Option<(u64, u64)>,
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
            lsn = %entry.lsn,
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
    async fn handle_on(&mut self, wr: &mut WriteHalf, m: Incoming) -> Result<(), ReplError> {
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
                        lsn: SegmentNo(segment_no).start_lsn_saturating(size).checked_add(offset).unwrap_or(Lsn(u64::MAX)),
                        reason: format!("the standby refused the segment it received: {reason}"),
                        action: "run `walship verify DATA_DIR` on the primary: if it finds this segment damaged, replace it with a good copy (see the runbook for damage); if the primary's copy is intact, the bytes changed on the way or on the standby (check its disk, memory and the network); the standby asks for the segment again".into(),
                        reporter: Some(format!("standby {} at {}", self.id, self.addr)),
                    })
                    .await)
            }
            Incoming::Status {
                written_lsn,
                flushed_lsn,
                applied_lsn,
            } => {
                self.acknowledged(written_lsn, flushed_lsn, applied_lsn)
                    .await
            }
        }
    }

    async fn drain(
        &mut self,
        wr: &mut WriteHalf,
        rx: &mut mpsc::Receiver<Incoming>,
    ) -> Result<(), ReplError> {
        while let Ok(m) = rx.try_recv() {
            self.handle_on(wr, m).await?;
        }
        Ok(())
    }
}
