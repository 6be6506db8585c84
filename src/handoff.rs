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

/// True when process `pid` runs `walship standby`.
fn runs_standby(pid: u32) -> bool {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .is_ok_and(|b| subcommand(&b) == Some(&b"standby"[..]))
}

/// The subcommand in a NUL-separated command line: the first argument after the program that
/// is neither an option nor the value of the global `--log-format`.
fn subcommand(cmdline: &[u8]) -> Option<&[u8]> {
    let mut args = cmdline.split(|c| *c == 0).skip(1);
    while let Some(a) = args.next() {
        if a == b"--log-format" {
            args.next();
        } else if !a.is_empty() && !a.starts_with(b"-") {
            return Some(a);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::subcommand;

    #[test]
    fn the_subcommand_of_a_command_line() {
        let s = |c: &str| subcommand(c.as_bytes()).map(|a| String::from_utf8_lossy(a).into_owned());
        assert_eq!(
            s("walship\0standby\0d\0--primary\0h:1\0").as_deref(),
            Some("standby")
        );
        assert_eq!(
            s("walship\0--log-format\0json\0standby\0d\0").as_deref(),
            Some("standby")
        );
        assert_eq!(
            s("walship\0--log-format=json\0standby\0").as_deref(),
            Some("standby")
        );
        assert_eq!(s("walship\0write\0standby\0").as_deref(), Some("write"));
        assert_eq!(s("walship\0").as_deref(), None);
    }
}
