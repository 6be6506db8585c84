//! `promote`: a standby's directory becomes a primary on the next timeline.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::Args;
use walship::promote::promote;
use walship::{DataDir, Error};

use super::{CmdResult, Failure};

/// Make a standby's data directory a primary on the next timeline.
#[derive(Args, Debug)]
#[command(
    after_help = "A `walship standby` running on the directory is asked to finish (SIGTERM to the pid in \
its lock file: it applies what it has stored, stops following and exits 0) and waited for, up to \
--timeout; promotion then proceeds. Any other process holding the directory's lock makes it refuse \
(with --wait it waits up to --timeout for the lock to be released). The new timeline begins at the directory's durable end: the last valid record of \
the copy of the primary's open segment (whose rest is moved to setaside/), or the end of the \
newest sealed segment. Its history file (wal/0000000N.history) is written before the control \
file names it. Running it again after a crash finishes the same promotion; on a directory \
already promoted it says so and exits 0.\n\nExample:\n  walship promote /var/lib/app/standby-data"
)]
pub struct PromoteArgs {
    pub data_dir: PathBuf,
    /// Wait for any process holding the directory's lock to exit, up to --timeout (a running
    /// `walship standby` is asked to finish and waited for without it).
    #[arg(long)]
    pub wait: bool,
    /// How long promote waits for the lock to be released, in seconds.
    #[arg(long, default_value_t = 60)]
    pub timeout: u64,
    /// Why, recorded in the history file.
    #[arg(long, default_value = "promoted")]
    pub reason: String,
}

pub fn run(args: PromoteArgs) -> CmdResult {
    let dd = DataDir::new(&args.data_dir);
    // A timeout past what an Instant can hold is no deadline at all.
    let deadline = Instant::now().checked_add(Duration::from_secs(args.timeout));
    let mut asked = None;
    let done = loop {
        match promote(&dd, &args.reason) {
            Err(Error::Refused(msg))
                if deadline.is_none_or(|d| Instant::now() < d) && dd.lock().is_err() =>
            {
                // A standby running on it is asked once to finish, and waited for; any other
                // process holding it, only with --wait.
                if asked.is_none() {
                    asked = walship::handoff::ask_standby_to_finish(&dd)?;
                    if let Some(pid) = asked {
                        println!("asked walship standby (pid {pid}) to finish");
                    }
                }
                if asked.is_none() && !args.wait {
                    return Err(Failure::from(Error::Refused(msg)));
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            other => break other.map_err(Failure::from)?,
        }
    };
    if done.already {
        println!(
            "{} is already a primary on timeline {} (promoted at {})",
            args.data_dir.display(),
            done.timeline,
            done.switch_lsn
        );
    } else {
        println!(
            "promoted {}: timeline {} begins at {}",
            args.data_dir.display(),
            done.timeline,
            done.switch_lsn
        );
        for p in &done.set_aside {
            println!("set aside {}", p.display());
        }
    }
    Ok(())
}
