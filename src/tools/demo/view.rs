//! The demo's live view: each component's position, redrawn in place on a terminal.

use super::*;

/// The positions shown in the live view.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct Positions {
    pub(super) written: u64,
    pub(super) acked: u64,
    pub(super) sealed: u64,
    pub(super) standby_flushed: u64,
    pub(super) standby_applied: u64,
    pub(super) archived: u64,
}

pub(super) fn positions(primary: &Path, standby: &Path, acked: &Acked) -> Positions {
    let mut p = Positions {
        acked: acked.last.load(Ordering::Relaxed),
        ..Positions::default()
    };
    if let Ok(s) = walship::status::status(primary) {
        p.written = s.flush_lsn;
        p.sealed = s.sealed_lsn;
    }
    if let Ok(s) = walship::status::status(standby) {
        p.standby_flushed = s.flush_lsn;
        p.standby_applied = s.applied_lsn.unwrap_or(0);
    }
    if let Ok(Some(a)) = ConsumerRegistry::new(&DataDir::new(primary)).get("archiver") {
        p.archived = a.position;
    }
    p
}

pub(super) fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

pub(super) fn view_lines(t: f64, p: &Positions, phase: &str) -> Vec<String> {
    vec![
        format!("  {t:6.1}s  {phase}"),
        format!(
            "  primary   written {:>12}   durable {:>12}   sealed  {:>12}",
            Lsn(p.written).to_string(),
            Lsn(p.acked).to_string(),
            Lsn(p.sealed).to_string()
        ),
        format!(
            "  standby   flushed {:>12}   applied {:>12}   lag {:>10}",
            Lsn(p.standby_flushed).to_string(),
            Lsn(p.standby_applied).to_string(),
            mib(p.sealed.saturating_sub(p.standby_applied))
        ),
        format!(
            "  archive   archived {:>11}   lag {:>10}",
            Lsn(p.archived).to_string(),
            mib(p.sealed.saturating_sub(p.archived))
        ),
    ]
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
