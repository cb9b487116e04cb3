//! A certificate authority an operator can run in five minutes: [`init`] makes `ca.pem`
//! and `ca-key.pem`, [`issue`] makes `NAME.pem` and `NAME-key.pem` for a control plane,
//! an agent or a runtime (one certificate serves as server and as client). The folder is
//! 0700 and every key 0600; nothing is overwritten unless asked.

use std::fs::{DirBuilder, OpenOptions};
use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};

/// The CA certificate's file name in the folder.
pub const CA_CERT: &str = "ca.pem";
/// The CA key's file name in the folder.
pub const CA_KEY: &str = "ca-key.pem";
/// The CA's subject common name.
pub const CA_NAME: &str = "Quilt Mesh CA";
/// How long a CA is valid unless told otherwise: ten years.
pub const CA_DAYS: u32 = 3650;
/// How long an issued certificate is valid unless told otherwise: one year.
pub const CERT_DAYS: u32 = 365;

/// Why a certificate could not be made.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("cannot write {}: {source}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} already exists; pass --force to replace it", path.display())]
    Exists { path: PathBuf },
    #[error("{} holds no CA ({reason}); run `quiltctl certs init --dir {}` first", dir.display(), dir.display())]
    NoCa { dir: PathBuf, reason: String },
    #[error(
        "certificate name {0:?} must be 1-64 letters, digits, '.', '_' or '-', not starting with '.' or '-', and not \"ca\""
    )]
    BadName(String),
    #[error("certificate {0:?} needs at least one --ip or --dns to name its holder")]
    NoSubjectAltName(String),
    #[error("validity of {0} days is out of range (1 to 36500)")]
    BadDays(u32),
    #[error("cannot make the certificate: {0}")]
    Rcgen(#[from] rcgen::Error),
}

/// Files written: a certificate and its key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Issued {
    pub cert: PathBuf,
    pub key: PathBuf,
    /// When the certificate stops being valid, RFC 3339.
    pub not_after: String,
}

/// Who a certificate names, and for how long.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Subject {
    pub name: String,
    pub ips: Vec<IpAddr>,
    pub dns: Vec<String>,
    pub days: u32,
}

/// Makes a CA in `dir` (created 0700, or made 0700): `ca.pem` (0644) and `ca-key.pem`
/// (0600), valid for `days` days. An existing CA is kept unless `force`.
pub fn init(dir: &Path, days: u32, force: bool) -> Result<Issued, PkiError> {
    check_days(days)?;
    private_dir(dir)?;
    let cert_path = dir.join(CA_CERT);
    let key_path = dir.join(CA_KEY);
    refuse_existing(&[&cert_path, &key_path], force)?;
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    params.distinguished_name = name(CA_NAME);
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let not_after = set_validity(&mut params, days);
    let cert = params.self_signed(&key)?;
    write_pair(cert_path, &cert, key_path, &key, not_after)
}

/// Issues `NAME.pem` (0644) and `NAME-key.pem` (0600) in `dir`, signed by the CA there:
/// for server and client use, naming `subject.ips` and `subject.dns`. An existing pair is
/// kept unless `force` (to rotate one, issue it again with `force`).
pub fn issue(dir: &Path, subject: &Subject, force: bool) -> Result<Issued, PkiError> {
    check_name(&subject.name)?;
    check_days(subject.days)?;
    if subject.ips.is_empty() && subject.dns.is_empty() {
        return Err(PkiError::NoSubjectAltName(subject.name.clone()));
    }
    let issuer = load_ca(dir)?;
    private_dir(dir)?;
    let cert_path = dir.join(format!("{}.pem", subject.name));
    let key_path = dir.join(format!("{}-key.pem", subject.name));
    refuse_existing(&[&cert_path, &key_path], force)?;
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    params.distinguished_name = name(&subject.name);
    params.subject_alt_names = subject
        .ips
        .iter()
        .map(|ip| SanType::IpAddress(*ip))
        .collect();
    for dns in &subject.dns {
        params
            .subject_alt_names
            .push(SanType::DnsName(dns.as_str().try_into()?));
    }
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.use_authority_key_identifier_extension = true;
    let not_after = set_validity(&mut params, subject.days);
    let cert = params.signed_by(&key, &issuer)?;
    write_pair(cert_path, &cert, key_path, &key, not_after)
}

/// Writes the key (0600, first) and the certificate (0644); answers what was written.
fn write_pair(
    cert_path: PathBuf,
    cert: &rcgen::Certificate,
    key_path: PathBuf,
    key: &KeyPair,
    not_after: String,
) -> Result<Issued, PkiError> {
    write_file(&key_path, key.serialize_pem().as_bytes(), 0o600)?;
    write_file(&cert_path, cert.pem().as_bytes(), 0o644)?;
    Ok(Issued {
        cert: cert_path,
        key: key_path,
        not_after,
    })
}

/// The CA of `dir`, ready to sign.
fn load_ca(dir: &Path) -> Result<Issuer<'static, KeyPair>, PkiError> {
    let no_ca = |reason: String| PkiError::NoCa {
        dir: dir.to_path_buf(),
        reason,
    };
    let read = |file: &str| {
        std::fs::read_to_string(dir.join(file)).map_err(|e| no_ca(format!("{file}: {e}")))
    };
    let cert = read(CA_CERT)?;
    let key = read(CA_KEY)?;
    let key = KeyPair::from_pem(&key).map_err(|e| no_ca(format!("{CA_KEY}: {e}")))?;
    Issuer::from_ca_cert_pem(&cert, key).map_err(|e| no_ca(format!("{CA_CERT}: {e}")))
}

fn name(common_name: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "Quilt Mesh");
    dn.push(DnType::CommonName, common_name);
    dn
}

/// Valid from a minute ago (clocks differ a little) for `days` days; answers the end.
fn set_validity(params: &mut CertificateParams, days: u32) -> String {
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::minutes(1);
    params.not_after = now + time::Duration::days(i64::from(days));
    params
        .not_after
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| params.not_after.to_string())
}

fn check_days(days: u32) -> Result<(), PkiError> {
    if (1..=36500).contains(&days) {
        Ok(())
    } else {
        Err(PkiError::BadDays(days))
    }
}

fn check_name(name: &str) -> Result<(), PkiError> {
    let ok = (1..=64).contains(&name.len())
        && !name.starts_with(['.', '-'])
        && name != "ca"
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
    if ok {
        Ok(())
    } else {
        Err(PkiError::BadName(name.to_string()))
    }
}

/// Creates `dir` 0700, or makes an existing one 0700.
fn private_dir(dir: &Path) -> Result<(), PkiError> {
    let failed = |source| PkiError::Write {
        path: dir.to_path_buf(),
        source,
    };
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(failed)?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(failed)
}

fn refuse_existing(paths: &[&Path], force: bool) -> Result<(), PkiError> {
    match paths.iter().find(|p| p.exists()) {
        Some(path) if !force => Err(PkiError::Exists {
            path: path.to_path_buf(),
        }),
        _ => Ok(()),
    }
}

/// Writes `contents` to `path` with `mode`, through a file beside it renamed into place,
/// so a reader never sees half a key and a key is never readable by others, not even
/// for a moment.
fn write_file(path: &Path, contents: &[u8], mode: u32) -> Result<(), PkiError> {
    let failed = |source| PkiError::Write {
        path: path.to_path_buf(),
        source,
    };
    let partial = path.with_extension("partial");
    let _ = std::fs::remove_file(&partial);
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(&partial)
        .map_err(failed)?;
    file.write_all(contents).map_err(failed)?;
    file.sync_all().map_err(failed)?;
    std::fs::set_permissions(&partial, std::fs::Permissions::from_mode(mode)).map_err(failed)?;
    std::fs::rename(&partial, path).map_err(failed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use x509_parser::prelude::*;

    fn mode(path: &Path) -> u32 {
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    fn node(name: &str, ip: &str) -> Subject {
        Subject {
            name: name.into(),
            ips: vec![ip.parse().unwrap()],
            dns: vec![],
            days: CERT_DAYS,
        }
    }

    #[test]
    fn a_ca_signs_certificates_naming_their_holder_and_keys_stay_private() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("pki");
        let ca = init(&dir, CA_DAYS, false).unwrap();
        assert_eq!(mode(&dir), 0o700);
        assert_eq!(mode(&ca.key), 0o600);
        assert_eq!(mode(&ca.cert), 0o644);
        let subject = Subject {
            dns: vec!["control.example".into()],
            ..node("node-a", "192.168.61.11")
        };
        let issued = issue(&dir, &subject, false).unwrap();
        assert_eq!(issued.cert, dir.join("node-a.pem"));
        assert_eq!(mode(&issued.key), 0o600);

        let ca_pem = std::fs::read(&ca.cert).unwrap();
        let (_, ca_pem) = parse_x509_pem(&ca_pem).unwrap();
        let ca_cert = ca_pem.parse_x509().unwrap();
        assert!(ca_cert.is_ca());
        let leaf_pem = std::fs::read(&issued.cert).unwrap();
        let (_, leaf_pem) = parse_x509_pem(&leaf_pem).unwrap();
        let leaf = leaf_pem.parse_x509().unwrap();
        assert_eq!(leaf.issuer(), ca_cert.subject());
        leaf.verify_signature(Some(ca_cert.public_key()))
            .expect("signed by the CA");
        let san = leaf.subject_alternative_name().unwrap().unwrap().value;
        assert!(
            san.general_names
                .iter()
                .any(|n| matches!(n, GeneralName::IPAddress(ip) if *ip == [192, 168, 61, 11])),
            "{san:?}"
        );
        assert!(
            san.general_names
                .iter()
                .any(|n| matches!(n, GeneralName::DNSName("control.example"))),
            "{san:?}"
        );
        let eku = leaf.extended_key_usage().unwrap().unwrap().value;
        assert!(eku.server_auth && eku.client_auth);
        let days = (leaf.validity().not_after.timestamp() - leaf.validity().not_before.timestamp())
            / 86_400;
        assert_eq!(days, i64::from(CERT_DAYS), "a year and a minute");
    }

    #[test]
    fn nothing_is_overwritten_unless_forced_and_bad_requests_change_nothing() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("pki");
        assert!(matches!(
            issue(&dir, &node("a", "10.0.0.1"), false),
            Err(PkiError::NoCa { .. })
        ));
        assert!(!dir.exists(), "a refused issue creates nothing");
        let first = init(&dir, CA_DAYS, false).unwrap();
        let ca_key = std::fs::read(&first.key).unwrap();
        let again = init(&dir, CA_DAYS, false).unwrap_err().to_string();
        assert!(
            again.contains("ca.pem already exists; pass --force"),
            "{again}"
        );
        assert_eq!(
            std::fs::read(&first.key).unwrap(),
            ca_key,
            "the CA key is kept"
        );
        issue(&dir, &node("a", "10.0.0.1"), false).unwrap();
        let cert = std::fs::read(dir.join("a.pem")).unwrap();
        assert!(matches!(
            issue(&dir, &node("a", "10.0.0.2"), false),
            Err(PkiError::Exists { .. })
        ));
        assert_eq!(std::fs::read(dir.join("a.pem")).unwrap(), cert);
        issue(&dir, &node("a", "10.0.0.2"), true).unwrap();
        assert_ne!(std::fs::read(dir.join("a.pem")).unwrap(), cert, "rotated");
        for bad in ["", "ca", "../x", ".hidden", "a/b", &"n".repeat(65)] {
            assert!(
                matches!(
                    issue(&dir, &node(bad, "10.0.0.1"), false),
                    Err(PkiError::BadName(_))
                ),
                "{bad}"
            );
        }
        let unnamed = Subject {
            name: "b".into(),
            days: CERT_DAYS,
            ..Subject::default()
        };
        assert!(matches!(
            issue(&dir, &unnamed, false),
            Err(PkiError::NoSubjectAltName(_))
        ));
        assert!(matches!(init(&dir, 0, true), Err(PkiError::BadDays(0))));
        assert!(!dir.join("b.pem").exists());
    }

    #[test]
    fn an_existing_open_folder_is_made_private() {
        let root = tempfile::tempdir().unwrap();
        let dir = root.path().join("pki");
        std::fs::create_dir(&dir).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        init(&dir, CA_DAYS, false).unwrap();
        assert_eq!(mode(&dir), 0o700);
    }
}
