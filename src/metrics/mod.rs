//! Metrics in the Prometheus text exposition format: those of a data directory, read from its
//! files at each scrape exactly as `walship status` reads them ([`DirMetrics`]); the library's
//! own counters of what this process did ([`library`]); the reference of every metric
//! ([`reference`]); and a minimal HTTP endpoint that serves them on `GET /metrics` ([`http`]).

pub mod http;
pub mod library;
pub mod reference;

pub use library::registry;
pub use reference::{Metric, METRICS};

use std::path::{Path, PathBuf};

use prometheus::{Encoder, GaugeVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder};
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

const SYNC_STATES: [(SyncState, &str); 4] = [
    (SyncState::Sync, "sync"),
    (SyncState::Potential, "potential"),
    (SyncState::Quorum, "quorum"),
    (SyncState::Async, "async"),
];

/// The metrics of one data directory, updated from its status at each scrape.
pub struct DirMetrics {
    root: PathBuf,
    /// Held from setting the gauges to encoding them: a scrape resets and refills them, and
    /// a second scrape at the same time would otherwise encode them half filled.
    scraping: std::sync::Mutex<()>,
    registry: Registry,
    flush: IntGauge,
    sealed: IntGauge,
    written: IntGaugeVec,
    flushed: IntGaugeVec,
    applied: IntGaugeVec,
    lag: IntGaugeVec,
    lag_seconds: GaugeVec,
    flush_lag_seconds: GaugeVec,
    connected: IntGaugeVec,
    sync_state: IntGaugeVec,
    retained_bytes: IntGauge,
    retained_segments: IntGauge,
    held_by: IntGaugeVec,
    held_back: IntGaugeVec,
    checkpoint: IntGauge,
    /// Served only for a standby's directory.
    standby_registry: Registry,
    own_applied: IntGauge,
    /// Served only while a `serve --sync` runs.
    sync_registry: Registry,
    confirmed: IntGauge,
    degraded: IntGauge,
    /// Served only while an archiver is registered.
    archiver_registry: Registry,
    archiver_position: IntGauge,
    archiver_lag: IntGauge,
    archiver_lag_seconds: GaugeVec,
    /// The process's own counters served beside the directory's.
    process: Vec<Registry>,
}

use reference::help;

fn gauge(reg: &Registry, name: &str) -> Result<IntGauge, MetricsError> {
    let g = IntGauge::new(name, help(name))?;
    reg.register(Box::new(g.clone()))?;
    Ok(g)
}

/// The labels of a per-standby metric: its name (its id when its slot has none), and its id,
/// which tells apart two slots given the same name.
const STANDBY: &[&str] = &["name", "id"];

fn per_standby(reg: &Registry, name: &str, labels: &[&str]) -> Result<IntGaugeVec, MetricsError> {
    let g = IntGaugeVec::new(Opts::new(name, help(name)), labels)?;
    reg.register(Box::new(g.clone()))?;
    Ok(g)
}

/// A gauge in seconds, labelled: a sample only where the value is known.
fn seconds(reg: &Registry, name: &str, labels: &[&str]) -> Result<GaugeVec, MetricsError> {
    let g = GaugeVec::new(Opts::new(name, help(name)), labels)?;
    reg.register(Box::new(g.clone()))?;
    Ok(g)
}

/// The archiver registered in the directory (not marked lost) furthest behind, if any: with
/// two archives, the one a restore could recover the least from.
fn archiver(st: &DirStatus) -> Option<&crate::retention::ConsumerRetention> {
    st.retention
        .consumers
        .iter()
        .filter(|c| c.kind == crate::consumers::ConsumerKind::Archiver && !c.lost)
        .min_by_key(|c| c.position)
}

/// A position as a gauge value (positions past i64::MAX do not occur; clamped if they did).
fn bytes(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

impl DirMetrics {
    /// The metrics of the data directory at `root`.
    pub fn new(root: &Path) -> Result<DirMetrics, MetricsError> {
        DirMetrics::with_process(root, Vec::new())
    }

    /// The metrics of the data directory at `root`, served with the families of `process`
    /// (registries of this process's own counters, like [`library::registry`]).
    pub fn with_process(root: &Path, process: Vec<Registry>) -> Result<DirMetrics, MetricsError> {
        let registry = Registry::new();
        let sync_registry = Registry::new();
        let standby_registry = Registry::new();
        let archiver_registry = Registry::new();
        Ok(DirMetrics {
            process,
            root: root.to_path_buf(),
            scraping: std::sync::Mutex::new(()),
            flush: gauge(&registry, "walship_flush_position_bytes")?,
            sealed: gauge(&registry, "walship_sealed_position_bytes")?,
            written: per_standby(&registry, "walship_standby_written_position_bytes", STANDBY)?,
            flushed: per_standby(&registry, "walship_standby_flushed_position_bytes", STANDBY)?,
            applied: per_standby(&registry, "walship_standby_applied_position_bytes", STANDBY)?,
            lag: per_standby(&registry, "walship_standby_lag_bytes", STANDBY)?,
            lag_seconds: seconds(&registry, "walship_standby_lag_seconds", STANDBY)?,
            flush_lag_seconds: seconds(&registry, "walship_standby_flush_lag_seconds", STANDBY)?,
            connected: per_standby(&registry, "walship_standby_connected", STANDBY)?,
            sync_state: per_standby(
                &registry,
                "walship_standby_sync_state",
                &["name", "id", "state"],
            )?,
            retained_bytes: gauge(&registry, "walship_retained_bytes")?,
            retained_segments: gauge(&registry, "walship_retained_segments")?,
            held_by: per_standby(&registry, "walship_retention_held_by", &["holder"])?,
            held_back: per_standby(&registry, "walship_consumer_held_back_bytes", &["consumer"])?,
            checkpoint: gauge(&registry, "walship_checkpoint_position_bytes")?,
            own_applied: gauge(&standby_registry, "walship_applied_position_bytes")?,
            confirmed: gauge(&sync_registry, "walship_sync_confirmed_position_bytes")?,
            degraded: gauge(&sync_registry, "walship_sync_degraded")?,
            archiver_position: gauge(&archiver_registry, "walship_archiver_position_bytes")?,
            archiver_lag: gauge(&archiver_registry, "walship_archiver_lag_bytes")?,
            archiver_lag_seconds: seconds(&archiver_registry, "walship_archiver_lag_seconds", &[])?,
            registry,
            sync_registry,
            standby_registry,
            archiver_registry,
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
            &self.held_by,
        ] {
            v.reset();
        }
        self.lag_seconds.reset();
        self.flush_lag_seconds.reset();
        self.archiver_lag_seconds.reset();
        for sb in &st.standbys {
            let name = sb.name.clone().unwrap_or_else(|| sb.id.clone());
            let l = [name.as_str(), sb.id.as_str()];
            let written = sb.written_lsn.unwrap_or(sb.flushed_lsn);
            self.written.with_label_values(&l).set(bytes(written.0));
            self.flushed
                .with_label_values(&l)
                .set(bytes(sb.flushed_lsn.0));
            self.applied
                .with_label_values(&l)
                .set(bytes(sb.applied_lsn.0));
            self.lag.with_label_values(&l).set(bytes(sb.lag_bytes));
            if let Some(v) = sb.lag_seconds {
                self.lag_seconds.with_label_values(&l).set(v);
            }
            if let Some(v) = sb.flush_lag_seconds {
                self.flush_lag_seconds.with_label_values(&l).set(v);
            }
            self.connected
                .with_label_values(&l)
                .set(i64::from(sb.connected));
            for (state, label) in SYNC_STATES {
                self.sync_state
                    .with_label_values(&[name.as_str(), sb.id.as_str(), label])
                    .set(i64::from(sb.sync_state == state));
            }
        }
        if let Some(s) = &st.sync {
            self.confirmed.set(bytes(s.confirmed_lsn.0));
            self.degraded.set(i64::from(s.degraded));
        }
        let r = &st.retention;
        self.retained_bytes.set(bytes(r.sealed_bytes));
        self.retained_segments.set(bytes(r.sealed_segments));
        self.checkpoint.set(bytes(r.checkpoint_lsn.0));
        for h in &r.held_by {
            self.held_by.with_label_values(&[h.as_str()]).set(1);
        }
        if let Some(a) = st.applied_lsn {
            self.own_applied.set(bytes(a.0));
        }
        if let Some(a) = archiver(st) {
            self.archiver_position.set(bytes(a.position.0));
            self.archiver_lag
                .set(bytes(st.sealed_lsn.saturating_sub(a.position)));
        }
    }

    /// Reads the directory's status, updates the metrics from it and encodes them in the
    /// text exposition format (the synchronous policy's metrics only while one is served).
    pub fn scrape(&self) -> Result<String, MetricsError> {
        let st = crate::status::status(&self.root).map_err(|source| MetricsError::Status {
            path: self.root.clone(),
            source,
        })?;
        // Read here rather than in `update`: it lists the sealed segments again.
        let held =
            crate::retention::held_back(&crate::DataDir::new(&self.root)).map_err(|source| {
                MetricsError::Status {
                    path: self.root.clone(),
                    source,
                }
            })?;
        // Read here rather than in `update`: it reads the oldest record not archived.
        let archiver_lag = archiver(&st).and_then(|a| {
            crate::status::lag_seconds(&self.root, a.position, st.sealed_lsn, crate::now_us())
        });
        let _scraping = crate::sync::lock(&self.scraping);
        self.update(&st);
        self.held_back.reset();
        for (id, n) in held {
            self.held_back
                .with_label_values(&[id.as_str()])
                .set(bytes(n));
        }
        if let Some(v) = archiver_lag {
            self.archiver_lag_seconds.with_label_values(&[]).set(v);
        }
        let mut families = self.registry.gather();
        if st.applied_lsn.is_some() {
            families.extend(self.standby_registry.gather());
        }
        if st.sync.is_some() {
            families.extend(self.sync_registry.gather());
        }
        if archiver(&st).is_some() {
            families.extend(self.archiver_registry.gather());
        }
        for r in &self.process {
            families.extend(r.gather());
        }
        let mut out = Vec::new();
        TextEncoder::new().encode(&families, &mut out)?;
        Ok(String::from_utf8(out)?)
    }
}
