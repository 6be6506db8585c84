//! Certificates made in the test: a CA, and server or client certificates it signs, written as
//! PEM files (keys with mode 600), through rcgen.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair};

/// A certificate authority whose certificate is in `cert`.
pub struct Ca {
    pub cert: PathBuf,
    issuer: rcgen::Certificate,
    key: KeyPair,
}

/// A certificate and its key, as files.
pub struct Issued {
    pub cert: PathBuf,
    pub key: PathBuf,
}

fn write(path: &Path, text: &str, mode: u32) {
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// Valid from 2020 to 2090.
pub fn always() -> (time::OffsetDateTime, time::OffsetDateTime) {
    (
        rcgen::date_time_ymd(2020, 1, 1),
        rcgen::date_time_ymd(2090, 1, 1),
    )
}

impl Ca {
    /// A new CA, its certificate written to `dir/NAME.crt`.
    pub fn new(dir: &Path, name: &str) -> Ca {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.distinguished_name.push(DnType::CommonName, name);
        (p.not_before, p.not_after) = always();
        let issuer = p.self_signed(&key).unwrap();
        let cert = dir.join(format!("{name}.crt"));
        write(&cert, &issuer.pem(), 0o644);
        Ca { cert, issuer, key }
    }

    /// A certificate for `names` (DNS names or IP addresses; the first is also the common
    /// name), for servers and clients, valid over `validity`, written to `dir/FILE.crt` and
    /// `dir/FILE.key`.
    pub fn issue_for(
        &self,
        dir: &Path,
        file: &str,
        names: &[&str],
        validity: (time::OffsetDateTime, time::OffsetDateTime),
    ) -> Issued {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
            .unwrap();
        p.distinguished_name.push(DnType::CommonName, names[0]);
        p.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        (p.not_before, p.not_after) = validity;
        let cert = p.signed_by(&key, &self.issuer, &self.key).unwrap();
        let issued = Issued {
            cert: dir.join(format!("{file}.crt")),
            key: dir.join(format!("{file}.key")),
        };
        write(&issued.cert, &cert.pem(), 0o644);
        write(&issued.key, &key.serialize_pem(), 0o600);
        issued
    }

    /// [`Ca::issue_for`], valid from 2020 to 2090.
    pub fn issue(&self, dir: &Path, file: &str, names: &[&str]) -> Issued {
        self.issue_for(dir, file, names, always())
    }
}
