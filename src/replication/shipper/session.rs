//! One standby's session, from accept to close: the handshake and admission, then two halves.
//! The reading half passes what the standby says (acknowledgements, a refused segment, the
//! end) to the sending half, which streams sealed segments in order, each checked whole before
//! it is sent, with heartbeats in between, and handles each message as it comes. Damage found
//! on either side is recorded in the damage register and ends the session.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};

use super::admission::admit;
use super::slots::{register, save_slot};
use super::{Shared, ShipperEvent};
use crate::damage::{self, Component, DamageEntry, DamageReport};
use crate::format::SegmentNo;
use crate::format::{SegmentFileKind, SegmentName};
use crate::replication::frame::{write_message, DATA_OVERHEAD};
use crate::replication::handshake::{self, Identified};
use crate::replication::messages::{Bytes, ErrorCode, Message};
use crate::replication::segments::check_for_shipping;
use crate::replication::{codec, read_msg, refuse, ReplError};
use crate::Lsn;

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

pub(super) async fn connection(
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
            save_slot(&shared.registry, &info).await;
        }
    }
    shared.emit(ShipperEvent::Disconnected {
        id,
        address: addr,
        reason,
    });
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
        ..
    } = match tokio::time::timeout(hs, admit(shared, &mut stream)).await {
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
    handshake::welcome(&mut stream, &shared.control, set.sealed_lsn).await?;
    *id_out = Some(standby_id.clone());
    register(shared, &standby_id, addr, flushed, applied);
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
    pub(super) addr: SocketAddr,
    pub(super) last_save: Option<Instant>,
    /// The most a Status may claim as flushed: what the standby said it held, or the end of
    /// the last segment shipped to it on this connection.
    pub(super) acked_limit: u64,
    /// A Status arrived on this connection (its slot exists from then on).
    pub(super) status_seen: bool,
    /// The last segment shipped and not yet acknowledged, with its end: a standby's damage
    /// report about it is cleared once the standby stores it.
    pub(super) unconfirmed: Option<(SegmentName, u64)>,
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
            } => self.acknowledged(flushed_lsn, applied_lsn).await,
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
