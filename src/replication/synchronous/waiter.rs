//! Waiting for confirmation: the one place a commit waits until the policy confirmed its LSN.
//! Concurrent waiters share every confirmation, as group commit shares a sync: the shipper
//! publishes one snapshot (under one mutex, with one condition variable for threads and one
//! `watch` channel for tasks), and every waiter whose LSN it covers wakes; there is no task or
//! timer per waiter.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::sync::watch;

use crate::Lsn;

/// What synchronous commit currently allows.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct SyncSnapshot {
    /// Everything below was confirmed by the policy. Never moves back.
    pub confirmed: Lsn,
    /// Everything below may be acknowledged to a committer: `confirmed`, or while the primary
    /// runs degraded (a timeout passed without the confirmations) its durable position.
    pub released: Lsn,
    /// The primary runs without the policy's confirmations (after `--sync-timeout`).
    pub degraded: bool,
}

/// How a wait ended well.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Released {
    /// The policy confirmed the LSN.
    Confirmed,
    /// The primary runs degraded: the LSN is durable locally only.
    Degraded,
}

/// Why a wait ended without a release.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum WaitError {
    #[error("the shipper stopped before the standbys confirmed WAL up to {0}")]
    Stopped(Lsn),
    #[error("the standbys did not confirm WAL up to {lsn} within {waited:?}")]
    TimedOut { lsn: Lsn, waited: Duration },
}

struct Inner {
    state: Mutex<SyncSnapshot>,
    cond: Condvar,
    tx: watch::Sender<SyncSnapshot>,
    closed: AtomicBool,
}

/// The shared confirmation state: the shipper publishes into it, committers wait on it.
/// Cheap to clone.
#[derive(Clone)]
pub struct SyncWaiter {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for SyncWaiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SyncWaiter")
            .field("snapshot", &self.snapshot())
            .finish()
    }
}

impl Default for SyncWaiter {
    fn default() -> Self {
        SyncWaiter::new()
    }
}

impl SyncWaiter {
    pub fn new() -> SyncWaiter {
        SyncWaiter {
            inner: Arc::new(Inner {
                state: Mutex::new(SyncSnapshot::default()),
                cond: Condvar::new(),
                tx: watch::channel(SyncSnapshot::default()).0,
                closed: AtomicBool::new(false),
            }),
        }
    }

    /// The current snapshot.
    pub fn snapshot(&self) -> SyncSnapshot {
        *crate::sync::lock(&self.inner.state)
    }

    /// The snapshot as it changes.
    pub fn subscribe(&self) -> watch::Receiver<SyncSnapshot> {
        self.inner.tx.subscribe()
    }

    /// Publishes a new snapshot and wakes every waiter (the shipper's side). Returns whether
    /// it differs from the last one.
    pub fn publish(&self, s: SyncSnapshot) -> bool {
        let mut g = crate::sync::lock(&self.inner.state);
        if *g == s {
            return false;
        }
        *g = s;
        drop(g);
        self.inner.cond.notify_all();
        self.inner.tx.send_replace(s);
        true
    }

    /// Ends every wait with [`WaitError::Stopped`] (the shipper stops).
    pub fn close(&self) {
        self.inner.closed.store(true, Ordering::Release);
        let _g = crate::sync::lock(&self.inner.state);
        self.inner.cond.notify_all();
        self.inner.tx.send_modify(|_| {});
    }

    fn check(&self, s: &SyncSnapshot, lsn: Lsn) -> Option<Result<Released, WaitError>> {
        if s.confirmed >= lsn {
            return Some(Ok(Released::Confirmed));
        }
        if s.released >= lsn {
            return Some(Ok(Released::Degraded));
        }
        if self.inner.closed.load(Ordering::Acquire) {
            return Some(Err(WaitError::Stopped(lsn)));
        }
        None
    }

    /// Blocks the calling thread until WAL up to `lsn` (an end position, such as a record's
    /// `end_lsn`) is released, for at most `timeout` when given.
    pub fn wait_blocking(
        &self,
        lsn: Lsn,
        timeout: Option<Duration>,
    ) -> Result<Released, WaitError> {
        let start = Instant::now();
        let mut g = crate::sync::lock(&self.inner.state);
        loop {
            if let Some(r) = self.check(&g, lsn) {
                return r;
            }
            match timeout {
                None => {
                    g = self
                        .inner
                        .cond
                        .wait(g)
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                }
                Some(t) => {
                    let left = t.saturating_sub(start.elapsed());
                    if left.is_zero() {
                        return Err(WaitError::TimedOut { lsn, waited: t });
                    }
                    g = self
                        .inner
                        .cond
                        .wait_timeout(g, left)
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .0;
                }
            }
        }
    }

    /// Waits (in a task) until WAL up to `lsn` is released.
    pub async fn wait(&self, lsn: Lsn) -> Result<Released, WaitError> {
        let mut rx = self.inner.tx.subscribe();
        loop {
            let s = *rx.borrow_and_update();
            if let Some(r) = self.check(&s, lsn) {
                return r;
            }
            if rx.changed().await.is_err() {
                return Err(WaitError::Stopped(lsn));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(confirmed: u64, released: u64, degraded: bool) -> SyncSnapshot {
        SyncSnapshot {
            confirmed: Lsn(confirmed),
            released: Lsn(released),
            degraded,
        }
    }

    #[test]
    fn many_threads_wake_on_one_confirmation() {
        let w = SyncWaiter::new();
        let handles: Vec<_> = (1..=8u64)
            .map(|i| {
                let w = w.clone();
                std::thread::spawn(move || w.wait_blocking(Lsn(i * 10), None))
            })
            .collect();
        std::thread::sleep(Duration::from_millis(20));
        assert!(w.publish(snap(80, 80, false)));
        assert!(
            !w.publish(snap(80, 80, false)),
            "the same snapshot is no change"
        );
        for h in handles {
            assert_eq!(h.join().unwrap(), Ok(Released::Confirmed));
        }
    }

    #[test]
    fn degraded_releases_are_told_apart_and_waits_end_on_close_or_timeout() {
        let w = SyncWaiter::new();
        w.publish(snap(10, 50, true));
        assert_eq!(w.wait_blocking(Lsn(10), None), Ok(Released::Confirmed));
        assert_eq!(w.wait_blocking(Lsn(50), None), Ok(Released::Degraded));
        assert_eq!(
            w.wait_blocking(Lsn(51), Some(Duration::from_millis(10))),
            Err(WaitError::TimedOut {
                lsn: Lsn(51),
                waited: Duration::from_millis(10)
            })
        );
        let w2 = w.clone();
        let h = std::thread::spawn(move || w2.wait_blocking(Lsn(100), None));
        std::thread::sleep(Duration::from_millis(10));
        w.close();
        assert_eq!(h.join().unwrap(), Err(WaitError::Stopped(Lsn(100))));
    }

    #[test]
    fn tasks_wait_on_the_same_snapshot() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let w = SyncWaiter::new();
        rt.block_on(async {
            let tasks: Vec<_> = (1..=4u64)
                .map(|i| {
                    let w = w.clone();
                    tokio::spawn(async move { w.wait(Lsn(i)).await })
                })
                .collect();
            tokio::task::yield_now().await;
            w.publish(snap(4, 4, false));
            for t in tasks {
                assert_eq!(t.await.unwrap(), Ok(Released::Confirmed));
            }
            let w2 = w.clone();
            let t = tokio::spawn(async move { w2.wait(Lsn(9)).await });
            tokio::task::yield_now().await;
            w.close();
            assert_eq!(t.await.unwrap(), Err(WaitError::Stopped(Lsn(9))));
        });
    }
}
