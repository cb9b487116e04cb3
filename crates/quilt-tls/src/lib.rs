//! quilt-tls: TLS the same way for every daemon and client. PEM files become rustls
//! server and client configurations (ring, TLS 1.3), with errors that name the file
//! that failed.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {what} {}: {reason}", path.display())]
    File {
        what: &'static str,
        path: PathBuf,
        reason: String,
    },
    #[error("{what} {} holds no certificate", path.display())]
    NoCertificate { what: &'static str, path: PathBuf },
    #[error("{}: {reason}", path.display())]
    Rejected { path: PathBuf, reason: String },
    #[error("tls setup failed: {0}")]
    Setup(String),
}

/// A certificate and its key, as PEM files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Makes ring the process's rustls crypto provider, unless one was chosen already. Call it
/// before building an HTTP client (reqwest asks the process for its provider).
pub fn install_default_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

impl Identity {
    /// The certificate chain and the key, read from their files.
    fn load(&self) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), TlsError> {
        Ok((
            certificates("certificate", &self.cert)?,
            private_key(&self.key)?,
        ))
    }

    /// The error for a key rustls refused with this certificate.
    fn mismatch(&self, e: rustls::Error) -> TlsError {
        TlsError::Rejected {
            path: self.key.clone(),
            reason: format!("does not match certificate {}: {e}", self.cert.display()),
        }
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Every certificate in the PEM file at `path` (`what` names it in errors).
pub fn certificates(
    what: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let failed = |reason: String| TlsError::File {
        what,
        path: path.to_path_buf(),
        reason,
    };
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| failed(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| failed(e.to_string()))?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            what,
            path: path.to_path_buf(),
        });
    }
    Ok(certs)
}

/// The private key in the PEM file at `path`.
pub fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| TlsError::File {
        what: "private key",
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

/// The CAs in the PEM file at `path`, as trust roots.
pub fn roots(path: &Path) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in certificates("CA file", path)? {
        roots.add(cert).map_err(|e| TlsError::Rejected {
            path: path.to_path_buf(),
            reason: format!("not a usable CA certificate: {e}"),
        })?;
    }
    Ok(roots)
}

/// A server presenting `identity`; with `client_ca`, every client must present a
/// certificate that CA issued (mutual TLS).
pub fn server_config(
    identity: &Identity,
    client_ca: Option<&Path>,
) -> Result<Arc<ServerConfig>, TlsError> {
    let builder = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Setup(e.to_string()))?;
    let builder = match client_ca {
        Some(ca) => {
            let verifier =
                WebPkiClientVerifier::builder_with_provider(Arc::new(roots(ca)?), provider())
                    .build()
                    .map_err(|e| TlsError::Rejected {
                        path: ca.to_path_buf(),
                        reason: e.to_string(),
                    })?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let (certs, key) = identity.load()?;
    let mut config = builder
        .with_single_cert(certs, key)
        .map_err(|e| identity.mismatch(e))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// A client trusting the CAs in `ca`, presenting `identity` when given.
pub fn client_config(ca: &Path, identity: Option<&Identity>) -> Result<ClientConfig, TlsError> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Setup(e.to_string()))?
        .with_root_certificates(roots(ca)?);
    match identity {
        Some(identity) => {
            let (certs, key) = identity.load()?;
            builder
                .with_client_auth_cert(certs, key)
                .map_err(|e| identity.mismatch(e))
        }
        None => Ok(builder.with_no_client_auth()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn bad_files_are_named_in_the_error() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("missing.pem");
        let e = roots(&missing).unwrap_err().to_string();
        assert!(
            e.starts_with("cannot read CA file") && e.contains("missing.pem"),
            "{e}"
        );
        let empty = write(dir.path(), "empty.pem", "");
        let e = roots(&empty).unwrap_err().to_string();
        assert!(e.contains("empty.pem holds no certificate"), "{e}");

        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["a".into()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let other = rcgen::KeyPair::generate().unwrap();
        let identity = Identity {
            cert: write(dir.path(), "a.pem", &cert.pem()),
            key: write(dir.path(), "other-key.pem", &other.serialize_pem()),
        };
        let e = server_config(&identity, None).unwrap_err().to_string();
        assert!(
            e.contains("other-key.pem: does not match certificate"),
            "{e}"
        );
        let good = Identity {
            key: write(dir.path(), "a-key.pem", &key.serialize_pem()),
            ..identity
        };
        server_config(&good, None).unwrap();
        let not_a_key = Identity {
            key: good.cert.clone(),
            ..good.clone()
        };
        let e = server_config(&not_a_key, None).unwrap_err().to_string();
        assert!(
            e.starts_with("cannot read private key") && e.contains("a.pem"),
            "{e}"
        );
    }
}
