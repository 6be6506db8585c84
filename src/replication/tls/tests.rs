use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use super::*;

/// A CA and a certificate it signs for `name` (a DNS name and the common name), valid between
/// the two dates; written as PEM files in `dir`.
fn issue(
    dir: &Path,
    name: &str,
    from: (i32, u8, u8),
    to: (i32, u8, u8),
) -> (PathBuf, PathBuf, PathBuf) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "test CA");
    let ca = ca.self_signed(&ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let mut p = rcgen::CertificateParams::new(vec![name.to_string()]).unwrap();
    p.distinguished_name.push(rcgen::DnType::CommonName, name);
    p.not_before = rcgen::date_time_ymd(from.0, from.1, from.2);
    p.not_after = rcgen::date_time_ymd(to.0, to.1, to.2);
    let cert = p.signed_by(&key, &ca, &ca_key).unwrap();
    let w = |n: &str, s: String, mode: u32| {
        let f = dir.join(n);
        std::fs::write(&f, s).unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(mode)).unwrap();
        f
    };
    (
        w(&format!("{name}.ca"), ca.pem(), 0o644),
        w(&format!("{name}.crt"), cert.pem(), 0o644),
        w(&format!("{name}.key"), key.serialize_pem(), 0o600),
    )
}

#[test]
fn files_are_checked_at_load() {
    let d = tempfile::tempdir().unwrap();
    let (ca, cert, key) = issue(d.path(), "primary", (2020, 1, 1), (2090, 1, 1));
    let files = ServerTlsFiles {
        cert: cert.clone(),
        key: key.clone(),
        client_ca: Some(ca.clone()),
    };
    server_config(&files).unwrap();
    // A key others may read is refused, as token files are.
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o640)).unwrap();
    let e = server_config(&files).unwrap_err();
    assert!(
        matches!(e, TlsError::KeyPermissions { mode: 0o640, .. }),
        "{e}"
    );
    assert!(e.to_string().contains("chmod 600"), "{e}");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    // Expired and not yet valid: refused with the dates.
    let (_, old, old_key) = issue(d.path(), "old", (2001, 1, 1), (2002, 1, 1));
    let e = server_config(&ServerTlsFiles {
        cert: old,
        key: old_key,
        client_ca: None,
    })
    .unwrap_err();
    assert!(matches!(e, TlsError::Expired { .. }), "{e}");
    assert!(e.to_string().contains("expired at 2002-01-01"), "{e}");
    let (_, new, new_key) = issue(d.path(), "new", (2080, 1, 1), (2090, 1, 1));
    let e = server_config(&ServerTlsFiles {
        cert: new,
        key: new_key,
        client_ca: None,
    })
    .unwrap_err();
    assert!(matches!(e, TlsError::NotYetValid { .. }), "{e}");
    // A key that is not the certificate's.
    let (_, _, other_key) = issue(d.path(), "other", (2020, 1, 1), (2090, 1, 1));
    let e = server_config(&ServerTlsFiles {
        cert,
        key: other_key,
        client_ca: None,
    })
    .unwrap_err();
    assert!(e.to_string().contains("does not go with"), "{e}");
    // Not PEM at all.
    std::fs::write(&ca, "hello").unwrap();
    let e = client_config(&ClientTlsFiles {
        ca: Some(ca),
        ..Default::default()
    })
    .unwrap_err();
    assert!(e.to_string().contains("holds no certificate"), "{e}");
    // A standby without a CA, and without the explicit skip, is refused.
    let e = client_config(&ClientTlsFiles::default()).unwrap_err();
    assert!(e.to_string().contains("--tls-ca"), "{e}");
    assert!(client_config(&ClientTlsFiles {
        insecure_skip_verify: true,
        ..Default::default()
    })
    .is_ok());
}

#[test]
fn server_names_and_standby_names() {
    let f = ClientTlsFiles::default();
    assert_eq!(
        server_name(&f, "db1.example:5433").unwrap().to_str(),
        "db1.example"
    );
    assert_eq!(server_name(&f, "[::1]:5433").unwrap().to_str(), "::1");
    let f = ClientTlsFiles {
        server_name: Some("primary.test".into()),
        ..Default::default()
    };
    assert_eq!(
        server_name(&f, "127.0.0.1:1").unwrap().to_str(),
        "primary.test"
    );

    let d = tempfile::tempdir().unwrap();
    let (_, cert, _) = issue(d.path(), "standby-a", (2020, 1, 1), (2090, 1, 1));
    let der = CertificateDer::pem_file_iter(&cert)
        .unwrap()
        .next()
        .unwrap()
        .unwrap();
    assert_eq!(peer_name(&der).unwrap(), "standby-a");
    let (_, cert, _) = issue(d.path(), "db-2.east", (2020, 1, 1), (2090, 1, 1));
    let der = CertificateDer::pem_file_iter(&cert)
        .unwrap()
        .next()
        .unwrap()
        .unwrap();
    assert_eq!(peer_name(&der).unwrap(), "db-2.east");
    // A wildcard names no one standby.
    let (_, cert, _) = issue(d.path(), "*.example", (2020, 1, 1), (2090, 1, 1));
    let der = CertificateDer::pem_file_iter(&cert)
        .unwrap()
        .next()
        .unwrap()
        .unwrap();
    let e = peer_name(&der).unwrap_err();
    assert!(
        e.contains("\"*.example\"") && e.contains("none of which is a valid standby name"),
        "{e}"
    );
}
