//! The sending half of a standby's session: sealed segments in order, each checked whole
//! before it is sent and cleared of a stale damage entry, in chunks, with heartbeats in between
//! and what the standby says handled as it comes.

use super::*;
use crate::damage;
use crate::replication::frame::write_message;
use crate::replication::messages::Bytes;
use crate::replication::segments::check_for_shipping;

impl Conn {
    pub(super) async fn stream_segments(
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
