//! The demo's live view: each component's position, redrawn in place on a terminal.

use super::*;

/// The positions shown in the live view.
#[derive(Clone, Debug, Default)]
pub(super) struct Positions {
    pub(super) written: u64,
    pub(super) acked: u64,
    pub(super) sealed: u64,
    pub(super) standbys: Vec<StandbyPos>,
    pub(super) archived: u64,
}

/// One standby: its own positions, and its part and lag as the primary sees them.
#[derive(Clone, Debug, Default)]
pub(super) struct StandbyPos {
    pub(super) name: &'static str,
    pub(super) flushed: u64,
    pub(super) applied: u64,
    /// `sync`, `potential`, `quorum` or `async` (from the primary's status); `-` before it
    /// first connected.
    pub(super) sync_state: &'static str,
    /// The primary's durable position minus what the standby confirmed as flushed.
    pub(super) lag: u64,
}

pub(super) fn positions(
    primary: &Path,
    standbys: &[(&'static str, &Path)],
    acked: &Acked,
) -> Positions {
    let mut p = Positions {
        acked: acked.last.load(Ordering::Relaxed),
        ..Positions::default()
    };
    let prim = walship::status::status(primary).ok();
    if let Some(s) = &prim {
        p.written = s.flush_lsn.0;
        p.sealed = s.sealed_lsn.0;
    }
    for (name, dir) in standbys {
        let mut sp = StandbyPos {
            name,
            sync_state: "-",
            ..StandbyPos::default()
        };
        if let Ok(s) = walship::status::status(dir) {
            sp.flushed = s.flush_lsn.0;
            sp.applied = s.applied_lsn.unwrap_or_default().0;
        }
        let slot = prim
            .iter()
            .flat_map(|s| s.standbys.iter())
            .find(|sb| sb.name.as_deref() == Some(*name));
        if let Some(slot) = slot {
            sp.sync_state = slot.sync_state.as_str();
            sp.lag = slot.flush_lag_bytes;
        }
        p.standbys.push(sp);
    }
    if let Ok(Some(a)) = ConsumerRegistry::new(&DataDir::new(primary)).get("archiver") {
        p.archived = a.position.0;
    }
    p
}

pub(super) fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

pub(super) fn view_lines(t: f64, p: &Positions, phase: &str) -> Vec<String> {
    let mut lines = vec![
        format!("  {t:6.1}s  {phase}"),
        format!(
            "  primary   written {:>12}   acked   {:>12}   sealed  {:>12}",
            Lsn(p.written).to_string(),
            Lsn(p.acked).to_string(),
            Lsn(p.sealed).to_string()
        ),
    ];
    for s in &p.standbys {
        lines.push(format!(
            "  standby {:<6} {:<9} flushed {:>12}   applied {:>12}   lag {:>10}",
            s.name,
            s.sync_state,
            Lsn(s.flushed).to_string(),
            Lsn(s.applied).to_string(),
            mib(s.lag)
        ));
    }
    lines.push(format!(
        "  archive   archived {:>11}   lag {:>10}",
        Lsn(p.archived).to_string(),
        mib(p.sealed.saturating_sub(p.archived))
    ));
    lines
}

/// Draws the live view: redrawn in place on a terminal, a line every 2 s otherwise.
pub(super) struct View {
    pub(super) live: bool,
    pub(super) drawn: usize,
    pub(super) last_plain: Option<Instant>,
}

impl View {
    pub(super) fn show(&mut self, out: &mut dyn Write, lines: &[String]) {
        if self.live {
            if self.drawn > 0 {
                let _ = write!(out, "\x1b[{}A", self.drawn);
            }
            for l in lines {
                let _ = writeln!(out, "\x1b[2K{l}");
            }
            self.drawn = lines.len();
        } else if self
            .last_plain
            .is_none_or(|t| t.elapsed() >= Duration::from_secs(2))
        {
            self.last_plain = Some(Instant::now());
            let _ = writeln!(
                out,
                "{}",
                lines
                    .iter()
                    .map(|l| l.trim())
                    .collect::<Vec<_>>()
                    .join(" | ")
            );
        }
        let _ = out.flush();
    }

    pub(super) fn event(&mut self, out: &mut dyn Write, msg: &str) {
        // Events print above the live table, which is then redrawn below them.
        if self.live && self.drawn > 0 {
            let _ = write!(out, "\x1b[{}A\x1b[J", self.drawn);
            self.drawn = 0;
        }
        let _ = writeln!(out, "* {msg}");
        let _ = out.flush();
    }
}
