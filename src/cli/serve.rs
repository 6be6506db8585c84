//! `serve`: ship sealed segments to standbys.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use tokio::signal::unix::{signal, Signal, SignalKind};
use walship::consumer_warnings::{ConsumerWarnings, WarningOptions, CHECK_INTERVAL};
use walship::replication::synchronous::{SyncConfig, SyncLevel, SyncPolicy};
use walship::replication::{AuthToken, ReplError, Shipper, ShipperConfig};

use super::{parse_size, CmdResult, Failure};

/// Ship sealed segments of a data directory to standbys over TCP.
#[derive(Args, Debug)]
#[command(
    after_help = "It only reads sealed segments and never takes the directory's lock, so it runs beside the writer, and can serve a standby's directory onward (cascading). Each segment is checked whole before it is sent; damage found, and segments a standby refuses, are logged as DAMAGE and recorded for `walship status`. On a non-loopback address it requires TLS (--tls-cert, --tls-key) and a way to authenticate standbys (--tls-client-ca, --token-dir or --auth-token-file), unless --insecure is given. SIGHUP reloads the TLS files (established streams keep going) and cuts the streams of standbys whose token file was removed from --token-dir; a changed TLS file is also picked up by itself at the next connection. On start it prints `listening on ADDR`.\n\nWith --sync, commits made with `walship write --durable --wait-sync` (or waiting on the library's Shipper::sync_waiter) are acknowledged only once the standbys the policy names (by `standby --name`) confirm them at --sync-level; without --sync-timeout they wait for ever when too few are connected. The policy and the confirmed position are published in DATA_DIR/state/, and `walship status` shows them.\n\nExample:\n  walship serve ./data --listen 0.0.0.0:5433 --tls-cert primary.crt --tls-key primary.key --tls-client-ca ca.crt\n  walship serve ./data --listen 127.0.0.1:5433 --sync 'FIRST 1 (s1, s2)' --sync-timeout 10s"
)]
pub struct ServeArgs {
    pub data_dir: PathBuf,
    /// Address to listen on, HOST:PORT (port 0 picks a free port).
    #[arg(long, value_parser = parse_listen)]
    pub listen: String,
    /// File holding the shared token (mode 600 or stricter); standbys must prove they know it.
    #[arg(long, conflicts_with = "token_dir")]
    pub auth_token_file: Option<PathBuf>,
    /// Directory of standbys' own tokens: the file DIR/NAME (mode 600) holds the token of the
    /// standby NAME. Read at every connection; removing a file revokes that standby.
    #[arg(long)]
    pub token_dir: Option<PathBuf>,
    /// The primary's TLS certificate chain (PEM): TLS on the port.
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM, mode 600 or stricter).
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// CA certificates (PEM) of standbys' certificates: every standby must present one signed
    /// by them, and is named by it (its common name, or a DNS name).
    #[arg(long, requires = "tls_cert")]
    pub tls_client_ca: Option<PathBuf>,
    /// Allow a non-loopback address without TLS or without authenticating standbys.
    #[arg(long)]
    pub insecure: bool,
    /// Connections served at once; more are refused at once with a `Busy` error.
    #[arg(long, default_value_t = walship::replication::shipper::DEFAULT_MAX_CONNECTIONS as u64, value_parser = clap::value_parser!(u64).range(1..=65536))]
    pub max_connections: u64,
    /// Time a new connection has to authenticate and identify itself before it is dropped
    /// (100ms to 60m).
    #[arg(long, default_value = "10s", value_parser = duration_between(Duration::from_millis(100), Duration::from_secs(3600)))]
    pub handshake_timeout: Duration,
    /// Synchronous commit: which standbys (by `standby --name`) must confirm each commit:
    /// 'FIRST n (a, b, c)' (the first n connected, in this order), 'ANY n (a, b, c)' (any n),
    /// '*' for any name. Published in DATA_DIR/state/ for `write --wait-sync`.
    #[arg(long, value_parser = parse_policy)]
    pub sync: Option<SyncPolicy>,
    /// How far the standbys must have taken a commit: remote_write (received), remote_flush
    /// (durable on the standby) or remote_apply (applied).
    #[arg(long, default_value = "remote_flush", requires = "sync", value_parser = clap::builder::ValueParser::new(|s: &str| s.parse::<SyncLevel>()))]
    pub sync_level: SyncLevel,
    /// Without confirmations for this long, continue without the standbys (degraded, logged as
    /// an error, shown by `status`) until they catch up (10ms to 60m). Without it commits wait
    /// for ever.
    #[arg(long, requires = "sync", value_parser = duration_between(Duration::from_millis(10), Duration::from_secs(3600)))]
    pub sync_timeout: Option<Duration>,
    /// Serve metrics (Prometheus text format) on `GET /metrics` at this HOST:PORT (port 0
    /// picks a free port). A non-loopback address needs --insecure: the endpoint has neither TLS
    /// nor authentication.
    #[arg(long, value_parser = parse_listen)]
    pub metrics_listen: Option<String>,
    /// Warn (once per episode, per standby) when a standby's applied position is more than
    /// this far behind the flush position...
    #[arg(long, default_value = "256MiB", value_parser = parse_size)]
    pub warn_standby_lag: u64,
    /// ...or the oldest record it has not applied was written longer ago than this (1s to
    /// 24h).
    #[arg(long, default_value = "60s", value_parser = duration_between(Duration::from_secs(1), Duration::from_secs(86_400)))]
    pub warn_standby_lag_time: Duration,
    /// The --max-retained your checkpoints apply: warn (once per episode, per consumer) when
    /// one consumer alone holds back more than --warn-retained percent of it.
    #[arg(long, value_parser = parse_size)]
    pub max_retained: Option<u64>,
    /// The percentage of --max-retained that is warned about (1 to 100).
    #[arg(long, default_value_t = walship::consumer_warnings::DEFAULT_RETAINED_PERCENT, requires = "max_retained", value_parser = clap::value_parser!(u8).range(1..=100))]
    pub warn_retained: u8,
    #[command(flatten)]
    pub net: NetArgs,
}

fn parse_policy(s: &str) -> Result<SyncPolicy, String> {
    SyncPolicy::parse(s).map_err(|e| e.to_string())
}

/// Options shared by `serve` and `standby`.
#[derive(Args, Debug)]
pub struct NetArgs {
    /// Largest frame accepted from the peer (64KiB to 64MiB).
    #[arg(long, default_value = "8MiB", value_parser = parse_size)]
    pub max_frame_size: u64,
    /// Interval between heartbeats (like 1s or 500ms; 10ms to 60s, below --peer-timeout).
    #[arg(long, default_value = "1s", value_parser = duration_between(Duration::from_millis(10), Duration::from_secs(60)))]
    pub heartbeat_interval: Duration,
    /// Drop a peer silent for this long (100ms to 60m, above --heartbeat-interval).
    #[arg(long, default_value = "10s", value_parser = duration_between(Duration::from_millis(100), Duration::from_secs(3600)))]
    pub peer_timeout: Duration,
}

impl NetArgs {
    /// A peer that heartbeats no more often than it is timed out would be dropped between two
    /// heartbeats.
    pub fn check(&self) -> Result<(), Failure> {
        if self.heartbeat_interval >= self.peer_timeout {
            return Err(Failure::Error(format!(
                "--heartbeat-interval ({}) must be shorter than --peer-timeout ({}): a peer is dropped after a peer timeout without a message",
                show(self.heartbeat_interval),
                show(self.peer_timeout)
            )));
        }
        Ok(())
    }
}

/// A value parser for a duration flag that accepts only `min..=max`: zero and absurd
/// durations are usage errors (exit 2) that name the accepted range.
pub fn duration_between(
    min: Duration,
    max: Duration,
) -> impl Fn(&str) -> Result<Duration, String> + Clone + Send + Sync + 'static {
    move |s: &str| {
        let d = parse_duration(s)?;
        if d < min || d > max {
            return Err(format!(
                "{} is out of range: give a duration from {} to {}",
                show(d),
                show(min),
                show(max)
            ));
        }
        Ok(d)
    }
}

/// A duration as the flags take it.
pub fn show(d: Duration) -> String {
    let ms = d.as_millis();
    if ms % 60_000 == 0 && ms > 0 {
        format!("{}m", ms / 60_000)
    } else if ms % 1000 == 0 {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

/// `serve --listen`: HOST:PORT, port 0 to 65535 (0 picks a free port).
pub fn parse_listen(s: &str) -> Result<String, String> {
    walship::replication::check_address(s, true).map(|()| s.to_string())
}

/// `standby --primary`: HOST:PORT, port 1 to 65535.
pub fn parse_primary(s: &str) -> Result<String, String> {
    walship::replication::check_address(s, false).map(|()| s.to_string())
}

/// Parses a duration: a number with ms, s, m or h (a plain number is seconds).
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("invalid duration {s:?}: expected a number with ms, s, m or h"))?;
    let too_long = || format!("invalid duration {s:?}: too long");
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" | "" => Ok(Duration::from_secs(n)),
        "m" => n
            .checked_mul(60)
            .map(Duration::from_secs)
            .ok_or_else(too_long),
        "h" => n
            .checked_mul(3600)
            .map(Duration::from_secs)
            .ok_or_else(too_long),
        other => Err(format!(
            "invalid duration {s:?}: unknown unit {other:?} (use ms, s, m or h)"
        )),
    }
}

impl From<ReplError> for Failure {
    fn from(e: ReplError) -> Self {
        match e {
            ReplError::Store(e) => Failure::from(e),
            e if e.is_diverged() => Failure::Refused(e.to_string()),
            other => Failure::Error(other.to_string()),
        }
    }
}

pub fn read_token(path: &Option<PathBuf>) -> Result<Option<AuthToken>, Failure> {
    path.as_deref()
        .map(AuthToken::from_file)
        .transpose()
        .map_err(|e| Failure::Error(e.to_string()))
}

/// How long a clean shutdown may take.
pub const STOP_BOUND: Duration = Duration::from_secs(5);

pub fn run(a: ServeArgs) -> CmdResult {
    a.net.check()?;
    let mut config = ShipperConfig::new(&a.data_dir, &a.listen);
    config.auth_token = read_token(&a.auth_token_file)?;
    config.token_dir = a.token_dir.clone();
    config.tls = match (&a.tls_cert, &a.tls_key) {
        (Some(cert), Some(key)) => Some(walship::replication::tls::ServerTlsFiles {
            cert: cert.clone(),
            key: key.clone(),
            client_ca: a.tls_client_ca.clone(),
        }),
        _ => None,
    };
    config.insecure = a.insecure;
    config.max_connections = a.max_connections as usize;
    config.handshake_timeout = a.handshake_timeout;
    config.max_frame = a.net.max_frame_size as usize;
    config.heartbeat_interval = a.net.heartbeat_interval;
    config.peer_timeout = a.net.peer_timeout;
    config.sync = a.sync.map(|policy| SyncConfig {
        policy,
        level: a.sync_level,
        timeout: a.sync_timeout,
    });
    let data_dir = a.data_dir.clone();
    let warnings = WarningOptions {
        standby_lag_bytes: a.warn_standby_lag,
        standby_lag_time: a.warn_standby_lag_time,
        max_retained: a.max_retained,
        retained_percent: a.warn_retained,
    };
    super::runtime()?.block_on(async move {
        let listener = super::metrics::bind(a.metrics_listen.as_deref(), a.insecure).await?;
        let metrics = super::metrics::start(listener, &data_dir, super::metrics::damage())?;
        let mut shipper = Shipper::start(config.clone()).await?;
        {
            use std::io::Write;
            let mut out = std::io::stdout().lock();
            writeln!(out, "listening on {}", shipper.local_addr())?;
            out.flush()?;
        }
        let checker = check_warnings(data_dir.clone(), warnings);
        let stop = super::shutdown_signal();
        tokio::pin!(stop);
        let mut hup = signal(SignalKind::hangup()).ok();
        // A promotion, or a standby following its primary onto a new timeline, changes the
        // directory's timeline: the shipper is started again on it, on the same address, and
        // its standbys reconnect to the new identity.
        while let Some(timeline) = serve_until(&shipper, &mut stop, hup.as_mut(), &data_dir).await {
            shipper.stop(STOP_BOUND).await;
            tracing::info!(
                timeline,
                "the directory is now on another timeline (promoted, or a standby that followed its primary onto it): serving it again"
            );
            config.listen = shipper.local_addr().to_string();
            shipper = Shipper::start(config.clone()).await?;
        }
        tracing::info!("stopping");
        checker.abort();
        if let Some(m) = metrics {
            m.abort();
        }
        shipper.stop(STOP_BOUND).await;
        Ok(())
    })
}

/// How often a running serve reads the control file for a new timeline.
const TIMELINE_CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// Checks the consumers' warnings every [`CHECK_INTERVAL`] until aborted (the files are read
/// off the runtime's threads). A check that cannot read the directory is logged at debug level
/// and tried again at the next one.
fn check_warnings(dir: PathBuf, opts: WarningOptions) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut warnings = Some(ConsumerWarnings::new(&dir, opts));
        loop {
            tokio::time::sleep(CHECK_INTERVAL).await;
            let Some(mut w) = warnings.take() else {
                return;
            };
            let Ok((w, r)) = tokio::task::spawn_blocking(move || {
                let r = w.check();
                (w, r)
            })
            .await
            else {
                return;
            };
            if let Err(e) = r {
                tracing::debug!(error = %e, "the consumers' warnings could not be checked");
            }
            warnings = Some(w);
        }
    })
}

/// Serves until a signal to stop (`None`) or until the directory's control file names another
/// timeline than the shipper serves (`Some` of it), reloading the shipper's TLS files and
/// token directory on each SIGHUP.
async fn serve_until(
    shipper: &Shipper,
    stop: &mut std::pin::Pin<&mut impl std::future::Future<Output = ()>>,
    mut hup: Option<&mut Signal>,
    data_dir: &std::path::Path,
) -> Option<u32> {
    let mut tick = tokio::time::interval(TIMELINE_CHECK_INTERVAL);
    loop {
        tokio::select! {
            _ = stop.as_mut() => return None,
            Some(()) = async { hup.as_mut()?.recv().await } => match shipper.reload() {
                Ok(()) => tracing::info!("reloaded on SIGHUP"),
                Err(e) => tracing::error!(error = %e, "reload on SIGHUP failed: the TLS configuration in use stays"),
            },
            _ = tick.tick() => {
                let dd = walship::datadir::DataDir::new(data_dir);
                // Unreadable for a moment (a promotion replaces it): read again at the next tick.
                if let Ok(Ok(c)) = tokio::task::spawn_blocking(move || dd.read_control()).await {
                    if c.timeline != shipper.timeline() {
                        return Some(c.timeline);
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert_eq!(parse_duration("1m"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_duration("24h"), Ok(Duration::from_secs(86_400)));
        assert!(parse_duration("1d").is_err());
        assert!(parse_duration(&format!("{}h", u64::MAX)).is_err());
        assert!(parse_duration("ms").is_err());
        assert!(parse_duration(&format!("{}m", u64::MAX)).is_err());
        let p = duration_between(Duration::from_millis(10), Duration::from_secs(60));
        assert!(p("0s").unwrap_err().contains("from 10ms to 1m"));
        assert!(p("0ms").is_err());
        assert!(p("61s").is_err());
        assert_eq!(p("10ms"), Ok(Duration::from_millis(10)));
        assert_eq!(show(Duration::from_millis(1500)), "1500ms");
    }
}
