//! `demo` and its hidden writer.

use std::io::IsTerminal;
use std::path::PathBuf;

use crate::tools::demo::{run, run_writer, DemoOptions};
use clap::Args;

use super::{CmdResult, Failure};

/// Run the whole system on loopback in a scratch directory, for a first look.
#[derive(Args, Debug)]
#[command(
    after_help = "It starts a primary with a writer, `serve`, a standby and an archiver (the real commands, as child processes), kills and recovers the writer midway, restores the archive into a new directory (with --archive-to, through an S3-compatible store), verifies everything and compares the records, and ends with a failover: the primary is lost, a standby is promoted to timeline 2, the other standby and the archiver follow it (the archive, restored along the newest timeline, equals it), and the old primary is rewound and follows it too. Exit 0 only when every check passed.\n\nExample:\n  walship demo --seconds 30 --dir /tmp/walship-demo"
)]
pub struct DemoArgs {
    /// Scratch directory (created, and kept afterwards). Default: a new directory under the
    /// system's temporary directory.
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// How long the writer runs, in seconds (1 to 3600).
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub seconds: u64,
    /// Archive to an S3-compatible store rather than to a directory in DIR: an s3://BUCKET/PREFIX
    /// holding no objects yet, reached through the AWS environment (AWS_ENDPOINT_URL,
    /// AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_REGION, AWS_ALLOW_HTTP for a store on
    /// loopback), which every component inherits.
    #[arg(long, value_name = "URL")]
    pub archive_to: Option<String>,
}

pub fn demo(a: DemoArgs) -> CmdResult {
    let dir = match a.dir {
        Some(d) => d,
        None => std::env::temp_dir().join(format!(
            "walship-demo-{}",
            chrono::Utc::now().format("%Y%m%d-%H%M%S")
        )),
    };
    let exe = std::env::current_exe()
        .map_err(|e| Failure::Error(format!("cannot find the walship binary: {e}")))?;
    let stdout = std::io::stdout();
    let opts = DemoOptions {
        dir: dir.clone(),
        seconds: a.seconds,
        exe,
        live: stdout.is_terminal(),
        archive_to: a.archive_to.clone(),
    };
    let mut out = stdout.lock();
    let summary = run(&opts, &mut out)?;
    println!();
    println!("summary");
    println!(
        "  {} records, {:.1} MiB of WAL, {} durable commits in {:.1} s ({:.0} commits/s, {:.1} MiB/s)",
        summary.records,
        summary.bytes as f64 / 1048576.0,
        summary.commits_acked,
        summary.writer_seconds,
        summary.commits_acked as f64 / summary.writer_seconds.max(0.001),
        summary.bytes as f64 / 1048576.0 / summary.writer_seconds.max(0.001)
    );
    println!(
        "  largest lag seen: standby {:.1} MiB, archive {:.1} MiB (sealed WAL not yet applied / archived)",
        summary.max_standby_lag as f64 / 1048576.0,
        summary.max_archive_lag as f64 / 1048576.0
    );
    if let Some(lag) = summary.async_lag_at_kill {
        println!(
            "  at the writer's SIGKILL the asynchronous standby was {lag} bytes behind the primary (it may be 0 on a quiet machine)"
        );
    }
    if let Some(f) = &summary.failover {
        println!(
            "  failover: promote took {} ms; the new primary took a durable write {} ms after promote began; the other standby held it on the new timeline {} ms after serve started there",
            f.promote_ms, f.accepted_ms, f.followed_ms
        );
    }
    for c in &summary.checks {
        println!(
            "  [{}] {}: {}",
            if c.passed { "ok" } else { "FAILED" },
            c.name,
            c.detail
        );
    }
    let d = dir.display();
    let w = command_name(&opts.exe);
    println!();
    println!("explore further:");
    println!("  {w} status {d}/primary");
    println!("  {w} status {d}/standby-sync   (the new primary, timeline 2)");
    println!("  {w} status {d}/standby-async --json");
    println!("  {w} dump {d}/primary --limit 20");
    println!("  {w} dump {d}/primary --stats");
    match &a.archive_to {
        Some(url) => println!("  {w} verify {url}"),
        None => println!("  {w} verify {d}/archive"),
    }
    println!("  {w} dump {d}/restored --type tx_commit --limit 5");
    if summary.passed() {
        println!("all {} checks passed", summary.checks.len());
        Ok(())
    } else {
        Err(Failure::Damage(format!(
            "{} of {} demo checks failed",
            summary.checks.iter().filter(|c| !c.passed).count(),
            summary.checks.len()
        )))
    }
}

/// `walship` when that name runs this binary from PATH, else the binary's own path (as after
/// `cargo run`), so the printed commands work as they are.
fn command_name(exe: &std::path::Path) -> String {
    let on_path = std::env::var_os("PATH").is_some_and(|p| {
        std::env::split_paths(&p).any(|d| {
            d.join("walship")
                .canonicalize()
                .is_ok_and(|c| exe.canonicalize().is_ok_and(|e| e == c))
        })
    });
    if on_path {
        "walship".to_string()
    } else {
        exe.display().to_string()
    }
}

/// Internal: the demo's writer process.
#[derive(Args, Debug)]
pub struct DemoWriterArgs {
    pub data_dir: PathBuf,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    #[arg(long, default_value_t = 1)]
    pub first_tx: u64,
    /// Acknowledge a commit only once the synchronous standbys of the `serve` running for
    /// DATA_DIR confirmed it.
    #[arg(long)]
    pub wait_sync: bool,
}

pub fn demo_writer(a: DemoWriterArgs) -> CmdResult {
    run_writer(&a.data_dir, a.seed, a.first_tx, a.wait_sync)?;
    Ok(())
}
