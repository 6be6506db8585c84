//! Asking a running `walship standby` to finish, so that its directory can be promoted: the
//! process holding the directory's lock (its pid is in the lock file) is sent SIGTERM when the
//! directory is a standby's and that process is `walship standby`. On SIGTERM a standby stops
//! following, lets its applier apply every segment it had stored, and exits 0; its lock goes
//! with it. Any other holder of the lock (a writer, a `verify`) is left alone.

use crate::datadir::DataDir;
use crate::error::{Error, Result};

/// Asks the `walship standby` running on `dd` to finish. Returns its pid when it was asked;
/// None when no process holds the directory, the directory is not a standby's, or the process
/// holding it is not `walship standby`.
pub fn ask_standby_to_finish(dd: &DataDir) -> Result<Option<u32>> {
    let pid = match dd.lock() {
        Ok(_free) => return Ok(None),
        Err(Error::Locked { pid: Some(pid), .. }) => pid,
        Err(Error::Locked { pid: None, .. }) => return Ok(None),
        Err(e) => return Err(e),
    };
    if !crate::replication::standby::directory::meta_path(dd).exists() || !runs_standby(pid) {
        return Ok(None);
    }
    let Ok(raw) = i32::try_from(pid) else {
        return Ok(None);
    };
    // SAFETY: kill(2) with a pid read from the lock file the process still holds (flock is
    // released only when it exits, so the pid cannot have been reused meanwhile).
    let rc = unsafe { libc::kill(raw, libc::SIGTERM) };
    if rc != 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::ESRCH) {
            // It exited between the two looks.
            return Ok(None);
        }
        return Err(Error::io(
            format!("ask walship standby (pid {pid}) to finish"),
            e,
        ));
    }
    Ok(Some(pid))
}

/// True when process `pid` runs `walship standby` (its command line's second argument).
fn runs_standby(pid: u32) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|b| {
        b.split(|c| *c == 0)
            .nth(1)
            .is_some_and(|arg| arg == b"standby")
    })
}
