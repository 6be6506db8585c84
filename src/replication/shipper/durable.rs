//! The writer's durable position as the shipper learns it: directly from a `Wal` in the same
//! process ([`ShipperConfig::flush_watch`](super::ShipperConfig)), or, for `walship serve` beside
//! the writer, from `state/flush_position`: `state/` is watched (inotify through `notify`),
//! the 16 bytes are read again on each change to that file (a write, a creation or a rename, never
//! a mere open or read: this task's own reads would wake it again), and every `DURABLE_RESCAN`
//! as well, because watchers can drop events. Only records below this position are ever streamed.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};

use super::Shared;
use crate::flush_position::{read_flush_position, FLUSH_POSITION_FILE};

/// How often the position file is read when no change was reported.
const DURABLE_RESCAN: Duration = Duration::from_millis(200);

/// Whether a watcher's event may mean a new position: a write to, a creation or a rename of the
/// position file, or events lost. Opening, reading and closing it (this task's own reads among
/// them) are access events: reacting to them would read the file again and again.
fn is_position_change(ev: &notify::Event) -> bool {
    ev.need_rescan()
        || (!matches!(ev.kind, notify::EventKind::Access(_))
            && ev
                .paths
                .iter()
                .any(|p| p.file_name().is_some_and(|n| n == FLUSH_POSITION_FILE)))
}

/// Keeps `tx` at the directory's published durable position until shutdown.
pub(super) async fn watch_durable(
    shared: Arc<Shared>,
    tx: watch::Sender<u64>,
    mut shutdown: watch::Receiver<bool>,
) {
    use notify::Watcher;
    let (ev_tx, mut ev_rx) = mpsc::channel::<()>(1);
    let handler = move |res: notify::Result<notify::Event>| {
        let wake = match &res {
            Ok(ev) => is_position_change(ev),
            Err(_) => true,
        };
        if wake {
            let _ = ev_tx.try_send(());
        }
    };
    let state_dir = shared.dd.state_dir();
    let _watcher = match notify::recommended_watcher(handler) {
        Ok(mut w) => match w.watch(&state_dir, notify::RecursiveMode::NonRecursive) {
            Ok(()) => Some(w),
            Err(e) => {
                tracing::warn!(error = %e, dir = %state_dir.display(), "cannot watch state/; reading the durable position periodically");
                None
            }
        },
        Err(e) => {
            tracing::warn!(error = %e, "cannot create a file watcher; reading the durable position periodically");
            None
        }
    };
    let mut tick = tokio::time::interval(DURABLE_RESCAN);
    let mut warned = false;
    loop {
        // Read directly: 16 bytes from the page cache, cheaper than a blocking task.
        match read_flush_position(&shared.dd) {
            Ok(Some(lsn)) => {
                warned = false;
                tx.send_if_modified(|cur| {
                    let moved = lsn > *cur;
                    if moved {
                        *cur = lsn;
                    }
                    moved
                });
            }
            Ok(None) => {}
            Err(e) => {
                if !warned {
                    tracing::warn!(error = %e, "reading the writer's durable position failed");
                    warned = true;
                }
            }
        }
        tokio::select! {
            _ = tick.tick() => {}
            Some(()) = ev_rx.recv() => {}
            _ = shutdown.changed() => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use notify::event::{AccessKind, AccessMode, CreateKind, DataChange, EventKind, ModifyKind};
    use notify::Event;

    fn ev(kind: EventKind, name: &str) -> Event {
        Event::new(kind).add_path(std::path::PathBuf::from("/d/state").join(name))
    }

    #[test]
    fn only_changes_to_the_position_file_wake_the_reader() {
        let write = EventKind::Modify(ModifyKind::Data(DataChange::Any));
        assert!(is_position_change(&ev(write, FLUSH_POSITION_FILE)));
        assert!(is_position_change(&ev(
            EventKind::Create(CreateKind::File),
            FLUSH_POSITION_FILE
        )));
        assert!(!is_position_change(&ev(write, "checkpoint.json")));
        // The reader's own open, read and close.
        for a in [
            AccessKind::Open(AccessMode::Any),
            AccessKind::Read,
            AccessKind::Close(AccessMode::Read),
        ] {
            assert!(!is_position_change(&ev(
                EventKind::Access(a),
                FLUSH_POSITION_FILE
            )));
        }
        assert!(is_position_change(
            &Event::new(EventKind::Other).set_flag(notify::event::Flag::Rescan)
        ));
    }
}
