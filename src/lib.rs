//! walship: a write-ahead-log segment store with file-shipping replication.
//!
//! An application appends entries to a [`Wal`]; walship makes them durable in CRC-checked
//! segment files, seals full segments, and recovers the valid prefix after a crash.

pub mod archive;
pub mod consumer_warnings;
pub mod consumers;
pub mod damage;
pub mod datadir;
pub mod decoder;
pub mod entry;
pub mod episode;
pub mod error;
pub mod faults;
pub mod flush_position;
pub mod format;
pub mod fsutil;
pub mod handoff;
pub mod history;
pub mod log_ends;
pub mod lsn;
pub mod metrics;
pub mod promote;
pub mod reader;
pub mod recovery;
pub mod recycling;
pub mod replication;
pub mod retention;
pub mod rewind;
pub mod sealed_set;
pub mod segment_check;
pub mod segment_file;
pub mod setaside;
pub mod status;
pub mod sync;
pub mod thread_usage;
pub mod timeline;
pub mod verify;
pub mod wal;

pub use datadir::DataDir;
pub use entry::{Entry, EntryType};
pub use error::{Error, Result};
pub use lsn::Lsn;
pub use reader::{WalReader, WalRecord};
pub use recovery::RecoveryMode;
pub use wal::{Appended, SegmentFill, Wal, WalOptions, WalStats};

/// Microseconds since the Unix epoch, UTC: the timestamp stored in records and headers.
///
/// Read once per append: `clock_gettime` directly, with integer arithmetic, costs less than
/// `SystemTime` and its checked `Duration` (a `u128` product per call).
pub fn now_us() -> i64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec for the call to fill.
    if unsafe { libc::clock_gettime(libc::CLOCK_REALTIME, &mut ts) } == 0 {
        // `tv_nsec` is within [0, 1e9) also before the epoch, so this rounds down.
        return ts.tv_sec * 1_000_000 + ts.tv_nsec / 1_000;
    }
    match std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
        Ok(d) => d.as_micros() as i64,
        Err(e) => -(e.duration().as_micros() as i64),
    }
}

/// README.md's examples are compiled and run as doc tests, so the README cannot drift.
#[doc = include_str!("../README.md")]
#[cfg(doctest)]
pub struct ReadmeDoctests;

#[cfg(test)]
mod tests {
    #[test]
    fn wal_is_shareable_between_threads() {
        fn assert_send_sync<T: Send + Sync>() {}
        assert_send_sync::<crate::Wal>();
    }
}
