//! `standby`: receive, store, verify and apply a primary's sealed segments.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use walship::replication::{CheckingApplicator, Standby, StandbyConfig};

use super::serve::{duration_between, parse_primary, read_token, NetArgs, STOP_BOUND};
use super::{runtime, shutdown_signal};
use super::{CmdResult, Failure};

/// Follow a primary: receive its sealed segments, store them durably, apply them.
#[derive(Args, Debug)]
#[command(
    after_help = "DATA_DIR may be absent or empty: the first contact creates it with the primary's identity. It may also be a data directory of the same system that is behind the primary (restored from the archive, or a former primary): it resumes from its own end once the primary confirms their histories match; one that is ahead or diverged is refused and left as it was. A first contact that fails leaves nothing behind. Each segment is stored as .wal.partial, fsynced, verified (records, seal, checksum, chain), renamed to .wal and acknowledged; then its records are checked and counted and applied_lsn recorded. A segment that fails its checks is discarded, the primary is told where and why (it shows it in `walship status`), and it is asked for again. The standby reconnects with capped exponential backoff; it stops (exit 2) when the primary refuses it for good (wrong token, revoked, another system, WAL no longer there) or a TLS certificate check fails on either side (the message says which).\n\nExample:\n  walship standby ./replica --primary db1.example:5433 --tls-ca ca.crt --tls-cert standby-a.crt --tls-key standby-a.key"
)]
pub struct StandbyArgs {
    pub data_dir: PathBuf,
    /// The primary's address, HOST:PORT (port 1 to 65535).
    #[arg(long, value_parser = parse_primary)]
    pub primary: String,
    /// File holding the token (mode 600 or stricter): the shared one, or this standby's own.
    #[arg(long)]
    pub auth_token_file: Option<PathBuf>,
    #[command(flatten)]
    pub tls: ClientTlsArgs,
    /// Longest wait between reconnection attempts (100ms to 60m).
    #[arg(long, default_value = "10s", value_parser = duration_between(Duration::from_millis(100), Duration::from_secs(3600)))]
    pub max_backoff: Duration,
    /// The name the primary's synchronous policy (`serve --sync`) knows this standby by: 1 to
    /// 63 letters, digits, '_', '-' or '.'. Kept in state/standby.json; without it, the kept
    /// name, or `standby-` and the first 8 hex digits of its id.
    #[arg(long, value_parser = parse_name)]
    pub name: Option<String>,
    /// Serve metrics (Prometheus text format) on `GET /metrics` at this HOST:PORT (port 0
    /// picks a free port; the address bound is logged). A non-loopback address needs
    /// --metrics-insecure: the endpoint has neither TLS nor authentication.
    #[arg(long, value_parser = super::serve::parse_listen)]
    pub metrics_listen: Option<String>,
    /// Allow a non-loopback --metrics-listen address.
    #[arg(long, requires = "metrics_listen")]
    pub metrics_insecure: bool,
    #[command(flatten)]
    pub net: NetArgs,
}

/// How a client (a standby, `rewind`) reaches a primary over TLS.
#[derive(Args, Debug, Clone, Default)]
pub struct ClientTlsArgs {
    /// CA certificates (PEM) the primary's certificate must be signed by: TLS to the primary.
    #[arg(long)]
    pub tls_ca: Option<PathBuf>,
    /// A client certificate chain (PEM), for a primary that requires one.
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM, mode 600 or stricter).
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// The name the primary's certificate must carry (default: the host of its address).
    #[arg(long)]
    pub tls_server_name: Option<String>,
    /// TLS without checking the primary's certificate: the stream is encrypted, but anyone on
    /// the path can pose as the primary. A warning is logged at each connection.
    #[arg(long, conflicts_with = "tls_ca")]
    pub tls_insecure_skip_verify: bool,
}

impl ClientTlsArgs {
    /// The TLS files to connect with, None without TLS; a certificate or server name given
    /// without TLS is an error.
    pub fn files(&self) -> Result<Option<walship::replication::tls::ClientTlsFiles>, Failure> {
        let wanted = self.tls_ca.is_some() || self.tls_insecure_skip_verify;
        if !wanted && (self.tls_cert.is_some() || self.tls_server_name.is_some()) {
            return Err(Failure::Error(
                "--tls-cert and --tls-server-name need TLS: give --tls-ca (or --tls-insecure-skip-verify)".into(),
            ));
        }
        Ok(wanted.then(|| walship::replication::tls::ClientTlsFiles {
            ca: self.tls_ca.clone(),
            cert_key: self.tls_cert.clone().zip(self.tls_key.clone()),
            server_name: self.tls_server_name.clone(),
            insecure_skip_verify: self.tls_insecure_skip_verify,
        }))
    }
}

fn parse_name(s: &str) -> Result<String, String> {
    walship::replication::synchronous::check_name(s).map(|()| s.to_string())
}

pub fn run(a: StandbyArgs) -> CmdResult {
    a.net.check()?;
    let mut config = StandbyConfig::new(&a.data_dir, &a.primary);
    config.auth_token = read_token(&a.auth_token_file)?;
    config.tls = a.tls.files()?;
    config.max_frame = a.net.max_frame_size as usize;
    config.heartbeat_interval = a.net.heartbeat_interval;
    config.peer_timeout = a.net.peer_timeout;
    config.backoff_max = a.max_backoff;
    config.name = a.name;
    config.backoff_initial = config.backoff_initial.min(a.max_backoff);
    let data_dir = a.data_dir.clone();
    runtime()?.block_on(async move {
        // Bound first: an address that cannot be served is refused before the directory is
        // touched. Served after the start: a first contact creates the directory it reads.
        let listener =
            super::metrics::bind(a.metrics_listen.as_deref(), a.metrics_insecure).await?;
        let mut standby = Standby::start(config, CheckingApplicator::default()).await?;
        let metrics = super::metrics::start(listener, &data_dir, super::metrics::damage())?;
        let r = tokio::select! {
            r = standby.join() => r.map_err(Failure::from),
            _ = shutdown_signal() => {
                tracing::info!("stopping");
                standby.stop(STOP_BOUND).await.map_err(Failure::from)
            }
        };
        if let Some(m) = metrics {
            m.abort();
        }
        r
    })
}
