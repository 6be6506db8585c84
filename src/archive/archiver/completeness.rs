//! Where an archive begins, and the check, before the archiver trusts its position, that the
//! archive holds every segment from there: a missing segment is pushed again while wal/ still
//! holds it, and refused loudly when it does not.

use super::*;

impl<S: ArchiveStore> Archiver<S> {
    /// The segment a new archive begins at: the oldest segment in wal/ that holds records
    /// (the archiver pushes from there); with none, the segment the log's end is in. Prepared
    /// files do not count: a recycled one keeps the number of the segment it was, long removed.
    /// When this archiver had already archived up to `position` into this same location, the
    /// archive it filled is gone; it is rebuilt only when wal/ provably still holds everything
    /// that archive held (nothing was ever removed by retention).
    pub(super) fn first_segment_of_new_archive(&mut self, position: Lsn) -> Result<u64> {
        let oldest = self
            .dir
            .list_segments()?
            .iter()
            .filter(|n| n.kind != SegmentFileKind::Prepared)
            .map(|n| n.segment_no.0)
            .min();
        let oldest = match oldest {
            Some(no) => no,
            None => {
                let (flush, _) = crate::log_ends::wal_ends(&self.dir, &self.control)?;
                SegmentNo::of_lsn(flush, self.control.segment_size).0
            }
        };
        if position == Lsn::ZERO {
            return Ok(oldest);
        }
        let loc = self.store.location();
        if oldest == 0 || crate::retention::checkpoint_lsn(&self.dir)? == Lsn(0) {
            tracing::warn!(archive = %loc, archived_up_to = %position, "the archive is gone (no {IDENTITY_NAME}, no segments) although the archiver had archived up to its position there; creating it again and pushing every segment again from wal/");
            return Ok(oldest);
        }
        // Retention removes nothing below the position while this is recorded.
        self.save_position(SegmentNo(oldest).start_lsn_saturating(self.control.segment_size))?;
        Err(Error::Refused(format!(
            "{loc} is no longer an archive (no {IDENTITY_NAME}, no segments), yet the archiver had archived up to LSN {} there; {} begins at segment {oldest:X} and retention may have removed older segments, so the archive cannot be rebuilt complete. Nothing was written; the archiver's position was set back so that retention keeps every segment in wal/. Start a new archive in another directory (--to), or drop the archiver (`walship checkpoint {} --drop-consumer {}`) to start a new one here",
            position,
            self.dir.wal_dir().display(),
            self.dir.root().display(),
            self.consumer_id
        )))
    }

    /// Writes the identity file; one that appeared meanwhile must be ours.
    pub(super) async fn write_identity(&mut self) -> Result<()> {
        let location = self.store.location();
        match self
            .store
            .put(IDENTITY_NAME, Arc::new(self.identity.encode()))
            .await?
        {
            PutOutcome::Created { .. } => {
                tracing::info!(archive = %location, system_id = %self.identity.system_id, first_segment = ?self.identity.first_segment, "created archive")
            }
            PutOutcome::AlreadyExists => {
                self.identity = check_identity(&*self.store, &self.identity).await?;
                self.store.sync(IDENTITY_NAME).await?;
            }
        }
        Ok(())
    }

    /// Lists the archive and checks, before its progress is trusted, that it holds every
    /// segment from the one it begins at up to the archiver's position and the newest segment
    /// it holds. A missing segment moves the position back to it, so the pass pushes it again
    /// from wal/ and retention keeps it meanwhile; one wal/ no longer holds is refused. An
    /// identity file removed (with every segment) while the archiver runs is written again,
    /// once the archive is known to be completable.
    pub(super) async fn reconcile(&mut self) -> Result<()> {
        let loc = self.store.location();
        let objects = self.store.list().await?;
        let segments = segment_objects(&objects);
        if !objects.iter().any(|o| o.name == IDENTITY_NAME) {
            if let Some((n, _, _)) = segments.first() {
                // Damage (retried when watching): it may also be an archive being removed.
                return Err(Error::Corrupt {
                    file: PathBuf::from(&loc).join(IDENTITY_NAME),
                    offset: 0,
                    lsn: Lsn(0),
                    reason: format!("missing, while the archive still holds segments ({n} and others): not a walship archive any more, or a damaged one"),
                });
            }
        }
        let identity_lost = !objects.iter().any(|o| o.name == IDENTITY_NAME);
        if !identity_lost {
            // Pruning moves the segment the archive begins at forward (never back): segments
            // before it are no longer the archive's to hold or to push.
            let theirs = check_identity(&*self.store, &self.identity).await?;
            // Split brain and other histories are refused here, before anything is stored;
            // the history files of the directory's timelines go in before any segment.
            self.sync_timelines().await?;
            if let (Some(now), Some(was)) = (theirs.first_segment, self.identity.first_segment) {
                if now > was {
                    tracing::info!(archive = %loc, from = was, to = now, "the archive was pruned: it begins at a later segment");
                    self.identity.first_segment = Some(now);
                }
            }
        }
        // One segment under both names is damage (a restore refuses it), so the archive is not
        // counted as holding it until the operator has removed one; segments before the
        // beginning are pruning's leftovers, read by no one.
        let begin = self.identity.first_segment.unwrap_or(0);
        if let Some(w) = segments
            .windows(2)
            .find(|w| w[0].0 == w[1].0 && w[0].0.segment_no.0 >= begin)
        {
            let (n, a, b) = (w[0].0, &w[0].2.name, &w[1].2.name);
            // Listed while two racing archivers settled the names (one removes the `.wal.zst`
            // it finds beside the `.wal`): asked again, one is gone.
            // An archiver stopped before it settled them left both: settled here the same way.
            if !(self.store.exists(a).await? && self.store.exists(b).await?)
                || self.uploader().settle_both_names(n).await?
            {
                return Box::pin(self.reconcile()).await;
            }
            return Err(Error::Corrupt {
                file: PathBuf::from(&loc).join(b),
                offset: 0,
                lsn: n.segment_no.start_lsn_saturating(self.identity.segment_size),
                reason: format!("segment {n} is stored twice, as {a} and {b}, and they do not hold the same bytes (or {a} is damaged): a restore refuses the archive. Keep the one that holds this history's segment (`zstd -dc {b} | cmp - {a}` shows where they differ) and remove the other; nothing was pushed"),
            });
        }
        self.archived.clear();
        for (n, c, o) in segments {
            // An object too large to be a segment is damage, refused before it is ever read.
            check_object_len(
                &PathBuf::from(&loc).join(&o.name),
                c,
                o.size,
                self.identity.segment_size,
            )?;
            // So is a name whose segment lies past the end of the LSN space.
            n.start_lsn(self.identity.segment_size)
                .map_err(|e| match e {
                    Error::Corrupt { reason, .. } => Error::Corrupt {
                        file: PathBuf::from(&loc).join(&o.name),
                        offset: 0,
                        lsn: Lsn(u64::MAX),
                        reason,
                    },
                    other => other,
                })?;
            // Along the path only: another timeline's segment of that number is not the one a
            // restore along the newest history reads.
            if n.timeline == self.path_timeline(n.segment_no.0) {
                self.archived.entry(n.segment_no.0).or_insert((o.name, c));
            }
        }
        self.begin = self
            .identity
            .first_segment
            .or_else(|| self.archived.keys().next().copied());
        // Whether it can be completed is decided before anything is written to it.
        self.check_complete()?;
        if identity_lost {
            tracing::error!(archive = %loc, "the archive lost its {IDENTITY_NAME} file and every segment; writing them again");
            self.write_identity().await?;
            self.histories_pushed.clear();
            self.sync_timelines().await?;
        }
        Ok(())
    }

    /// The completeness check of [`Self::reconcile`], on the listing it made.
    fn check_complete(&mut self) -> Result<()> {
        let loc = self.store.location();
        let Some(begin) = self.begin else {
            return Ok(());
        };
        let size = self.control.segment_size;
        let covered = self.position.0.checked_sub(1).map(|p| p / size);
        let newest = self.archived.keys().next_back().copied();
        let Some(high) = covered.max(newest) else {
            return Ok(());
        };
        let Some((first_missing, missing)) = self.missing(begin, high) else {
            return Ok(());
        };
        let local: std::collections::BTreeSet<u64> = self
            .dir
            .list_segments()?
            .into_iter()
            .filter(|n| n.kind == SegmentFileKind::Sealed)
            .map(|n| n.segment_no.0)
            .collect();
        let back_to = SegmentNo(first_missing).start_lsn_saturating(size);
        if back_to < self.position {
            // Before anything else: retention must keep what the archive lacks.
            self.save_position(back_to)?;
        }
        let seg = |n: u64| SegmentName::new(self.path_timeline(n), n, SegmentFileKind::Sealed);
        // Each search stops at the first segment wal/ lacks: at most one step past wal/'s files.
        let gone = missing
            .iter()
            .find_map(|&(a, b)| (a..=b).find(|n| !local.contains(n)));
        let count: u64 = missing.iter().map(|(a, b)| b - a + 1).sum();
        if let Some(g) = gone {
            return Err(Error::Refused(format!(
                "{loc} lacks {count} segment(s) from {} on, between the segment it begins at ({}) and {}, and {} no longer holds {}: the archive cannot be completed and nothing was pushed. The archiver's position was set back to LSN {} so retention keeps every segment from there on. Start a new archive in another directory (--to); this one stays incomplete from {} on",
                seg(first_missing),
                seg(begin),
                seg(high),
                self.dir.wal_dir().display(),
                seg(g),
                self.position,
                seg(first_missing)
            )));
        }
        tracing::warn!(archive = %loc, first_missing = %seg(first_missing), missing = count, "the archive lacks segments it should hold; pushing them again from wal/");
        Ok(())
    }

    /// The first segment missing from the archive in `begin..=high`, and every missing range.
    fn missing(&self, begin: u64, high: u64) -> Option<(u64, Vec<(u64, u64)>)> {
        let mut ranges = Vec::new();
        let mut expect = begin;
        for &n in self.archived.range(begin..=high).map(|(n, _)| n) {
            if n > expect {
                ranges.push((expect, n - 1));
            }
            expect = n + 1;
        }
        if expect <= high {
            ranges.push((expect, high));
        }
        ranges.first().map(|r| (r.0, ranges.clone()))
    }
}
