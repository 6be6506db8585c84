//! `--metrics-listen`: the metrics endpoint beside a long-running command.

use std::path::Path;
use std::sync::Arc;

use tokio::net::TcpListener;

use walship::metrics::{http, library, DirMetrics};

use super::Failure;

/// Binds the metrics address, when one is given: first thing, so that an address that cannot
/// be served is refused before the command changes anything.
pub async fn bind(addr: Option<&str>, insecure: bool) -> Result<Option<TcpListener>, Failure> {
    match addr {
        Some(addr) => http::bind(addr, insecure)
            .await
            .map(Some)
            .map_err(|e| Failure::Error(e.to_string())),
        None => Ok(None),
    }
}

/// Serves the metrics of the data directory at `root` on `listener` (from [`bind`]), with the
/// process's own counters in `process`; logs and returns the serving task.
pub fn start(
    listener: Option<TcpListener>,
    root: &Path,
    process: Vec<prometheus::Registry>,
) -> Result<Option<tokio::task::JoinHandle<()>>, Failure> {
    let Some(listener) = listener else {
        return Ok(None);
    };
    let metrics =
        DirMetrics::with_process(root, process).map_err(|e| Failure::Error(e.to_string()))?;
    let local = listener
        .local_addr()
        .map_err(|e| Failure::Error(format!("read the metrics address: {e}")))?;
    // The address bound (with port 0, the one picked) in the message itself, for whoever
    // reads the log to find the endpoint.
    tracing::info!("metrics listening on {local}");
    Ok(Some(tokio::spawn(http::serve(listener, Arc::new(metrics)))))
}

/// The counters every command serves beside the directory's: damage found.
pub fn damage() -> Vec<prometheus::Registry> {
    vec![library::library().damage_registry.clone()]
}
