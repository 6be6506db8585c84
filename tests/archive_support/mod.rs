//! Helpers shared by the archive and retention tests: running the real binary.

#![allow(dead_code)]

use std::path::Path;
use std::process::{Command, Output};

pub fn walship(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_walship"))
        .args(args)
        .output()
        .expect("run walship")
}

pub fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}

/// stdout and stderr together, for assertion messages and searching error text.
pub fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

pub fn archive_once(data: &Path, arc: &Path, extra: &[&str]) -> Output {
    let mut args = vec!["archive", s(data), "--to", s(arc), "--once"];
    args.extend_from_slice(extra);
    walship(&args)
}

/// The file names in a directory.
pub fn names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .expect("list")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}
