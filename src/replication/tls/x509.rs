//! The two things walship reads from a certificate itself, from its DER bytes (pure, no I/O):
//! its validity period, to refuse an expired or not-yet-valid certificate at start with a clear
//! error, and its subject's common name, one of the names a standby's certificate may carry.
//! Everything else (chains, signatures, names in the subject alternative names) is left to
//! rustls and webpki.

use chrono::{DateTime, NaiveDate, Utc};

/// A certificate's validity period.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Validity {
    pub not_before: DateTime<Utc>,
    pub not_after: DateTime<Utc>,
}

/// One DER element: its tag and its contents.
struct Tlv<'a> {
    tag: u8,
    body: &'a [u8],
}

/// Reads the element at the start of `b`; returns it and what follows it.
fn tlv(b: &[u8]) -> Result<(Tlv<'_>, &[u8]), String> {
    let (&tag, rest) = b.split_first().ok_or("truncated DER element")?;
    if tag & 0x1f == 0x1f {
        return Err("DER tag in the long form".into());
    }
    let (&first, rest) = rest.split_first().ok_or("truncated DER length")?;
    let (len, rest) = if first < 0x80 {
        (first as usize, rest)
    } else {
        let n = (first & 0x7f) as usize;
        if n == 0 || n > 4 || rest.len() < n {
            return Err("bad DER length".into());
        }
        let len = rest[..n].iter().fold(0usize, |a, &d| (a << 8) | d as usize);
        (len, &rest[n..])
    };
    if rest.len() < len {
        return Err("DER element runs past its container".into());
    }
    Ok((
        Tlv {
            tag,
            body: &rest[..len],
        },
        &rest[len..],
    ))
}

fn expect<'a>(b: &'a [u8], tag: u8, what: &str) -> Result<(Tlv<'a>, &'a [u8]), String> {
    let (t, rest) = tlv(b)?;
    if t.tag != tag {
        return Err(format!(
            "expected {what} (tag {tag:#04x}), found tag {:#04x}",
            t.tag
        ));
    }
    Ok((t, rest))
}

const SEQUENCE: u8 = 0x30;
const SET: u8 = 0x31;
const OID: u8 = 0x06;
const UTC_TIME: u8 = 0x17;
const GENERALIZED_TIME: u8 = 0x18;
/// 2.5.4.3, id-at-commonName.
const COMMON_NAME: &[u8] = &[0x55, 0x04, 0x03];

/// The TBSCertificate's fields from serialNumber on: `[serial, signature, issuer, validity,
/// subject, ...]`.
fn tbs_fields(der: &[u8]) -> Result<Vec<Tlv<'_>>, String> {
    let (cert, _) = expect(der, SEQUENCE, "a certificate")?;
    let (tbs, _) = expect(cert.body, SEQUENCE, "the certificate's body")?;
    let mut fields = Vec::new();
    let mut rest = tbs.body;
    while !rest.is_empty() && fields.len() < 6 {
        let (t, r) = tlv(rest)?;
        // The explicit version, [0], comes first when present.
        if !(fields.is_empty() && t.tag == 0xa0) {
            fields.push(t);
        }
        rest = r;
    }
    if fields.len() < 5 {
        return Err("the certificate's body has too few fields".into());
    }
    Ok(fields)
}

fn time(t: &Tlv<'_>) -> Result<DateTime<Utc>, String> {
    let s = std::str::from_utf8(t.body).map_err(|_| "a time that is not ASCII")?;
    let digits = s.strip_suffix('Z').ok_or("a time not in UTC")?;
    let (year, rest) = match t.tag {
        UTC_TIME if digits.len() == 12 => {
            let yy: i32 = digits[..2].parse().map_err(|_| "bad year")?;
            (if yy >= 50 { 1900 + yy } else { 2000 + yy }, &digits[2..])
        }
        GENERALIZED_TIME if digits.len() == 14 => {
            (digits[..4].parse().map_err(|_| "bad year")?, &digits[4..])
        }
        _ => return Err(format!("unsupported time {s:?}")),
    };
    let n = |i: usize| -> Result<u32, String> {
        rest.get(i..i + 2)
            .and_then(|d| d.parse().ok())
            .ok_or_else(|| format!("bad time {s:?}"))
    };
    let (h, m, sec) = (n(4)?, n(6)?, n(8)?);
    NaiveDate::from_ymd_opt(year, n(0)?, n(2)?)
        .and_then(|d| d.and_hms_opt(h, m, sec))
        .map(|t| t.and_utc())
        .ok_or_else(|| format!("bad time {s:?}"))
}

/// The certificate's validity period.
pub fn validity(der: &[u8]) -> Result<Validity, String> {
    let fields = tbs_fields(der)?;
    let (nb, rest) = tlv(fields[3].body)?;
    let (na, _) = tlv(rest)?;
    Ok(Validity {
        not_before: time(&nb)?,
        not_after: time(&na)?,
    })
}

/// The subject's first common name, when it has one in a string type.
pub fn common_name(der: &[u8]) -> Result<Option<String>, String> {
    let fields = tbs_fields(der)?;
    let subject = fields.get(4).ok_or("the certificate has no subject")?;
    let mut rdns = subject.body;
    while !rdns.is_empty() {
        let (set, r) = expect(rdns, SET, "a name component")?;
        rdns = r;
        let mut atvs = set.body;
        while !atvs.is_empty() {
            let (atv, r) = expect(atvs, SEQUENCE, "an attribute")?;
            atvs = r;
            let (oid, value) = expect(atv.body, OID, "an attribute type")?;
            if oid.body == COMMON_NAME {
                let (v, _) = tlv(value)?;
                return Ok(std::str::from_utf8(v.body).ok().map(str::to_string));
            }
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cert(cn: &str, before: (i32, u8, u8), after: (i32, u8, u8)) -> Vec<u8> {
        let mut p = rcgen::CertificateParams::new(vec!["alt.example".to_string()]).unwrap();
        p.distinguished_name
            .push(rcgen::DnType::OrganizationName, "walship tests");
        p.distinguished_name.push(rcgen::DnType::CommonName, cn);
        p.not_before = rcgen::date_time_ymd(before.0, before.1, before.2);
        p.not_after = rcgen::date_time_ymd(after.0, after.1, after.2);
        let key = rcgen::KeyPair::generate().unwrap();
        p.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn validity_and_common_name_of_generated_certificates() {
        // 2049 is written as UTCTime, 2051 as GeneralizedTime.
        let der = cert("standby-a", (1999, 1, 2), (2051, 3, 4));
        let v = validity(&der).unwrap();
        assert_eq!(v.not_before.to_rfc3339(), "1999-01-02T00:00:00+00:00");
        assert_eq!(v.not_after.to_rfc3339(), "2051-03-04T00:00:00+00:00");
        assert_eq!(common_name(&der).unwrap().as_deref(), Some("standby-a"));
        let der = cert("b", (2020, 12, 31), (2049, 1, 1));
        assert_eq!(
            validity(&der).unwrap().not_after.to_rfc3339(),
            "2049-01-01T00:00:00+00:00"
        );
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let der = cert("x", (2020, 1, 1), (2030, 1, 1));
        for cut in [0, 1, 2, 10, 40, der.len() / 2] {
            assert!(validity(&der[..cut]).is_err(), "cut at {cut}");
        }
        assert!(validity(b"\x30\x84\xff\xff\xff\xff").is_err());
        assert!(common_name(b"not a certificate").is_err());
    }
}
