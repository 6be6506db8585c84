//! `status --watch`: a live view of a data directory's positions, rates and lags.
//!
//! On a terminal each refresh redraws the view in place; otherwise each refresh appends a block
//! of plain lines (no escape codes) headed by its time, for logs and pipes.

use std::collections::HashMap;
use std::io::{IsTerminal, Write};
use std::path::Path;
use std::time::{Duration, Instant};

use walship::consumers::ConsumerKind;
use walship::status::{status, DirStatus, Role};

use super::CmdResult;

/// Moves the cursor home and clears the screen.
const REDRAW: &str = "\x1b[H\x1b[2J";

/// Positions seen at the previous refresh, for rates.
#[derive(Default)]
struct Previous {
    at: Option<Instant>,
    flush: u64,
    /// The archivers' positions, by id.
    archivers: HashMap<String, u64>,
    /// What each standby's slot said, by id.
    standbys: HashMap<String, StandbySeen>,
}

/// A standby's slot as one refresh read it, and the rate shown for it.
#[derive(Clone, Copy)]
struct StandbySeen {
    flushed: u64,
    contact_us: Option<i64>,
    rate: Option<f64>,
}

impl Previous {
    fn of(s: &DirStatus, at: Instant, standbys: HashMap<String, StandbySeen>) -> Previous {
        let archivers = s
            .retention
            .consumers
            .iter()
            .filter(|c| c.kind == ConsumerKind::Archiver)
            .map(|c| (c.id.clone(), c.position.0))
            .collect();
        Previous {
            at: Some(at),
            flush: s.flush_lsn.0,
            archivers,
            standbys,
        }
    }
}

/// Each standby's flushing rate, measured between the times its slot was saved: `serve` saves
/// a slot at most once a second, so refreshes more often than that would otherwise see no
/// progress, then two saves' worth, in turn. Between saves the last rate stands.
fn standby_rates(s: &DirStatus, prev: &Previous) -> HashMap<String, StandbySeen> {
    s.standbys
        .iter()
        .map(|sb| {
            let before = prev.standbys.get(&sb.id);
            let rate = match (before, sb.last_contact_us) {
                (Some(b), Some(now)) => match b.contact_us {
                    Some(then) if now > then => {
                        let secs = (now - then) as f64 / 1e6;
                        Some(sb.flushed_lsn.0.saturating_sub(b.flushed) as f64 / secs)
                    }
                    Some(then) if now == then => b.rate,
                    _ => None,
                },
                _ => None,
            };
            let seen = StandbySeen {
                flushed: sb.flushed_lsn.0,
                contact_us: sb.last_contact_us,
                rate,
            };
            (sb.id.clone(), seen)
        })
        .collect()
}

/// Refreshes every `interval` until interrupted, or `count` times.
pub fn watch(dir: &Path, interval: Duration, count: Option<u64>) -> CmdResult {
    let terminal = std::io::stdout().is_terminal();
    let mut prev = Previous::default();
    let mut shown = 0u64;
    loop {
        let s = status(dir)?;
        let now = Instant::now();
        let standbys = standby_rates(&s, &prev);
        let lines = render(
            &s,
            &prev,
            &standbys,
            now,
            &walship::status::format_time(walship::now_us()),
        );
        let mut out = std::io::stdout().lock();
        let text = if terminal {
            format!("{REDRAW}{}\n", lines.join("\n"))
        } else {
            format!("{}\n\n", lines.join("\n"))
        };
        // A closed pipe (`| head`) ends the view quietly.
        if out
            .write_all(text.as_bytes())
            .and_then(|()| out.flush())
            .is_err()
        {
            return Ok(());
        }
        drop(out);
        prev = Previous::of(&s, now, standbys);
        shown += 1;
        if count.is_some_and(|c| shown >= c) {
            return Ok(());
        }
        std::thread::sleep(interval);
    }
}

/// Bytes per second between two positions, as a short human figure; "-" without a previous one.
fn rate(prev: Option<u64>, now: u64, secs: Option<f64>) -> String {
    match (prev, secs) {
        (Some(p), Some(t)) if t > 0.0 => per_second(Some(now.saturating_sub(p) as f64 / t)),
        _ => per_second(None),
    }
}

fn per_second(bytes: Option<f64>) -> String {
    bytes.map_or("-".to_string(), |b| human_bytes(b) + "/s")
}

fn human_bytes(b: f64) -> String {
    const UNITS: [&str; 4] = ["B", "KiB", "MiB", "GiB"];
    let mut v = b;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{v:.0} {}", UNITS[u])
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

fn seconds(s: Option<f64>) -> String {
    s.map_or("-".to_string(), |x| format!("{x:.3} s"))
}

/// The view of one refresh, one line each.
fn render(
    s: &DirStatus,
    prev: &Previous,
    standbys: &HashMap<String, StandbySeen>,
    now: Instant,
    time: &str,
) -> Vec<String> {
    let secs = prev.at.map(|at| now.duration_since(at).as_secs_f64());
    let role = match s.role {
        Role::Primary => "primary",
        Role::Standby => "standby",
    };
    let mut lines = vec![
        format!("{time}  {role}, timeline {}", s.timeline),
        format!(
            "flush {}  sealed {}  writing {}",
            s.flush_lsn,
            s.sealed_lsn,
            rate(prev.at.map(|_| prev.flush), s.flush_lsn.0, secs)
        ),
    ];
    if let Some(a) = s.applied_lsn {
        lines.push(format!("applied {a}"));
    }
    if let Some(y) = &s.sync {
        lines.push(format!(
            "synchronous {} {}: confirmed {}{}",
            y.policy,
            y.level,
            y.confirmed_lsn,
            if y.degraded { ", DEGRADED" } else { "" }
        ));
    }
    lines.push(format!(
        "{:<20} {:<12} {:<9} {:>14} {:>14} {:>12} {:>10} {:>12}",
        "standby", "state", "sync", "flushed", "applied", "lag", "lag time", "rate"
    ));
    for sb in &s.standbys {
        let state = match (sb.connected, sb.lost) {
            (_, true) => "lost",
            (true, _) => "connected",
            _ => "disconnected",
        };
        lines.push(format!(
            "{:<20} {:<12} {:<9} {:>14} {:>14} {:>12} {:>10} {:>12}",
            sb.name.as_deref().unwrap_or(&sb.id),
            state,
            sb.sync_state.as_str(),
            sb.flushed_lsn.to_string(),
            sb.applied_lsn.to_string(),
            human_bytes(sb.lag_bytes as f64),
            seconds(sb.lag_seconds),
            per_second(standbys.get(&sb.id).and_then(|seen| seen.rate)),
        ));
    }
    for c in s
        .retention
        .consumers
        .iter()
        .filter(|c| c.kind == ConsumerKind::Archiver)
    {
        lines.push(format!(
            "archiver {} at {}, behind by {}, {}",
            c.id,
            c.position,
            // Archives take sealed segments only: behind what is sealed, as the metric says.
            human_bytes(s.sealed_lsn.0.saturating_sub(c.position.0) as f64),
            rate(prev.archivers.get(&c.id).copied(), c.position.0, secs)
        ));
    }
    let r = &s.retention;
    lines.push(format!(
        "retained {} in {} sealed segments, oldest held by {}",
        human_bytes(r.sealed_bytes as f64),
        r.sealed_segments,
        if r.held_by.is_empty() {
            "nothing".to_string()
        } else {
            r.held_by.join(", ")
        }
    ));
    if !s.damage.is_empty() {
        lines.push(format!(
            "DAMAGE: {} file(s), see `walship status`",
            s.damage.len()
        ));
    }
    lines
}
