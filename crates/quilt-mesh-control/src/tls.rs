//! HTTPS for the control plane: the server configuration from `--tls-cert`, `--tls-key`
//! and `--tls-ca`, re-read on SIGHUP without dropping a connection, and the identity a
//! client certificate proves ([`Peer`]).

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use quilt_tls::{Identity, TlsError};
use rustls::ServerConfig;

/// How often the TLS files are looked at for a change.
pub const FILE_CHECK_INTERVAL: std::time::Duration = std::time::Duration::from_secs(2);

/// The files TLS is served from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub identity: Identity,
    /// Clients must present a certificate from this CA.
    pub client_ca: Option<PathBuf>,
}

/// The server configuration new connections get; [`Self::reload`] swaps it, and
/// connections already open keep the one they started with.
#[derive(Clone)]
pub struct ServerTls {
    files: TlsFiles,
    current: Arc<RwLock<Arc<ServerConfig>>>,
}

impl ServerTls {
    /// Reads the files; a missing or mismatched one is an error naming it.
    pub fn load(files: TlsFiles) -> Result<Self, TlsError> {
        let config = quilt_tls::server_config(&files.identity, files.client_ca.as_deref())?;
        Ok(Self {
            files,
            current: Arc::new(RwLock::new(config)),
        })
    }

    pub fn mutual(&self) -> bool {
        self.files.client_ca.is_some()
    }

    /// The configuration for a connection accepted now.
    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        let config = self
            .current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        tokio_rustls::TlsAcceptor::from(config)
    }

    /// Reads the files again; on failure the configuration in use stays.
    pub fn reload(&self) -> Result<(), TlsError> {
        let config =
            quilt_tls::server_config(&self.files.identity, self.files.client_ca.as_deref())?;
        *self.current.write().unwrap_or_else(|p| p.into_inner()) = config;
        Ok(())
    }

    /// When the files were last changed, to notice a replaced certificate.
    fn stamps(&self) -> Vec<Option<std::time::SystemTime>> {
        let files = [
            Some(&self.files.identity.cert),
            Some(&self.files.identity.key),
            self.files.client_ca.as_ref(),
        ];
        files
            .into_iter()
            .flatten()
            .map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
            .collect()
    }

    /// Reloads on every SIGHUP, and when a file changes (looked at every
    /// [`FILE_CHECK_INTERVAL`]), until the process ends, logging each outcome.
    pub fn reload_on_sighup(&self) -> std::io::Result<tokio::task::JoinHandle<()>> {
        use tokio::signal::unix::{SignalKind, signal};
        let mut hangups = signal(SignalKind::hangup())?;
        let tls = self.clone();
        Ok(tokio::spawn(async move {
            let mut seen = tls.stamps();
            let mut check = tokio::time::interval(FILE_CHECK_INTERVAL);
            check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                let why = tokio::select! {
                    got = hangups.recv() => match got {
                        Some(()) => "SIGHUP",
                        None => return,
                    },
                    _ = check.tick() => {
                        if tls.stamps() == seen {
                            continue;
                        }
                        "a TLS file changed"
                    }
                };
                seen = tls.stamps();
                match tls.reload() {
                    Ok(()) => tracing::info!(
                        cert = %tls.files.identity.cert.display(),
                        "{why}: TLS certificate and key re-read; new connections use them"
                    ),
                    Err(e) => {
                        tracing::error!(error = %e, "{why}: cannot re-read TLS files; keeping the ones in use")
                    }
                }
            }
        }))
    }
}

/// Who a connection's client proved to be.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Peer {
    /// No client certificate is asked for (plain HTTP, or TLS without `--tls-ca`).
    #[default]
    Unverified,
    /// A certificate from `--tls-ca`, naming these IP addresses.
    Certificate { ips: Vec<IpAddr> },
}

impl Peer {
    /// The peer of a TLS connection whose client presented `certificate`.
    pub fn of_certificate(certificate: Option<&rustls::pki_types::CertificateDer<'_>>) -> Self {
        let Some(der) = certificate else {
            return Peer::Unverified;
        };
        let ips = match x509_parser::parse_x509_certificate(der) {
            Ok((_, cert)) => match cert.subject_alternative_name() {
                Ok(Some(san)) => san
                    .value
                    .general_names
                    .iter()
                    .filter_map(|name| match name {
                        x509_parser::extensions::GeneralName::IPAddress(bytes) => ip_of(bytes),
                        _ => None,
                    })
                    .collect(),
                _ => Vec::new(),
            },
            Err(_) => Vec::new(),
        };
        Peer::Certificate { ips }
    }

    /// Whether this peer may act as the node at `host_ip`: anyone when no certificate
    /// is asked for; under mutual TLS only a certificate naming that address.
    pub fn may_act_as(&self, host_ip: std::net::Ipv4Addr) -> bool {
        match self {
            Peer::Unverified => true,
            Peer::Certificate { ips } => ips.contains(&IpAddr::V4(host_ip)),
        }
    }

    /// The addresses the certificate names, for messages.
    pub fn named(&self) -> String {
        match self {
            Peer::Unverified => "no certificate".into(),
            Peer::Certificate { ips } if ips.is_empty() => {
                "a certificate naming no IP address".into()
            }
            Peer::Certificate { ips } => format!(
                "a certificate naming {}",
                ips.iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }
    }
}

fn ip_of(bytes: &[u8]) -> Option<IpAddr> {
    match bytes.len() {
        4 => <[u8; 4]>::try_from(bytes).ok().map(IpAddr::from),
        16 => <[u8; 16]>::try_from(bytes).ok().map(IpAddr::from),
        _ => None,
    }
}
