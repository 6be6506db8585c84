//! Synchronous commit across processes: what `walship serve --sync` publishes in the data
//! directory for a writer in another process (`walship write --wait-sync`), and how that
//! writer waits on it. docs/FORMAT.md gives the bytes.
//!
//! - `state/sync.lock`: held (`flock`, exclusive) by the serving process for as long as it
//!   runs with a policy. The kernel releases it when that process ends, however it ends, so
//!   "the lock is free" proves no publisher is alive.
//! - `state/sync_policy.json`: the policy, its level and timeout, the publisher's pid, and a
//!   random run id; replaced atomically at start.
//! - `state/sync_position`: 40 bytes overwritten in place at every change (one `pwrite`, no
//!   sync: a hint true when written): run id, confirmed, released, flags and a CRC-32 (see
//!   [`encode_snapshot`]). A writer trusts it only with the run id of the policy file and a
//!   live lock.
//!
//! The writer waits on inotify events for `state/` and re-reads the 40 bytes, and re-checks the
//! lock every [`LIVENESS_CHECK`].

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::waiter::{Released, SyncSnapshot};
use super::SyncConfig;
use crate::datadir::DataDir;
use crate::error::{Error, Result};
use crate::Lsn;

pub const SYNC_LOCK_FILE: &str = "sync.lock";
pub const SYNC_POLICY_FILE: &str = "sync_policy.json";
pub const SYNC_POSITION_FILE: &str = "sync_position";
/// The position file's length.
pub const SYNC_POSITION_LEN: usize = 40;
/// How often a waiting writer checks that the publisher is still alive.
pub const LIVENESS_CHECK: Duration = Duration::from_millis(100);

/// `state/sync_policy.json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PublishedPolicy {
    /// The policy in its canonical form (`FIRST 1 (a, b)`).
    pub policy: String,
    pub level: super::SyncLevel,
    /// Milliseconds without confirmations before the primary runs degraded; None: never.
    pub timeout_ms: Option<u64>,
    /// Random, new for every run: ties the position file to this publisher.
    pub run_id: u64,
    pub pid: u32,
    pub started_us: i64,
}

/// The bytes of a snapshot: `u64` run id, `u64` confirmed, `u64` released, `u64` flags
/// (bit 0: degraded), `u32` CRC-32 (crc32fast) of the 32 bytes before it, `u32` zero; all
/// little-endian.
pub fn encode_snapshot(run_id: u64, s: &SyncSnapshot) -> [u8; SYNC_POSITION_LEN] {
    let mut b = [0u8; SYNC_POSITION_LEN];
    b[0..8].copy_from_slice(&run_id.to_le_bytes());
    b[8..16].copy_from_slice(&s.confirmed.0.to_le_bytes());
    b[16..24].copy_from_slice(&s.released.0.to_le_bytes());
    b[24..32].copy_from_slice(&u64::from(s.degraded).to_le_bytes());
    let crc = crc32fast::hash(&b[..32]);
    b[32..36].copy_from_slice(&crc.to_le_bytes());
    b
}

/// The run id and snapshot the bytes say; None when they are not whole (torn, short, bad CRC).
pub fn decode_snapshot(b: &[u8]) -> Option<(u64, SyncSnapshot)> {
    if b.len() != SYNC_POSITION_LEN {
        return None;
    }
    let u = |i: usize| u64::from_le_bytes(b[i..i + 8].try_into().unwrap_or([0; 8]));
    let crc = u32::from_le_bytes(b[32..36].try_into().unwrap_or([0; 4]));
    if crc != crc32fast::hash(&b[..32]) || b[36..40] != [0; 4] || u(24) > 1 {
        return None;
    }
    Some((
        u(0),
        SyncSnapshot {
            confirmed: Lsn(u(8)),
            released: Lsn(u(16)),
            degraded: u(24) == 1,
        },
    ))
}

fn path(dd: &DataDir, name: &str) -> PathBuf {
    dd.state_dir().join(name)
}

fn open_lock_file(dd: &DataDir) -> Result<File> {
    crate::fsutil::open_in_place(&path(dd, SYNC_LOCK_FILE))
}

/// `flock(op | LOCK_NB)`: Ok(true) when taken, Ok(false) when another holds a conflicting lock.
fn try_flock(f: &File, op: libc::c_int) -> std::io::Result<bool> {
    // SAFETY: flock on a descriptor we own, still open.
    let rc = unsafe { libc::flock(f.as_raw_fd(), op | libc::LOCK_NB) };
    if rc == 0 {
        return Ok(true);
    }
    let e = std::io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
        Ok(false)
    } else {
        Err(e)
    }
}

/// The serving side: holds the lock, owns the files.
pub struct SyncPublisher {
    dd: DataDir,
    run_id: u64,
    position: Mutex<Option<File>>,
    _lock: File,
}

impl SyncPublisher {
    /// Takes the lock (refusing when another process publishes a policy here), then writes
    /// the first snapshot and the policy file, in that order.
    pub fn start(dd: &DataDir, config: &SyncConfig, first: &SyncSnapshot) -> Result<SyncPublisher> {
        let lock = open_lock_file(dd)?;
        // A writer checking liveness holds a shared lock for an instant: try for a while.
        let mut taken = false;
        for _ in 0..50 {
            taken = try_flock(&lock, libc::LOCK_EX)
                .map_err(|e| Error::io("lock state/sync.lock", e))?;
            if taken {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        if !taken {
            return Err(Error::InvalidArgument(format!(
                "another process already publishes a synchronous policy for {} (state/{SYNC_LOCK_FILE} is locked): stop it first",
                dd.root().display()
            )));
        }
        let run_id: u64 = rand::random();
        let pos_path = path(dd, SYNC_POSITION_FILE);
        let file = crate::fsutil::open_in_place(&pos_path)?;
        file.write_all_at(&encode_snapshot(run_id, first), 0)
            .map_err(|e| Error::io(format!("write {}", pos_path.display()), e))?;
        let policy = PublishedPolicy {
            policy: config.policy.to_string(),
            level: config.level,
            timeout_ms: config.timeout.map(|t| t.as_millis() as u64),
            run_id,
            pid: std::process::id(),
            started_us: crate::now_us(),
        };
        let bytes = serde_json::to_vec_pretty(&policy)
            .map_err(|e| Error::Other(format!("encode the policy file: {e}")))?;
        crate::fsutil::write_atomic(&path(dd, SYNC_POLICY_FILE), &bytes)?;
        Ok(SyncPublisher {
            dd: dd.clone(),
            run_id,
            position: Mutex::new(Some(file)),
            _lock: lock,
        })
    }

    /// Overwrites the snapshot in place. A failure only costs other processes the hint: it is
    /// logged once and publishing stops (their waits then end when this process does).
    pub fn publish(&self, s: &SyncSnapshot) {
        let mut g = crate::sync::lock(&self.position);
        if let Some(f) = g.as_ref() {
            if let Err(e) = f.write_all_at(&encode_snapshot(self.run_id, s), 0) {
                tracing::error!(error = %e, "cannot publish the confirmed position for other processes; stopped publishing it");
                *g = None;
            }
        }
    }

    /// Removes the policy file (a clean stop): writers see at once that no policy is served.
    pub fn withdraw(&self) {
        let _ = std::fs::remove_file(path(&self.dd, SYNC_POLICY_FILE));
    }
}

/// Why a writer cannot wait for synchronous confirmation.
#[derive(Debug, thiserror::Error)]
pub enum FollowError {
    /// No `serve` with a policy runs for this directory (never did, or it is gone).
    #[error("{0}")]
    NotServed(String),
    #[error(transparent)]
    Store(#[from] Error),
}

/// The writer's side: follows the published snapshot of a live publisher. It watches
/// `state/` from when it is opened, so each wait costs no new watcher.
pub struct SyncFollower {
    dd: DataDir,
    policy: PublishedPolicy,
    lock: File,
    /// Wakes a wait when `state/sync_position` changes (None: the liveness period polls).
    changed: Mutex<std::sync::mpsc::Receiver<()>>,
    _watcher: Option<notify::RecommendedWatcher>,
}

impl SyncFollower {
    /// Finds the published policy and checks its publisher is alive.
    pub fn open(dd: &DataDir) -> std::result::Result<SyncFollower, FollowError> {
        let p = path(dd, SYNC_POLICY_FILE);
        let policy: Option<PublishedPolicy> = crate::fsutil::read_json(&p, |e| {
            Error::corrupt_state(&p, "synchronous policy file", e)
        })?;
        let Some(policy) = policy else {
            return Err(FollowError::NotServed(format!(
                "no synchronous policy is published for {}: start `walship serve {} --listen ADDR --sync POLICY` first",
                dd.root().display(),
                dd.root().display()
            )));
        };
        use notify::Watcher;
        let (tx, rx) = std::sync::mpsc::sync_channel::<()>(1);
        let handler = move |res: notify::Result<notify::Event>| {
            let ours = match &res {
                Ok(ev) => {
                    ev.need_rescan()
                        || ev
                            .paths
                            .iter()
                            .any(|p| p.file_name().is_some_and(|n| n == SYNC_POSITION_FILE))
                }
                Err(_) => true,
            };
            if ours {
                let _ = tx.try_send(());
            }
        };
        let watcher = notify::recommended_watcher(handler).ok().and_then(|mut w| {
            w.watch(&dd.state_dir(), notify::RecursiveMode::NonRecursive)
                .ok()
                .map(|()| w)
        });
        let f = SyncFollower {
            dd: dd.clone(),
            lock: open_lock_file(dd)?,
            policy,
            changed: Mutex::new(rx),
            _watcher: watcher,
        };
        f.check_alive()?;
        Ok(f)
    }

    pub fn policy(&self) -> &PublishedPolicy {
        &self.policy
    }

    /// Err(NotServed) when the publisher's lock is free: it ended (even by SIGKILL).
    pub fn check_alive(&self) -> std::result::Result<(), FollowError> {
        let free = try_flock(&self.lock, libc::LOCK_SH)
            .map_err(|e| Error::io("check state/sync.lock", e))?;
        if free {
            // SAFETY: flock on a descriptor we own, still open.
            unsafe { libc::flock(self.lock.as_raw_fd(), libc::LOCK_UN) };
            return Err(FollowError::NotServed(format!(
                "the `walship serve` that published the synchronous policy {} (pid {}) is no longer running",
                self.policy.policy, self.policy.pid
            )));
        }
        Ok(())
    }

    /// The current snapshot, when the position file is this publisher's and whole.
    pub fn snapshot(&self) -> std::result::Result<Option<SyncSnapshot>, FollowError> {
        let p = path(&self.dd, SYNC_POSITION_FILE);
        for _ in 0..100 {
            let bytes = match std::fs::read(&p) {
                Ok(b) => b,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(Error::io(format!("read {}", p.display()), e).into()),
            };
            match decode_snapshot(&bytes) {
                Some((run, s)) if run == self.policy.run_id => return Ok(Some(s)),
                Some(_) => return Ok(None),
                None => std::thread::yield_now(),
            }
        }
        Ok(None)
    }

    /// Blocks until WAL up to `lsn` is released by the publisher; ends with NotServed as soon
    /// as the publisher is gone.
    pub fn wait_blocking(&self, lsn: Lsn) -> std::result::Result<Released, FollowError> {
        let rx = crate::sync::lock(&self.changed);
        loop {
            if let Some(s) = self.snapshot()? {
                if s.confirmed >= lsn {
                    return Ok(Released::Confirmed);
                }
                if s.released >= lsn {
                    return Ok(Released::Degraded);
                }
            }
            self.check_alive()?;
            let _ = rx.recv_timeout(LIVENESS_CHECK);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replication::synchronous::{SyncLevel, SyncPolicy};

    #[test]
    fn snapshot_bytes_round_trip_and_damage_is_refused() {
        let s = SyncSnapshot {
            confirmed: Lsn(0x10),
            released: Lsn(0x20),
            degraded: true,
        };
        let b = encode_snapshot(7, &s);
        assert_eq!(&b[..8], &7u64.to_le_bytes());
        assert_eq!(&b[8..16], &0x10u64.to_le_bytes());
        assert_eq!(&b[16..24], &0x20u64.to_le_bytes());
        assert_eq!(&b[24..32], &1u64.to_le_bytes());
        assert_eq!(decode_snapshot(&b), Some((7, s)));
        for i in 0..36 {
            let mut bad = b;
            bad[i] ^= 1;
            assert_eq!(decode_snapshot(&bad), None, "byte {i}");
        }
        assert_eq!(decode_snapshot(&b[..39]), None);
    }

    #[test]
    fn a_follower_sees_a_live_publisher_and_its_end() {
        let t = tempfile::tempdir().unwrap();
        let dd = DataDir::new(t.path());
        std::fs::create_dir_all(dd.state_dir()).unwrap();
        assert!(
            matches!(SyncFollower::open(&dd), Err(FollowError::NotServed(m)) if m.contains("no synchronous policy"))
        );
        let cfg = SyncConfig {
            policy: SyncPolicy::parse("FIRST 1 (s1)").unwrap(),
            level: SyncLevel::RemoteFlush,
            timeout: None,
        };
        let p = SyncPublisher::start(&dd, &cfg, &SyncSnapshot::default()).unwrap();
        // A second publisher is refused.
        assert!(SyncPublisher::start(&dd, &cfg, &SyncSnapshot::default()).is_err());
        let f = SyncFollower::open(&dd).unwrap();
        assert_eq!(f.policy().policy, "FIRST 1 (s1)");
        let s = SyncSnapshot {
            confirmed: Lsn(100),
            released: Lsn(100),
            degraded: false,
        };
        p.publish(&s);
        assert_eq!(f.snapshot().unwrap(), Some(s));
        assert_eq!(f.wait_blocking(Lsn(100)).unwrap(), Released::Confirmed);
        let waiter = std::thread::spawn(move || f.wait_blocking(Lsn(200)));
        std::thread::sleep(Duration::from_millis(50));
        drop(p);
        match waiter.join().unwrap() {
            Err(FollowError::NotServed(m)) => assert!(m.contains("no longer running"), "{m}"),
            other => panic!("{other:?}"),
        }
    }
}
