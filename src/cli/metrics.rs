//! `--metrics-listen`: the metrics endpoint beside a long-running command.

use std::path::Path;
use std::sync::Arc;

use walship::metrics::{http, library, DirMetrics};

use super::Failure;

/// Binds `addr` and serves the metrics of the data directory at `root` on it, with the
/// process's own counters in `process`; logs and returns the serving task.
pub async fn start(
    addr: &str,
    insecure: bool,
    root: &Path,
    process: Vec<prometheus::Registry>,
) -> Result<tokio::task::JoinHandle<()>, Failure> {
    let metrics =
        DirMetrics::with_process(root, process).map_err(|e| Failure::Error(e.to_string()))?;
    let listener = http::bind(addr, insecure)
        .await
        .map_err(|e| Failure::Error(e.to_string()))?;
    let local = listener
        .local_addr()
        .map_err(|e| Failure::Error(format!("read the metrics address: {e}")))?;
    // The address bound (with port 0, the one picked) in the message itself, for whoever
    // reads the log to find the endpoint.
    tracing::info!("metrics listening on {local}");
    Ok(tokio::spawn(http::serve(listener, Arc::new(metrics))))
}

/// The counters every command serves beside the directory's: damage found.
pub fn damage() -> Vec<prometheus::Registry> {
    vec![library::library().damage_registry.clone()]
}
