//! The sending half of a standby's session: sealed segments in order, each checked whole
//! before it is sent and cleared of a stale damage entry, in chunks; then the open segment's
//! records as they become durable (never a byte past the writer's durable position), and the
//! rest of that segment once it is sealed; with heartbeats in between and what the standby
//! says handled as it comes.

use super::*;
use crate::damage;
use crate::replication::frame::write_message;
use crate::replication::messages::Bytes;
use crate::replication::segments::check_for_shipping;

impl Conn {
    pub(super) async fn stream_segments(
        &mut self,
        wr: &mut WriteHalf,
        mut next: Option<u64>,
        mut held: u64,
        chunk: usize,
        rx: &mut mpsc::Receiver<Incoming>,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<(), ReplError> {
        let shared = self.shared.clone();
        let t = shared.config.peer_timeout;
        let size = shared.control.segment_size;
        let mut segments = shared.segments.clone();
        let mut durable = shared.durable.clone();
        let mut beat = tokio::time::interval(shared.config.heartbeat_interval);
        let mut buf = vec![0u8; chunk];
        loop {
            if *shutdown.borrow() {
                return Ok(());
            }
            self.drain(wr, rx).await?;
            let set = segments.borrow_and_update().clone();
            let flush = *durable.borrow_and_update();
            let open_no = (flush > 0).then_some(flush / size);
            let want = next.or(set.oldest()).or(open_no);
            if let Some(n) = want {
                if let Some(name) = set.by_no.get(&n).copied() {
                    let pred = n.checked_sub(1).and_then(|p| set.by_no.get(&p)).copied();
                    if self
                        .send_segment(wr, (name, pred), held, &mut buf, rx, shutdown)
                        .await?
                    {
                        next = Some(n + 1);
                        held = 0;
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
                // The open segment: its records below the durable position that the standby
                // does not hold yet.
                let start = n.saturating_mul(size);
                if open_no == Some(n) && flush > start + held {
                    if let Some(h) = self
                        .send_open(wr, n, held, flush - start, buf.len(), rx)
                        .await?
                    {
                        held = h;
                        next = Some(n);
                        continue;
                    }
                }
            }
            tokio::select! {
                r = segments.changed() => if r.is_err() { return Ok(()) },
                r = durable.changed() => if r.is_err() {
                    // The writer in this process is gone: only sealed segments from now on.
                    durable = watch::channel(flush).1;
                },
                _ = beat.tick() => {
                    let m = Message::Keepalive { sealed_lsn: set.sealed_lsn, now_us: crate::now_us() };
                    timed_write(wr, &m, t).await?;
                }
                m = rx.recv() => match m {
                    Some(m) => self.handle_on(wr, m).await?,
                    None => return Err(ReplError::Internal("the standby's reader stopped".into())),
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
        wr: &mut WriteHalf,
        (name, predecessor): (SegmentName, Option<SegmentName>),
        held: u64,
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
        // A standby holding a prefix streamed while the segment was open gets only the rest
        // (it checks the whole file before it names it sealed).
        let resume = held > 0 && held < len;
        let start = if resume {
            Message::SegmentResume {
                timeline: name.timeline,
                segment_no: name.segment_no.0,
                offset: held,
                len,
            }
        } else {
            Message::SegmentStart {
                timeline: name.timeline,
                segment_no: name.segment_no.0,
                len,
            }
        };
        timed_write(wr, &start, t).await?;
        let mut off = if resume { held } else { 0 };
        self.shared.update(&self.id, |s| s.sent_bytes += len - off);
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
        tracing::debug!(standby = %self.id, segment = %name, resumed_at = off, "segment shipped");
        shared.update(&self.id, |s| s.shipped_lsn = end_lsn);
        shared.emit(ShipperEvent::Shipped {
            id: self.id.clone(),
            segment: name,
            end_lsn,
        });
        Ok(true)
    }
}

impl Conn {
    /// Sends the open segment `n`'s bytes `[held, upto)` (all durable here: `upto` is the
    /// writer's durable position, a record boundary) in OpenData chunks. Returns where the
    /// standby's copy now ends, or None when the open file is gone (sealed meanwhile: the
    /// caller waits for the sealed name).
    async fn send_open(
        &mut self,
        wr: &mut WriteHalf,
        n: u64,
        held: u64,
        upto: u64,
        chunk: usize,
        rx: &mut mpsc::Receiver<Incoming>,
    ) -> Result<Option<u64>, ReplError> {
        let shared = self.shared.clone();
        let t = shared.config.peer_timeout;
        let timeline = shared.control.timeline;
        let name = SegmentName::new(timeline, n, SegmentFileKind::Open);
        let path = shared.dd.segment_path(&name);
        let want = (upto - held) as usize;
        let bytes = tokio::task::spawn_blocking(move || -> std::io::Result<Option<Vec<u8>>> {
            use std::os::unix::fs::FileExt;
            let file = match std::fs::File::open(&path) {
                Ok(f) => f,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(e),
            };
            let mut v = vec![0u8; want];
            match file.read_exact_at(&mut v, held) {
                Ok(()) => Ok(Some(v)),
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Ok(None),
                Err(e) => Err(e),
            }
        })
        .await
        .map_err(|e| ReplError::io("read the open segment", std::io::Error::other(e)))?;
        let bytes = match bytes {
            Ok(Some(b)) => b,
            Ok(None) => return Ok(None),
            Err(e) => {
                return Err(refuse(
                    wr,
                    ErrorCode::Internal,
                    format!("the primary cannot read {name}: {e}"),
                )
                .await)
            }
        };
        self.sent = Some(match self.sent {
            Some((first, _)) => (first, n),
            None => (n, n),
        });
        let mut off = 0usize;
        while off < bytes.len() {
            let k = chunk.min(bytes.len() - off);
            timed_write(
                wr,
                &Message::OpenData {
                    timeline,
                    segment_no: n,
                    offset: held + off as u64,
                    data: Bytes(&bytes[off..off + k]),
                },
                t,
            )
            .await?;
            off += k;
        }
        let end = Lsn(n.saturating_mul(shared.control.segment_size) + upto);
        self.acked_limit = self.acked_limit.max(end);
        shared.update(&self.id, |s| {
            s.shipped_lsn = s.shipped_lsn.max(end);
            s.sent_bytes += bytes.len() as u64;
        });
        self.drain(wr, rx).await?;
        Ok(Some(upto))
    }
}

async fn timed_write(wr: &mut WriteHalf, m: &Message<'_>, t: Duration) -> Result<(), ReplError> {
    match tokio::time::timeout(t, write_message(wr, m)).await {
        Ok(r) => Ok(r?),
        Err(_) => Err(ReplError::Timeout(format!(
            "the standby took no data for {t:?}"
        ))),
    }
}
