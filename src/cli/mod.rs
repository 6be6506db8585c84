//! Command-line parsing, logging setup and the mapping from errors to exit codes:
//! 0 success, 1 the thing checked is bad (damage), 2 usage or I/O failure.

mod archive;
mod archive_prune;
mod bench;
mod checkpoint;
mod demo;
mod dump;
mod metrics;
mod promote;
mod restore;
mod rewind;
mod serve;
mod standby;
mod status;
mod status_watch;
mod store;
mod target;
mod verify;

use std::process::ExitCode;

use clap::{Parser, Subcommand, ValueEnum};

/// A write-ahead-log segment store with file-shipping replication.
#[derive(Parser, Debug)]
#[command(name = "walship", version, about, long_about = None, propagate_version = true)]
#[command(
    after_help = "Positions (LSNs) are shown as HI/LO in hex, like 0/0100A3F8; every option that takes an LSN also accepts a decimal number.\nLogs go to stderr; set RUST_LOG (for example RUST_LOG=debug) to see more.\n\nExample:\n  walship init /var/lib/app/wal-data\n  printf 'a\\nb\\n' | walship write /var/lib/app/wal-data --durable\n  walship dump /var/lib/app/wal-data"
)]
pub struct Cli {
    /// Log format on stderr.
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Clone, Copy, Debug, ValueEnum, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    Init(store::InitArgs),
    Write(store::WriteArgs),
    Seal(store::SealArgs),
    Dump(dump::DumpArgs),
    Verify(verify::VerifyArgs),
    Bench(bench::BenchArgs),
    Archive(archive::ArchiveArgs),
    ArchivePrune(archive_prune::ArchivePruneArgs),
    Restore(restore::RestoreArgs),
    Checkpoint(checkpoint::CheckpointArgs),
    Serve(serve::ServeArgs),
    Standby(standby::StandbyArgs),
    Promote(promote::PromoteArgs),
    Rewind(rewind::RewindArgs),
    Status(status::StatusArgs),
    Demo(demo::DemoArgs),
    /// Internal: the demo's writer process.
    #[command(hide = true)]
    DemoWriter(demo::DemoWriterArgs),
}

/// What a command's failure means for the exit code.
pub enum Failure {
    /// Damage found in what was checked: exit 1.
    Damage(String),
    /// Could not run: bad usage or an I/O failure: exit 2.
    Error(String),
    /// Refused for what the data is, not for a failure: exit 1 (a standby whose directory
    /// diverged from its primary's timeline).
    Refused(String),
}

impl From<walship::Error> for Failure {
    fn from(e: walship::Error) -> Self {
        if let walship::Error::Refused(why) = e {
            // Stored data that conflicts with the operation is not damage: said as refused.
            Failure::Refused(why)
        } else if e.is_corruption() {
            Failure::Damage(e.to_string())
        } else {
            Failure::Error(e.to_string())
        }
    }
}

impl From<std::io::Error> for Failure {
    fn from(e: std::io::Error) -> Self {
        Failure::Error(e.to_string())
    }
}

pub type CmdResult = Result<(), Failure>;

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match format {
        LogFormat::Text => builder.with_target(false).init(),
        LogFormat::Json => builder.json().init(),
    }
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let log_format = cli.log_format;
    init_logging(log_format);
    exit_on_lost_output();
    let result = match cli.command {
        Command::Init(a) => store::init(a),
        Command::Write(a) => store::write(a),
        Command::Seal(a) => store::seal(a),
        Command::Dump(a) => dump::run(a),
        Command::Verify(a) => verify::run(a),
        Command::Bench(a) => bench::run(a),
        Command::Archive(a) => archive::run(a),
        Command::ArchivePrune(a) => archive_prune::run(a),
        Command::Restore(a) => restore::run(a),
        Command::Checkpoint(a) => checkpoint::run(a),
        Command::Promote(a) => promote::run(a),
        Command::Rewind(a) => rewind::run(a),
        Command::Serve(a) => serve::run(a),
        Command::Standby(a) => standby::run(a),
        Command::Status(a) => status::run(a),
        Command::Demo(a) => demo::demo(a),
        Command::DemoWriter(a) => demo::demo_writer(a),
    };
    let (kind, msg, code) = match result {
        Ok(()) => return ExitCode::SUCCESS,
        Err(Failure::Damage(msg)) => ("damage", msg, 1),
        Err(Failure::Error(msg)) => ("error", msg, 2),
        Err(Failure::Refused(msg)) => ("refused", msg, 1),
    };
    match log_format {
        LogFormat::Text => eprintln!("walship: {kind}: {msg}"),
        // One JSON object per line on stderr, the last one included.
        LogFormat::Json => tracing::error!(kind, exit_code = code, "{msg}"),
    }
    ExitCode::from(code)
}

/// `println!` panics when standard output cannot be written (a full disk, a closed pipe): the
/// command then ends with one error line and exit status 2, as for any other I/O failure, not
/// with a panic message. What the command did before stands (a seal is made; the lines already
/// printed were written).
fn exit_on_lost_output() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let msg = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| info.payload().downcast_ref::<&str>().copied())
            .unwrap_or("");
        if let Some(why) = msg.strip_prefix("failed printing to stdout: ") {
            eprintln!("walship: error: write to standard output: {why}");
            std::process::exit(2);
        }
        default(info);
    }));
}

/// Parses a size: plain bytes, or with a KiB/MiB/GiB (or K/M/G, KB/MB/GB: all powers of 1024)
/// suffix.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().map_err(|_| {
        format!("invalid size {s:?}: expected a number with an optional KiB, MiB or GiB suffix")
    })?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        other => {
            return Err(format!(
                "invalid size {s:?}: unknown unit {other:?} (use KiB, MiB or GiB)"
            ))
        }
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("invalid size {s:?}: too large"))
}

/// A runtime for one command.
pub fn runtime() -> Result<tokio::runtime::Runtime, Failure> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| Failure::Error(format!("start the async runtime: {e}")))
}

/// Completes on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
    tracing::info!("stopping");
}

/// Formats a timestamp in microseconds as RFC 3339 UTC.
pub fn format_time(us: i64) -> String {
    chrono::DateTime::from_timestamp_micros(us)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true))
        .unwrap_or_else(|| format!("invalid({us})"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("16MiB"), Ok(16 << 20));
        assert_eq!(parse_size("64KiB"), Ok(64 << 10));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("65536"), Ok(65536));
        assert!(parse_size("12XB").is_err());
        assert!(parse_size("MiB").is_err());
    }
}
