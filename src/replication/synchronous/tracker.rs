//! When the primary stops waiting: the degraded mode of synchronous commit, as a pure state
//! machine fed the policy's confirmed position, the writer's durable position and the time.
//!
//! Without a timeout it never degrades: commits wait for the standbys however long (RPO 0).
//! With a timeout `D`: when WAL is durable past the confirmed position and the confirmed
//! position has not moved for `D`, the primary runs degraded: everything durable is released.
//! It returns to synchronous once the policy can confirm again (enough standbys connected) and
//! the confirmed position reached the durable position as it was at that moment (the
//! standbys caught up with what was released without them).

use std::time::{Duration, Instant};

use super::waiter::SyncSnapshot;
use crate::Lsn;

/// A change of mode, to be told loudly.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transition {
    /// No confirmation for the timeout: the primary continues alone from `confirmed`.
    Degraded { confirmed: Lsn, durable: Lsn },
    /// The standbys caught up: commits wait for them again.
    Restored { confirmed: Lsn },
}

#[derive(Clone, Debug)]
pub struct Tracker {
    timeout: Option<Duration>,
    confirmed: Lsn,
    last_progress: Instant,
    degraded: bool,
    /// While degraded and confirmable again: the durable position the standbys must reach.
    target: Option<Lsn>,
}

impl Tracker {
    pub fn new(timeout: Option<Duration>, now: Instant) -> Tracker {
        Tracker {
            timeout,
            confirmed: Lsn::ZERO,
            last_progress: now,
            degraded: false,
            target: None,
        }
    }

    /// Takes the policy's confirmed position now (None: too few standbys connected) and the
    /// writer's durable position; returns the snapshot to publish and a change of mode.
    pub fn update(
        &mut self,
        computed: Option<Lsn>,
        durable: Lsn,
        now: Instant,
    ) -> (SyncSnapshot, Option<Transition>) {
        if let Some(c) = computed {
            if c > self.confirmed {
                self.confirmed = c;
                self.last_progress = now;
            }
        }
        if self.confirmed >= durable {
            // Nothing waits: time without confirmations only counts while something does.
            self.last_progress = now;
        }
        let mut change = None;
        if self.degraded {
            match computed {
                Some(_) => {
                    let target = *self.target.get_or_insert(durable);
                    if self.confirmed >= target {
                        self.degraded = false;
                        self.target = None;
                        self.last_progress = now;
                        change = Some(Transition::Restored {
                            confirmed: self.confirmed,
                        });
                    }
                }
                None => self.target = None,
            }
        } else if let Some(t) = self.timeout {
            if durable > self.confirmed && now.saturating_duration_since(self.last_progress) >= t {
                self.degraded = true;
                self.target = None;
                change = Some(Transition::Degraded {
                    confirmed: self.confirmed,
                    durable,
                });
            }
        }
        let released = if self.degraded {
            self.confirmed.max(durable)
        } else {
            self.confirmed
        };
        (
            SyncSnapshot {
                confirmed: self.confirmed,
                released,
                degraded: self.degraded,
            },
            change,
        )
    }

    pub fn degraded(&self) -> bool {
        self.degraded
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn without_a_timeout_it_waits_forever() {
        let t0 = Instant::now();
        let mut t = Tracker::new(None, t0);
        let (s, c) = t.update(None, Lsn(100), t0 + Duration::from_secs(3600));
        assert_eq!(
            (s.confirmed, s.released, s.degraded, c),
            (Lsn(0), Lsn(0), false, None)
        );
        let (s, _) = t.update(Some(Lsn(60)), Lsn(100), t0);
        assert_eq!((s.confirmed, s.released), (Lsn(60), Lsn(60)));
        // Never backwards.
        let (s, _) = t.update(Some(Lsn(40)), Lsn(100), t0);
        assert_eq!(s.confirmed, Lsn(60));
    }

    #[test]
    fn degrades_after_the_timeout_and_returns_once_caught_up() {
        let t0 = Instant::now();
        let mut t = Tracker::new(Some(S), t0);
        // Idle (nothing durable past confirmed) for long: no degradation.
        let (s, c) = t.update(None, Lsn(0), t0 + 5 * S);
        assert_eq!((s.degraded, c), (false, None));
        // WAL waits from t0+5s; progress keeps it synchronous.
        let (_, c) = t.update(Some(Lsn(10)), Lsn(20), t0 + 5 * S + S / 2);
        assert_eq!(c, None);
        let (s, c) = t.update(None, Lsn(20), t0 + 6 * S);
        assert_eq!((s.degraded, c), (false, None));
        let (s, c) = t.update(None, Lsn(30), t0 + 6 * S + S / 2);
        assert!(s.degraded);
        assert_eq!(
            c,
            Some(Transition::Degraded {
                confirmed: Lsn(10),
                durable: Lsn(30)
            })
        );
        assert_eq!((s.confirmed, s.released), (Lsn(10), Lsn(30)));
        // Degraded: everything durable is released as it becomes durable.
        let (s, c) = t.update(None, Lsn(50), t0 + 7 * S);
        assert_eq!((s.released, c), (Lsn(50), None));
        // A standby is back: it must reach the durable position of that moment (60).
        let (s, c) = t.update(Some(Lsn(20)), Lsn(60), t0 + 8 * S);
        assert_eq!((s.degraded, s.released, c), (true, Lsn(60), None));
        let (s, c) = t.update(Some(Lsn(59)), Lsn(80), t0 + 8 * S);
        assert_eq!((s.degraded, s.released, c), (true, Lsn(80), None));
        let (s, c) = t.update(Some(Lsn(60)), Lsn(90), t0 + 8 * S);
        assert_eq!(c, Some(Transition::Restored { confirmed: Lsn(60) }));
        assert_eq!(
            (s.degraded, s.confirmed, s.released),
            (false, Lsn(60), Lsn(60))
        );
        // Synchronous again: the timeout counts from the return.
        let (s, _) = t.update(None, Lsn(90), t0 + 8 * S + S / 2);
        assert!(!s.degraded);
    }

    #[test]
    fn losing_the_standbys_again_while_catching_up_sets_a_new_target() {
        let t0 = Instant::now();
        let mut t = Tracker::new(Some(S), t0);
        t.update(None, Lsn(10), t0);
        let (s, _) = t.update(None, Lsn(10), t0 + S);
        assert!(s.degraded);
        t.update(Some(Lsn(5)), Lsn(20), t0 + 2 * S); // target 20
        t.update(None, Lsn(40), t0 + 3 * S); // gone again
        let (s, c) = t.update(Some(Lsn(20)), Lsn(40), t0 + 4 * S); // new target 40
        assert_eq!((s.degraded, c), (true, None));
        let (s, c) = t.update(Some(Lsn(40)), Lsn(40), t0 + 4 * S);
        assert_eq!(
            (s.degraded, c),
            (false, Some(Transition::Restored { confirmed: Lsn(40) }))
        );
    }
}
