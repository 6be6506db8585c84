//! Synchronous commit on the shipper: after every change of the standbys' table (a standby
//! identified, acknowledged or gone) and of the writer's durable position, the policy's
//! confirmed position is computed again, each standby's sync state set, degraded mode decided,
//! and the result published to waiters in this process ([`SyncWaiter`]) and, through
//! `state/sync_position`, to writers in other processes. It also keeps the ring of
//! (durable position, time) samples that lag in time is read from.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::{Shared, ShipperEvent};
use crate::replication::synchronous::published::SyncPublisher;
use crate::replication::synchronous::tracker::{Tracker, Transition};
use crate::replication::synchronous::{
    confirmed, StandbyRow, SyncConfig, SyncSnapshot, SyncState, SyncWaiter,
};
use crate::sync::lock;
use crate::Lsn;

/// The shipper's synchronous-commit state.
pub(super) struct SyncRep {
    pub(super) config: SyncConfig,
    pub(super) waiter: SyncWaiter,
    tracker: Mutex<Tracker>,
    publisher: SyncPublisher,
}

impl SyncRep {
    pub(super) fn start(
        dd: &crate::datadir::DataDir,
        config: SyncConfig,
    ) -> crate::Result<SyncRep> {
        let publisher = SyncPublisher::start(dd, &config, &SyncSnapshot::default())?;
        Ok(SyncRep {
            tracker: Mutex::new(Tracker::new(config.timeout, Instant::now())),
            config,
            waiter: SyncWaiter::new(),
            publisher,
        })
    }

    /// Ends every wait (the shipper stops) and withdraws the published policy.
    pub(super) fn close(&self) {
        self.publisher.withdraw();
        self.waiter.close();
    }

    pub(super) fn degraded(&self) -> bool {
        lock(&self.tracker).degraded()
    }
}

/// Recomputes the confirmed position and every standby's sync state, and publishes them.
pub(super) fn refresh(shared: &Shared) {
    let durable = Lsn(*shared.durable.borrow());
    lock(&shared.lag).record(durable, crate::now_us());
    let Some(sync) = &shared.sync else {
        return;
    };
    let mut table = lock(&shared.standbys);
    // A stable order: ties between standbys of the same name go by id.
    let mut ids: Vec<String> = table.keys().cloned().collect();
    ids.sort();
    let rows: Vec<StandbyRow> = ids
        .iter()
        .filter_map(|id| table.get(id))
        .map(|s| StandbyRow {
            name: s.name.clone(),
            connected: s.connected,
            written_lsn: s.written_lsn,
            flushed_lsn: s.flushed_lsn,
            applied_lsn: s.applied_lsn,
        })
        .collect();
    let c = confirmed(&sync.config.policy, sync.config.level, &rows);
    for (id, st) in ids.iter().zip(&c.states) {
        if let Some(s) = table.get_mut(id) {
            s.sync_state = *st;
        }
    }
    drop(table);
    let (snap, change) = lock(&sync.tracker).update(c.position, durable, Instant::now());
    if sync.waiter.publish(snap) {
        sync.publisher.publish(&snap);
    }
    match change {
        Some(Transition::Degraded { confirmed, durable }) => {
            tracing::error!(
                policy = %sync.config.policy,
                confirmed = %confirmed,
                durable = %durable,
                "SYNCHRONOUS COMMIT DEGRADED: no confirmation from the standbys of the policy for {:?}; commits continue on local durability alone until they catch up",
                sync.config.timeout.unwrap_or_default()
            );
            shared.emit(ShipperEvent::SyncDegraded { confirmed, durable });
        }
        Some(Transition::Restored { confirmed }) => {
            tracing::warn!(policy = %sync.config.policy, confirmed = %confirmed, "synchronous commit restored: the standbys caught up; commits wait for them again");
            shared.emit(ShipperEvent::SyncRestored { confirmed });
        }
        None => {}
    }
}

/// How long a lagging standby's time lag is, in µs, at its flushed position now.
pub(super) fn flush_lag_us(shared: &Shared, flushed: Lsn) -> Option<i64> {
    lock(&shared.lag).lag_us(flushed, crate::now_us())
}

/// Follows the writer's durable position (and, with a timeout, the clock) until shutdown.
pub(super) async fn follow(
    shared: std::sync::Arc<Shared>,
    mut durable: watch::Receiver<u64>,
    mut shutdown: watch::Receiver<bool>,
) {
    let tick = shared
        .sync
        .as_ref()
        .and_then(|s| s.config.timeout)
        .map_or(Duration::from_secs(1), |t| {
            (t / 10).clamp(Duration::from_millis(5), Duration::from_millis(100))
        });
    let mut interval = tokio::time::interval(tick);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        refresh(&shared);
        tokio::select! {
            r = durable.changed() => if r.is_err() { return },
            _ = interval.tick() => {}
            _ = shutdown.changed() => return,
        }
    }
}

/// A standby's sync state when no policy runs.
pub(super) const NO_POLICY: SyncState = SyncState::Async;
