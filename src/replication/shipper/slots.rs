//! Slots: what the shipper keeps about each standby. While it runs, the table of standbys seen
//! (their positions, last contact, whether connected); on disk, each standby's slot in
//! state/consumers/, which holds back retention. A slot starts at the standby's first Status
//! (a handshake alone makes none), moves with each acknowledgement, and is saved once more when
//! the standby disconnects.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::session::Conn;
use super::{Shared, ShipperEvent, StandbyInfo};
use crate::consumers::{ConsumerKind, ConsumerRecord, ConsumerRegistry};
use crate::damage::Component;
use crate::replication::messages::ErrorCode;
use crate::replication::ReplError;
use crate::Lsn;

/// Records a standby that completed its handshake as connected, at the positions it reported.
/// Its slot on disk starts only at its first Status.
pub(super) fn register(shared: &Shared, id: &str, addr: SocketAddr, flushed: u64, applied: u64) {
    let mut m = shared.standbys.lock().unwrap_or_else(|p| p.into_inner());
    let e = m.entry(id.to_string()).or_insert_with(|| StandbyInfo {
        id: id.to_string(),
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

impl Conn {
    /// A Status from the standby: the positions it acknowledges. It may not acknowledge more
    /// than was shipped to it; its slot is saved when a position moved, and at least every
    /// second while it reports.
    pub(super) async fn acknowledged(
        &mut self,
        flushed_lsn: u64,
        applied_lsn: u64,
    ) -> Result<(), ReplError> {
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
                let cleared =
                    tokio::task::spawn_blocking(move || reg.clear(Component::Standby, &file)).await;
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
            save_slot(&self.shared.registry, &info).await;
            self.last_save = Some(Instant::now());
        }
        Ok(())
    }
}

/// Saves a standby's slot; a failure is logged, not fatal (the next acknowledgement retries).
pub(super) async fn save_slot(registry: &ConsumerRegistry, info: &StandbyInfo) {
    let reg = registry.clone();
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
