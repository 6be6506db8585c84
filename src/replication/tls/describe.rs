//! What a failed TLS handshake or record means, told from one side: which check failed, on
//! which side, and what to change. rustls reports a failure as an error inside an I/O error,
//! on the side that found it; the other side gets a TLS alert, which is all it can know.

use rustls::{AlertDescription, CertificateError, Error};

/// The side a message is told from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Primary,
    Standby,
}

/// The rustls error inside an I/O error, if there is one.
pub fn tls_cause(e: &std::io::Error) -> Option<&Error> {
    e.get_ref().and_then(|inner| inner.downcast_ref::<Error>())
}

/// True when the failure is about a certificate (ours or the peer's) rather than the stream:
/// retrying with the same files cannot help.
pub fn is_certificate_failure(e: &Error) -> bool {
    use AlertDescription as A;
    match e {
        Error::InvalidCertificate(_) | Error::NoCertificatesPresented => true,
        Error::AlertReceived(a) => matches!(
            a,
            A::UnknownCA
                | A::BadCertificate
                | A::CertificateRequired
                | A::CertificateExpired
                | A::CertificateRevoked
                | A::CertificateUnknown
                | A::UnsupportedCertificate
                | A::AccessDenied
        ),
        _ => false,
    }
}

fn certificate(e: &CertificateError, ca_flag: &str) -> String {
    use CertificateError as C;
    match e {
        C::UnknownIssuer => format!("it is not signed by a CA in {ca_flag} (unknown issuer)"),
        C::NotValidForName | C::NotValidForNameContext { .. } => {
            format!("it is not valid for the expected name ({e})")
        }
        C::Expired | C::ExpiredContext { .. } => format!("it has expired ({e})"),
        C::NotValidYet | C::NotValidYetContext { .. } => format!("it is not valid yet ({e})"),
        C::Revoked => "it has been revoked".into(),
        C::BadSignature => format!("its signature does not verify against {ca_flag}"),
        C::InvalidPurpose | C::InvalidPurposeContext { .. } => {
            format!("it is not meant for this use ({e}): a server certificate needs the serverAuth purpose, a client certificate clientAuth")
        }
        other => other.to_string(),
    }
}

/// One line saying which check failed, told from `side`.
pub fn describe(e: &Error, side: Side) -> String {
    use AlertDescription as A;
    let (peer, ca_flag) = match side {
        Side::Standby => ("primary", "--tls-ca"),
        Side::Primary => ("standby", "--tls-client-ca"),
    };
    match (e, side) {
        (Error::InvalidCertificate(c), Side::Standby) => {
            let mut m = format!("TLS: the primary's certificate was refused: {}", certificate(c, ca_flag));
            if matches!(c, CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. }) {
                m.push_str("; connect with the name the certificate carries, or set --tls-server-name");
            }
            m
        }
        (Error::InvalidCertificate(c), Side::Primary) => format!(
            "TLS: the standby's client certificate was refused: {}",
            certificate(c, ca_flag)
        ),
        (Error::NoCertificatesPresented, Side::Primary) => "TLS: the standby presented no client certificate, and this primary requires one (--tls-client-ca): give the standby --tls-cert and --tls-key".into(),
        (Error::NoCertificatesPresented, Side::Standby) => "TLS: the primary presented no certificate".into(),
        (Error::AlertReceived(a), _) => {
            let what = match (a, side) {
                (A::UnknownCA, Side::Standby) => "it does not trust the CA that signed this standby's certificate (unknown CA: check the primary's --tls-client-ca)".to_string(),
                (A::UnknownCA, Side::Primary) => "it does not trust the CA that signed this primary's certificate (unknown CA: check the standby's --tls-ca)".to_string(),
                (A::CertificateRequired, Side::Standby) => "it requires a client certificate: give this standby --tls-cert and --tls-key".to_string(),
                (A::CertificateExpired, _) => "our certificate has expired or is not valid yet".to_string(),
                (A::CertificateRevoked, _) => "our certificate has been revoked".to_string(),
                (A::BadCertificate, Side::Primary) => "bad certificate: this primary's certificate is not valid for the name the standby connects to (its --tls-server-name or the host of its --primary), or is otherwise unacceptable to it".to_string(),
                (A::BadCertificate, Side::Standby) => "bad certificate: this standby's certificate is unacceptable to the primary".to_string(),
                (A::DecryptError | A::BadRecordMac, _) => "a TLS record failed its integrity check: the stream was altered on the way".to_string(),
                (other, _) => format!("TLS alert {other:?}"),
            };
            format!("TLS: the {peer} refused the connection: {what}")
        }
        (Error::DecryptError, _) => format!(
            "TLS: a record from the {peer} failed its integrity check: the stream was altered on the way (or is not TLS)"
        ),
        (Error::InvalidMessage(_) | Error::PeerMisbehaved(_) | Error::InappropriateMessage { .. } | Error::InappropriateHandshakeMessage { .. }, _) => format!(
            "TLS: the {peer} sent what is not valid TLS ({e}): altered on the way, or the {peer} does not speak TLS on this port"
        ),
        (other, _) => format!("TLS: {other}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_check_is_named() {
        let s = describe(
            &Error::InvalidCertificate(CertificateError::UnknownIssuer),
            Side::Standby,
        );
        assert!(s.contains("--tls-ca (unknown issuer)"), "{s}");
        let s = describe(&Error::NoCertificatesPresented, Side::Primary);
        assert!(s.contains("presented no client certificate"), "{s}");
        let s = describe(
            &Error::AlertReceived(AlertDescription::BadCertificate),
            Side::Primary,
        );
        assert!(s.contains("not valid for the name"), "{s}");
        let s = describe(&Error::DecryptError, Side::Standby);
        assert!(s.contains("integrity check"), "{s}");
        assert!(is_certificate_failure(&Error::AlertReceived(
            AlertDescription::CertificateRequired
        )));
        assert!(!is_certificate_failure(&Error::DecryptError));
        let io = std::io::Error::new(std::io::ErrorKind::InvalidData, Error::DecryptError);
        assert!(matches!(tls_cause(&io), Some(Error::DecryptError)));
    }
}
