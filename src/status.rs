//! The status of a data directory, computed from its files only: it takes no lock, so it works
//! while a writer, `serve` or `standby` runs.

use std::path::Path;
use std::time::Duration;

use serde::Serialize;

use crate::consumers::{ConsumerKind, ConsumerRegistry};
use crate::datadir::DataDir;
use crate::error::Result;
pub use crate::log_ends::{lag_seconds, wal_ends};
use crate::replication::standby_state;
use crate::replication::synchronous::{
    confirmed, FollowError, StandbyRow, SyncFollower, SyncLevel, SyncPolicy, SyncState,
};
use crate::Lsn;

/// A standby counts as connected when its slot was refreshed this recently (the shipper
/// refreshes a connected standby's slot about every second).
pub const CONNECTED_WINDOW: Duration = Duration::from_secs(5);

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Primary,
    Standby,
}

/// One standby known to this directory (its slot in state/consumers/).
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct StandbySlot {
    pub id: String,
    /// The name it gave the primary (None in slots saved before names existed).
    pub name: Option<String>,
    pub address: Option<String>,
    pub connected: bool,
    pub flushed_lsn: Lsn,
    pub applied_lsn: Lsn,
    /// This directory's flush_lsn minus the standby's applied_lsn.
    pub lag_bytes: u64,
    /// How long ago the oldest record the standby has not applied was written (0 when caught
    /// up; None when that record cannot be read here).
    pub lag_seconds: Option<f64>,
    /// Last contact, RFC 3339 UTC, and the same in microseconds since the epoch.
    pub last_contact: Option<String>,
    pub last_contact_us: Option<i64>,
    /// How old the positions shown are, in seconds: they come from the slot file, which the
    /// running `serve` saves at the standby's first acknowledgement, then at most once a
    /// second while it reports, and when it disconnects; so a connected standby may be this
    /// much further along than shown (None: the slot has never been saved with a contact).
    pub positions_age_seconds: Option<f64>,
    pub lost: bool,
    /// Its part in synchronous commit under the published policy (`sync`, `potential`,
    /// `quorum`, `async`), judged with `connected` as above.
    pub sync_state: SyncState,
    /// Received by the standby (maybe not yet synced), at its last acknowledgement.
    pub written_lsn: Option<Lsn>,
    /// This directory's flush_lsn minus the standby's flushed position.
    pub flush_lag_bytes: u64,
    /// How long before its last acknowledgement this primary had made durable what the
    /// standby had not flushed then (0: caught up), in seconds, as the shipper measured it.
    pub flush_lag_seconds: Option<f64>,
}

/// Synchronous commit as a running `walship serve --sync` publishes it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct SyncReport {
    /// The policy in its canonical form.
    pub policy: String,
    pub level: SyncLevel,
    pub timeout_ms: Option<u64>,
    /// Everything below is confirmed by the policy.
    pub confirmed_lsn: Lsn,
    /// Everything below may be acknowledged (past `confirmed_lsn` only while degraded).
    pub released_lsn: Lsn,
    /// Commits continue without the standbys' confirmations (after the timeout).
    pub degraded: bool,
    /// The serving process's pid.
    pub pid: u32,
}

/// A timeline left on the way to a directory's timeline, and where it was left.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct TimelineParent {
    pub timeline: u32,
    pub switch_lsn: Lsn,
}

impl TimelineParent {
    /// The timelines `history` left on the way to its own, oldest first.
    pub fn all_of(history: &crate::timeline::History) -> Vec<TimelineParent> {
        history
            .ancestors
            .iter()
            .map(|a| TimelineParent {
                timeline: a.timeline,
                switch_lsn: a.end,
            })
            .collect()
    }
}

/// What `walship status` reports.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DirStatus {
    pub role: Role,
    pub system_id: String,
    pub timeline: u32,
    /// The timelines left on the way to this one, oldest first, each with its switch point
    /// (from the timeline's history file; empty on timeline 1).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub timeline_parents: Vec<TimelineParent>,
    pub segment_size: u64,
    /// End of the last valid record in this directory's files (sealed and open).
    pub flush_lsn: Lsn,
    /// End of the last record in a sealed segment.
    pub sealed_lsn: Lsn,
    /// A standby's applied position (0 before its first apply).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub applied_lsn: Option<Lsn>,
    /// A standby's primary address.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub primary: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub standby_id: Option<String>,
    /// A standby's name (given with `--name`, or made from its id).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub standby_name: Option<String>,
    /// Standbys fed from this directory.
    pub standbys: Vec<StandbySlot>,
    /// Synchronous commit, while a `serve --sync` runs for this directory (None otherwise).
    pub sync: Option<SyncReport>,
    /// Every registered consumer (standby slots, the archiver), the checkpoint, and what holds
    /// the oldest sealed segment.
    pub retention: crate::retention::RetentionReport,
    /// Damage found by the shipper, a standby or the archiver and not cleared yet
    /// (state/damage/): empty when none is known.
    pub damage: Vec<crate::damage::DamageEntry>,
    /// Files recovery took out of the log and kept (`setaside/`), by name: empty when none.
    pub set_aside: Vec<String>,
}

/// Computes the status of the data directory at `root`.
pub fn status(root: &Path) -> Result<DirStatus> {
    let dd = DataDir::new(root);
    let control = dd.read_control()?;
    let (flush_lsn, sealed_lsn) = wal_ends(&dd, &control)?;
    let meta = standby_state::read_meta(&dd)?;
    // A standby's records past its sealed segments are in its copy of the primary's open
    // segment: synced, and applied from there.
    let flush_lsn = if meta.is_some() {
        let copy = crate::replication::standby::partial::copy_end(&dd, &control)?;
        flush_lsn.max(copy.unwrap_or(Lsn(0)))
    } else {
        flush_lsn
    };
    let now = crate::now_us();
    let mut standbys = Vec::new();
    for rec in ConsumerRegistry::new(&dd).list()? {
        if rec.kind != ConsumerKind::Standby {
            continue;
        }
        let applied = rec.applied_lsn.unwrap_or(Lsn(0));
        let lag_bytes = flush_lsn.saturating_sub(applied);
        standbys.push(StandbySlot {
            connected: rec
                .last_contact_us
                .is_some_and(|t| now.saturating_sub(t) <= CONNECTED_WINDOW.as_micros() as i64),
            lag_seconds: lag_seconds(root, applied, flush_lsn, now),
            id: rec.id,
            name: rec.name,
            address: rec.address,
            flushed_lsn: rec.position,
            applied_lsn: applied,
            lag_bytes,
            last_contact: rec.last_contact_us.map(format_time),
            last_contact_us: rec.last_contact_us,
            positions_age_seconds: rec
                .last_contact_us
                .map(|t| now.saturating_sub(t).max(0) as f64 / 1e6),
            lost: rec.lost,
            sync_state: SyncState::Async,
            written_lsn: rec.written_lsn,
            flush_lag_bytes: flush_lsn.saturating_sub(rec.position),
            flush_lag_seconds: rec.flush_lag_us.map(|us| us as f64 / 1e6),
        });
    }
    let sync = sync_report(&dd)?;
    if let Some(s) = &sync {
        if let Ok(policy) = SyncPolicy::parse(&s.policy) {
            let rows: Vec<StandbyRow> = standbys
                .iter()
                .map(|sb| StandbyRow {
                    name: sb.name.clone().unwrap_or_default(),
                    connected: sb.connected,
                    written_lsn: sb.written_lsn.unwrap_or(sb.flushed_lsn),
                    flushed_lsn: sb.flushed_lsn,
                    applied_lsn: sb.applied_lsn,
                })
                .collect();
            let c = confirmed(&policy, s.level, &rows);
            for (sb, st) in standbys.iter_mut().zip(c.states) {
                sb.sync_state = st;
            }
        }
    }
    Ok(DirStatus {
        role: if meta.is_some() {
            Role::Standby
        } else {
            Role::Primary
        },
        system_id: control.system_id.to_string(),
        timeline: control.timeline,
        // A damaged or missing history is `verify`'s to report: status shows none then.
        timeline_parents: dd
            .history(&control)
            .map(|h| TimelineParent::all_of(&h))
            .unwrap_or_default(),
        segment_size: control.segment_size,
        flush_lsn,
        sealed_lsn,
        applied_lsn: match meta {
            Some(_) => Some(standby_state::read_applied(&dd)?),
            None => None,
        },
        primary: meta.as_ref().map(|m| m.primary.clone()),
        standby_id: meta.as_ref().map(|m| m.standby_id.to_string()),
        standby_name: meta.as_ref().map(|m| {
            m.name
                .clone()
                .unwrap_or_else(|| crate::replication::synchronous::default_name(&m.standby_id))
        }),
        standbys,
        sync,
        retention: crate::retention::report(&dd)?,
        damage: crate::damage::DamageRegister::new(&dd).list()?,
        set_aside: crate::setaside::list(&dd)?,
    })
}

/// The published synchronous policy and position, when its publisher is alive.
fn sync_report(dd: &DataDir) -> Result<Option<SyncReport>> {
    let f = match SyncFollower::open(dd) {
        Ok(f) => f,
        Err(FollowError::NotServed(_)) => return Ok(None),
        Err(FollowError::Store(e)) => return Err(e),
    };
    let snap = match f.snapshot() {
        Ok(s) => s.unwrap_or_default(),
        Err(FollowError::NotServed(_)) => return Ok(None),
        Err(FollowError::Store(e)) => return Err(e),
    };
    let p = f.policy();
    Ok(Some(SyncReport {
        policy: p.policy.clone(),
        level: p.level,
        timeout_ms: p.timeout_ms,
        confirmed_lsn: snap.confirmed,
        released_lsn: snap.released,
        degraded: snap.degraded,
        pid: p.pid,
    }))
}

/// Formats microseconds since the epoch as RFC 3339 UTC.
pub fn format_time(us: i64) -> String {
    chrono::DateTime::from_timestamp_micros(us)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_else(|| format!("invalid({us})"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::consumers::ConsumerRecord;

    /// The age of a standby's positions is the time since the acknowledgement its slot file
    /// holds; connected is judged from the same time.
    #[test]
    fn a_slots_positions_say_how_old_they_are() {
        let t = tempfile::tempdir().expect("tempdir");
        let dir = t.path().join("d");
        DataDir::init(&dir, 64 * 1024).expect("init");
        let dd = DataDir::new(&dir);
        let reg = ConsumerRegistry::new(&dd);
        let slot = |id: &str, ago_s: i64| ConsumerRecord {
            applied_lsn: Some(Lsn(0)),
            name: Some(id.into()),
            last_contact_us: (ago_s >= 0).then(|| crate::now_us() - ago_s * 1_000_000),
            ..ConsumerRecord::new(id, ConsumerKind::Standby, Lsn(0))
        };
        reg.save(&slot("fresh", 0)).expect("save");
        reg.save(&slot("old", 30)).expect("save");
        reg.save(&slot("never", -1)).expect("save");
        let st = status(&dir).expect("status");
        let by = |id: &str| {
            st.standbys
                .iter()
                .find(|s| s.id == id)
                .expect("listed")
                .clone()
        };
        let fresh = by("fresh");
        assert!(fresh.connected);
        assert!(fresh
            .positions_age_seconds
            .is_some_and(|a| (0.0..5.0).contains(&a)));
        let old = by("old");
        assert!(!old.connected);
        assert!(old
            .positions_age_seconds
            .is_some_and(|a| (30.0..35.0).contains(&a)));
        assert_eq!(by("never").positions_age_seconds, None);
    }
}
