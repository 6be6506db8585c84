//! `rewind`: cut a directory whose timeline a promotion left back to the switch point, so that
//! it can follow the new primary.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use walship::replication::history_fetch::fetch_history;
use walship::rewind::{rewind, Source};
use walship::DataDir;

use super::serve::{duration_between, read_token};
use super::{runtime, CmdResult, Failure};

/// Set aside what a former primary holds past the switch point and cut it back to it.
#[derive(Args, Debug)]
#[command(
    after_help = "DATA_DIR is a former primary (or a standby) whose timeline the new primary's history \
left at a switch point, and which holds records past it. rewind asks the new primary (--source, a \
running `walship serve`) for its history files, moves every segment past the switch point into \
setaside/ (as NAME.diverged-LSN, never deleted; `walship status` lists them), copies the segment \
holding the switch point there whole and cuts it back to the switch point as an open segment. \
Afterwards `walship standby DATA_DIR --primary ADDR` follows the new primary. Refused while a \
process holds the directory's lock. A directory with nothing past the switch point is left as it \
is. Killed at any point, running it again reaches the same result.\n\nExample:\n  walship rewind \
/var/lib/app/data --source db2.example:5433"
)]
pub struct RewindArgs {
    pub data_dir: PathBuf,
    /// The new primary, HOST:PORT of its `walship serve`.
    #[arg(long, value_parser = super::serve::parse_primary)]
    pub source: String,
    /// File holding the token the primary requires (mode 600 or stricter).
    #[arg(long)]
    pub auth_token_file: Option<PathBuf>,
    /// How long to wait for the source at each step of the conversation.
    #[arg(long, default_value = "10s", value_parser = duration_between(Duration::from_millis(100), Duration::from_secs(3600)))]
    pub timeout: Duration,
    /// Say what would be set aside and cut, change nothing.
    #[arg(long)]
    pub dry_run: bool,
}

pub fn run(a: RewindArgs) -> CmdResult {
    let token = read_token(&a.auth_token_file)?;
    let fetched = runtime()?
        .block_on(fetch_history(&a.source, token.as_ref(), a.timeout))
        .map_err(|e| Failure::Error(format!("ask {} for its history: {e}", a.source)))?;
    let source = Source {
        system_id: fetched.system_id,
        segment_size: fetched.segment_size,
        path: fetched.path,
        files: fetched.files,
    };
    let dd = DataDir::new(&a.data_dir);
    let r = rewind(&dd, &source, a.dry_run)?;
    let dir = a.data_dir.display();
    if r.nothing_diverged {
        println!(
            "nothing diverged: {dir} ends at {}, at or before the switch point {} where timeline {} was left; nothing changed. Follow with walship standby {dir} --primary {}",
            r.end, r.switch_lsn, r.timeline, a.source
        );
        return Ok(());
    }
    let verb = if a.dry_run {
        "would set aside"
    } else {
        "set aside"
    };
    println!(
        "{}{dir}: timeline {} was left at {}; the records in [{}, {}) diverged",
        if a.dry_run {
            "dry run, nothing changed: "
        } else {
            "rewound "
        },
        r.timeline,
        r.switch_lsn,
        r.switch_lsn,
        r.end
    );
    for p in &r.set_aside {
        println!("{verb} {}", p.display());
    }
    if let Some(c) = r.cut {
        println!(
            "{} {c} at {}",
            if a.dry_run { "would cut" } else { "cut" },
            r.switch_lsn
        );
    }
    if !a.dry_run {
        println!("follow with: walship standby {dir} --primary {}", a.source);
    }
    Ok(())
}
