//! Whether a standby can follow a primary's timeline path, as replication judges it (pure):
//! a standby on timeline `t` holding WAL up to `p` follows when `t` is on the primary's path
//! and it holds nothing past the switch point where the path left `t`. The refusal names the
//! switch point and the diverged range in the words both sides log. The path itself is
//! [`crate::timeline::History`].

use std::fmt;

use crate::timeline::History;
use crate::Lsn;

/// The advice every refusal of a diverged standby ends with, on both sides of the connection:
/// how a standby tells a divergence from any other refusal.
pub const REWIND_ADVICE: &str =
    "run walship rewind on the standby's directory to set them aside, then follow again";

/// Why a standby cannot follow a primary's path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The standby's timeline is newer than the primary's.
    Newer { standby: u32, primary: u32 },
    /// The standby's timeline is not one the primary's went through.
    NotOnPath { standby: u32, primary: u32 },
    /// The standby holds WAL of timeline `left` past the point `at` where timeline `to` left
    /// it: the range `[at, held)` is on no timeline of the primary's.
    Diverged {
        left: u32,
        to: u32,
        at: Lsn,
        held: Lsn,
    },
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Refusal::Newer { standby, primary } => write!(
                f,
                "the standby is on timeline {standby}, newer than the primary's timeline {primary}: it cannot follow this primary"
            ),
            Refusal::NotOnPath { standby, primary } => write!(
                f,
                "the standby's timeline {standby} is not in the history of the primary's timeline {primary}: it belongs to another branch of this system"
            ),
            Refusal::Diverged {
                left,
                to,
                at,
                held,
            } => write!(
                f,
                "the standby holds timeline {left} up to {held}, past the switch point {at} where timeline {to} left it: the records in [{at}, {held}) are on no timeline of the primary's (diverged); {REWIND_ADVICE}"
            ),
        }
    }
}

/// The timeline the path entered when it left `t` (None when the path ends on `t`).
fn entered_after(path: &History, t: u32) -> Option<u32> {
    let i = path.ancestors.iter().position(|a| a.timeline == t)?;
    Some(
        path.ancestors
            .get(i + 1)
            .map_or(path.timeline, |a| a.timeline),
    )
}

/// Whether a standby on timeline `standby` holding WAL up to `held` can follow a primary
/// whose path is `path`.
pub fn judge(path: &History, standby: u32, held: Lsn) -> Result<(), Refusal> {
    if standby > path.timeline {
        return Err(Refusal::Newer {
            standby,
            primary: path.timeline,
        });
    }
    if !path.has_timeline(standby) {
        return Err(Refusal::NotOnPath {
            standby,
            primary: path.timeline,
        });
    }
    match (
        path.switch_point_after(standby),
        entered_after(path, standby),
    ) {
        (Some(at), Some(to)) if held > at => Err(Refusal::Diverged {
            left: standby,
            to,
            at,
            held,
        }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path() -> History {
        History::root()
            .child(Lsn(1000))
            .and_then(|h| h.child(Lsn(5000)))
            .expect("path")
    }

    #[test]
    fn a_standby_at_or_before_the_switch_follows() {
        let p = path();
        assert_eq!(judge(&p, 1, Lsn(0)), Ok(()));
        assert_eq!(judge(&p, 1, Lsn(1000)), Ok(()));
        assert_eq!(judge(&p, 2, Lsn(4999)), Ok(()));
        assert_eq!(judge(&p, 3, Lsn(1 << 40)), Ok(()));
        assert_eq!(judge(&History::root(), 1, Lsn(1 << 40)), Ok(()));
    }

    #[test]
    fn a_standby_past_the_switch_is_refused_naming_the_range() {
        let p = path();
        let r = judge(&p, 1, Lsn(1001)).unwrap_err();
        assert_eq!(
            r,
            Refusal::Diverged {
                left: 1,
                to: 2,
                at: Lsn(1000),
                held: Lsn(1001)
            }
        );
        let text = r.to_string();
        assert!(text.contains("switch point 0/000003E8"), "{text}");
        assert!(text.contains("[0/000003E8, 0/000003E9)"), "{text}");
        assert!(text.contains("run walship rewind"), "{text}");
        assert_eq!(
            judge(&p, 2, Lsn(5001)).unwrap_err(),
            Refusal::Diverged {
                left: 2,
                to: 3,
                at: Lsn(5000),
                held: Lsn(5001)
            }
        );
        assert_eq!(
            judge(&p, 4, Lsn(0)),
            Err(Refusal::Newer {
                standby: 4,
                primary: 3
            })
        );
        // Timeline 4 made from timeline 1: timelines 2 and 3 are another branch.
        let other = History {
            timeline: 4,
            ancestors: vec![crate::timeline::Ancestor {
                timeline: 1,
                end: Lsn(10),
            }],
        };
        assert!(matches!(
            judge(&other, 2, Lsn(0)),
            Err(Refusal::NotOnPath { .. })
        ));
        assert!(matches!(
            judge(&other, 1, Lsn(11)),
            Err(Refusal::Diverged { to: 4, .. })
        ));
    }
}
