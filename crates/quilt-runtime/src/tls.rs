//! TLS on the TCP listener: `--tls-cert` and `--tls-key` (PEM), and with `--tls-ca`
//! client certificates from that CA required. Every file is read and checked at start
//! (readable, PEM, the key matching the certificate), each error naming the file.

use std::path::{Path, PathBuf};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tonic::transport::{Certificate, Identity, ServerTlsConfig};

/// Why the TLS files cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {flag} file {path}: {source}")]
    Unreadable {
        flag: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{flag} file {path} holds no PEM certificate ({reason})")]
    NoCertificate {
        flag: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error("--tls-key file {path} holds no usable PEM private key ({reason})")]
    BadKey { path: PathBuf, reason: String },
    #[error("--tls-key file {key} does not match the certificate in --tls-cert file {cert}")]
    Mismatch { cert: PathBuf, key: PathBuf },
    #[error("--tls-ca file {path} is not a usable CA certificate: {reason}")]
    BadCa { path: PathBuf, reason: String },
}

/// The files of the TCP listener's TLS.
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: Option<PathBuf>,
}

impl TlsFiles {
    /// The server's TLS configuration, every file checked.
    pub fn server_config(&self) -> Result<ServerTlsConfig, TlsError> {
        let cert_pem = read("--tls-cert", &self.cert)?;
        let key_pem = read("--tls-key", &self.key)?;
        let certs = certificates("--tls-cert", &self.cert, &cert_pem)?;
        let key = PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| TlsError::BadKey {
            path: self.key.clone(),
            reason: e.to_string(),
        })?;
        let signing_key =
            rustls::crypto::ring::sign::any_supported_type(&key).map_err(|e| TlsError::BadKey {
                path: self.key.clone(),
                reason: e.to_string(),
            })?;
        rustls::sign::CertifiedKey::new(certs, signing_key)
            .keys_match()
            .map_err(|_| TlsError::Mismatch {
                cert: self.cert.clone(),
                key: self.key.clone(),
            })?;
        let mut config = ServerTlsConfig::new().identity(Identity::from_pem(cert_pem, key_pem));
        if let Some(ca) = &self.ca {
            let ca_pem = read("--tls-ca", ca)?;
            let mut roots = rustls::RootCertStore::empty();
            for cert in certificates("--tls-ca", ca, &ca_pem)? {
                roots.add(cert).map_err(|e| TlsError::BadCa {
                    path: ca.clone(),
                    reason: e.to_string(),
                })?;
            }
            config = config.client_ca_root(Certificate::from_pem(ca_pem));
        }
        Ok(config)
    }

    /// Whether client certificates are required (and then trusted).
    pub fn requires_client_certificates(&self) -> bool {
        self.ca.is_some()
    }
}

fn read(flag: &'static str, path: &Path) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Unreadable {
        flag,
        path: path.to_path_buf(),
        source,
    })
}

fn certificates(
    flag: &'static str,
    path: &Path,
    pem: &[u8],
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let no_certificate = |reason: String| TlsError::NoCertificate {
        flag,
        path: path.to_path_buf(),
        reason,
    };
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| no_certificate(e.to_string()))?;
    if certs.is_empty() {
        return Err(no_certificate("no CERTIFICATE block".into()));
    }
    Ok(certs)
}
