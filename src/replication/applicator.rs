//! What a standby does with each record once its segment is stored: the library's extension
//! point. Records arrive in LSN order, each at least once (after a crash, records past the last
//! recorded applied position are applied again), so an applicator should be idempotent by LSN.

use crate::format::record::RecordRef;
use crate::Lsn;

/// Applies records on a standby.
pub trait Applicator: Send + 'static {
    /// Applies one record. An error stops the standby: nothing after it is applied.
    fn apply(&mut self, record: &RecordRef<'_>) -> crate::Result<()>;

    /// Makes everything applied so far durable; called before the standby records its new
    /// applied position (once per segment, and once per synced batch of the open segment).
    fn flush(&mut self) -> crate::Result<()> {
        Ok(())
    }
}

/// The command line's applicator: checks that records come in strictly increasing LSN order
/// without overlap, and counts them.
#[derive(Debug, Default)]
pub struct CheckingApplicator {
    pub records: u64,
    pub payload_bytes: u64,
    /// End of the last record applied.
    pub last_end: Lsn,
}

impl Applicator for CheckingApplicator {
    fn apply(&mut self, r: &RecordRef<'_>) -> crate::Result<()> {
        if r.lsn() < self.last_end {
            return Err(crate::Error::Other(format!(
                "record at {} overlaps the previous record, which ends at {}",
                r.lsn(),
                self.last_end
            )));
        }
        self.records += 1;
        self.payload_bytes += r.payload.len() as u64;
        self.last_end = r.end_lsn();
        Ok(())
    }
}
