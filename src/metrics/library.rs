//! The library's own counters: what this process did, as opposed to what the data directory's
//! files say ([`super::DirMetrics`]). One set per process, registered in [`registry`] for an
//! embedding application to serve, and in smaller registries for the parts a command runs.
//!
//! The writer's path stays cheap: a record adds to two atomic counters (no lock, no
//! allocation); a sync observes one duration and one group size.

use std::sync::LazyLock;

use prometheus::{
    Gauge, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry,
};

use super::reference::help;

/// Who may report damage found, as the label `component` of `walship_damage_found_total`.
pub const DAMAGE_COMPONENTS: [&str; 4] = ["verify", "shipper", "standby", "archiver"];

/// Every counter of the library, in this process.
pub struct Library {
    /// Everything below, for an embedding application.
    pub registry: Registry,
    /// The damage counters, served by every command's endpoint.
    pub damage_registry: Registry,
    /// The archiver's counters, served by `walship archive`.
    pub archiver_registry: Registry,
    pub sync_seconds: Histogram,
    pub group_records: Histogram,
    pub records: IntCounter,
    pub bytes: IntCounter,
    pub sealed: IntCounter,
    pub recycled: IntCounter,
    pub removed: IntCounter,
    pub recovery_seconds: Gauge,
    pub recovery_repairs: IntGauge,
    pub damage: IntCounterVec,
    pub archiver_success: Gauge,
    pub archiver_failure: Gauge,
    pub archiver_failures: IntCounter,
}

static LIBRARY: LazyLock<Library> = LazyLock::new(|| match Library::new() {
    Ok(l) => l,
    // Registration fails only on a duplicate or invalid name: a bug in the list, caught by
    // every test that touches the writer.
    Err(e) => panic!("the library's metrics do not register: {e}"),
});

/// The library's counters in this process.
pub fn library() -> &'static Library {
    &LIBRARY
}

/// The registry of every counter the library keeps in this process (the writer's syncs,
/// records and segments, recovery, retention, damage found, the archiver), for an embedding
/// application to gather and serve.
pub fn registry() -> &'static Registry {
    &library().registry
}

/// Counts `n` findings of damage by `component` (one of [`DAMAGE_COMPONENTS`]).
pub fn damage_found(component: &str, n: u64) {
    if n > 0 {
        library().damage.with_label_values(&[component]).inc_by(n);
    }
}

fn register<C: prometheus::core::Collector + Clone + 'static>(
    regs: &[&Registry],
    c: C,
) -> prometheus::Result<C> {
    for r in regs {
        r.register(Box::new(c.clone()))?;
    }
    Ok(c)
}

impl Library {
    fn new() -> prometheus::Result<Library> {
        let registry = Registry::new();
        let damage_registry = Registry::new();
        let archiver_registry = Registry::new();
        let all = [&registry];
        let counter = |name: &str| register(&all, IntCounter::new(name, help(name))?);
        let histogram = |name: &str, buckets: Vec<f64>| {
            register(
                &all,
                Histogram::with_opts(HistogramOpts::new(name, help(name)).buckets(buckets))?,
            )
        };
        let arch = [&registry, &archiver_registry];
        let name = "walship_damage_found_total";
        let damage = register(
            &[&registry, &damage_registry],
            IntCounterVec::new(Opts::new(name, help(name)), &["component"])?,
        )?;
        for c in DAMAGE_COMPONENTS {
            damage.with_label_values(&[c]);
        }
        Ok(Library {
            sync_seconds: histogram(
                "walship_sync_duration_seconds",
                prometheus::exponential_buckets(0.0001, 2.0, 16)?,
            )?,
            group_records: histogram(
                "walship_group_commit_records",
                prometheus::exponential_buckets(1.0, 2.0, 12)?,
            )?,
            records: counter("walship_appended_records_total")?,
            bytes: counter("walship_appended_bytes_total")?,
            sealed: counter("walship_segments_sealed_total")?,
            recycled: counter("walship_segments_recycled_total")?,
            removed: counter("walship_segments_removed_total")?,
            recovery_seconds: register(
                &all,
                Gauge::new(
                    "walship_recovery_duration_seconds",
                    help("walship_recovery_duration_seconds"),
                )?,
            )?,
            recovery_repairs: register(
                &all,
                IntGauge::new("walship_recovery_repairs", help("walship_recovery_repairs"))?,
            )?,
            damage,
            archiver_success: register(
                &arch,
                Gauge::new(
                    "walship_archiver_last_success_timestamp_seconds",
                    help("walship_archiver_last_success_timestamp_seconds"),
                )?,
            )?,
            archiver_failure: register(
                &arch,
                Gauge::new(
                    "walship_archiver_last_failure_timestamp_seconds",
                    help("walship_archiver_last_failure_timestamp_seconds"),
                )?,
            )?,
            archiver_failures: register(
                &arch,
                IntCounter::new(
                    "walship_archiver_failures_total",
                    help("walship_archiver_failures_total"),
                )?,
            )?,
            registry,
            damage_registry,
            archiver_registry,
        })
    }
}

/// Now, in seconds since the epoch, for the timestamp gauges.
pub fn now_seconds() -> f64 {
    crate::now_us() as f64 / 1e6
}
