//! Slots: what the shipper keeps about each standby. While it runs, the table of standbys seen
//! (their positions, last contact, whether connected); on disk, each standby's slot in
//! state/consumers/, which holds back retention. A slot starts at the standby's first Status
//! (a handshake alone makes none) and moves with each acknowledgement in memory.
//!
//! On disk a slot is saved at the standby's first Status, then at most once per
//! [`SLOT_SAVE_INTERVAL`] (at the first Status that arrives that long after the last save: a
//! standby reports at least every heartbeat), and once more when the connection ends. A save
//! (a JSON file replaced and two fsyncs) runs in the background, so that acknowledgements never
//! wait for the disk and the sending half is never held up behind it; saves of one connection
//! never overlap, so the file never moves backwards. The rule retention relies on: a saved
//! position is one the standby acknowledged, never more; it lags the standby by at most about
//! the interval plus a heartbeat, and a shipper that crashes loses at most that lag. A slot
//! behind its standby only keeps segments longer, never removes one the standby still needs.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use super::session::Conn;
use super::{Shared, ShipperEvent, StandbyInfo};
use crate::consumers::{ConsumerKind, ConsumerRecord, ConsumerRegistry};
use crate::damage::Component;
use crate::replication::messages::ErrorCode;
use crate::replication::ReplError;
use crate::Lsn;

/// A slot is saved to disk at most this often while its standby reports.
pub(super) const SLOT_SAVE_INTERVAL: Duration = Duration::from_secs(1);

/// Records a standby that completed its handshake as connected, at the positions it reported.
/// Its slot on disk starts only at its first Status.
pub(super) fn register(
    shared: &Shared,
    id: &str,
    name: &str,
    addr: SocketAddr,
    flushed: Lsn,
    applied: Lsn,
) {
    let mut m = crate::sync::lock(&shared.standbys);
    let e = m.entry(id.to_string()).or_insert_with(|| StandbyInfo {
        id: id.to_string(),
        name: name.to_string(),
        address: addr.to_string(),
        connected: true,
        written_lsn: flushed,
        flushed_lsn: flushed,
        applied_lsn: applied,
        shipped_lsn: Lsn::ZERO,
        sent_bytes: 0,
        last_contact_us: crate::now_us(),
        sync_state: super::sync_state::NO_POLICY,
        flush_lag_us: None,
    });
    e.address = addr.to_string();
    e.name = name.to_string();
    e.connected = true;
    e.written_lsn = flushed;
    e.flushed_lsn = flushed;
    e.applied_lsn = applied;
    e.last_contact_us = crate::now_us();
    drop(m);
    super::sync_state::refresh(shared);
}

impl Conn {
    /// A Status from the standby: the positions it acknowledges. It may not acknowledge more
    /// than was shipped to it; its slot is saved in the background, at the first Status and
    /// then at most once per [`SLOT_SAVE_INTERVAL`].
    pub(super) async fn acknowledged(
        &mut self,
        written_lsn: Lsn,
        flushed_lsn: Lsn,
        applied_lsn: Lsn,
    ) -> Result<(), ReplError> {
        if flushed_lsn > self.acked_limit {
            // Checked before anything is updated: the slot stays as it was.
            return Err(ReplError::refused(
                ErrorCode::Protocol,
                format!(
                    "the standby acknowledged WAL up to {} but only WAL up to {} was shipped to it",
                    flushed_lsn, self.acked_limit
                ),
            ));
        }
        if written_lsn > self.acked_limit || flushed_lsn > written_lsn {
            return Err(ReplError::refused(
                ErrorCode::Protocol,
                format!(
                    "the standby reported WAL written up to {} and flushed up to {}, but only WAL up to {} was shipped to it (and nothing can be flushed that was not written)",
                    written_lsn, flushed_lsn, self.acked_limit
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
        let lag = super::sync_state::flush_lag_us(&self.shared, flushed_lsn);
        let (changed, info) = self
            .shared
            .update(&self.id, |s| {
                let changed = s.flushed_lsn != flushed_lsn || s.applied_lsn != applied_lsn;
                s.written_lsn = written_lsn;
                s.flushed_lsn = flushed_lsn;
                s.applied_lsn = applied_lsn;
                s.last_contact_us = now;
                s.flush_lag_us = lag;
                (changed, s.clone())
            })
            .unwrap_or((
                false,
                StandbyInfo {
                    id: self.id.clone(),
                    name: self.name.clone(),
                    address: self.addr.to_string(),
                    connected: true,
                    written_lsn,
                    flushed_lsn,
                    applied_lsn,
                    shipped_lsn: Lsn(0),
                    sent_bytes: 0,
                    last_contact_us: now,
                    sync_state: super::sync_state::NO_POLICY,
                    flush_lag_us: lag,
                },
            ));
        // The written position counts too (remote_write), and so does a standby that is
        // only heard from again.
        super::sync_state::refresh(&self.shared);
        if changed {
            tracing::debug!(standby = %self.id, flushed = %flushed_lsn, applied = %applied_lsn, "standby acknowledged");
            self.shared.emit(ShipperEvent::Acknowledged {
                id: self.id.clone(),
                flushed_lsn,
                applied_lsn,
            });
        }
        if self
            .last_save
            .is_none_or(|t| t.elapsed() >= SLOT_SAVE_INTERVAL)
        {
            // The previous save (a second ago at least) has ended; wait for it all the same,
            // so that saves never overlap and the file never moves backwards.
            self.saves_settled().await;
            let registry = self.shared.registry.clone();
            self.pending_save = Some(tokio::spawn(async move {
                save_slot(&registry, &info).await;
            }));
            self.last_save = Some(Instant::now());
        }
        Ok(())
    }

    /// Waits for the slot save in flight, if any: at the end of a connection, before the last
    /// save.
    pub(super) async fn saves_settled(&mut self) {
        if let Some(h) = self.pending_save.take() {
            if let Err(e) = h.await {
                tracing::error!(error = %e, "saving a standby slot failed");
            }
        }
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
            name: Some(info.name.clone()),
            written_lsn: Some(info.written_lsn),
            flush_lag_us: info.flush_lag_us,
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

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::sync::atomic::AtomicBool;
    use std::sync::{Arc, Mutex};

    use tokio::sync::{broadcast, watch};

    use super::*;
    use crate::damage::{DamageRegister, DamageReport};
    use crate::datadir::DataDir;
    use crate::format::{ControlFile, SegmentFileKind, SegmentName, FORMAT_VERSION};
    use crate::replication::segments::SealedSet;
    use crate::replication::ShipperConfig;

    const ID: &str = "9b1a5a52-0e4e-4a36-8a3b-1c2d3e4f5a6b";

    fn shared(dir: &std::path::Path) -> Arc<Shared> {
        let dd = DataDir::new(dir);
        std::fs::create_dir_all(dd.state_dir()).unwrap();
        let (_, segments) = watch::channel(Arc::new(SealedSet::default()));
        Arc::new(Shared {
            config: ShipperConfig::new(dir, "127.0.0.1:0"),
            control: ControlFile {
                identity: crate::format::SystemIdentity {
                    format_version: FORMAT_VERSION,
                    timeline: 1,
                    system_id: uuid::Uuid::from_u128(1),
                    segment_size: 1 << 16,
                },
                created_us: 0,
            },
            histories: crate::replication::handshake::Histories::first(),
            registry: ConsumerRegistry::new(&dd),
            damage: DamageRegister::new(&dd),
            dd,
            standbys: Mutex::new(HashMap::new()),
            events: broadcast::channel(16).0,
            running: AtomicBool::new(true),
            segments,
            durable: watch::channel(0).1,
            tls: None,
            token_dir: None,
            sessions: Default::default(),
            sync: None,
            lag: Mutex::new(crate::replication::synchronous::lag::LagRing::new()),
            _served: None,
        })
    }

    fn addr() -> SocketAddr {
        "127.0.0.1:4000".parse().unwrap()
    }

    /// A session with a standby that said it holds WAL up to `flushed`.
    fn session(shared: &Arc<Shared>, flushed: u64) -> Conn {
        register(shared, ID, "s1", addr(), Lsn(flushed), Lsn(0));
        Conn {
            shared: shared.clone(),
            id: ID.into(),
            name: "s1".into(),
            addr: addr(),
            last_save: None,
            pending_save: None,
            acked_limit: Lsn(flushed),
            status_seen: false,
            unconfirmed: None,
            sent: None,
        }
    }

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
    }

    fn info(shared: &Shared) -> StandbyInfo {
        shared.standbys.lock().unwrap()[ID].clone()
    }

    #[test]
    fn a_standby_that_connects_is_listed_without_a_slot_on_disk() {
        let d = tempfile::tempdir().unwrap();
        let s = shared(d.path());
        register(&s, ID, "s1", addr(), Lsn(300), Lsn(200));
        let i = info(&s);
        assert!(i.connected);
        assert_eq!(
            (i.flushed_lsn, i.applied_lsn, i.shipped_lsn),
            (Lsn(300), Lsn(200), Lsn(0))
        );
        assert_eq!(i.address, "127.0.0.1:4000");
        assert_eq!(s.registry.get(ID).unwrap(), None);
        // Reconnecting updates the entry; what was shipped stays.
        s.update(ID, |i| {
            i.connected = false;
            i.shipped_lsn = Lsn(400);
        });
        register(
            &s,
            ID,
            "s1",
            "127.0.0.1:4001".parse().unwrap(),
            Lsn(400),
            Lsn(300),
        );
        let i = info(&s);
        assert!(i.connected);
        assert_eq!(
            (i.flushed_lsn, i.applied_lsn, i.shipped_lsn),
            (Lsn(400), Lsn(300), Lsn(400))
        );
        assert_eq!(i.address, "127.0.0.1:4001");
    }

    #[test]
    fn an_acknowledgement_past_what_was_shipped_is_refused_and_moves_nothing() {
        let d = tempfile::tempdir().unwrap();
        let s = shared(d.path());
        let mut c = session(&s, 100);
        let r = rt().block_on(c.acknowledged(Lsn(101), Lsn(101), Lsn(50)));
        match r {
            Err(ReplError::Refused { code, message }) => {
                assert_eq!(code, ErrorCode::Protocol);
                assert!(
                    message.starts_with("the standby acknowledged WAL up to"),
                    "{message}"
                );
            }
            other => panic!("{other:?}"),
        }
        assert!(!c.status_seen);
        assert_eq!(info(&s).flushed_lsn, Lsn(100));
        assert_eq!(s.registry.get(ID).unwrap(), None);
    }

    /// One Status, and the slot save it started (if any) waited for.
    fn ack(rt: &tokio::runtime::Runtime, c: &mut Conn, w: u64, f: u64, a: u64) {
        rt.block_on(async {
            c.acknowledged(Lsn(w), Lsn(f), Lsn(a)).await.unwrap();
            c.saves_settled().await;
        });
    }

    #[test]
    fn acknowledgements_move_the_slot_at_once_and_are_saved_at_most_once_an_interval() {
        let d = tempfile::tempdir().unwrap();
        let s = shared(d.path());
        let mut events = s.events.subscribe();
        let mut c = session(&s, 100);
        let rt = rt();
        ack(&rt, &mut c, 100, 100, 80);
        assert!(c.status_seen);
        assert_eq!(
            events.try_recv().unwrap(),
            ShipperEvent::Acknowledged {
                id: ID.into(),
                flushed_lsn: Lsn(100),
                applied_lsn: Lsn(80)
            }
        );
        // The first Status makes the slot.
        let rec = s.registry.get(ID).unwrap().unwrap();
        assert_eq!(rec.kind, ConsumerKind::Standby);
        assert_eq!(
            (rec.position, rec.applied_lsn, rec.lost),
            (Lsn(100), Some(Lsn(80)), false)
        );
        assert_eq!(rec.address.as_deref(), Some("127.0.0.1:4000"));
        // The same positions again at once: nothing to tell, nothing to save.
        s.registry.remove(ID).unwrap();
        ack(&rt, &mut c, 100, 100, 80);
        assert!(events.try_recv().is_err());
        assert_eq!(s.registry.get(ID).unwrap(), None);
        // A moved position is told at once and kept in memory, but saved only once the
        // interval has passed: the slot on disk lags, never leads.
        s.registry
            .save(&ConsumerRecord {
                applied_lsn: Some(Lsn(80)),
                ..ConsumerRecord::new(ID, ConsumerKind::Standby, Lsn(100))
            })
            .unwrap();
        ack(&rt, &mut c, 100, 100, 90);
        assert!(events.try_recv().is_ok());
        assert_eq!(info(&s).applied_lsn, Lsn(90));
        assert_eq!(
            s.registry.get(ID).unwrap().unwrap().applied_lsn,
            Some(Lsn(80))
        );
        // An interval later the next Status saves the newest positions, moved or not.
        c.last_save = Some(Instant::now() - SLOT_SAVE_INTERVAL);
        ack(&rt, &mut c, 100, 100, 90);
        assert!(events.try_recv().is_err());
        let rec = s.registry.get(ID).unwrap().unwrap();
        assert_eq!((rec.position, rec.applied_lsn), (Lsn(100), Some(Lsn(90))));
    }

    #[test]
    fn a_standbys_damage_report_is_cleared_once_it_stores_the_segment() {
        let d = tempfile::tempdir().unwrap();
        let s = shared(d.path());
        let name = SegmentName::new(1, 2, SegmentFileKind::Sealed);
        s.damage
            .record(&DamageReport {
                component: Component::Standby,
                file: name.to_string(),
                offset: 10,
                lsn: Lsn(10),
                reason: "r".into(),
                action: "a".into(),
                reporter: None,
            })
            .unwrap();
        let mut c = session(&s, 0);
        // Segment 2, ending at 300, was shipped again.
        c.acked_limit = Lsn(300);
        c.unconfirmed = Some((name, Lsn(300)));
        let rt = rt();
        ack(&rt, &mut c, 200, 200, 0);
        assert_eq!(s.damage.list().unwrap().len(), 1, "not stored yet");
        ack(&rt, &mut c, 300, 300, 0);
        assert!(s.damage.list().unwrap().is_empty());
        assert_eq!(c.unconfirmed, None);
    }
}
