//! Recorded workload traces: tab-separated lines `type, tx_id, len, ...` under a header line
//! (plain or gzip), grouped into the transactions that clients replay.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;

use walship::error::{Error, IoContext, Result};
use walship::EntryType;

/// One record of a trace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TraceRecord {
    pub entry_type: EntryType,
    /// 0: outside any transaction.
    pub tx_id: u64,
    /// Payload bytes to append.
    pub len: u32,
}

/// A unit of replay: one transaction's records in trace order (or one record outside any
/// transaction). A client waits for durability at each `tx_commit`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Unit {
    pub records: Vec<TraceRecord>,
}

impl Unit {
    #[cfg(test)]
    pub fn commits(&self) -> usize {
        self.records
            .iter()
            .filter(|r| r.entry_type == EntryType::TxCommit)
            .count()
    }
}

/// Parses trace text. `limit` caps the records read. Errors name the line.
pub fn parse(input: impl Read, limit: Option<usize>, what: &str) -> Result<Vec<TraceRecord>> {
    let mut out = Vec::new();
    let reader = BufReader::new(input);
    for (i, line) in reader.lines().enumerate() {
        let line = line.ctx(|| format!("read {what}"))?;
        let lineno = i + 1;
        if limit.is_some_and(|l| out.len() >= l) {
            break;
        }
        if line.is_empty() || (lineno == 1 && line.starts_with("type\t")) {
            continue;
        }
        let bad = |why: String| Error::InvalidArgument(format!("{what}: line {lineno}: {why}"));
        let mut cols = line.split('\t');
        let (Some(t), Some(tx), Some(len)) = (cols.next(), cols.next(), cols.next()) else {
            return Err(bad("expected tab-separated type, tx_id and len".into()));
        };
        let entry_type: EntryType = t.parse().map_err(|e| bad(format!("{e}")))?;
        let tx_id: u64 = tx
            .parse()
            .map_err(|_| bad(format!("tx_id {tx:?} is not a number")))?;
        let len: u32 = len
            .parse()
            .map_err(|_| bad(format!("len {len:?} is not a number")))?;
        out.push(TraceRecord {
            entry_type,
            tx_id,
            len,
        });
    }
    Ok(out)
}

/// Reads a trace file, plain or gzip (recognized by its magic bytes).
pub fn load(path: &Path, limit: Option<usize>) -> Result<Vec<TraceRecord>> {
    let mut f = std::fs::File::open(path).ctx(|| format!("open {}", path.display()))?;
    let mut magic = [0u8; 2];
    let n = f
        .read(&mut magic)
        .ctx(|| format!("read {}", path.display()))?;
    let f = std::fs::File::open(path).ctx(|| format!("open {}", path.display()))?;
    let what = path.display().to_string();
    if n == 2 && magic == [0x1f, 0x8b] {
        parse(flate2::read::MultiGzDecoder::new(f), limit, &what)
    } else {
        parse(f, limit, &what)
    }
}

/// Groups records by transaction, in order of each transaction's first record; records outside
/// any transaction (tx_id 0) are units of their own.
pub fn units(records: &[TraceRecord]) -> Vec<Unit> {
    let mut out: Vec<Unit> = Vec::new();
    let mut open: HashMap<u64, usize> = HashMap::new();
    for r in records {
        if r.tx_id == 0 {
            out.push(Unit { records: vec![*r] });
            continue;
        }
        let idx = *open.entry(r.tx_id).or_insert_with(|| {
            out.push(Unit::default());
            out.len() - 1
        });
        out[idx].records.push(*r);
        if matches!(r.entry_type, EntryType::TxCommit | EntryType::TxRollback) {
            open.remove(&r.tx_id);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_groups() {
        let text = "type\ttx_id\tlen\tpg_rmgr\tpg_op\n\
                    update\t0\t7719\tHeap2\tPRUNE\n\
                    update\t5\t42\tHeap\tUPDATE\n\
                    insert\t6\t79\tHeap\tINSERT\n\
                    tx_commit\t5\t34\tTransaction\tCOMMIT\n\
                    tx_commit\t6\t34\tTransaction\tCOMMIT\n";
        let recs = parse(text.as_bytes(), None, "t").unwrap();
        assert_eq!(recs.len(), 5);
        assert_eq!(recs[1].len, 42);
        let u = units(&recs);
        assert_eq!(u.len(), 3);
        assert_eq!(u[0].records.len(), 1);
        assert_eq!(
            u[1].records.iter().map(|r| r.len).collect::<Vec<_>>(),
            [42, 34]
        );
        assert_eq!(u[2].commits(), 1);
        assert_eq!(parse(text.as_bytes(), Some(2), "t").unwrap().len(), 2);
    }

    #[test]
    fn bad_lines_are_named() {
        let e = parse("insert\tx\t5\n".as_bytes(), None, "w.tsv").unwrap_err();
        assert_eq!(e.to_string(), "w.tsv: line 1: tx_id \"x\" is not a number");
        let e = parse("type\ttx_id\tlen\nbogus\t1\t5\n".as_bytes(), None, "w.tsv").unwrap_err();
        assert!(
            e.to_string()
                .starts_with("w.tsv: line 2: unknown entry type"),
            "{e}"
        );
    }
}
