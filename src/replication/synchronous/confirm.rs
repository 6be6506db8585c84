//! The confirmed position: how far the standbys a policy names have, together, taken the WAL,
//! computed from the table of standbys (name, connected, written, flushed, applied), and each
//! standby's part in it (`sync_state`, as PostgreSQL's `pg_stat_replication` shows it). Pure.
//!
//! - `FIRST n`: the connected standbys the list names are ordered by the position of the first
//!   entry that names them (then by their place in the table); the first `n` are `sync`, the
//!   other listed ones `potential`. The confirmed position is the lowest of the `n` sync
//!   standbys' positions; with fewer than `n` connected there is none (commits wait).
//! - `ANY n`: every listed standby is `quorum`; the confirmed position is the `n`-th highest
//!   position among the connected ones; with fewer than `n` connected there is none.
//! - A standby the list does not name is `async`. Two connected standbys of the same name count
//!   as two, as in PostgreSQL. A disconnected standby never confirms anything.

use serde::Serialize;

use super::policy::{Method, SyncLevel, SyncPolicy};
use crate::Lsn;

/// One standby as the confirmation sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StandbyRow {
    pub name: String,
    pub connected: bool,
    pub written_lsn: Lsn,
    pub flushed_lsn: Lsn,
    pub applied_lsn: Lsn,
}

impl StandbyRow {
    /// The position that counts at `level`.
    pub fn at(&self, level: SyncLevel) -> Lsn {
        match level {
            SyncLevel::RemoteWrite => self.written_lsn,
            SyncLevel::RemoteFlush => self.flushed_lsn,
            SyncLevel::RemoteApply => self.applied_lsn,
        }
    }
}

/// A standby's part in synchronous commit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SyncState {
    /// Its confirmation is waited for (`FIRST`).
    Sync,
    /// Listed, and would become `sync` if one of those fails (`FIRST`).
    Potential,
    /// Listed in an `ANY` policy: any `n` of these confirm.
    Quorum,
    /// Not listed: never waited for.
    Async,
}

impl SyncState {
    pub fn as_str(self) -> &'static str {
        match self {
            SyncState::Sync => "sync",
            SyncState::Potential => "potential",
            SyncState::Quorum => "quorum",
            SyncState::Async => "async",
        }
    }
}

/// What the table confirms.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Confirmed {
    /// Everything below is confirmed by the policy; None when too few of the standbys it names
    /// are connected.
    pub position: Option<Lsn>,
    /// Each row's sync state, in the table's order.
    pub states: Vec<SyncState>,
}

/// Computes the confirmed position and each standby's sync state.
pub fn confirmed(policy: &SyncPolicy, level: SyncLevel, rows: &[StandbyRow]) -> Confirmed {
    let mut states: Vec<SyncState> = rows
        .iter()
        .map(|r| match (policy.lists(&r.name), policy.method) {
            (false, _) => SyncState::Async,
            (true, Method::First) => SyncState::Potential,
            (true, Method::Any) => SyncState::Quorum,
        })
        .collect();
    // The connected standbys the list names: (priority, place in the table).
    let mut candidates: Vec<(usize, usize)> = rows
        .iter()
        .enumerate()
        .filter(|(_, r)| r.connected)
        .filter_map(|(i, r)| policy.priority(&r.name).map(|p| (p, i)))
        .collect();
    if candidates.len() < policy.num {
        return Confirmed {
            position: None,
            states,
        };
    }
    let position = match policy.method {
        Method::First => {
            candidates.sort();
            let chosen = &candidates[..policy.num];
            for &(_, i) in chosen {
                states[i] = SyncState::Sync;
            }
            chosen.iter().map(|&(_, i)| rows[i].at(level)).min()
        }
        Method::Any => {
            let mut pos: Vec<Lsn> = candidates.iter().map(|&(_, i)| rows[i].at(level)).collect();
            pos.sort_unstable_by(|a, b| b.cmp(a));
            pos.get(policy.num - 1).copied()
        }
    };
    Confirmed { position, states }
}

#[cfg(test)]
mod tests {
    use super::*;
    use SyncState::*;

    fn row(name: &str, connected: bool, w: u64, f: u64, a: u64) -> StandbyRow {
        StandbyRow {
            name: name.into(),
            connected,
            written_lsn: Lsn(w),
            flushed_lsn: Lsn(f),
            applied_lsn: Lsn(a),
        }
    }

    fn run(policy: &str, level: SyncLevel, rows: &[StandbyRow]) -> (Option<u64>, Vec<SyncState>) {
        let c = confirmed(&SyncPolicy::parse(policy).unwrap(), level, rows);
        (c.position.map(|l| l.0), c.states)
    }

    const F: SyncLevel = SyncLevel::RemoteFlush;

    #[test]
    fn first_takes_the_first_connected_in_priority_order() {
        let rows = [
            row("c", true, 90, 80, 70),
            row("a", true, 300, 200, 100),
            row("b", true, 60, 50, 40),
        ];
        assert_eq!(
            run("FIRST 1 (a, b, c)", F, &rows),
            (Some(200), vec![Potential, Sync, Potential])
        );
        assert_eq!(
            run("FIRST 2 (a, b, c)", F, &rows),
            (Some(50), vec![Potential, Sync, Sync])
        );
        assert_eq!(
            run("FIRST 1 (a, b)", SyncLevel::RemoteWrite, &rows).0,
            Some(300)
        );
        assert_eq!(
            run("FIRST 1 (a, b)", SyncLevel::RemoteApply, &rows).0,
            Some(100)
        );
        assert_eq!(
            run("FIRST 3 (a, b, c)", F, &rows),
            (Some(50), vec![Sync, Sync, Sync])
        );
    }

    #[test]
    fn first_with_the_first_missing_falls_to_the_next() {
        let rows = [
            row("a", false, 300, 300, 300),
            row("b", true, 60, 50, 40),
            row("x", true, 900, 900, 900),
        ];
        assert_eq!(
            run("FIRST 1 (a, b)", F, &rows),
            (Some(50), vec![Potential, Sync, Async])
        );
        // Too few connected: nothing is confirmed, however far the others are.
        assert_eq!(
            run("FIRST 2 (a, b)", F, &rows),
            (None, vec![Potential, Potential, Async])
        );
        // A standby that is not listed never confirms.
        assert_eq!(run("FIRST 1 (a)", F, &rows).0, None);
    }

    #[test]
    fn any_is_the_nth_highest_of_the_connected_listed() {
        let rows = [
            row("a", true, 0, 100, 0),
            row("b", true, 0, 300, 0),
            row("c", true, 0, 200, 0),
        ];
        assert_eq!(
            run("ANY 1 (a, b, c)", F, &rows),
            (Some(300), vec![Quorum, Quorum, Quorum])
        );
        assert_eq!(run("ANY 2 (a, b, c)", F, &rows).0, Some(200));
        assert_eq!(run("ANY 3 (a, b, c)", F, &rows).0, Some(100));
        let one_down = [
            row("a", true, 0, 100, 0),
            row("b", false, 0, 300, 0),
            row("c", true, 0, 200, 0),
        ];
        assert_eq!(run("ANY 2 (a, b, c)", F, &one_down).0, Some(100));
        let two_down = [
            row("a", false, 0, 100, 0),
            row("b", false, 0, 300, 0),
            row("c", true, 0, 200, 0),
        ];
        assert_eq!(run("ANY 2 (a, b, c)", F, &two_down).0, None);
    }

    #[test]
    fn standbys_of_the_same_name_count_each() {
        let rows = [
            row("a", true, 0, 100, 0),
            row("a", true, 0, 300, 0),
            row("b", true, 0, 50, 0),
        ];
        assert_eq!(
            run("ANY 2 (a, b)", F, &rows),
            (Some(100), vec![Quorum, Quorum, Quorum])
        );
        // FIRST: both "a" come before "b"; the earlier row first.
        assert_eq!(
            run("FIRST 1 (a, b)", F, &rows),
            (Some(100), vec![Sync, Potential, Potential])
        );
        assert_eq!(
            run("FIRST 2 (a, b)", F, &rows),
            (Some(100), vec![Sync, Sync, Potential])
        );
        assert_eq!(
            run("FIRST 2 (b, a)", F, &rows),
            (Some(50), vec![Sync, Potential, Sync])
        );
    }

    #[test]
    fn the_wildcard_names_everyone_after_the_names_before_it() {
        let rows = [
            row("z", true, 0, 10, 0),
            row("a", true, 0, 20, 0),
            row("q", true, 0, 30, 0),
        ];
        assert_eq!(
            run("FIRST 1 (*)", F, &rows),
            (Some(10), vec![Sync, Potential, Potential])
        );
        assert_eq!(
            run("FIRST 1 (q, *)", F, &rows),
            (Some(30), vec![Potential, Potential, Sync])
        );
        assert_eq!(run("ANY 2 (*)", F, &rows).0, Some(20));
        assert_eq!(run("ANY 4 (*)", F, &rows).0, None);
    }

    #[test]
    fn more_names_than_connected_standbys_and_an_empty_table() {
        let rows = [row("b", true, 0, 70, 0)];
        assert_eq!(
            run("FIRST 1 (a, b, c, d)", F, &rows),
            (Some(70), vec![Sync])
        );
        assert_eq!(run("ANY 2 (a, b, c, d)", F, &rows), (None, vec![Quorum]));
        assert_eq!(run("FIRST 1 (a)", F, &[]), (None, vec![]));
    }
}
