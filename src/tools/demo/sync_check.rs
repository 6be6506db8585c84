//! The demo's synchronous and asynchronous standbys: freezing both at the writer's SIGKILL to
//! see what each held at that moment, and the check that every commit the writer had
//! acknowledged is on the synchronous one with its payload.

use super::*;

use walship::replication::synchronous::{FollowError, Released, SyncFollower};

/// The name of the standby the primary's policy waits for, and of the one it does not.
pub(super) const SYNC_NAME: &str = "sync";
pub(super) const ASYNC_NAME: &str = "async";

/// What the two standbys held when the writer was killed.
pub(super) struct KillMoment {
    /// The primary's durable position.
    pub(super) primary_flushed: u64,
    /// What the synchronous standby had confirmed as durable (the position `serve` publishes
    /// for its policy).
    pub(super) sync_flushed: u64,
    /// The asynchronous standby's durable position, as the primary last recorded it (its slot
    /// is refreshed about every second, so this may overstate the lag by up to that).
    pub(super) async_flushed: u64,
    /// End LSNs of the commits the writer had acknowledged, in order.
    pub(super) acked: Vec<u64>,
}

/// Freezes both standbys (SIGSTOP), reads what the primary knows of each, SIGKILLs the writer,
/// collects every acknowledgement it printed, then lets the standbys go on (SIGCONT). A commit
/// is acknowledged only once the synchronous standby confirmed it, so while that standby is
/// frozen no new acknowledgement can name a position it had not confirmed.
pub(super) fn kill_writer_frozen(
    writer: &mut Proc,
    reader: std::thread::JoinHandle<()>,
    sync_standby: &Proc,
    async_standby: &Proc,
    primary: &Path,
    acked: &Acked,
) -> KillMoment {
    sync_standby.signal(libc::SIGSTOP);
    async_standby.signal(libc::SIGSTOP);
    let (mut primary_flushed, mut sync_flushed, mut async_flushed) = (0, 0, 0);
    if let Ok(s) = walship::status::status(primary) {
        primary_flushed = s.flush_lsn.0;
        sync_flushed = s.sync.map(|r| r.confirmed_lsn.0).unwrap_or(0);
        async_flushed = s
            .standbys
            .iter()
            .find(|sb| sb.name.as_deref() == Some(ASYNC_NAME))
            .map(|sb| sb.flushed_lsn.0)
            .unwrap_or(0);
    }
    writer.kill();
    // The writer's pipe is closed now: the reader ends once it has taken every line.
    let _ = reader.join();
    let acked = acked.ends.lock().map(|v| v.clone()).unwrap_or_default();
    sync_standby.signal(libc::SIGCONT);
    async_standby.signal(libc::SIGCONT);
    KillMoment {
        primary_flushed,
        sync_flushed,
        async_flushed,
        acked,
    }
}

/// Checks that every commit acknowledged before the kill lies within what the synchronous
/// standby held at that moment, and that the standby's records up to there are the first
/// writer's transactions, payload for payload (regenerated from its seed). Err says what
/// differs.
pub(super) fn acked_on_sync_standby(standby: &Path, m: &KillMoment) -> Result<String> {
    let last = m.acked.iter().copied().max().unwrap_or(0);
    if m.acked.is_empty() {
        return Err(Error::Other(
            "the writer acknowledged no commit before it was killed".into(),
        ));
    }
    if last > m.sync_flushed {
        return Err(Error::Other(format!(
            "acknowledged through {} but the synchronous standby had confirmed only {}",
            Lsn(last),
            Lsn(m.sync_flushed)
        )));
    }
    // The first writer (seed 0, transactions from 1) wrote everything from the log's start.
    let mut gen = MixedWorkload::new(0, 1);
    let mut r = WalReader::open(standby, Lsn(0))?;
    let mut ends = HashSet::new();
    let mut records = 0u64;
    'outer: loop {
        for e in gen.next_transaction() {
            let Some(rec) = r.next_record()? else {
                break 'outer;
            };
            if rec.lsn.0 >= last {
                break 'outer;
            }
            if rec.entry_type != e.entry_type
                || rec.tx_id != Some(e.tx_id)
                || rec.payload != e.payload
            {
                return Err(Error::Other(format!(
                    "the synchronous standby's record at {} is not the writer's (tx {})",
                    rec.lsn, e.tx_id
                )));
            }
            records += 1;
            ends.insert(rec.end_lsn.0);
        }
    }
    let missing = m.acked.iter().filter(|e| !ends.contains(e)).count();
    if missing > 0 {
        return Err(Error::Other(format!(
            "{missing} of {} acknowledged commits are not on the synchronous standby",
            m.acked.len()
        )));
    }
    Ok(format!(
        "{} commits acknowledged through {}, within its confirmed {}, all on it ({records} records, payloads equal)",
        m.acked.len(),
        Lsn(last),
        Lsn(m.sync_flushed)
    ))
}

/// How far the asynchronous standby was behind the primary at the kill (zero is possible on a
/// quiet machine: it is reported, not required).
pub(super) fn async_lag_line(m: &KillMoment) -> String {
    format!(
        "at the SIGKILL the asynchronous standby was {} bytes behind the primary's durable {} (it had {}); the synchronous one had confirmed {}",
        m.primary_flushed.saturating_sub(m.async_flushed),
        Lsn(m.primary_flushed),
        Lsn(m.async_flushed),
        Lsn(m.sync_flushed)
    )
}

/// Opens the published synchronous commit policy of the `serve` running for `dir`, waiting
/// up to 10 s for it to appear.
pub(super) fn follow_policy(dir: &Path) -> Result<SyncFollower> {
    let dd = DataDir::new(dir);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match SyncFollower::open(&dd) {
            Ok(f) => return Ok(f),
            Err(FollowError::NotServed(m)) if Instant::now() < deadline => {
                tracing::debug!("waiting for serve's policy: {m}");
                std::thread::sleep(Duration::from_millis(50));
            }
            Err(FollowError::NotServed(m)) => return Err(Error::Other(m)),
            Err(FollowError::Store(e)) => return Err(e),
        }
    }
}

/// Waits until the policy's standbys confirmed `lsn`.
pub(super) fn wait_confirmed(f: &SyncFollower, lsn: Lsn) -> Result<()> {
    match f.wait_blocking(lsn) {
        Ok(Released::Degraded) => {
            tracing::warn!(%lsn, "acknowledged while the primary runs degraded");
            Ok(())
        }
        Ok(_) => Ok(()),
        Err(FollowError::NotServed(m)) => Err(Error::Other(m)),
        Err(FollowError::Store(e)) => Err(e),
    }
}
