//! A standby's data directory and its first contact with a primary.
//!
//! What makes a directory a standby's are two files in its state/: `standby.json` (its stable
//! id, made once, and its primary's address) and `applied.json` (its applied position), both
//! replaced atomically. Opening a standby takes the directory's lock and reads what it holds: an
//! absent or empty directory gets the primary's identity at first contact, a standby's
//! directory is recovered strictly, and a directory of some system (restored from the archive,
//! or a former primary) is examined for adoption (see the `adoption` module). Whatever this
//! process created before the directory became a standby's is removed again when it stops
//! before that, so that a refused first contact leaves nothing behind.

use std::path::PathBuf;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::adoption::{adopt, examine_for_adoption, Adopting};
use super::apply::Jobs;
use super::partial::PartialCopy;
use super::{lock, Held, Shared, StandbyConfig};
use crate::datadir::{DataDir, DirLock};
use crate::error::{Error, Result};
use crate::format::{ControlFile, SegmentFileKind, SegmentName, SegmentNo, FORMAT_VERSION};
use crate::fsutil::{fsync_dir, write_atomic};
use crate::recovery::{recover, RecoveryMode};
use crate::replication::handshake::Welcomed;
use crate::replication::ReplError;
use crate::segment_check::SealedSegment;
use crate::Lsn;

/// The standby's identity file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StandbyMeta {
    pub standby_id: Uuid,
    /// The primary's address as given on the command line.
    pub primary: String,
    pub created_us: i64,
    /// The standby's name (absent in files written before names existed: the default then).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// The applied position file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppliedState {
    pub applied_lsn: Lsn,
    pub updated_us: i64,
}

pub fn meta_path(dd: &DataDir) -> std::path::PathBuf {
    dd.state_dir().join("standby.json")
}

/// Present while a directory of some system is being made a standby's, from the first change
/// acceptance makes (its control file onto the primary's timeline) until `standby.json` is
/// written: writers refuse the directory meanwhile.
pub fn adopting_path(dd: &DataDir) -> std::path::PathBuf {
    dd.state_dir().join("adopting")
}

pub fn applied_path(dd: &DataDir) -> std::path::PathBuf {
    dd.state_dir().join("applied.json")
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &std::path::Path) -> Result<Option<T>> {
    crate::fsutil::read_json(path, |e| {
        Error::corrupt_state(path, "standby state file", e)
    })
}

fn write_json<T: Serialize>(path: &std::path::Path, v: &T) -> Result<()> {
    let bytes = serde_json::to_vec_pretty(v)
        .map_err(|e| Error::Other(format!("encode {}: {e}", path.display())))?;
    write_atomic(path, &bytes)
}

/// The standby's identity, when this directory belongs to a standby.
pub fn read_meta(dd: &DataDir) -> Result<Option<StandbyMeta>> {
    read_json(&meta_path(dd))
}

pub fn write_meta(dd: &DataDir, meta: &StandbyMeta) -> Result<()> {
    let dir = dd.state_dir();
    if !dir.exists() {
        std::fs::create_dir_all(&dir)
            .map_err(|e| Error::io(format!("create {}", dir.display()), e))?;
        crate::fsutil::fsync_dir(dd.root())?;
    }
    write_json(&meta_path(dd), meta)
}

/// The applied position: 0 before the first apply.
pub fn read_applied(dd: &DataDir) -> Result<Lsn> {
    Ok(read_json::<AppliedState>(&applied_path(dd))?.map_or(Lsn::ZERO, |s| s.applied_lsn))
}

/// Records the applied position durably. Refuses to move it backwards.
pub fn write_applied(dd: &DataDir, applied_lsn: Lsn) -> Result<()> {
    let old = read_applied(dd)?;
    if applied_lsn < old {
        return Err(Error::InvalidArgument(format!(
            "applied_lsn may not move backwards (from {} to {})",
            old, applied_lsn
        )));
    }
    write_json(
        &applied_path(dd),
        &AppliedState {
            applied_lsn,
            updated_us: crate::now_us(),
        },
    )
}

/// Lowers the applied position to `to` when it is past it: for a directory cut back on purpose
/// (rewind), whose records past `to` are set aside and whose new records from there on are
/// still to be applied. Durable on return.
pub fn lower_applied(dd: &DataDir, to: Lsn) -> Result<()> {
    if read_applied(dd)? > to {
        write_json(
            &applied_path(dd),
            &AppliedState {
                applied_lsn: to,
                updated_us: crate::now_us(),
            },
        )?;
    }
    Ok(())
}

#[derive(Clone, Debug, Default)]
pub(super) struct Created {
    /// The directories this process made, innermost (the data directory) first.
    dirs: Vec<PathBuf>,
    lock_file: bool,
}

pub(super) struct Opened {
    pub(super) lock: DirLock,
    pub(super) id: Uuid,
    pub(super) held: Held,
    /// The history files the directory holds.
    pub(super) histories: Vec<crate::replication::handshake::HistoryBytes>,
    pub(super) flushed: Lsn,
    pub(super) applied: Lsn,
    /// Sealed segments not yet fully applied, in order.
    pub(super) pending: Vec<SealedSegment>,
    pub(super) meta: Option<StandbyMeta>,
    pub(super) adopting: Option<Adopting>,
    pub(super) created: Created,
}

/// Removes what this process created in a directory that never became a standby's: the lock
/// file, and the directory itself when it made it (only if empty).
pub(super) fn undo_created(shared: &Shared) {
    let dd = &shared.dd;
    if shared.created.lock_file {
        let _ = std::fs::remove_file(dd.lock_path());
    }
    if !shared.created.dirs.is_empty() {
        // History files stored at a first contact that went no further.
        if let Ok(tls) = dd.history_timelines() {
            for tl in tls {
                let _ = std::fs::remove_file(dd.history_path(tl));
            }
        }
        for d in [dd.wal_dir(), dd.state_dir()] {
            let _ = std::fs::remove_dir(d);
        }
        // Only empty directories go: anything someone else put there stays.
        for d in &shared.created.dirs {
            if std::fs::remove_dir(d).is_err() {
                break;
            }
        }
    } else if shared.created.lock_file {
        let _ = fsync_dir(dd.root());
    }
}

pub(super) fn not_standby_dir(dd: &DataDir, reason: impl Into<String>) -> ReplError {
    ReplError::Store(Error::NotADataDir {
        path: dd.root().to_path_buf(),
        reason: reason.into(),
    })
}

/// Opens (or prepares to create) the standby's directory.
pub(super) fn open_dir(config: &StandbyConfig) -> Result<Opened, ReplError> {
    let dd = DataDir::new(&config.data_dir);
    // The directories about to be made, innermost first.
    let dirs: Vec<PathBuf> = dd
        .root()
        .ancestors()
        .take_while(|a| !a.as_os_str().is_empty() && !a.exists())
        .map(|a| a.to_path_buf())
        .collect();
    crate::datadir::create_private_dir(dd.root())?;
    let lock_existed = dd.lock_path().exists();
    let created = Created {
        dirs,
        lock_file: !lock_existed,
    };
    let lock = match dd.lock() {
        Ok(l) => l,
        Err(e) => {
            if !created.dirs.is_empty() {
                undo_made(&dd, &created);
            }
            return Err(e.into());
        }
    };
    // Refused once locked (a directory that is no standby's, damaged, of another kind): what
    // this process made is removed again, its lock file included.
    open_locked(dd.clone(), lock, created.clone(), &config.primary)
        .inspect_err(|_| undo_made(&dd, &created))
}

/// Removes the lock file and the directories this process made, when it made them.
fn undo_made(dd: &DataDir, created: &Created) {
    if created.lock_file {
        let _ = std::fs::remove_file(dd.lock_path());
    }
    for d in &created.dirs {
        let _ = std::fs::remove_dir(d);
    }
}

fn open_locked(
    dd: DataDir,
    lock: DirLock,
    created: Created,
    primary: &str,
) -> Result<Opened, ReplError> {
    let meta = read_meta(&dd)?;
    if !dd.is_initialized() {
        // Absent or empty: it gets the primary's identity at first contact. Only what an
        // earlier attempt left may be here.
        check_fresh(&dd)?;
        discard_partials(&dd)?;
        return Ok(Opened {
            lock,
            id: meta.as_ref().map_or_else(Uuid::new_v4, |m| m.standby_id),
            held: Held::default(),
            histories: crate::replication::history_files::read_all(&dd)?,
            flushed: Lsn::ZERO,
            applied: Lsn::ZERO,
            pending: Vec::new(),
            meta: None,
            adopting: None,
            created,
        });
    }
    let control = dd.read_control()?;
    crate::promote::clear_abandoned_intent(&dd)?;
    let Some(meta) = meta else {
        // A directory served as a primary is not adopted: `--primary` may be that very `serve`,
        // and the directory would follow itself (and be a primary no more).
        if dd.is_served()? {
            return Err(ReplError::Store(Error::Refused(format!(
                "{} is being served by a running `walship serve`: a directory becomes a standby's only when nothing serves it as a primary (is --primary {} that serve? a standby may not follow its own directory); stop that serve first",
                dd.root().display(),
                primary
            ))));
        }
        // A directory of some system: it may follow a primary of the same system once the
        // primary accepts its history. Nothing is written until then.
        let (held, flushed, pending, open) = examine_for_adoption(&dd, &control)?;
        tracing::info!(
            dir = %dd.root().display(),
            flushed = %flushed,
            open = open.as_ref().map_or("none".to_string(), |o| format!("{} up to offset {}", o.name, o.valid_end)),
            "not a standby's directory yet: it becomes one once the primary accepts its history"
        );
        return Ok(Opened {
            lock,
            id: Uuid::new_v4(),
            held,
            histories: crate::replication::history_files::read_all(&dd)?,
            flushed,
            applied: Lsn::ZERO,
            pending,
            meta: None,
            adopting: Some(Adopting { open }),
            created,
        });
    };
    let rec = recover(&dd, &control, RecoveryMode::Strict)?;
    if let Some(open) = &rec.open {
        return Err(not_standby_dir(
            &dd,
            format!(
                "it holds an open segment {}: standbys only hold sealed segments",
                open.name
            ),
        ));
    }
    let applied = read_applied(&dd)?;
    let last = rec.sealed.last();
    let mut flushed = last.map_or(Lsn::ZERO, |s| s.end_lsn);
    // The copy of the segment after the last sealed one (the primary's open segment as it was
    // streamed) is taken up again from its valid prefix; any other partial file is left from
    // an interrupted transfer of a sealed segment and is discarded.
    let partials: Vec<u64> = list_partials(&dd)?;
    let target = last
        .map(|s| s.name.segment_no.next().0)
        .or(partials.iter().copied().min());
    discard_partials_except(&dd, target)?;
    let prev_checksum = last.map(|s| s.seal.segment_checksum);
    let mut next_segment = last.map(|s| s.name.segment_no.next().0);
    if let Some(n) = target {
        if let Some(copy) = PartialCopy::resume(&dd, &control, n, prev_checksum, None)? {
            flushed =
                SegmentNo(n).start_lsn_saturating(control.segment_size) + copy.valid_end as u64;
            next_segment = Some(n);
            tracing::info!(file = %copy.path.display(), flushed = %flushed, "taking up the partial copy of the primary's open segment");
        }
    }
    if applied > flushed {
        tracing::warn!(applied = %applied, flushed = %flushed, "applied_lsn is past the stored segments; keeping it (it never moves backwards)");
    }
    Ok(Opened {
        lock,
        id: meta.standby_id,
        held: Held {
            control: Some(control),
            next_segment,
            prev_checksum,
        },
        histories: crate::replication::history_files::read_all(&dd)?,
        flushed,
        applied,
        pending: rec
            .sealed
            .iter()
            .filter(|s| s.end_lsn > applied)
            .cloned()
            .collect(),
        meta: Some(meta),
        adopting: None,
        created,
    })
}

/// A fresh standby directory may hold only the lock file, and wal/ and state/ as an
/// interrupted first contact left them.
fn check_fresh(dd: &DataDir) -> Result<(), ReplError> {
    let entries = std::fs::read_dir(dd.root())
        .map_err(|e| ReplError::io(format!("list {}", dd.root().display()), e))?;
    for e in entries {
        let e = e.map_err(|e| ReplError::io(format!("list {}", dd.root().display()), e))?;
        let name = e.file_name();
        let ok = match name.to_str() {
            Some("LOCK") => true,
            Some("wal") => std::fs::read_dir(e.path()).is_ok_and(|mut d| {
                d.all(|f| {
                    f.is_ok_and(|f| {
                        f.file_name()
                            .to_str()
                            .and_then(SegmentName::parse)
                            .is_some_and(|n| n.kind == SegmentFileKind::Partial)
                            || f.file_name().to_str().is_some_and(|n| {
                                crate::format::history::parse_history_file_name(n).is_some()
                            })
                    })
                })
            }),
            Some("state") => std::fs::read_dir(e.path()).is_ok_and(|mut d| {
                d.all(|f| {
                    f.is_ok_and(|f| {
                        f.file_name().to_str().is_some_and(|n| {
                            n == "standby.json" || crate::fsutil::is_temp_name_of(n, "standby.json")
                        })
                    })
                })
            }),
            _ => false,
        };
        if !ok {
            return Err(not_standby_dir(dd, format!("it is not empty ({} is there) and has no control file: give an empty or absent directory", name.to_string_lossy())));
        }
    }
    Ok(())
}

fn discard_partials(dd: &DataDir) -> Result<(), ReplError> {
    discard_partials_except(dd, None)
}

/// The segment numbers of the partial copies in wal/.
fn list_partials(dd: &DataDir) -> Result<Vec<u64>, ReplError> {
    Ok(dd
        .list_segments()?
        .into_iter()
        .filter(|n| n.kind == SegmentFileKind::Partial)
        .map(|n| n.segment_no.0)
        .collect())
}

fn discard_partials_except(dd: &DataDir, keep: Option<u64>) -> Result<(), ReplError> {
    if !dd.wal_dir().exists() {
        return Ok(());
    }
    let mut removed = false;
    for name in dd.list_segments()? {
        if name.kind == SegmentFileKind::Partial && Some(name.segment_no.0) != keep {
            let p = dd.segment_path(&name);
            tracing::info!(file = %p.display(), "discarding a partial segment left by an interrupted transfer");
            std::fs::remove_file(&p)
                .map_err(|e| ReplError::io(format!("remove {}", p.display()), e))?;
            removed = true;
        }
    }
    if removed {
        fsync_dir(&dd.wal_dir())?;
    }
    Ok(())
}

/// What the standby does once a primary accepted it: a fresh directory is created with the
/// primary's identity, the primary's address is recorded when it changed, and a directory of
/// the primary's system with no open segment to check becomes a standby's.
pub(super) async fn first_contact(
    shared: &Arc<Shared>,
    jobs: &Jobs,
    welcomed: &Welcomed,
) -> Result<(), ReplError> {
    let cfg = &shared.config;
    let Welcomed {
        ref sent,
        system_id,
        timeline,
        segment_size,
        ref new_histories,
        ..
    } = *welcomed;
    // The primary's history files this standby lacks, durably, before anything else: a
    // directory's timeline never names a history it does not hold.
    if !new_histories.is_empty() {
        let (dd, files) = (shared.dd.clone(), new_histories.clone());
        tokio::task::spawn_blocking(move || -> crate::Result<()> {
            let wal = dd.wal_dir();
            if !wal.exists() {
                std::fs::create_dir_all(&wal)
                    .map_err(|e| Error::io(format!("create {}", wal.display()), e))?;
                fsync_dir(dd.root())?;
            }
            crate::replication::history_files::store(&dd, &files)
        })
        .await
        .map_err(|e| ReplError::io("store the history files", std::io::Error::other(e)))??;
        let timelines: Vec<u32> = new_histories.iter().map(|(t, _)| *t).collect();
        tracing::info!(timelines = ?timelines, "stored the primary's history files");
        let mut own = lock(&shared.histories);
        own.extend(new_histories.iter().cloned());
        own.sort_by_key(|(t, _)| *t);
    }
    if sent.control.is_none() {
        let control = ControlFile {
            identity: crate::format::SystemIdentity {
                format_version: FORMAT_VERSION,
                timeline,
                system_id,
                segment_size,
            },
            created_us: crate::now_us(),
        };
        let (dd, meta) = (
            shared.dd.clone(),
            StandbyMeta {
                standby_id: shared.id,
                primary: cfg.primary.clone(),
                created_us: crate::now_us(),
                name: Some(shared.name.clone()),
            },
        );
        tokio::task::spawn_blocking(move || -> crate::Result<()> {
            // The id first: a crash before the control file leaves a fresh directory
            // that keeps its id.
            write_meta(&dd, &meta)?;
            DataDir::create_with_identity(dd.root(), &control)?;
            Ok(())
        })
        .await
        .map_err(|e| ReplError::io("create the standby directory", std::io::Error::other(e)))??;
        tracing::info!(system_id = %system_id, timeline, segment_size, "created the standby directory with the primary's identity");
        lock(&shared.held).control = Some(control);
        *lock(&shared.meta) = Some(StandbyMeta {
            standby_id: shared.id,
            primary: cfg.primary.clone(),
            created_us: crate::now_us(),
            name: Some(shared.name.clone()),
        });
    }
    // Only a primary that accepted this standby's identity and history may be recorded as its
    // primary, or make a directory of its system a standby's.
    let current = lock(&shared.meta).clone();
    match current {
        Some(mut meta)
            if meta.primary != cfg.primary || meta.name.as_deref() != Some(&shared.name) =>
        {
            if meta.primary != cfg.primary {
                tracing::info!(old = %meta.primary, new = %cfg.primary, "the primary's address changed");
            }
            if meta.name.as_deref() != Some(&shared.name) {
                tracing::info!(old = meta.name.as_deref().unwrap_or("-"), new = %shared.name, "the standby's name changed");
            }
            meta.primary = cfg.primary.clone();
            meta.name = Some(shared.name.clone());
            let (dd, m2) = (shared.dd.clone(), meta.clone());
            tokio::task::spawn_blocking(move || write_meta(&dd, &m2))
                .await
                .map_err(|e| ReplError::io("record the primary", std::io::Error::other(e)))??;
            *lock(&shared.meta) = Some(meta);
        }
        Some(_) => {}
        None => {
            let adopting = lock(&shared.adopting).clone();
            if let Some(Adopting { open: None }) = adopting {
                let s2 = shared.clone();
                let j2 = jobs.clone();
                tokio::task::spawn_blocking(move || adopt(&s2, &j2))
                    .await
                    .map_err(|e| {
                        ReplError::io("adopt the directory", std::io::Error::other(e))
                    })??;
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn applied_never_moves_backwards() {
        let t = tempfile::tempdir().unwrap();
        let dd = DataDir::new(t.path());
        std::fs::create_dir_all(dd.state_dir()).unwrap();
        assert_eq!(read_applied(&dd).unwrap(), Lsn(0));
        write_applied(&dd, Lsn(100)).unwrap();
        write_applied(&dd, Lsn(100)).unwrap();
        assert!(write_applied(&dd, Lsn(99)).is_err());
        assert_eq!(read_applied(&dd).unwrap(), Lsn(100));
        assert_eq!(read_meta(&dd).unwrap(), None);
        let m = StandbyMeta {
            standby_id: Uuid::new_v4(),
            primary: "127.0.0.1:5000".into(),
            created_us: 1,
            name: Some("s1".into()),
        };
        write_meta(&dd, &m).unwrap();
        assert_eq!(read_meta(&dd).unwrap(), Some(m));
    }

    #[test]
    fn a_corrupt_applied_file_is_the_state_file_error() {
        let t = tempfile::tempdir().unwrap();
        let dd = DataDir::new(t.path());
        std::fs::create_dir_all(dd.state_dir()).unwrap();
        std::fs::write(applied_path(&dd), b"{").unwrap();
        match read_applied(&dd) {
            Err(e @ Error::CorruptState { .. }) => {
                assert!(e.is_corruption());
                assert!(
                    e.to_string().starts_with(&format!(
                        "{}: not a valid standby state file: ",
                        applied_path(&dd).display()
                    )),
                    "{e}"
                );
            }
            other => panic!("{other:?}"),
        }
    }
}
