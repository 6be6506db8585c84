//! What a directory's records add up to, to compare the demo's copies record by record.

use super::*;

/// What a directory's records add up to.
pub(super) struct Digest {
    pub(super) records: u64,
    pub(super) bytes: u64,
    pub(super) end: u64,
    pub(super) hash: u64,
    pub(super) ends: HashSet<u64>,
}

pub(super) fn digest(dir: &Path) -> Result<Digest> {
    let mut r = WalReader::open(dir, Lsn(0))?;
    let mut d = Digest {
        records: 0,
        bytes: 0,
        end: 0,
        hash: 0xcbf2_9ce4_8422_2325,
        ends: HashSet::new(),
    };
    while let Some(rec) = r.next_record()? {
        d.records += 1;
        d.bytes += rec.end_lsn.0 - rec.lsn.0;
        d.end = rec.end_lsn.0;
        d.ends.insert(rec.end_lsn.0);
        // FNV-1a over (lsn, crc): the record CRC covers the header fields and the payload.
        for b in rec
            .lsn
            .0
            .to_le_bytes()
            .into_iter()
            .chain(rec.crc.to_le_bytes())
        {
            d.hash = (d.hash ^ b as u64).wrapping_mul(0x100_0000_01b3);
        }
    }
    Ok(d)
}
