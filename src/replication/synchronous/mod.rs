//! Synchronous commit: a commit waits until the standbys a policy names have confirmed its
//! WAL at a level (written, flushed or applied on the standby), as PostgreSQL's
//! `synchronous_standby_names` and `synchronous_commit` do.
//!
//! The parts, one concept each: `name` (a standby's name), `policy` (the policy's text and
//! level, parsed), `confirm` (the confirmed position from the standbys' table, and each
//! standby's sync state), `tracker` (when the primary stops waiting: degraded mode after a
//! timeout, and its return), `lag` (lag in time from a ring of samples), `waiter` (where
//! committers wait, all on one snapshot) and `published` (the same across processes, through
//! the data directory). The shipper keeps them current (`shipper/sync_state.rs`).

use std::time::Duration;

pub mod confirm;
pub mod lag;
pub mod name;
pub mod policy;
pub mod published;
pub mod tracker;
pub mod waiter;

pub use confirm::{confirmed, Confirmed, StandbyRow, SyncState};
pub use name::{check_name, default_name};
pub use policy::{Method, NamePattern, PolicyError, SyncLevel, SyncPolicy};
pub use published::{FollowError, SyncFollower};
pub use waiter::{Released, SyncSnapshot, SyncWaiter, WaitError};

/// Synchronous commit as a shipper runs it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SyncConfig {
    pub policy: SyncPolicy,
    pub level: SyncLevel,
    /// After this long without the confirmations the policy requires, run degraded (commits
    /// continue on local durability alone); None: wait for ever (RPO 0).
    pub timeout: Option<Duration>,
}
