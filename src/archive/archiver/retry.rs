//! A failing archive pass: the pause before the next one, and its log lines (the first failure
//! at once, then a count, not one line per attempt).

use std::time::Duration;

use crate::error::Error;

/// The pause before retrying a failed pass: doubling from [`Backoff::FIRST`] up to
/// [`Backoff::MAX`], each drawn between half and all of that, so archivers failing together do
/// not retry in step.
#[derive(Clone, Copy, Debug)]
pub(super) struct Backoff {
    next: Duration,
}

impl Backoff {
    const FIRST: Duration = Duration::from_millis(250);
    const MAX: Duration = Duration::from_secs(30);

    pub(super) fn next_pause(&mut self) -> Duration {
        let full = self.next;
        self.next = (full * 2).min(Self::MAX);
        full.mul_f64(0.5 + rand::random::<f64>() / 2.0)
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff { next: Self::FIRST }
    }
}

/// The same failure repeating: logged once when it starts, then as a count (at 2, 4, 8, ...
/// failures, and at least once a minute), not once per attempt.
pub(super) struct FailureStreak {
    message: String,
    pub(super) count: u64,
    /// When it started, as a wall-clock time for the log.
    pub(super) since: String,
    last_logged: std::time::Instant,
}

impl FailureStreak {
    const SUMMARY_EVERY: Duration = Duration::from_secs(60);

    pub(super) fn record(streak: &mut Option<FailureStreak>, e: &Error) {
        let message = e.to_string();
        let what = if matches!(e, Error::Corrupt { .. }) {
            "damage found"
        } else {
            "storage I/O failed"
        };
        match streak {
            Some(s) if s.message == message => {
                s.count += 1;
                if s.count.is_power_of_two() || s.last_logged.elapsed() >= Self::SUMMARY_EVERY {
                    s.last_logged = std::time::Instant::now();
                    tracing::error!(
                        failures = s.count,
                        "archive pass failed, {what}: {message} (failed {} times since {}); retrying with backoff",
                        s.count,
                        s.since
                    );
                }
            }
            _ => {
                tracing::error!("archive pass failed, {what}: {message}; retrying with backoff");
                *streak = Some(FailureStreak {
                    message,
                    count: 1,
                    since: chrono::Utc::now().format("%H:%M:%S UTC").to_string(),
                    last_logged: std::time::Instant::now(),
                });
            }
        }
    }
}
