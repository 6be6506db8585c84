//! The timelines part of the handshake (protocol version 5). The standby states its timeline,
//! its position and the digest of its timeline's history file in `Identify`; the primary
//! refuses a standby that cannot follow its path, then sends its history files
//! (`TimelineHistory`, oldest first) before `Welcome`. The standby checks each file, compares
//! it with its own copy of the same timeline's, judges its own position against the path, and
//! keeps the files it lacks to be stored before anything else. Both sides refuse with the same
//! words, so whichever refuses first, the logs say the same thing.

use crate::format::history::{history_file_name, HistoryFile};
use crate::replication::messages::ErrorCode;
use crate::replication::timeline_path::judge;
use crate::timeline::History;
use crate::Lsn;

/// A timeline's history file: its timeline and its bytes.
pub(crate) type HistoryBytes = (u32, Vec<u8>);

/// The digest a standby states of its history file: SHA-256 of its bytes. (A CRC would not
/// do: the file ends in the CRC of what precedes it, and the CRC of such bytes is the same
/// constant for every file.)
pub(crate) fn digest_of(bytes: &[u8]) -> [u8; 32] {
    use sha2::Digest;
    sha2::Sha256::digest(bytes).into()
}

/// A primary's timelines as the handshake carries them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Histories {
    /// The primary's path, to its own timeline.
    pub path: History,
    /// The history file of each timeline after the first on the path, oldest first.
    pub files: Vec<HistoryBytes>,
}

impl Histories {
    /// A system that never switched: timeline 1, no history files.
    pub fn first() -> Histories {
        Histories {
            path: History::root(),
            files: Vec::new(),
        }
    }

    /// The path the history files give: the last one (the primary's own timeline's) tells
    /// the whole path, and every earlier one must be the history of a timeline on it, the
    /// same switches up to its own. `system_id` is the system they must belong to.
    pub fn from_files(
        files: Vec<HistoryBytes>,
        system_id: uuid::Uuid,
    ) -> Result<Histories, String> {
        let Some((last_tl, last)) = files.last() else {
            return Ok(Histories::first());
        };
        let decode = |tl: u32, bytes: &[u8]| -> Result<HistoryFile, String> {
            let name = history_file_name(tl);
            let h = crate::history::decode_history(std::path::Path::new(&name), bytes, tl)
                .map_err(|e| e.to_string())?;
            if h.system_id != system_id {
                return Err(format!(
                    "{name} belongs to system {}, not {system_id}",
                    h.system_id
                ));
            }
            Ok(h)
        };
        let newest = decode(*last_tl, last)?;
        let path = History::of(&newest);
        let mut prev = 1;
        for (tl, bytes) in &files {
            if *tl <= prev {
                return Err(format!(
                    "history files out of order: timeline {tl} after timeline {prev}"
                ));
            }
            let h = decode(*tl, bytes)?;
            let n = h.switches.len();
            if !path.has_timeline(*tl) || newest.switches.get(..n) != Some(&h.switches[..]) {
                return Err(format!(
                    "the history of timeline {tl} is not the beginning of the history of timeline {last_tl}"
                ));
            }
            prev = *tl;
        }
        Ok(Histories { path, files })
    }

    /// The digest of the history file of `timeline`, None for timeline 1 or one without a
    /// file here.
    pub fn digest(&self, timeline: u32) -> Option<[u8; 32]> {
        self.files
            .iter()
            .find(|(t, _)| *t == timeline)
            .map(|(_, b)| digest_of(b))
    }

    /// Whether a standby on `timeline` whose history file has digest `digest`, holding WAL
    /// up to `flushed`, can follow this path: its timeline is on the path with the same
    /// history, and it holds nothing past the switch point that left its timeline.
    pub fn admit(
        &self,
        timeline: u32,
        digest: Option<[u8; 32]>,
        flushed: Lsn,
    ) -> Result<(), (ErrorCode, String)> {
        let identity = |m: String| Err((ErrorCode::Identity, m));
        let ours = self.path.timeline;
        if timeline <= ours && self.path.has_timeline(timeline) && digest != self.digest(timeline) {
            let show = |c: Option<[u8; 32]>| {
                c.map_or("none".to_string(), |c| {
                    c[..4]
                        .iter()
                        .map(|b| format!("{b:02x}"))
                        .collect::<String>()
                        + "…"
                })
            };
            return identity(if timeline == ours {
                format!("timeline {timeline} has two different histories (two promotions made it: split brain): the standby's history file has digest {}, this primary's {}; the standby must not follow this primary (rebuild it: restore it from the right primary's archive, or start it again in an empty directory)", show(digest), show(self.digest(timeline)))
            } else {
                format!("the standby's history of timeline {timeline} (digest {}) is not this primary's (digest {}): it belongs to another branch of this system", show(digest), show(self.digest(timeline)))
            });
        }
        match judge(&self.path, timeline, flushed) {
            Ok(()) => Ok(()),
            Err(r) => identity(r.to_string()),
        }
    }
}

/// What the standby checks of the primary's history files before it takes `Welcome`: they are
/// well formed and form the primary's path to `welcome_timeline`, every file it holds itself
/// is the same byte for byte, and its own position (`own_timeline`, `flushed`) is on the path.
/// Returns the files it lacks, to be stored before any segment, and the path.
pub(crate) fn check_at_standby(
    received: Vec<HistoryBytes>,
    welcome_timeline: u32,
    system_id: uuid::Uuid,
    own: &[HistoryBytes],
    own_timeline: Option<u32>,
    flushed: Lsn,
) -> Result<(Vec<HistoryBytes>, History), (ErrorCode, String)> {
    let histories = Histories::from_files(received, system_id).map_err(|e| {
        (
            ErrorCode::Protocol,
            format!("the primary's history files: {e}"),
        )
    })?;
    if histories.path.timeline != welcome_timeline {
        return Err((
            ErrorCode::Protocol,
            format!(
                "the primary is on timeline {welcome_timeline}, but its history files end at timeline {}",
                histories.path.timeline
            ),
        ));
    }
    for (tl, bytes) in own {
        if let Some((_, theirs)) = histories.files.iter().find(|(t, _)| t == tl) {
            if theirs != bytes {
                return Err((
                    ErrorCode::Identity,
                    if *tl == welcome_timeline {
                        format!("timeline {tl} has two different histories (two promotions made it: split brain): the primary's history file of timeline {tl} differs from this standby's; refusing to follow it")
                    } else {
                        format!("the primary's history file of timeline {tl} differs from this standby's: it is on another branch of this system")
                    },
                ));
            }
        }
    }
    if let Some(t) = own_timeline {
        if let Err(r) = judge(&histories.path, t, flushed) {
            return Err((ErrorCode::Identity, r.to_string()));
        }
    }
    let path = histories.path;
    let new = histories
        .files
        .into_iter()
        .filter(|(tl, _)| !own.iter().any(|(t, _)| t == tl))
        .collect();
    Ok((new, path))
}
