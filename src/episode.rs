//! A warning condition logged once per episode: the first observation over its threshold logs
//! a warning, later ones are quiet until an observation within the threshold ends the episode,
//! which is logged once too, with how long it lasted. Every warning of walship goes through
//! it: a slow sync, a standby or the archiver behind, retained WAL near the cap.

use std::time::{Duration, Instant};

/// One warning condition (of one subject, like one standby) and whether it holds now.
#[derive(Debug)]
pub struct Episode {
    /// What the log lines begin with, like `slow sync` or `standby s1 behind`.
    subject: String,
    /// When the current episode began; None between episodes.
    since: Option<Instant>,
}

/// What an observation changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transition {
    /// Over the threshold, and it was not: the warning was logged.
    Started,
    /// Over the threshold, as already logged.
    Continues,
    /// Within the threshold again after an episode of this length: its end was logged.
    Ended(Duration),
    /// Within the threshold, as before.
    Quiet,
}

impl Episode {
    pub fn new(subject: impl Into<String>) -> Episode {
        Episode {
            subject: subject.into(),
            since: None,
        }
    }

    /// Whether an episode is under way.
    pub fn active(&self) -> bool {
        self.since.is_some()
    }

    /// Notes one observation. Over the threshold (`over`), a new episode logs the warning
    /// `SUBJECT: DETAIL; not logged again until back within the threshold`; within it, the end
    /// of an episode logs `SUBJECT: back within the threshold after N s (DETAIL)`. `detail`
    /// is called only when a line is logged.
    pub fn observe(&mut self, over: bool, detail: impl FnOnce() -> String) -> Transition {
        match (over, self.since) {
            (true, None) => {
                self.since = Some(Instant::now());
                tracing::warn!(
                    episode = %self.subject,
                    "{}: {}; not logged again until back within the threshold",
                    self.subject,
                    detail()
                );
                Transition::Started
            }
            (true, Some(_)) => Transition::Continues,
            (false, Some(since)) => {
                self.since = None;
                let lasted = since.elapsed();
                tracing::info!(
                    episode = %self.subject,
                    seconds = lasted.as_secs_f64(),
                    "{}: back within the threshold after {} ({})",
                    self.subject,
                    show_secs(lasted),
                    detail()
                );
                Transition::Ended(lasted)
            }
            (false, None) => Transition::Quiet,
        }
    }
}

/// A duration in whole seconds (`12 s`), or milliseconds below one second (`300 ms`).
fn show_secs(d: Duration) -> String {
    if d < Duration::from_secs(1) {
        format!("{} ms", d.as_millis())
    } else {
        format!("{} s", d.as_secs())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_episode_starts_once_and_ends_once() {
        let mut e = Episode::new("test");
        // No line is made for an observation that changes nothing.
        let none = || -> String { panic!("a detail made for no line") };
        let some = String::new;
        assert_eq!(e.observe(false, none), Transition::Quiet);
        assert_eq!(e.observe(true, some), Transition::Started);
        assert!(e.active());
        assert_eq!(e.observe(true, none), Transition::Continues);
        assert_eq!(e.observe(true, none), Transition::Continues);
        assert!(matches!(e.observe(false, some), Transition::Ended(_)));
        assert!(!e.active());
        assert_eq!(e.observe(false, none), Transition::Quiet);
        assert_eq!(e.observe(true, some), Transition::Started);
    }

    #[test]
    fn lengths_are_shown_in_seconds_or_milliseconds() {
        assert_eq!(show_secs(Duration::from_millis(300)), "300 ms");
        assert_eq!(show_secs(Duration::from_millis(12_700)), "12 s");
    }
}
