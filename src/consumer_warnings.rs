//! Warnings about the consumers of a primary's data directory, read from its files (as
//! `walship status` reads them) and logged once per episode ([`crate::episode`]): each standby
//! behind by more than a threshold of bytes or seconds (by name, connected or not), and each
//! consumer holding retained WAL near the `--max-retained` cap its checkpoints apply. `serve`
//! checks them every [`CHECK_INTERVAL`].

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::episode::Episode;
use crate::error::Result;

/// How often `serve` checks.
pub const CHECK_INTERVAL: Duration = Duration::from_secs(1);
/// The default of [`WarningOptions::standby_lag_bytes`].
pub const DEFAULT_STANDBY_LAG_BYTES: u64 = 256 << 20;
/// The default of [`WarningOptions::standby_lag_time`].
pub const DEFAULT_STANDBY_LAG_TIME: Duration = Duration::from_secs(60);
/// The default of [`WarningOptions::retained_percent`].
pub const DEFAULT_RETAINED_PERCENT: u8 = 80;

/// The thresholds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WarningOptions {
    /// A standby is behind when the primary's flush position is more than this many bytes
    /// past what it applied...
    pub standby_lag_bytes: u64,
    /// ...or the oldest record it has not applied was written longer ago than this.
    pub standby_lag_time: Duration,
    /// The cap the checkpoints apply (`checkpoint --max-retained`); None: no retention warning.
    pub max_retained: Option<u64>,
    /// A consumer is near the cap when it alone holds back more than this percentage of it.
    pub retained_percent: u8,
}

impl Default for WarningOptions {
    fn default() -> Self {
        WarningOptions {
            standby_lag_bytes: DEFAULT_STANDBY_LAG_BYTES,
            standby_lag_time: DEFAULT_STANDBY_LAG_TIME,
            max_retained: None,
            retained_percent: DEFAULT_RETAINED_PERCENT,
        }
    }
}

/// The episodes of one data directory's consumers.
pub struct ConsumerWarnings {
    root: PathBuf,
    opts: WarningOptions,
    /// By standby name (its id when it gave none).
    standbys: BTreeMap<String, Episode>,
    /// By consumer id.
    retained: BTreeMap<String, Episode>,
}

impl ConsumerWarnings {
    pub fn new(root: &Path, opts: WarningOptions) -> ConsumerWarnings {
        ConsumerWarnings {
            root: root.to_path_buf(),
            opts,
            standbys: BTreeMap::new(),
            retained: BTreeMap::new(),
        }
    }

    /// Reads the directory's status once and observes every episode. A consumer no longer
    /// registered (dropped, or marked lost) forgets its episode without a line.
    pub fn check(&mut self) -> Result<()> {
        let st = crate::status::status(&self.root)?;
        let (bound, bound_time) = (self.opts.standby_lag_bytes, self.opts.standby_lag_time);
        let mut seen = Vec::new();
        for sb in st.standbys.iter().filter(|s| !s.lost) {
            let name = sb.name.clone().unwrap_or_else(|| sb.id.clone());
            let secs = sb.lag_seconds;
            let over = sb.lag_bytes > bound || secs.is_some_and(|s| s > bound_time.as_secs_f64());
            let connected = if sb.connected {
                "connected"
            } else {
                "not connected"
            };
            self.standbys
                .entry(name.clone())
                .or_insert_with(|| Episode::new(format!("standby {name} behind")))
                .observe(over, || {
                    let age = secs.map_or(String::new(), |s| format!(", {s:.0} s"));
                    format!(
                        "applied {}, {} bytes{age} behind the flush position {} ({connected}; thresholds {bound} bytes, {} s)",
                        sb.applied_lsn,
                        sb.lag_bytes,
                        st.flush_lsn,
                        bound_time.as_secs()
                    )
                });
            seen.push(name);
        }
        self.standbys.retain(|n, _| seen.contains(n));
        let Some(cap) = self.opts.max_retained else {
            return Ok(());
        };
        let percent = u64::from(self.opts.retained_percent);
        let near = u128::from(cap) * u128::from(percent) / 100;
        let held = crate::retention::held_back(&crate::DataDir::new(&self.root))?;
        for (id, bytes) in &held {
            self.retained
                .entry(id.clone())
                .or_insert_with(|| Episode::new(format!("retained WAL near the cap: {id}")))
                .observe(u128::from(*bytes) > near, || {
                    format!(
                        "holds back {bytes} bytes below the checkpoint, {}% of --max-retained {cap} bytes (warned over {percent}%, marked lost over 100%)",
                        u128::from(*bytes) * 100 / u128::from(cap.max(1))
                    )
                });
        }
        self.retained
            .retain(|id, _| held.iter().any(|(h, _)| h == id));
        Ok(())
    }
}
