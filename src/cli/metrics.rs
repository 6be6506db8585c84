//! `--metrics-listen`: the metrics endpoint beside a long-running command.

use std::path::Path;
use std::sync::Arc;

use walship::metrics::{http, DirMetrics};

use super::Failure;

/// Binds `addr` and serves the metrics of the data directory at `root` on it; logs and
/// returns the serving task.
pub async fn start(
    addr: &str,
    insecure: bool,
    root: &Path,
) -> Result<tokio::task::JoinHandle<()>, Failure> {
    let metrics = DirMetrics::new(root).map_err(|e| Failure::Error(e.to_string()))?;
    let listener = http::bind(addr, insecure)
        .await
        .map_err(|e| Failure::Error(e.to_string()))?;
    let local = listener
        .local_addr()
        .map_err(|e| Failure::Error(format!("read the metrics address: {e}")))?;
    tracing::info!(address = %local, "serving metrics on GET /metrics");
    Ok(tokio::spawn(http::serve(listener, Arc::new(metrics))))
}
