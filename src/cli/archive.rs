//! `archive`: push sealed segments to backup storage.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, ValueEnum};
use walship::archive::{Archiver, ArchiverOptions, Compression, ReadBack};
use walship::DataDir;

use super::{parse_size, CmdResult, Failure};
use walship::metrics::library;

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum CompressArg {
    None,
    Zstd,
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum ReadBackArg {
    /// Only when the store's answer to the write does not prove the bytes.
    Unproven,
    /// After every write.
    Always,
}

/// Push every sealed segment to an archive, in LSN order; keep watching for new ones.
#[derive(Args, Debug)]
#[command(
    after_help = "Each segment is written under a temporary name, fsynced, moved into place, \
read back and compared. A segment already archived with identical content is skipped; different \
content, or an archive of another system, is refused and nothing is changed. Progress is recorded \
in DATA_DIR/state/consumers/archiver.json, so a restart resumes and retention keeps every segment \
not yet archived. Before it trusts that progress, it checks that the archive holds every segment \
from the one it begins at (recorded in its IDENTITY): what is missing is pushed again from wal/, \
and when wal/ no longer has it the archiver exits 1. Watching, a failing pass is retried with a \
pause growing to 30 s. The writer may keep running: the archiver reads sealed segments only.\n\n\
In an S3-compatible store (--to s3://BUCKET/PREFIX) each segment is one conditional PUT \
(If-None-Match: *), whole or absent, carrying its SHA-256; the store's ETag, when it is the MD5 \
of the bytes sent, proves them, and otherwise the object is read back and compared; credentials, region and \
endpoint come from AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, AWS_SESSION_TOKEN, AWS_REGION, \
AWS_ENDPOINT_URL and AWS_ALLOW_HTTP, or the --s3-* flags. Transient errors are retried with \
backoff; access denied, a wrong secret or a missing bucket fail at once.\n\n\
Exit status: 0 done, 1 refused or damage found, 2 could not run.\n\n\
Example:\n  walship archive ./data --to /mnt/backup/app-wal --once --compress zstd\n  \
walship archive ./data --to s3://app-backups/wal/app1 --compress zstd --parallel 4"
)]
pub struct ArchiveArgs {
    pub data_dir: PathBuf,
    /// The archive: a directory or file:///PATH (created when missing; recorded as an absolute
    /// path), or s3://BUCKET/PREFIX in an S3-compatible store.
    #[arg(long = "to", value_name = "TARGET")]
    pub target: std::path::PathBuf,
    /// Push what is sealed now, then exit (otherwise keep watching).
    #[arg(long)]
    pub once: bool,
    /// Store segments as they are (.wal) or zstd-compressed (.wal.zst).
    #[arg(long, value_enum, default_value_t = CompressArg::None)]
    pub compress: CompressArg,
    /// zstd level, 1 (fastest) to 19 [default: 3]; with --compress zstd only.
    #[arg(long, value_parser = clap::value_parser!(i32).range(1..=19))]
    pub zstd_level: Option<i32>,
    /// Warn (once per episode) when sealed segments waiting to be archived exceed this size...
    #[arg(long, default_value = "256MiB", value_parser = parse_size)]
    pub warn_lag: u64,
    /// ...or when the oldest of them was sealed longer ago than this (1s to 24h).
    #[arg(long, default_value = "5m", value_parser = super::serve::duration_between(Duration::from_secs(1), Duration::from_secs(86_400)))]
    pub warn_lag_time: Duration,
    /// Seconds between rescans of wal/ when watching (notifications can be missed); 1 to 3600.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub rescan_secs: u64,
    /// With --once, print one JSON summary object.
    #[arg(long)]
    pub json: bool,
    /// Segments written to the archive at the same time (1 to 64); progress is recorded in LSN
    /// order. Above 1, never run two archivers on one archive.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=64))]
    pub parallel: u64,
    /// When to read a written segment back and compare it: `unproven` (a directory archive
    /// always; an S3 object only when the PUT's ETag is not the MD5 of what was sent) or
    /// `always`.
    #[arg(long, value_enum, default_value_t = ReadBackArg::Unproven)]
    pub read_back: ReadBackArg,
    /// Serve metrics (Prometheus text format) on `GET /metrics` at this HOST:PORT while
    /// archiving (port 0 picks a free port; the address bound is logged). A non-loopback
    /// address needs --metrics-insecure: the endpoint has neither TLS nor authentication.
    #[arg(long, conflicts_with = "once", value_parser = super::serve::parse_listen)]
    pub metrics_listen: Option<String>,
    /// Allow a non-loopback --metrics-listen address.
    #[arg(long, requires = "metrics_listen")]
    pub metrics_insecure: bool,
    #[command(flatten)]
    pub s3: super::target::S3Args,
}

pub fn run(a: ArchiveArgs) -> CmdResult {
    if let (Some(level), CompressArg::None) = (a.zstd_level, &a.compress) {
        return Err(Failure::Error(format!(
            "--zstd-level {level} needs --compress zstd: segments are stored uncompressed without it"
        )));
    }
    let opts = ArchiverOptions {
        compression: match a.compress {
            CompressArg::None => Compression::None,
            CompressArg::Zstd => Compression::Zstd,
        },
        zstd_level: a
            .zstd_level
            .unwrap_or(ArchiverOptions::default().zstd_level),
        warn_lag_bytes: a.warn_lag,
        warn_lag_time: a.warn_lag_time,
        rescan_interval: Duration::from_secs(a.rescan_secs),
        parallel: a.parallel as usize,
        read_back: match a.read_back {
            ReadBackArg::Unproven => ReadBack::Unproven,
            ReadBackArg::Always => ReadBack::Always,
        },
    };
    // A wrong DATA_DIR, or a metrics address that cannot be served, fails before the archive
    // directory is created.
    DataDir::new(&a.data_dir).read_control()?;
    let runtime = super::runtime()?;
    let listener = runtime.block_on(super::metrics::bind(
        a.metrics_listen.as_deref(),
        a.metrics_insecure,
    ))?;
    let store = super::target::parse(&a.target, &a.s3)?.create()?;
    runtime.block_on(async move {
        let mut archiver =
            Archiver::new(DataDir::new(&a.data_dir), Arc::new(store.clone()), opts).await?;
        // Only once the archive is known to be ours.
        let leftovers = store.remove_temporaries()?;
        if leftovers > 0 {
            tracing::info!(files = leftovers, "removed temporary files of an interrupted push");
        }
        if a.once {
            let started = std::time::Instant::now();
            let s = archiver.push_pending().await?;
            let secs = started.elapsed().as_secs_f64();
            if a.json {
                let v = serde_json::json!({
                    "archived": s.archived,
                    "already_archived": s.already_archived,
                    "bytes": s.bytes,
                    "stored_bytes": s.stored_bytes,
                    "read_back": s.read_back,
                    "position": s.position,
                    "seconds": secs,
                });
                println!("{v}");
            } else {
                println!(
                    "archived {} segments ({} bytes, {} stored), {} already archived; archived up to {}",
                    s.archived,
                    s.bytes,
                    s.stored_bytes,
                    s.already_archived,
                    s.position
                );
            }
            return Ok(());
        }
        let mut process = super::metrics::damage();
        process.push(library::library().archiver_registry.clone());
        let metrics = super::metrics::start(listener, &a.data_dir, process)?;
        let r = archiver.run(super::shutdown_signal()).await;
        if let Some(m) = metrics {
            m.abort();
        }
        r?;
        Ok(())
    })
}
