//! Timelines as a history gives them (pure): which timeline an LSN belongs to, whether a
//! position is on a history's path, where the path leaves a timeline, and the one rule every
//! identity comparison uses: same system, compatible history.
//!
//! A history is the chain of switches from timeline 1 to its timeline (the history file's
//! content, `src/format/history.rs`); timeline 1's history is empty. Records below a switch
//! point belong to the timeline left there; records at or past it, to the one entered.

use crate::format::history::HistoryFile;
use crate::format::SystemIdentity;
use crate::Lsn;

/// One timeline left on the way to a history's timeline, and where it was left.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ancestor {
    pub timeline: u32,
    /// The switch point: positions up to it (inclusive, as end positions) are on the path.
    pub end: Lsn,
}

/// The path of a timeline: its ancestors, oldest first, and the timeline itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct History {
    pub timeline: u32,
    pub ancestors: Vec<Ancestor>,
}

impl History {
    /// Timeline 1's history: no ancestors.
    pub fn root() -> History {
        History {
            timeline: 1,
            ancestors: Vec::new(),
        }
    }

    /// The path a history file describes.
    pub fn of(file: &HistoryFile) -> History {
        History {
            timeline: file.timeline,
            ancestors: file
                .switches
                .iter()
                .map(|s| Ancestor {
                    timeline: s.parent,
                    end: s.lsn,
                })
                .collect(),
        }
    }

    /// The timeline a record starting at `lsn` belongs to along this history.
    pub fn timeline_of(&self, lsn: Lsn) -> u32 {
        self.ancestors
            .iter()
            .find(|a| lsn < a.end)
            .map(|a| a.timeline)
            .unwrap_or(self.timeline)
    }

    /// The timeline whose segment `segment_no` is along this history: the first ancestor left
    /// in a later segment, or at the start of a later one; else the history's own timeline. The
    /// segment holding a switch point is the new timeline's (its switch segment).
    pub fn segment_timeline(&self, segment_no: u64, segment_size: u64) -> u32 {
        self.ancestors
            .iter()
            .find(|a| segment_no < a.end.0 / segment_size)
            .map_or(self.timeline, |a| a.timeline)
    }

    /// The switch point where this history leaves timeline `t`: `None` when `t` is this
    /// history's own timeline (not left) or not on its path at all.
    pub fn switch_point_after(&self, t: u32) -> Option<Lsn> {
        self.ancestors
            .iter()
            .find(|a| a.timeline == t)
            .map(|a| a.end)
    }

    /// True when `t` is this history's timeline or one of its ancestors.
    pub fn has_timeline(&self, t: u32) -> bool {
        t == self.timeline || self.ancestors.iter().any(|a| a.timeline == t)
    }

    /// True when the end position `p` on timeline `t` lies on this history's path: `t` is
    /// this timeline, or an ancestor left at or after `p`.
    pub fn contains(&self, t: u32, p: Lsn) -> bool {
        if t == self.timeline {
            return true;
        }
        self.switch_point_after(t).is_some_and(|end| p <= end)
    }

    /// True when this history's timeline is an ancestor of `other`'s, along the same path.
    pub fn is_ancestor_of(&self, other: &History) -> bool {
        self.timeline < other.timeline
            && other.ancestors.len() > self.ancestors.len()
            && other.ancestors[..self.ancestors.len()] == self.ancestors[..]
            && other.ancestors[self.ancestors.len()].timeline == self.timeline
    }

    /// The history of the timeline that begins at `lsn` when this one is left.
    pub fn child(&self, lsn: Lsn) -> Option<History> {
        let mut ancestors = self.ancestors.clone();
        ancestors.push(Ancestor {
            timeline: self.timeline,
            end: lsn,
        });
        Some(History {
            timeline: self.timeline.checked_add(1)?,
            ancestors,
        })
    }
}

/// Why two identities with their histories cannot be one system's.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Incompatible {
    #[error("{what} differs: {ours} here, {theirs} there")]
    OtherSystem {
        what: &'static str,
        ours: String,
        theirs: String,
    },
    #[error("timeline {timeline} has two different histories (two promotions made the same timeline: split brain): {ours} here, {theirs} there")]
    SplitBrain {
        timeline: u32,
        ours: String,
        theirs: String,
    },
    #[error("timeline {theirs} is not on the path of timeline {ours} and neither is an ancestor of the other ({ours_path} here, {theirs_path} there)")]
    Diverged {
        ours: u32,
        theirs: u32,
        ours_path: String,
        theirs_path: String,
    },
}

impl std::fmt::Display for History {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for a in &self.ancestors {
            write!(f, "{} (to {}) → ", a.timeline, a.end)?;
        }
        write!(f, "{}", self.timeline)
    }
}

/// The one rule for comparing identities: the same system (id, segment size, format version)
/// and compatible histories: equal, or one timeline an ancestor of the other along the other's
/// history. Two different histories for one timeline number are split brain.
pub fn compatible(
    ours: &SystemIdentity,
    our_history: &History,
    theirs: &SystemIdentity,
    their_history: &History,
) -> Result<(), Incompatible> {
    same_system(ours, theirs)?;
    if our_history.timeline != ours.timeline || their_history.timeline != theirs.timeline {
        let (t, h) = if our_history.timeline != ours.timeline {
            (ours.timeline, our_history)
        } else {
            (theirs.timeline, their_history)
        };
        return Err(Incompatible::OtherSystem {
            what: "timeline",
            ours: t.to_string(),
            theirs: format!("a history of timeline {}", h.timeline),
        });
    }
    if our_history.timeline == their_history.timeline {
        if our_history != their_history {
            return Err(Incompatible::SplitBrain {
                timeline: ours.timeline,
                ours: our_history.to_string(),
                theirs: their_history.to_string(),
            });
        }
        return Ok(());
    }
    if our_history.is_ancestor_of(their_history) || their_history.is_ancestor_of(our_history) {
        return Ok(());
    }
    Err(Incompatible::Diverged {
        ours: ours.timeline,
        theirs: theirs.timeline,
        ours_path: our_history.to_string(),
        theirs_path: their_history.to_string(),
    })
}

/// The same system, whatever the timeline: system id, segment size and format version agree.
pub fn same_system(ours: &SystemIdentity, theirs: &SystemIdentity) -> Result<(), Incompatible> {
    let diff = |what, a: String, b: String| Incompatible::OtherSystem {
        what,
        ours: a,
        theirs: b,
    };
    if ours.system_id != theirs.system_id {
        return Err(diff(
            "system id",
            ours.system_id.to_string(),
            theirs.system_id.to_string(),
        ));
    }
    if ours.segment_size != theirs.segment_size {
        return Err(diff(
            "segment size",
            ours.segment_size.to_string(),
            theirs.segment_size.to_string(),
        ));
    }
    if ours.format_version != theirs.format_version {
        return Err(diff(
            "format version",
            ours.format_version.to_string(),
            theirs.format_version.to_string(),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use uuid::Uuid;

    fn id(t: u32) -> SystemIdentity {
        SystemIdentity {
            system_id: Uuid::from_u128(1),
            timeline: t,
            segment_size: 1 << 16,
            format_version: 1,
        }
    }

    #[test]
    fn positions_along_a_history() {
        let h3 = History::root()
            .child(Lsn(100))
            .and_then(|h| h.child(Lsn(300)))
            .expect("h3");
        assert_eq!(h3.timeline, 3);
        assert_eq!(h3.timeline_of(Lsn(0)), 1);
        assert_eq!(h3.timeline_of(Lsn(99)), 1);
        assert_eq!(h3.timeline_of(Lsn(100)), 2);
        assert_eq!(h3.timeline_of(Lsn(300)), 3);
        assert!(h3.contains(1, Lsn(100)));
        assert!(!h3.contains(1, Lsn(101)));
        assert!(h3.contains(2, Lsn(300)));
        assert!(!h3.contains(2, Lsn(301)));
        assert!(h3.contains(3, Lsn(u64::MAX)));
        assert!(!h3.contains(4, Lsn(0)));
        assert_eq!(h3.switch_point_after(1), Some(Lsn(100)));
        assert_eq!(h3.switch_point_after(2), Some(Lsn(300)));
        assert_eq!(h3.switch_point_after(3), None);
        // Two switches at one point: the middle timeline holds nothing.
        let h = History::root()
            .child(Lsn(50))
            .and_then(|h| h.child(Lsn(50)))
            .expect("h");
        assert_eq!(h.timeline_of(Lsn(50)), 3);
    }

    #[test]
    fn the_compatibility_rule() {
        let h1 = History::root();
        let h2 = h1.child(Lsn(100)).expect("h2");
        let h2b = h1.child(Lsn(200)).expect("h2b");
        let h3 = h2.child(Lsn(400)).expect("h3");
        assert!(compatible(&id(1), &h1, &id(1), &h1).is_ok());
        assert!(compatible(&id(1), &h1, &id(2), &h2).is_ok());
        assert!(compatible(&id(3), &h3, &id(1), &h1).is_ok());
        assert!(compatible(&id(3), &h3, &id(2), &h2).is_ok());
        assert!(matches!(
            compatible(&id(2), &h2, &id(2), &h2b),
            Err(Incompatible::SplitBrain { timeline: 2, .. })
        ));
        assert!(matches!(
            compatible(&id(3), &h3, &id(2), &h2b),
            Err(Incompatible::Diverged { .. })
        ));
        let mut other = id(1);
        other.system_id = Uuid::from_u128(2);
        assert!(matches!(
            compatible(&id(1), &h1, &other, &h1),
            Err(Incompatible::OtherSystem { .. })
        ));
        assert!(compatible(&id(2), &h1, &id(1), &h1).is_err());
    }
}
