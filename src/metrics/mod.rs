//! Metrics of a data directory in the Prometheus text exposition format: a registry an
//! embedding application can serve itself ([`DirMetrics`]), and a minimal HTTP endpoint that
//! serves it on `GET /metrics` ([`http`]).
//!
//! The values are read from the directory's files at each scrape, exactly as `walship status`
//! reads them ([`crate::status::status`]): nothing is counted on the writer's path.

pub mod http;

use std::path::{Path, PathBuf};

use prometheus::{Encoder, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder};
use thiserror::Error;

use crate::replication::synchronous::SyncState;
use crate::status::DirStatus;

/// Failures of building, updating or encoding the metrics.
#[derive(Debug, Error)]
pub enum MetricsError {
    #[error("metrics registry: {0}")]
    Registry(#[from] prometheus::Error),
    #[error("read the status of {path}: {source}")]
    Status {
        path: PathBuf,
        #[source]
        source: crate::Error,
    },
    #[error("metrics text is not UTF-8: {0}")]
    Utf8(#[from] std::string::FromUtf8Error),
}

/// Every metric served, with its type and help text: the reference documented in
/// OPERATIONS.md, in the order served.
pub const METRICS: &[(&str, &str, &str)] = &[
    (
        "walship_flush_position_bytes",
        "gauge",
        "End of the last valid record in the directory's files (sealed and open), in bytes of log.",
    ),
    (
        "walship_sealed_position_bytes",
        "gauge",
        "End of the last record in a sealed segment, in bytes of log.",
    ),
    (
        "walship_standby_written_position_bytes",
        "gauge",
        "Position received by the standby (maybe not yet synced) at its last acknowledgement, by standby name.",
    ),
    (
        "walship_standby_flushed_position_bytes",
        "gauge",
        "Position durable on the standby, by standby name.",
    ),
    (
        "walship_standby_applied_position_bytes",
        "gauge",
        "Position applied by the standby, by standby name.",
    ),
    (
        "walship_standby_lag_bytes",
        "gauge",
        "This directory's flush position minus the standby's applied position, by standby name.",
    ),
    (
        "walship_standby_connected",
        "gauge",
        "1 when the standby's slot was refreshed within the connected window, else 0, by standby name.",
    ),
    (
        "walship_standby_sync_state",
        "gauge",
        "1 for the standby's part in synchronous commit (state: sync, potential, quorum, async), 0 for the others, by standby name.",
    ),
    (
        "walship_sync_confirmed_position_bytes",
        "gauge",
        "Everything below is confirmed by the synchronous policy (served only while a serve --sync runs).",
    ),
    (
        "walship_sync_degraded",
        "gauge",
        "1 while commits continue without the standbys' confirmations after the sync timeout, else 0 (served only while a serve --sync runs).",
    ),
];

const SYNC_STATES: [(SyncState, &str); 4] = [
    (SyncState::Sync, "sync"),
    (SyncState::Potential, "potential"),
    (SyncState::Quorum, "quorum"),
    (SyncState::Async, "async"),
];

/// The metrics of one data directory, updated from its status at each scrape.
pub struct DirMetrics {
    root: PathBuf,
    registry: Registry,
    flush: IntGauge,
    sealed: IntGauge,
    written: IntGaugeVec,
    flushed: IntGaugeVec,
    applied: IntGaugeVec,
    lag: IntGaugeVec,
    connected: IntGaugeVec,
    sync_state: IntGaugeVec,
    sync_registry: Registry,
    confirmed: IntGauge,
    degraded: IntGauge,
}

fn help(name: &str) -> &'static str {
    METRICS
        .iter()
        .find(|m| m.0 == name)
        .map(|m| m.2)
        .unwrap_or("")
}

fn gauge(reg: &Registry, name: &str) -> Result<IntGauge, MetricsError> {
    let g = IntGauge::new(name, help(name))?;
    reg.register(Box::new(g.clone()))?;
    Ok(g)
}

fn per_standby(reg: &Registry, name: &str, labels: &[&str]) -> Result<IntGaugeVec, MetricsError> {
    let g = IntGaugeVec::new(Opts::new(name, help(name)), labels)?;
    reg.register(Box::new(g.clone()))?;
    Ok(g)
}

/// A position as a gauge value (positions past i64::MAX do not occur; clamped if they did).
fn bytes(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl DirMetrics {
    /// The metrics of the data directory at `root`.
    pub fn new(root: &Path) -> Result<DirMetrics, MetricsError> {
        let registry = Registry::new();
        let sync_registry = Registry::new();
        Ok(DirMetrics {
            root: root.to_path_buf(),
            flush: gauge(&registry, "walship_flush_position_bytes")?,
            sealed: gauge(&registry, "walship_sealed_position_bytes")?,
            written: per_standby(
                &registry,
                "walship_standby_written_position_bytes",
                &["name"],
            )?,
            flushed: per_standby(
                &registry,
                "walship_standby_flushed_position_bytes",
                &["name"],
            )?,
            applied: per_standby(
                &registry,
                "walship_standby_applied_position_bytes",
                &["name"],
            )?,
            lag: per_standby(&registry, "walship_standby_lag_bytes", &["name"])?,
            connected: per_standby(&registry, "walship_standby_connected", &["name"])?,
            sync_state: per_standby(&registry, "walship_standby_sync_state", &["name", "state"])?,
            confirmed: gauge(&sync_registry, "walship_sync_confirmed_position_bytes")?,
            degraded: gauge(&sync_registry, "walship_sync_degraded")?,
            registry,
            sync_registry,
        })
    }

    /// Sets every metric from `st`; standbys no longer listed are dropped.
    pub fn update(&self, st: &DirStatus) {
        self.flush.set(bytes(st.flush_lsn.0));
        self.sealed.set(bytes(st.sealed_lsn.0));
        for v in [
            &self.written,
            &self.flushed,
            &self.applied,
            &self.lag,
            &self.connected,
            &self.sync_state,
        ] {
            v.reset();
        }
        for sb in &st.standbys {
            let name = sb.name.clone().unwrap_or_else(|| sb.id.clone());
            let l = [name.as_str()];
            let written = sb.written_lsn.unwrap_or(sb.flushed_lsn);
            self.written.with_label_values(&l).set(bytes(written.0));
            self.flushed
                .with_label_values(&l)
                .set(bytes(sb.flushed_lsn.0));
            self.applied
                .with_label_values(&l)
                .set(bytes(sb.applied_lsn.0));
            self.lag.with_label_values(&l).set(bytes(sb.lag_bytes));
            self.connected
                .with_label_values(&l)
                .set(i64::from(sb.connected));
            for (state, label) in SYNC_STATES {
                self.sync_state
                    .with_label_values(&[name.as_str(), label])
                    .set(i64::from(sb.sync_state == state));
            }
        }
        if let Some(s) = &st.sync {
            self.confirmed.set(bytes(s.confirmed_lsn.0));
            self.degraded.set(i64::from(s.degraded));
        }
    }

    /// Reads the directory's status, updates the metrics from it and encodes them in the
    /// text exposition format (the synchronous policy's metrics only while one is served).
    pub fn scrape(&self) -> Result<String, MetricsError> {
        let st = crate::status::status(&self.root).map_err(|source| MetricsError::Status {
            path: self.root.clone(),
            source,
        })?;
        self.update(&st);
        let mut families = self.registry.gather();
        if st.sync.is_some() {
            families.extend(self.sync_registry.gather());
        }
        let mut out = Vec::new();
        TextEncoder::new().encode(&families, &mut out)?;
        Ok(String::from_utf8(out)?)
    }
}
