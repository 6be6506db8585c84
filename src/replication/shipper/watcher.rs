//! Keeping the catalog of segments to ship current: the set of sealed segments is rescanned
//! when wal/ changes (as a file watcher reports it), at start, after watcher errors and every
//! rescan interval, and published to every session.

use std::sync::Arc;

use tokio::sync::{mpsc, watch};

use super::Shared;
use crate::replication::segments::{scan_sealed, SealedSet};

/// Keeps the set of sealed segments current: notify events trigger a rescan, and so does a
/// timer, since watchers can drop events.
pub(super) async fn watch_segments(
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
