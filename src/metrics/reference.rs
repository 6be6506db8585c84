//! The reference of every metric: name, type, help text and who serves it. OPERATIONS.md
//! documents the same list; a test checks that each endpoint serves only what is listed for it
//! and that every listed name is served somewhere.

/// Served by `walship serve --metrics-listen`.
pub const SERVE: u8 = 1;
/// Served by `walship standby --metrics-listen`.
pub const STANDBY: u8 = 2;
/// Served by `walship archive --metrics-listen`.
pub const ARCHIVE: u8 = 4;
/// In the library's registry ([`super::library::registry`]), for an embedding application.
pub const LIBRARY: u8 = 8;
/// Read from the data directory's files at each scrape: served by every command's endpoint.
pub const DIR: u8 = SERVE | STANDBY | ARCHIVE;

/// One metric of the reference.
#[derive(Clone, Copy, Debug)]
pub struct Metric {
    pub name: &'static str,
    /// `gauge`, `counter` or `histogram`.
    pub kind: &'static str,
    pub help: &'static str,
    /// Who serves it: a union of [`SERVE`], [`STANDBY`], [`ARCHIVE`], [`LIBRARY`].
    pub served_by: u8,
}

const fn m(name: &'static str, kind: &'static str, served_by: u8, help: &'static str) -> Metric {
    Metric {
        name,
        kind,
        help,
        served_by,
    }
}

/// Every metric, in the order of the reference.
pub const METRICS: &[Metric] = &[
    m("walship_flush_position_bytes", "gauge", DIR,
        "End of the last valid record in the directory's files (sealed and open), in bytes of log."),
    m("walship_sealed_position_bytes", "gauge", DIR,
        "End of the last record in a sealed segment, in bytes of log."),
    m("walship_applied_position_bytes", "gauge", DIR,
        "A standby's own applied position (served only for a standby's directory)."),
    m("walship_standby_written_position_bytes", "gauge", DIR,
        "Position received by the standby (maybe not yet synced) at its last acknowledgement, by standby name and id."),
    m("walship_standby_flushed_position_bytes", "gauge", DIR,
        "Position durable on the standby, by standby name and id."),
    m("walship_standby_applied_position_bytes", "gauge", DIR,
        "Position applied by the standby, by standby name and id."),
    m("walship_standby_lag_bytes", "gauge", DIR,
        "This directory's flush position minus the standby's applied position, by standby name and id."),
    m("walship_standby_lag_seconds", "gauge", DIR,
        "Age of the oldest record the standby has not applied (0 when caught up), by standby name and id."),
    m("walship_standby_flush_lag_seconds", "gauge", DIR,
        "How long before the standby's last acknowledgement the primary had made durable what the standby had not flushed then, by standby name and id."),
    m("walship_standby_connected", "gauge", DIR,
        "1 when the standby's slot was refreshed within the connected window, else 0, by standby name and id."),
    m("walship_standby_sync_state", "gauge", DIR,
        "1 for the standby's part in synchronous commit (state: sync, potential, quorum, async), 0 for the others, by standby name and id."),
    m("walship_sync_confirmed_position_bytes", "gauge", DIR,
        "Everything below is confirmed by the synchronous policy (served only while a serve --sync runs)."),
    m("walship_sync_degraded", "gauge", DIR,
        "1 while commits continue without the standbys' confirmations after the sync timeout, else 0 (served only while a serve --sync runs)."),
    m("walship_archiver_position_bytes", "gauge", DIR,
        "End of the last segment the archiver recorded as archived (served while an archiver is registered)."),
    m("walship_archiver_lag_bytes", "gauge", DIR,
        "The sealed position minus the archiver's position: sealed WAL a restore could not recover yet."),
    m("walship_archiver_lag_seconds", "gauge", DIR,
        "Age of the oldest sealed record not yet archived (0 when caught up)."),
    m("walship_retained_bytes", "gauge", DIR,
        "Bytes of sealed segments kept in the directory."),
    m("walship_retained_segments", "gauge", DIR,
        "Sealed segments kept in the directory."),
    m("walship_retention_held_by", "gauge", DIR,
        "1 for each holder (label holder: checkpoint, newest_segment or a consumer id) of the oldest sealed segment."),
    m("walship_consumer_held_back_bytes", "gauge", DIR,
        "Bytes of sealed segments below the checkpoint that this consumer alone holds back (what checkpoint --max-retained caps), by consumer id."),
    m("walship_checkpoint_position_bytes", "gauge", DIR,
        "The highest checkpoint declared: retention may remove sealed segments below it."),
    m("walship_damage_found_total", "counter", DIR | LIBRARY,
        "Damage found by this process since it started, by component (verify, shipper, standby, archiver)."),
    m("walship_archiver_last_success_timestamp_seconds", "gauge", ARCHIVE | LIBRARY,
        "When this process's archiver last finished a pass without error, in seconds since the epoch (0: never)."),
    m("walship_archiver_last_failure_timestamp_seconds", "gauge", ARCHIVE | LIBRARY,
        "When this process's archiver last failed a pass, in seconds since the epoch (0: never)."),
    m("walship_archiver_failures_total", "counter", ARCHIVE | LIBRARY,
        "Failed archive passes in this process (each is retried after a pause)."),
    m("walship_sync_duration_seconds", "histogram", LIBRARY,
        "Duration of the writer's syncs of the open segment (msync), in seconds."),
    m("walship_group_commit_records", "histogram", LIBRARY,
        "Records appended between the starts of two group-commit syncs: the records one sync covers."),
    m("walship_appended_records_total", "counter", LIBRARY,
        "Records appended by the writers of this process."),
    m("walship_appended_bytes_total", "counter", LIBRARY,
        "Bytes of records (headers and payloads) appended by the writers of this process."),
    m("walship_segments_sealed_total", "counter", LIBRARY,
        "Segments whose seal marker was made durable by the writers of this process."),
    m("walship_segments_recycled_total", "counter", LIBRARY,
        "Segment files the writers of this process prepared by reusing a recycled file."),
    m("walship_segments_removed_total", "counter", LIBRARY,
        "Sealed segments released by retention in this process (removed, or kept for reuse)."),
    m("walship_recovery_duration_seconds", "gauge", LIBRARY,
        "How long the last recovery at a writer's open took in this process, in seconds."),
    m("walship_recovery_repairs", "gauge", LIBRARY,
        "Repairs the last recovery at a writer's open made (0: the directory was clean; each is logged)."),
];

/// The help text of `name` (empty for a name not in the reference).
pub fn help(name: &str) -> &'static str {
    METRICS
        .iter()
        .find(|m| m.name == name)
        .map(|m| m.help)
        .unwrap_or("")
}
