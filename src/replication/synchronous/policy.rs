//! The synchronous-commit policy: which standbys must confirm a commit, and how far (the
//! level). Parsed from text as PostgreSQL's `synchronous_standby_names` is:
//!
//! - `FIRST n (a, b, c)`: the first `n` connected standbys in the order listed (priority);
//! - `ANY n (a, b, c)`: any `n` of the connected standbys listed (a quorum);
//! - `n (a, b)` is `FIRST n (a, b)`, and a bare list `a, b` is `FIRST 1 (a, b)`;
//! - `*` in a list stands for any name.
//!
//! Keywords are case-insensitive, names are compared exactly. Pure: no I/O, every error names
//! the column (counted in characters from 1) where the text goes wrong.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use super::name::check_name;

/// How the standbys listed are counted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    /// The first `n` connected standbys in the order listed.
    First,
    /// Any `n` connected standbys listed.
    Any,
}

/// One entry of a policy's list.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NamePattern {
    /// `*`: any standby.
    Any,
    /// A standby of this name.
    Name(String),
}

impl NamePattern {
    pub fn matches(&self, name: &str) -> bool {
        match self {
            NamePattern::Any => true,
            NamePattern::Name(n) => n == name,
        }
    }
}

/// Which standbys confirm a commit.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncPolicy {
    pub method: Method,
    /// How many standbys must confirm (at least 1).
    pub num: usize,
    /// The standbys, in priority order for `FIRST`.
    pub names: Vec<NamePattern>,
}

/// How far a standby must have taken a record to confirm it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum SyncLevel {
    /// Received and written by the standby (handed to its operating system, maybe not synced).
    RemoteWrite,
    /// Durable on the standby.
    #[default]
    RemoteFlush,
    /// Applied by the standby's applicator.
    RemoteApply,
}

impl SyncLevel {
    pub fn as_str(self) -> &'static str {
        match self {
            SyncLevel::RemoteWrite => "remote_write",
            SyncLevel::RemoteFlush => "remote_flush",
            SyncLevel::RemoteApply => "remote_apply",
        }
    }
}

impl fmt::Display for SyncLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for SyncLevel {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "remote_write" => Ok(SyncLevel::RemoteWrite),
            "remote_flush" => Ok(SyncLevel::RemoteFlush),
            "remote_apply" => Ok(SyncLevel::RemoteApply),
            other => Err(format!(
                "unknown synchronous level {other:?}: use remote_write, remote_flush or remote_apply"
            )),
        }
    }
}

/// Why a policy's text is not a policy: where (column, from 1) and what.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid synchronous policy at column {column}: {message}")]
pub struct PolicyError {
    pub column: usize,
    pub message: String,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Tok {
    Word(String),
    Open,
    Close,
    Comma,
}

fn err(column: usize, message: impl Into<String>) -> PolicyError {
    PolicyError {
        column,
        message: message.into(),
    }
}

/// Splits the text into words (names, numbers, keywords, `*`) and punctuation, each with its
/// column.
fn lex(s: &str) -> Result<Vec<(Tok, usize)>, PolicyError> {
    let mut out = Vec::new();
    let chars: Vec<char> = s.chars().collect();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let col = i + 1;
        match c {
            ' ' | '\t' => i += 1,
            '(' => {
                out.push((Tok::Open, col));
                i += 1
            }
            ')' => {
                out.push((Tok::Close, col));
                i += 1
            }
            ',' => {
                out.push((Tok::Comma, col));
                i += 1
            }
            '*' => {
                out.push((Tok::Word("*".into()), col));
                i += 1
            }
            c if c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.') => {
                let start = i;
                while i < chars.len()
                    && (chars[i].is_ascii_alphanumeric() || matches!(chars[i], '_' | '-' | '.'))
                {
                    i += 1;
                }
                out.push((Tok::Word(chars[start..i].iter().collect()), col));
            }
            other => {
                return Err(err(
                    col,
                    format!("unexpected {other:?}: a policy is FIRST n (name, ...), ANY n (name, ...) or name, ..."),
                ))
            }
        }
    }
    Ok(out)
}

fn is_number(w: &str) -> bool {
    !w.is_empty() && w.bytes().all(|b| b.is_ascii_digit())
}

impl SyncPolicy {
    /// Parses a policy's text.
    pub fn parse(s: &str) -> Result<SyncPolicy, PolicyError> {
        let toks = lex(s)?;
        let end_col = s.chars().count() + 1;
        let at = |i: usize| toks.get(i).map_or(end_col, |t| t.1);
        let word = |i: usize| match toks.get(i) {
            Some((Tok::Word(w), _)) => Some(w.as_str()),
            _ => None,
        };
        if toks.is_empty() {
            return Err(err(
                1,
                "the policy is empty: give FIRST n (name, ...) or ANY n (name, ...)",
            ));
        }
        let mut i = 0;
        let mut method = None;
        if let Some(w) = word(0) {
            let kw = if w.eq_ignore_ascii_case("first") {
                Some(Method::First)
            } else if w.eq_ignore_ascii_case("any") {
                Some(Method::Any)
            } else {
                None
            };
            // A keyword only when a number follows: a standby may be called "first".
            if kw.is_some() && word(1).is_some_and(is_number) {
                method = kw;
                i = 1;
            } else if kw.is_some() && !matches!(toks.get(1), Some((Tok::Comma, _)) | None) {
                return Err(err(
                    at(1),
                    format!("expected the number of standbys after {}", w.to_uppercase()),
                ));
            }
        }
        let counted =
            word(i).is_some_and(is_number) && matches!(toks.get(i + 1), Some((Tok::Open, _)));
        let (num, names) = if counted {
            let num_col = at(i);
            let num: usize = word(i)
                .and_then(|w| w.parse().ok())
                .ok_or_else(|| err(num_col, "the number of standbys is too large"))?;
            if num == 0 {
                return Err(err(num_col, "the number of standbys must be at least 1"));
            }
            let (names, next) = list(&toks, i + 2, end_col, true)?;
            if next < toks.len() {
                return Err(err(at(next), "unexpected text after the closing ')'"));
            }
            (num, names)
        } else {
            if method.is_some() || word(i).is_some_and(is_number) {
                return Err(err(at(i + 1), "expected '(' and a list of standby names"));
            }
            let (names, next) = list(&toks, i, end_col, false)?;
            if next < toks.len() {
                return Err(err(at(next), "unexpected text after the list of names"));
            }
            (1, names)
        };
        let wildcard = names.iter().any(|(n, _)| *n == NamePattern::Any);
        if !wildcard && num > names.len() {
            return Err(err(
                at(i),
                format!(
                    "{num} standbys must confirm but only {} are listed",
                    names.len()
                ),
            ));
        }
        Ok(SyncPolicy {
            method: method.unwrap_or(Method::First),
            num,
            names: names.into_iter().map(|(n, _)| n).collect(),
        })
    }

    /// True when a standby of this name is listed (by name or by `*`).
    pub fn lists(&self, name: &str) -> bool {
        self.priority(name).is_some()
    }

    /// The position of the first entry matching `name` (0 is the highest priority).
    pub fn priority(&self, name: &str) -> Option<usize> {
        self.names.iter().position(|p| p.matches(name))
    }
}

/// Reads `name, name, ...` from token `i`, closed by ')' when `closed`; returns the names with
/// their columns and the index of the token after the list.
fn list(
    toks: &[(Tok, usize)],
    mut i: usize,
    end_col: usize,
    closed: bool,
) -> Result<(Vec<(NamePattern, usize)>, usize), PolicyError> {
    let at = |i: usize| toks.get(i).map_or(end_col, |t| t.1);
    let mut names: Vec<(NamePattern, usize)> = Vec::new();
    loop {
        let col = at(i);
        let pattern = match toks.get(i) {
            Some((Tok::Word(w), _)) if w == "*" => NamePattern::Any,
            Some((Tok::Word(w), _)) => {
                check_name(w).map_err(|e| err(col, e))?;
                NamePattern::Name(w.clone())
            }
            _ => return Err(err(col, "expected a standby name or '*'")),
        };
        if names.iter().any(|(n, _)| *n == pattern) {
            return Err(err(col, "this name is listed twice"));
        }
        names.push((pattern, col));
        i += 1;
        match toks.get(i) {
            Some((Tok::Comma, _)) => i += 1,
            Some((Tok::Close, _)) if closed => return Ok((names, i + 1)),
            None if !closed => return Ok((names, i)),
            None => return Err(err(end_col, "expected ')' to close the list")),
            Some(_) => {
                return Err(err(
                    at(i),
                    if closed {
                        "expected ',' or ')'"
                    } else {
                        "expected ','"
                    },
                ))
            }
        }
    }
}

impl fmt::Display for SyncPolicy {
    /// The canonical form: `FIRST n (a, b)` or `ANY n (a, b)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = match self.method {
            Method::First => "FIRST",
            Method::Any => "ANY",
        };
        write!(f, "{m} {} (", self.num)?;
        for (k, n) in self.names.iter().enumerate() {
            if k > 0 {
                f.write_str(", ")?;
            }
            match n {
                NamePattern::Any => f.write_str("*")?,
                NamePattern::Name(s) => f.write_str(s)?,
            }
        }
        f.write_str(")")
    }
}

impl FromStr for SyncPolicy {
    type Err = PolicyError;
    fn from_str(s: &str) -> Result<Self, PolicyError> {
        SyncPolicy::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn names(v: &[&str]) -> Vec<NamePattern> {
        v.iter()
            .map(|n| {
                if *n == "*" {
                    NamePattern::Any
                } else {
                    NamePattern::Name(n.to_string())
                }
            })
            .collect()
    }

    #[test]
    fn the_forms_postgresql_accepts() {
        let p = SyncPolicy::parse("FIRST 2 (a, b, c)").unwrap();
        assert_eq!(
            (p.method, p.num, p.names),
            (Method::First, 2, names(&["a", "b", "c"]))
        );
        let p = SyncPolicy::parse("any 1(s1,s2)").unwrap();
        assert_eq!(
            (p.method, p.num, p.names),
            (Method::Any, 1, names(&["s1", "s2"]))
        );
        let p = SyncPolicy::parse("2 (a, b)").unwrap();
        assert_eq!((p.method, p.num), (Method::First, 2));
        let p = SyncPolicy::parse("a, b").unwrap();
        assert_eq!(
            (p.method, p.num, p.names),
            (Method::First, 1, names(&["a", "b"]))
        );
        let p = SyncPolicy::parse("*").unwrap();
        assert_eq!((p.num, p.names), (1, names(&["*"])));
        let p = SyncPolicy::parse("ANY 3 (*)").unwrap();
        assert_eq!((p.method, p.num), (Method::Any, 3));
        // A standby may be called like a keyword.
        let p = SyncPolicy::parse("first, any").unwrap();
        assert_eq!(p.names, names(&["first", "any"]));
        assert_eq!(
            SyncPolicy::parse("FIRST 1 (first)").unwrap().names,
            names(&["first"])
        );
    }

    #[test]
    fn errors_name_the_column() {
        let cases = [
            ("", 1, "empty"),
            ("FIRST 0 (a)", 7, "at least 1"),
            ("FIRST 3 (a, b)", 7, "only 2 are listed"),
            ("FIRST 1 (a, a)", 13, "listed twice"),
            ("FIRST 1 (a b)", 12, "expected ',' or ')'"),
            ("FIRST 1 (a,", 12, "expected a standby name"),
            ("FIRST 1 (a", 11, "expected ')'"),
            ("FIRST 1 (a) x", 13, "after the closing"),
            ("ANY (a)", 5, "number of standbys after ANY"),
            ("FIRST 1 a", 9, "expected '('"),
            ("a; b", 2, "unexpected ';'"),
            ("FIRST 1 (a, -b)", 13, "at byte 0"),
            ("a b", 3, "expected ','"),
            ("FIRST 99999999999999999999999 (*)", 7, "too large"),
        ];
        for (text, col, what) in cases {
            let e = SyncPolicy::parse(text).unwrap_err();
            assert_eq!(e.column, col, "{text:?}: {e}");
            assert!(e.to_string().contains(what), "{text:?}: {e}");
            assert!(e.to_string().contains(&format!("column {col}")), "{e}");
        }
    }

    #[test]
    fn levels_parse_and_print() {
        for l in [
            SyncLevel::RemoteWrite,
            SyncLevel::RemoteFlush,
            SyncLevel::RemoteApply,
        ] {
            assert_eq!(l.as_str().parse::<SyncLevel>(), Ok(l));
        }
        assert_eq!(SyncLevel::default(), SyncLevel::RemoteFlush);
        assert!("local"
            .parse::<SyncLevel>()
            .unwrap_err()
            .contains("remote_flush"));
    }

    fn name_strategy() -> impl Strategy<Value = String> {
        prop_oneof![Just("*".to_string()), "[a-z0-9][a-z0-9_.-]{0,8}"]
    }

    proptest! {
        /// Whatever policy is printed parses back to itself.
        #[test]
        fn printed_policies_parse_back(
            any in any::<bool>(),
            list in proptest::collection::btree_set(name_strategy(), 1..6),
            num in 1usize..6,
        ) {
            let list: Vec<String> = list.into_iter().collect();
            let names: Vec<NamePattern> = list.iter().map(|n| if n == "*" { NamePattern::Any } else { NamePattern::Name(n.clone()) }).collect();
            let p = SyncPolicy { method: if any { Method::Any } else { Method::First }, num: num.min(names.len()), names };
            prop_assert_eq!(SyncPolicy::parse(&p.to_string()), Ok(p));
        }

        /// Arbitrary text is never a panic: a policy, or an error whose column lies inside the
        /// text or just past its end.
        #[test]
        fn any_text_is_a_policy_or_an_error_inside_it(s in "[ -~]{0,40}") {
            match SyncPolicy::parse(&s) {
                Ok(p) => { prop_assert!(p.num >= 1); prop_assert!(!p.names.is_empty()); }
                Err(e) => prop_assert!(e.column >= 1 && e.column <= s.chars().count() + 1, "{}", e),
            }
        }
    }
}
