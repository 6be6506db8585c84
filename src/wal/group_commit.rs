//! Group commit: who syncs for whom.
//!
//! Many threads wait for their records to become durable; one sync covers every record written
//! before it started. A waiter takes the lock and finds its position already covered (a leader
//! did it), or a leader at work (it waits to be woken), or no leader (it becomes the leader: it
//! releases the lock, runs the sync, and on its way out wakes every waiter, each of which then
//! finds itself covered or becomes the next leader).
//!
//! This type knows nothing of files: the caller says when a wait is over (`covered`, which also
//! fails every waiter once the writer is poisoned) and what a leader does (`sync`). It keeps
//! what leaders hand to one another: where the last sync reached, and how many records the last
//! group held (to decide whether the next leader should let others catch up first).
//!
//! A leader wakes the waiters only when there are any: a lone writer leads every turn itself,
//! and waking nobody would still cost it a system call per record.

use std::sync::{Condvar, Mutex};

use super::lock;
use crate::error::Result;

/// Where the syncs of the open segment have reached: everything of segment `segment_no` below
/// `offset` was synced by a leader.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct SyncedTo {
    pub segment_no: u64,
    pub offset: usize,
}

impl SyncedTo {
    /// Where a sync of segment `segment_no` should start: past what is already synced of it,
    /// or at its beginning when the syncs so far were of another segment.
    pub fn start_in(prev: Option<SyncedTo>, segment_no: u64) -> usize {
        match prev {
            Some(p) if p.segment_no == segment_no => p.offset,
            _ => 0,
        }
    }
}

struct Turns {
    /// A leader is syncing (without holding the lock); the others wait on `GroupCommit::done`.
    leader_active: bool,
    synced_to: Option<SyncedTo>,
    /// Records appended when the last leader started, and how many it covered.
    appended_at_last_sync: u64,
    last_group: u64,
    /// Threads waiting on `GroupCommit::done` (counted under the lock, so a leader ending its
    /// turn sees every waiter that will need its wake-up).
    waiting: usize,
}

/// Leader election for group commit; see the module comment.
pub(super) struct GroupCommit {
    turns: Mutex<Turns>,
    /// Signalled when a leader's turn ends.
    done: Condvar,
}

impl Default for GroupCommit {
    fn default() -> Self {
        GroupCommit {
            turns: Mutex::new(Turns {
                leader_active: false,
                synced_to: None,
                appended_at_last_sync: 0,
                last_group: 0,
                waiting: 0,
            }),
            done: Condvar::new(),
        }
    }
}

impl GroupCommit {
    /// Returns once `covered` says so, or with its error; becomes the leader when nobody is
    /// and runs `sync` then, without the lock.
    ///
    /// - `covered`: `Ok(true)` when the caller's position is durable, `Err` when it never will
    ///   be (the writer is poisoned). Asked before every turn, under the lock.
    /// - `appended`: how many records have been appended so far, to size the groups.
    /// - `gather`: called by a leader whose predecessor covered more than one record, before it
    ///   looks at what to sync, so that the others writing along can catch up.
    /// - `sync`: the leader's work, given where the previous syncs reached; returns where this
    ///   one reached (`None` when it synced no part of an open segment). Its error is this
    ///   caller's; the waiters it wakes ask `covered` again.
    ///
    /// The leader hands over even when `sync` panics, so that nobody waits forever.
    pub fn wait(
        &self,
        covered: impl Fn() -> Result<bool>,
        appended: impl FnOnce() -> u64,
        gather: impl FnOnce(),
        sync: impl FnOnce(Option<SyncedTo>) -> Result<Option<SyncedTo>>,
    ) -> Result<()> {
        if covered()? {
            return Ok(());
        }
        let mut t = lock(&self.turns);
        loop {
            if covered()? {
                return Ok(());
            }
            if !t.leader_active {
                break;
            }
            // A leader is syncing: it wakes everyone when done, and each waiter either finds
            // its position covered or becomes the next leader.
            t.waiting += 1;
            t = self.done.wait(t).unwrap_or_else(|p| p.into_inner());
            t.waiting -= 1;
        }
        t.leader_active = true;
        let mut leading = Leading {
            gc: self,
            reached: None,
        };
        if t.last_group > 1 {
            // Others were writing along: let them catch up (a lone writer only loses time).
            drop(t);
            gather();
            t = lock(&self.turns);
        }
        let appended = appended();
        t.last_group = appended - t.appended_at_last_sync;
        crate::metrics::library::library()
            .group_records
            .observe(t.last_group as f64);
        t.appended_at_last_sync = appended;
        let from = t.synced_to;
        drop(t);
        // The sync runs without the lock, so that waiters whose records an earlier sync already
        // covered are not queued behind this one.
        let r = sync(from);
        if let Ok(reached) = &r {
            leading.reached = *reached;
        }
        drop(leading);
        r.map(drop)
    }
}

/// The leader's turn; ending it (also by a panic) records where its sync reached and wakes the
/// waiters.
struct Leading<'a> {
    gc: &'a GroupCommit,
    reached: Option<SyncedTo>,
}

impl Drop for Leading<'_> {
    fn drop(&mut self) {
        let mut t = lock(&self.gc.turns);
        if let Some(to) = self.reached {
            match t.synced_to {
                Some(prev) if prev.segment_no == to.segment_no && prev.offset >= to.offset => {}
                _ => t.synced_to = Some(to),
            }
        }
        t.leader_active = false;
        let waiting = t.waiting;
        drop(t);
        if waiting > 0 {
            self.gc.done.notify_all();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Error;
    use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
    use std::sync::{Arc, Barrier};
    use std::thread;
    use std::time::Duration;

    /// A log without files: `written` moves on append, `flushed` moves on sync.
    #[derive(Default)]
    struct FakeLog {
        gc: GroupCommit,
        written: AtomicU64,
        flushed: AtomicU64,
        appended: AtomicU64,
        poisoned: AtomicBool,
        syncs: AtomicUsize,
        gathers: AtomicUsize,
        /// Offsets each sync started from, in order.
        starts: Mutex<Vec<usize>>,
    }

    impl FakeLog {
        fn append(&self) -> u64 {
            self.appended.fetch_add(1, Ordering::SeqCst);
            self.written.fetch_add(10, Ordering::SeqCst) + 10
        }

        fn wait(&self, target: u64, sync: impl FnOnce() -> Result<()>) -> Result<()> {
            self.gc.wait(
                || {
                    if self.poisoned.load(Ordering::SeqCst) {
                        return Err(Error::Poisoned("fake sync failed".into()));
                    }
                    Ok(self.flushed.load(Ordering::SeqCst) >= target)
                },
                || self.appended.load(Ordering::SeqCst),
                || {
                    self.gathers.fetch_add(1, Ordering::SeqCst);
                },
                |from| {
                    let to = self.written.load(Ordering::SeqCst);
                    self.starts
                        .lock()
                        .unwrap()
                        .push(SyncedTo::start_in(from, 1));
                    self.syncs.fetch_add(1, Ordering::SeqCst);
                    sync()?;
                    self.flushed.fetch_max(to, Ordering::SeqCst);
                    Ok(Some(SyncedTo {
                        segment_no: 1,
                        offset: to as usize,
                    }))
                },
            )
        }
    }

    #[test]
    fn a_covered_position_returns_without_syncing() {
        let log = FakeLog::default();
        log.flushed.store(100, Ordering::SeqCst);
        log.wait(100, || panic!("no sync expected")).unwrap();
        assert_eq!(log.syncs.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn a_lone_leader_syncs_from_where_the_last_sync_reached() {
        let log = FakeLog::default();
        let a = log.append();
        log.wait(a, || Ok(())).unwrap();
        let b = log.append();
        log.append();
        log.wait(b, || Ok(())).unwrap();
        assert_eq!(log.flushed.load(Ordering::SeqCst), 30, "covers all written");
        assert_eq!(*log.starts.lock().unwrap(), vec![0, 10]);
        // The rounds so far followed a group of at most one record: nobody gathered.
        assert_eq!(log.gathers.load(Ordering::SeqCst), 0);
        // The second round covered two records: the next leader gathers first.
        let c = log.append();
        log.wait(c, || Ok(())).unwrap();
        assert_eq!(log.gathers.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn syncs_in_another_segment_start_at_its_beginning() {
        let prev = Some(SyncedTo {
            segment_no: 3,
            offset: 4096,
        });
        assert_eq!(SyncedTo::start_in(prev, 3), 4096);
        assert_eq!(SyncedTo::start_in(prev, 4), 0);
        assert_eq!(SyncedTo::start_in(None, 0), 0);
    }

    #[test]
    fn where_the_syncs_reached_never_moves_back_within_a_segment() {
        let gc = GroupCommit::default();
        let reach = |seg, off| {
            gc.wait(
                || Ok(false),
                || 0,
                || {},
                |_| {
                    Ok(Some(SyncedTo {
                        segment_no: seg,
                        offset: off,
                    }))
                },
            )
            .unwrap();
            lock(&gc.turns).synced_to.unwrap()
        };
        assert_eq!(reach(1, 500).offset, 500);
        assert_eq!(
            reach(1, 300).offset,
            500,
            "an older sync does not move it back"
        );
        assert_eq!(
            reach(2, 100),
            SyncedTo {
                segment_no: 2,
                offset: 100
            }
        );
    }

    #[test]
    fn one_leader_covers_the_followers_that_wait_on_it() {
        let log = Arc::new(FakeLog::default());
        let followers = 6;
        let ends: Vec<u64> = (0..followers + 1).map(|_| log.append()).collect();
        let in_sync = Arc::new(Barrier::new(2));
        let release = Arc::new(Barrier::new(2));
        let leader = {
            let (log, in_sync, release) = (log.clone(), in_sync.clone(), release.clone());
            let target = ends[0];
            thread::spawn(move || {
                log.wait(target, || {
                    in_sync.wait();
                    release.wait();
                    Ok(())
                })
            })
        };
        in_sync.wait();
        // The leader is inside its sync: these followers find a leader at work and wait.
        let waiters: Vec<_> = ends[1..]
            .iter()
            .map(|&end| {
                let log = log.clone();
                thread::spawn(move || log.wait(end, || panic!("a follower must not sync")))
            })
            .collect();
        thread::sleep(Duration::from_millis(50));
        assert_eq!(log.flushed.load(Ordering::SeqCst), 0);
        release.wait();
        leader.join().unwrap().unwrap();
        for w in waiters {
            w.join().unwrap().unwrap();
        }
        assert_eq!(
            log.syncs.load(Ordering::SeqCst),
            1,
            "one sync for the group"
        );
        assert_eq!(log.flushed.load(Ordering::SeqCst), *ends.last().unwrap());
    }

    #[test]
    fn a_follower_not_covered_becomes_the_next_leader() {
        let log = Arc::new(FakeLog::default());
        let first = log.append();
        let in_sync = Arc::new(Barrier::new(2));
        let release = Arc::new(Barrier::new(2));
        let leader = {
            let (log, in_sync, release) = (log.clone(), in_sync.clone(), release.clone());
            thread::spawn(move || {
                log.wait(first, || {
                    in_sync.wait();
                    release.wait();
                    Ok(())
                })
            })
        };
        in_sync.wait();
        // Written after the leader noted its end: its sync does not cover this.
        let late = log.append();
        let follower = {
            let log = log.clone();
            thread::spawn(move || log.wait(late, || Ok(())))
        };
        thread::sleep(Duration::from_millis(50));
        release.wait();
        leader.join().unwrap().unwrap();
        follower.join().unwrap().unwrap();
        assert_eq!(log.syncs.load(Ordering::SeqCst), 2);
        assert_eq!(log.flushed.load(Ordering::SeqCst), late);
        assert_eq!(*log.starts.lock().unwrap(), vec![0, first as usize]);
    }

    #[test]
    fn a_failed_sync_reaches_every_waiter_and_sticks() {
        let log = Arc::new(FakeLog::default());
        let ends: Vec<u64> = (0..5).map(|_| log.append()).collect();
        let in_sync = Arc::new(Barrier::new(2));
        let release = Arc::new(Barrier::new(2));
        let leader = {
            let (log, in_sync, release) = (log.clone(), in_sync.clone(), release.clone());
            let target = ends[0];
            thread::spawn(move || {
                log.wait(target, || {
                    in_sync.wait();
                    release.wait();
                    // What poisoning the writer does: later waits fail in `covered`.
                    log.poisoned.store(true, Ordering::SeqCst);
                    Err(Error::Poisoned("fake sync failed".into()))
                })
            })
        };
        in_sync.wait();
        let waiters: Vec<_> = ends[1..]
            .iter()
            .map(|&end| {
                let log = log.clone();
                thread::spawn(move || log.wait(end, || panic!("nobody syncs after a failure")))
            })
            .collect();
        thread::sleep(Duration::from_millis(50));
        release.wait();
        assert!(matches!(leader.join().unwrap(), Err(Error::Poisoned(_))));
        for w in waiters {
            assert!(matches!(w.join().unwrap(), Err(Error::Poisoned(_))));
        }
        assert_eq!(log.flushed.load(Ordering::SeqCst), 0);
        // Poison sticks, even for a position that would need no sync.
        assert!(matches!(log.wait(0, || Ok(())), Err(Error::Poisoned(_))));
        assert_eq!(log.syncs.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn a_leader_that_panics_still_hands_over() {
        let log = Arc::new(FakeLog::default());
        let end = log.append();
        let panicked = {
            let log = log.clone();
            thread::spawn(move || log.wait(end, || panic!("sync blew up")))
        };
        assert!(panicked.join().is_err());
        // The next waiter is not stuck behind a leader that is gone.
        let (tx, rx) = std::sync::mpsc::channel();
        {
            let log = log.clone();
            thread::spawn(move || tx.send(log.wait(end, || Ok(()))).unwrap());
        }
        rx.recv_timeout(Duration::from_secs(10))
            .expect("waited forever")
            .unwrap();
        assert_eq!(log.flushed.load(Ordering::SeqCst), end);
    }

    #[test]
    fn many_waiters_all_return_covered() {
        let log = Arc::new(FakeLog::default());
        let threads: Vec<_> = (0..8)
            .map(|_| {
                let log = log.clone();
                thread::spawn(move || {
                    for _ in 0..200 {
                        let end = log.append();
                        log.wait(end, || Ok(())).unwrap();
                        assert!(log.flushed.load(Ordering::SeqCst) >= end);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(log.appended.load(Ordering::SeqCst), 1600);
        assert_eq!(
            lock(&log.gc.turns).waiting,
            0,
            "every waiter left the count"
        );
        assert_eq!(
            log.flushed.load(Ordering::SeqCst),
            log.written.load(Ordering::SeqCst)
        );
    }
}
