//! How many sealed segments may wait for the finisher (not yet durable) before a rotation
//! waits for it.
//!
//! A writer whose appends nobody waits for (no sync) can outrun the disk; its sealed segments
//! are dirty page-cache data until the finisher has synced them. The bound keeps that backlog,
//! and the data a crash of the machine could take with it, to
//! [`WalOptions::max_unsynced_seal_bytes`](super::WalOptions) (256 MiB by default), in whole
//! segments and at least two.

/// The default of [`WalOptions::max_unsynced_seal_bytes`](super::WalOptions).
pub const DEFAULT_MAX_UNSYNCED_SEAL_BYTES: u64 = 256 << 20;

/// The number of sealed segments of `segment_size` bytes that may be in flight under a bound
/// of `bytes`: whole segments, at least two.
pub fn segments_in_flight(bytes: u64, segment_size: u64) -> u64 {
    (bytes / segment_size.max(1)).max(2)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEG: u64 = 16 << 20;

    #[test]
    fn the_bound_counts_whole_segments() {
        assert_eq!(segments_in_flight(DEFAULT_MAX_UNSYNCED_SEAL_BYTES, SEG), 16);
        assert_eq!(segments_in_flight(5 * SEG + SEG / 2, SEG), 5);
        assert_eq!(segments_in_flight(1 << 30, 64 << 10), 16384);
    }

    #[test]
    fn at_least_two_segments_may_be_in_flight() {
        assert_eq!(segments_in_flight(0, SEG), 2);
        assert_eq!(segments_in_flight(SEG, SEG), 2);
        assert_eq!(segments_in_flight(3 * SEG, SEG), 3);
        assert_eq!(segments_in_flight(SEG, 0), SEG);
    }
}
