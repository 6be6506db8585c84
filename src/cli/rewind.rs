//! `rewind`: cut a directory whose timeline a promotion left back to the switch point, so that
//! it can follow the new primary.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use walship::replication::history_fetch::{fetch_history, Reach};
use walship::rewind::{rewind, Source};
use walship::DataDir;

use super::serve::{duration_between, read_token};
use super::{runtime, CmdResult, Failure};

/// Set aside what a former primary holds past the switch point and cut it back to it.
#[derive(Args, Debug)]
#[command(
    after_help = "DATA_DIR is a former primary (or a standby) whose timeline the new primary's history \
left at a switch point, and which holds records past it. rewind takes the new primary's history files \
from the new primary (--source HOST:PORT, a running `walship serve`) or from its archive (--source \
DIR, file:///PATH or s3://BUCKET/PREFIX: the newest timeline the archive holds), moves every segment past the switch point into \
setaside/ (as NAME.diverged-LSN, never deleted; `walship status` lists them), copies the segment \
holding the switch point there whole and cuts it back to the switch point as an open segment \
(a standby's: as its copy of the open segment, its applied position lowered with it). Afterwards `walship standby DATA_DIR --primary ADDR` follows the new primary. Refused while a \
process holds the directory's lock. A directory with nothing past the switch point is left as it \
is. Killed at any point, running it again reaches the same result.\n\nExample:\n  walship rewind \
/var/lib/app/data --source db2.example:5433"
)]
pub struct RewindArgs {
    pub data_dir: PathBuf,
    /// Where the new primary's history comes from: HOST:PORT of its `walship serve`, or its
    /// archive (a directory, file:///PATH or s3://BUCKET/PREFIX).
    #[arg(long, value_parser = parse_source)]
    pub source: String,
    #[command(flatten)]
    pub s3: super::target::S3Args,
    /// File holding the token the primary requires (mode 600 or stricter).
    #[arg(long)]
    pub auth_token_file: Option<PathBuf>,
    #[command(flatten)]
    pub tls: super::standby::ClientTlsArgs,
    /// The name to give the primary, for one that checks names against client certificates
    /// or per-standby tokens (the name --tls-cert or the token proves); default `rewind-` and
    /// 8 hex digits.
    #[arg(long, value_parser = parse_name)]
    pub name: Option<String>,
    /// How long to wait for the source at each step of the conversation.
    #[arg(long, default_value = "10s", value_parser = duration_between(Duration::from_millis(100), Duration::from_secs(3600)))]
    pub timeout: Duration,
    /// Say what would be set aside and cut, change nothing.
    #[arg(long)]
    pub dry_run: bool,
}

/// An archive target (it names a path or a URL: a HOST:PORT never holds a `/`; or a directory
/// named bare, which exists and has no port), or the primary's address.
fn is_archive(s: &str) -> bool {
    s.contains('/') || (!s.contains(':') && std::path::Path::new(s).is_dir())
}

fn parse_source(s: &str) -> Result<String, String> {
    if is_archive(s) {
        Ok(s.to_string())
    } else {
        super::serve::parse_primary(s)
    }
}

/// The new primary's history as its archive holds it: the newest timeline the archive has.
fn archive_source(a: &RewindArgs) -> Result<Source, Failure> {
    let store = super::target::open(&a.source, &a.s3)?;
    let (identity, (path, files)) = runtime()?.block_on(async {
        let identity = walship::archive::identity::read_identity(&store).await?;
        let chain = walship::archive::history::history_chain(&store, identity.system_id).await?;
        Ok::<_, walship::Error>((identity, chain))
    })?;
    Ok(Source {
        system_id: identity.system_id,
        segment_size: identity.segment_size,
        path,
        files,
    })
}

fn parse_name(s: &str) -> Result<String, String> {
    walship::replication::synchronous::check_name(s).map(|()| s.to_string())
}

pub fn run(a: RewindArgs) -> CmdResult {
    let token = read_token(&a.auth_token_file)?;
    let tls = a.tls.files()?;
    // The directory first: a path that is no data directory is said before any source is asked.
    let dd = DataDir::new(&a.data_dir);
    dd.read_control()?;
    let source = if is_archive(&a.source) {
        archive_source(&a)?
    } else {
        let fetched = runtime()?
            .block_on(fetch_history(
                &a.source,
                &Reach {
                    tls: tls.as_ref(),
                    token: token.as_ref(),
                    name: a.name.as_deref(),
                },
                a.timeout,
            ))
            .map_err(|e| Failure::Error(format!("ask {} for its history: {e}", a.source)))?;
        Source {
            system_id: fetched.system_id,
            segment_size: fetched.segment_size,
            path: fetched.path,
            files: fetched.files,
        }
    };
    // What to follow afterwards: the primary, or (the source being its archive) the primary
    // of that timeline.
    let primary = if is_archive(&a.source) {
        "NEW_PRIMARY"
    } else {
        a.source.as_str()
    };
    let r = rewind(&dd, &source, a.dry_run)?;
    let dir = a.data_dir.display();
    if r.nothing_diverged {
        println!(
            "nothing diverged: {dir} ends at {}, at or before the switch point {} where timeline {} was left; nothing changed. Follow with walship standby {dir} --primary {primary}",
            r.end, r.switch_lsn, r.timeline
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
        println!("follow with: walship standby {dir} --primary {primary}");
    }
    Ok(())
}
