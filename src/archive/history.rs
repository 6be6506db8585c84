//! Timeline history files in an archive: object `0000000N.history` (8 upper-case hex digits) at
//! the archive's root beside the segments, byte for byte the data directory's
//! `wal/0000000N.history` (docs/FORMAT.md). They are written create-only: the same bytes again
//! are success, other bytes for the same timeline are two promotions that made one timeline
//! (split brain) and are refused with the archive left as it was. Nothing removes them.
//!
//! Generic over [`ArchiveStore`], so a directory and an S3 bucket behave alike; the store's
//! `put` brings its own durability (the directory store fsyncs the file and the directory).

use std::path::PathBuf;
use std::sync::Arc;

use uuid::Uuid;

use super::store::{ArchiveStore, ObjectInfo, PutOutcome};
use crate::error::{Error, Result};
use crate::format::history::{history_file_name, parse_history_file_name, HistoryFile};
use crate::timeline::History;

/// The object name of timeline `timeline`'s history file in an archive.
pub fn history_object_name(timeline: u32) -> String {
    history_file_name(timeline)
}

/// The timeline a history object's name names; `None` for any other object.
pub fn parse_history_object_name(name: &str) -> Option<u32> {
    parse_history_file_name(name)
}

/// The timelines whose history files a listing holds, ascending.
pub fn history_timelines(objects: &[ObjectInfo]) -> Vec<u32> {
    let mut out: Vec<u32> = objects
        .iter()
        .filter_map(|o| parse_history_object_name(&o.name))
        .collect();
    out.sort_unstable();
    out
}

/// Damage when `objects` (the listing of the archive at `location`) hold segments of a
/// timeline after the first whose history file they do not hold: without it no reader can tell
/// where that timeline began, and a path through the archive would silently leave out its
/// records, or keep records of the timeline it left.
pub fn timeline_without_history(location: &str, objects: &[ObjectInfo]) -> Result<()> {
    let held = history_timelines(objects);
    let segments = super::segment_objects(objects);
    let Some((n, _, o)) = segments
        .iter()
        .find(|(n, _, _)| n.timeline > 1 && !held.contains(&n.timeline))
    else {
        return Ok(());
    };
    let t = n.timeline;
    let name = history_object_name(t);
    Err(Error::Corrupt {
        file: PathBuf::from(location).join(&name),
        offset: 0,
        lsn: crate::Lsn(0),
        reason: format!(
            "missing, while the archive holds segments of timeline {t} ({} and maybe more): without it no reader can tell where timeline {t} began. Copy wal/{name} of a data directory on timeline {t} into the archive (or run that directory's archiver, which stores it again)",
            o.name
        ),
    })
}

/// What [`put_history`] did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HistoryPut {
    /// The history file was written and read back equal.
    Created,
    /// The archive already held exactly these bytes (made durable again: it may have been
    /// found rather than written).
    AlreadyHeld,
}

/// Where an object is, for messages: the store's location and the object's name.
fn object_path<S: ArchiveStore>(store: &S, name: &str) -> PathBuf {
    PathBuf::from(store.location()).join(name)
}

/// The timelines whose history files the archive holds, ascending.
pub async fn list_histories<S: ArchiveStore>(store: &S) -> Result<Vec<u32>> {
    Ok(history_timelines(&store.list().await?))
}

/// The bytes of timeline `timeline`'s history file in the archive, unchecked; `None` when the
/// archive holds none.
pub async fn read_history_bytes<S: ArchiveStore>(
    store: &S,
    timeline: u32,
) -> Result<Option<Vec<u8>>> {
    store.get(&history_object_name(timeline)).await
}

/// Decodes `bytes`, read from `path` in the archive of system `system_id`, as timeline
/// `timeline`'s history. A history file of another system (copied in by hand, or from another
/// cluster's archive) is damage: its switches say nothing about this archive's segments.
pub fn decode_archive_history(
    path: &std::path::Path,
    bytes: &[u8],
    timeline: u32,
    system_id: Uuid,
) -> Result<HistoryFile> {
    let file = crate::history::decode_history(path, bytes, timeline)?;
    if file.system_id != system_id {
        return Err(Error::Corrupt {
            file: path.to_path_buf(),
            offset: 16,
            lsn: crate::Lsn(0),
            reason: format!(
                "a history file of system {}, but the archive's {} says system {system_id}: it is not this archive's history; remove it from the archive",
                file.system_id,
                super::IDENTITY_NAME
            ),
        });
    }
    Ok(file)
}

/// Timeline `timeline`'s history file in the archive of system `system_id` (its identity's),
/// decoded and checked (a damaged one, one whose content names another timeline, or one of
/// another system is [`Error::Corrupt`] naming the object); `None` when the archive holds none.
pub async fn read_history<S: ArchiveStore>(
    store: &S,
    timeline: u32,
    system_id: Uuid,
) -> Result<Option<HistoryFile>> {
    let name = history_object_name(timeline);
    let Some(bytes) = store.get(&name).await? else {
        return Ok(None);
    };
    decode_archive_history(&object_path(store, &name), &bytes, timeline, system_id).map(Some)
}

/// The history of the newest timeline the archive (of system `system_id`) holds a history
/// file for: its path from timeline 1. Timeline 1's (no ancestors) when the archive holds none.
pub async fn newest_history<S: ArchiveStore>(store: &S, system_id: Uuid) -> Result<History> {
    let mut tries = 0;
    loop {
        let Some(&t) = list_histories(store).await?.last() else {
            return Ok(History::root());
        };
        match read_history(store, t, system_id).await? {
            Some(f) => return Ok(History::of(&f)),
            // Removed between the listing and the read (walship removes none; a lost one is
            // what the archiver stores again): listed again.
            None if tries < 3 => tries += 1,
            None => {
                return Err(Error::Storage(format!(
                    "{}: listed, then gone",
                    object_path(store, &history_object_name(t)).display()
                )))
            }
        }
    }
}

/// Which timeline's path to take through an archive that holds several.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum TimelineChoice {
    /// The newest timeline the archive holds a history file for (timeline 1 when none).
    #[default]
    Latest,
    /// This timeline: 1, or one whose history file the archive holds.
    Exactly(u32),
}

impl std::str::FromStr for TimelineChoice {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s.trim() {
            "latest" => Ok(TimelineChoice::Latest),
            t => match t.parse::<u32>() {
                Ok(n) if n >= 1 => Ok(TimelineChoice::Exactly(n)),
                _ => Err(format!(
                    "invalid timeline {s:?} (expected a timeline number from 1, or `latest`)"
                )),
            },
        }
    }
}

/// The history of `choice` in the archive of system `system_id`. A timeline the archive holds
/// no history file for is [`Error::InvalidArgument`] naming the timelines it does hold.
pub async fn chosen_history<S: ArchiveStore>(
    store: &S,
    choice: TimelineChoice,
    system_id: Uuid,
) -> Result<History> {
    // Every history file is this archive's, whichever timeline is chosen: one of another
    // system is damage, even when the choice needs no history file at all; so is a timeline
    // whose segments are held without its history file.
    timeline_without_history(&store.location(), &store.list().await?)?;
    for t in list_histories(store).await? {
        read_history(store, t, system_id).await?;
    }
    let t = match choice {
        TimelineChoice::Latest => return newest_history(store, system_id).await,
        TimelineChoice::Exactly(1) => return Ok(History::root()),
        TimelineChoice::Exactly(t) => t,
    };
    match read_history(store, t, system_id).await? {
        Some(f) => Ok(History::of(&f)),
        None => {
            let held: Vec<String> = std::iter::once(1)
                .chain(list_histories(store).await?)
                .map(|t| t.to_string())
                .collect();
            Err(Error::InvalidArgument(format!(
                "{}: no timeline {t} (no {} in the archive); it holds timelines {}",
                store.location(),
                history_object_name(t),
                held.join(", ")
            )))
        }
    }
}

/// The newest history the archive (of system `system_id`) holds and the bytes of the history
/// file of every timeline after the first on its path, oldest first (what a former primary
/// stores before it is cut back to that path). A history file of the path that is missing, or
/// not this system's, is damage, named.
pub async fn history_chain<S: ArchiveStore>(
    store: &S,
    system_id: Uuid,
) -> Result<(History, Vec<(u32, Vec<u8>)>)> {
    history_chain_of(store, TimelineChoice::Latest, system_id).await
}

/// As [`history_chain`], for the timeline `choice` names.
pub async fn history_chain_of<S: ArchiveStore>(
    store: &S,
    choice: TimelineChoice,
    system_id: Uuid,
) -> Result<(History, Vec<(u32, Vec<u8>)>)> {
    let path = chosen_history(store, choice, system_id).await?;
    let mut files = Vec::new();
    let timelines = path
        .ancestors
        .iter()
        .map(|a| a.timeline)
        .chain([path.timeline]);
    for t in timelines.filter(|t| *t > 1) {
        let name = history_object_name(t);
        let Some(bytes) = read_history_bytes(store, t).await? else {
            return Err(Error::Corrupt {
                file: object_path(store, &name),
                offset: 0,
                lsn: crate::Lsn(0),
                reason: format!(
                    "the history of timeline {} passes through timeline {t}, whose history file is missing",
                    path.timeline
                ),
            });
        };
        // Every file handed on is this system's (the chosen one was checked on reading).
        decode_archive_history(&object_path(store, &name), &bytes, t, system_id)?;
        files.push((t, bytes));
    }
    Ok((path, files))
}

/// Stores `file` in the archive as `0000000N.history`, create-only. The same bytes already
/// there are success; other bytes for the same timeline are refused ([`Error::Refused`] naming
/// both histories: split brain), and the archive is left untouched.
pub async fn put_history<S: ArchiveStore>(store: &S, file: &HistoryFile) -> Result<HistoryPut> {
    let bytes = file.encode().map_err(Error::InvalidArgument)?;
    let name = history_object_name(file.timeline);
    let path = object_path(store, &name);
    // The archiver stores a history file again when the archive lost it; lost again between
    // storing and reading it back, it is stored again (a few times), not a failed pass.
    for _ in 0..HISTORY_PUT_ATTEMPTS {
        match store.put(&name, Arc::new(bytes.clone())).await? {
            PutOutcome::Created { verified: true } => return Ok(HistoryPut::Created),
            PutOutcome::Created { verified: false } => match store.get(&name).await? {
                None => continue,
                Some(back) if back == bytes => return Ok(HistoryPut::Created),
                Some(_) => {
                    return Err(Error::Storage(format!(
                        "{}: read back after writing, the object does not hold the bytes written",
                        path.display()
                    )))
                }
            },
            PutOutcome::AlreadyExists => {
                let Some(held) = store.get(&name).await? else {
                    continue;
                };
                if held == bytes {
                    store.sync(&name).await?;
                    return Ok(HistoryPut::AlreadyHeld);
                }
                let theirs = match crate::history::decode_history(&path, &held, file.timeline) {
                    Ok(h) => format!("the archive's history {}", History::of(&h)),
                    Err(e) => format!("the archive's history file, which is damaged ({e})"),
                };
                return Err(Error::Refused(format!(
                    "{}: timeline {} has two different histories, {theirs} and this directory's {} (two promotions made the same timeline: split brain); the archive was left as it was",
                    path.display(),
                    file.timeline,
                    History::of(file)
                )));
            }
        }
    }
    Err(Error::Storage(format!(
        "{}: gone again each of the {HISTORY_PUT_ATTEMPTS} times it was stored: something removes the archive's history files",
        path.display()
    )))
}

/// Times [`put_history`] stores a history file that is gone by the time it is read back.
const HISTORY_PUT_ATTEMPTS: usize = 3;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archive::LocalDirStore;
    use crate::Lsn;
    use uuid::Uuid;

    const SYS: Uuid = Uuid::from_u128(7);

    fn h2(lsn: u64) -> HistoryFile {
        HistoryFile::child_of(None, SYS, 1, Lsn(lsn), 1_000, "promote").unwrap()
    }

    /// A directory archive whose objects something removes just before the next reads, as
    /// many times as `removals` says.
    struct Vanishing {
        inner: LocalDirStore,
        removals: std::sync::atomic::AtomicUsize,
    }

    impl ArchiveStore for Vanishing {
        fn location(&self) -> String {
            self.inner.location()
        }
        async fn put(&self, name: &str, data: Arc<Vec<u8>>) -> Result<PutOutcome> {
            self.inner.put(name, data).await
        }
        async fn get(&self, name: &str) -> Result<Option<Vec<u8>>> {
            use std::sync::atomic::Ordering;
            if self
                .removals
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok()
            {
                self.inner.delete(name).await?;
            }
            self.inner.get(name).await
        }
        async fn list(&self) -> Result<Vec<crate::archive::ObjectInfo>> {
            self.inner.list().await
        }
        async fn exists(&self, name: &str) -> Result<bool> {
            self.inner.exists(name).await
        }
        async fn sync(&self, name: &str) -> Result<()> {
            self.inner.sync(name).await
        }
        async fn delete(&self, name: &str) -> Result<bool> {
            self.inner.delete(name).await
        }
        async fn replace(&self, name: &str, data: Arc<Vec<u8>>) -> Result<()> {
            self.inner.replace(name, data).await
        }
    }

    #[tokio::test]
    async fn a_history_file_gone_before_it_is_read_back_is_stored_again() {
        let t = tempfile::tempdir().unwrap();
        let a = h2(4096);
        for (removals, stored) in [(1, true), (2, true), (3, false)] {
            let s = Vanishing {
                inner: LocalDirStore::create(t.path().join(format!("a{removals}"))).unwrap(),
                removals: removals.into(),
            };
            let r = put_history(&s, &a).await;
            if stored {
                assert_eq!(r.unwrap(), HistoryPut::Created, "{removals}");
                assert_eq!(
                    s.inner.get("00000002.history").await.unwrap(),
                    Some(a.encode().unwrap())
                );
            } else {
                let e = r.unwrap_err().to_string();
                assert!(e.contains("gone again each of the 3 times"), "{e}");
            }
        }
        // Found in place, then gone before it is read: stored again.
        let s = Vanishing {
            inner: LocalDirStore::create(t.path().join("b")).unwrap(),
            removals: 0.into(),
        };
        put_history(&s.inner, &a).await.unwrap();
        s.removals.store(1, std::sync::atomic::Ordering::SeqCst);
        assert_eq!(put_history(&s, &a).await.unwrap(), HistoryPut::Created);
    }

    #[tokio::test]
    async fn create_only_identical_is_success_different_is_split_brain() {
        let t = tempfile::tempdir().unwrap();
        let s = LocalDirStore::create(t.path().join("a")).unwrap();
        assert_eq!(list_histories(&s).await.unwrap(), Vec::<u32>::new());
        assert_eq!(newest_history(&s, SYS).await.unwrap(), History::root());
        let a = h2(4096);
        assert_eq!(put_history(&s, &a).await.unwrap(), HistoryPut::Created);
        assert_eq!(put_history(&s, &a).await.unwrap(), HistoryPut::AlreadyHeld);
        let on_disk = std::fs::read(t.path().join("a/00000002.history")).unwrap();
        assert_eq!(on_disk, a.encode().unwrap());
        let b = h2(8192);
        let e = put_history(&s, &b).await.unwrap_err().to_string();
        assert!(
            e.contains("split brain") && e.contains("00000002.history"),
            "{e}"
        );
        assert!(
            e.contains("1 (to 0/00002000) → 2") && e.contains("1 (to 0/00001000) → 2"),
            "{e}"
        );
        assert_eq!(
            std::fs::read(t.path().join("a/00000002.history")).unwrap(),
            on_disk
        );
        assert_eq!(read_history(&s, 2, SYS).await.unwrap(), Some(a.clone()));
        assert_eq!(read_history(&s, 3, SYS).await.unwrap(), None);
        let a3 =
            HistoryFile::child_of(Some(&a), a.system_id, 2, Lsn(9000), 2_000, "again").unwrap();
        put_history(&s, &a3).await.unwrap();
        assert_eq!(list_histories(&s).await.unwrap(), vec![2, 3]);
        assert_eq!(newest_history(&s, SYS).await.unwrap(), History::of(&a3));
        // A damaged one is named, and refused as a split brain rather than replaced.
        std::fs::write(t.path().join("a/00000003.history"), b"junk").unwrap();
        let e = read_history(&s, 3, SYS).await.unwrap_err().to_string();
        assert!(e.contains("00000003.history"), "{e}");
        let e = put_history(&s, &a3).await.unwrap_err().to_string();
        assert!(e.contains("damaged"), "{e}");
        // Another system's history is no history of this archive, by any reader.
        let e = read_history(&s, 2, Uuid::from_u128(8))
            .await
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("00000002.history")
                && e.contains(&SYS.to_string())
                && e.contains(&Uuid::from_u128(8).to_string()),
            "{e}"
        );
    }
}
