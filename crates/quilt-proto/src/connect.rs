//! One way to reach a quilt-runtime: the address (its unix socket as `unix:/path`,
//! `unix:///path` or a bare absolute path; TCP as `HOST:PORT`, `http://` or `https://`),
//! TLS for `https` ([`TlsOptions`]), the timeouts, and errors that name the address.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

use crate::quilt_runtime_client::QuiltRuntimeClient;

/// How long to wait for the runtime.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// To open the connection.
    pub connect: Duration,
    /// For each call, from sending to the whole answer.
    pub call: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            connect: Duration::from_secs(1),
            call: Duration::from_secs(10),
        }
    }
}

/// TLS for an `https://` runtime address: the CA that issued the runtime's certificate
/// (required: there are no system roots for a runtime), and a client certificate and key
/// for a runtime started with `--tls-ca`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsOptions {
    pub ca: Option<PathBuf>,
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

impl TlsOptions {
    /// Whether any TLS file is given.
    pub fn is_empty(&self) -> bool {
        self.ca.is_none() && self.cert.is_none() && self.key.is_none()
    }
}

/// Why no channel to the runtime could be had.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error(
        "runtime address {address:?} is not unix:/PATH, an absolute path, HOST:PORT or an http(s) url: {reason}"
    )]
    BadAddress { address: String, reason: String },
    #[error("runtime address {address:?}: {reason}")]
    BadTls { address: String, reason: String },
    #[error("cannot reach quilt-runtime at {url}: {message}")]
    Unreachable { url: String, message: String },
}

/// Where a runtime listens, parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// Its unix socket.
    Unix(PathBuf),
    /// An `http://` or `https://` URL.
    Url(String),
}

impl Target {
    /// `unix:/PATH`, `unix:///PATH` or `/PATH` is the socket; a URL is kept; `HOST:PORT`
    /// becomes `http://HOST:PORT`.
    pub fn parse(address: &str) -> Result<Self, ConnectError> {
        let trimmed = address.trim();
        let bad = |reason: &str| ConnectError::BadAddress {
            address: address.to_string(),
            reason: reason.to_string(),
        };
        let path = trimmed
            .strip_prefix("unix://")
            .or_else(|| trimmed.strip_prefix("unix:"))
            .or_else(|| trimmed.starts_with('/').then_some(trimmed));
        if let Some(path) = path {
            if !path.starts_with('/') {
                return Err(bad("a unix socket path must be absolute"));
            }
            return Ok(Target::Unix(PathBuf::from(path)));
        }
        let url = if trimmed.contains("://") {
            trimmed.to_string()
        } else {
            format!("http://{trimmed}")
        };
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(bad("the scheme must be unix, http or https"));
        }
        Ok(Target::Url(url))
    }
}

/// The address as shown to people: `unix:/PATH`, or the URL (`HOST:PORT` becomes
/// `http://HOST:PORT`). An address that does not parse is shown as given.
pub fn url_of(address: &str) -> String {
    match Target::parse(address) {
        Ok(Target::Unix(path)) => format!("unix:{}", path.display()),
        Ok(Target::Url(url)) => url,
        Err(_) => address.trim().to_string(),
    }
}

/// The endpoint for `address` without TLS files, not yet connected.
pub fn endpoint(address: &str, timeouts: Timeouts) -> Result<Endpoint, ConnectError> {
    endpoint_with(address, timeouts, &TlsOptions::default())
}

/// The endpoint for `address`, with `tls` for an `https://` address, not yet connected.
pub fn endpoint_with(
    address: &str,
    timeouts: Timeouts,
    tls: &TlsOptions,
) -> Result<Endpoint, ConnectError> {
    let bad = |reason: String| ConnectError::BadAddress {
        address: address.to_string(),
        reason,
    };
    let bad_tls = |reason: String| ConnectError::BadTls {
        address: address.to_string(),
        reason,
    };
    let endpoint = match Target::parse(address)? {
        Target::Unix(path) => {
            if !tls.is_empty() {
                return Err(bad_tls(
                    "TLS files are for an https:// address, not a unix socket".into(),
                ));
            }
            Endpoint::from_shared(format!("unix:{}", path.display()))
                .map_err(|e| bad(e.to_string()))?
        }
        Target::Url(url) => {
            let https = url.starts_with("https://");
            let endpoint = Endpoint::from_shared(url).map_err(|e| bad(e.to_string()))?;
            if endpoint.uri().host().is_none_or(str::is_empty) || endpoint.uri().port().is_none() {
                return Err(bad("it needs a host and a port".into()));
            }
            if https {
                endpoint
                    .tls_config(client_tls(tls).map_err(bad_tls)?)
                    .map_err(|e| bad_tls(error_chain(&e)))?
            } else if !tls.is_empty() {
                return Err(bad_tls(
                    "TLS files are given but the address is not https://".into(),
                ));
            } else {
                endpoint
            }
        }
    };
    Ok(endpoint
        .connect_timeout(timeouts.connect)
        .timeout(timeouts.call))
}

fn client_tls(tls: &TlsOptions) -> Result<ClientTlsConfig, String> {
    let ca = tls
        .ca
        .as_deref()
        .ok_or("an https:// runtime needs the CA that issued its certificate (a tls ca file)")?;
    let mut config = ClientTlsConfig::new().ca_certificate(Certificate::from_pem(read(ca)?));
    match (&tls.cert, &tls.key) {
        (Some(cert), Some(key)) => {
            config = config.identity(Identity::from_pem(read(cert)?, read(key)?));
        }
        (None, None) => {}
        _ => return Err("a client certificate needs its key, and a key its certificate".into()),
    }
    Ok(config)
}

fn read(path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("cannot read {}: {e}", path.display()))
}

/// A client that connects on its first call and reconnects after the runtime restarts.
pub fn connect_lazy(
    address: &str,
    timeouts: Timeouts,
) -> Result<QuiltRuntimeClient<Channel>, ConnectError> {
    connect_lazy_with(address, timeouts, &TlsOptions::default())
}

/// [`connect_lazy`] with TLS files for an `https://` address.
pub fn connect_lazy_with(
    address: &str,
    timeouts: Timeouts,
    tls: &TlsOptions,
) -> Result<QuiltRuntimeClient<Channel>, ConnectError> {
    Ok(QuiltRuntimeClient::new(
        endpoint_with(address, timeouts, tls)?.connect_lazy(),
    ))
}

/// A client connected now: fails at once when the runtime does not answer.
pub async fn connect(
    address: &str,
    timeouts: Timeouts,
) -> Result<QuiltRuntimeClient<Channel>, ConnectError> {
    connect_with(address, timeouts, &TlsOptions::default()).await
}

/// [`connect`] with TLS files for an `https://` address.
pub async fn connect_with(
    address: &str,
    timeouts: Timeouts,
    tls: &TlsOptions,
) -> Result<QuiltRuntimeClient<Channel>, ConnectError> {
    Ok(QuiltRuntimeClient::new(
        channel_with(address, timeouts, tls).await?,
    ))
}

/// A channel connected now, for any of the runtime's services (health, reflection too).
pub async fn channel_with(
    address: &str,
    timeouts: Timeouts,
    tls: &TlsOptions,
) -> Result<Channel, ConnectError> {
    let endpoint = endpoint_with(address, timeouts, tls)?;
    endpoint
        .connect()
        .await
        .map_err(|e| ConnectError::Unreachable {
            url: url_of(address).trim_end_matches('/').to_string(),
            message: error_chain(&e),
        })
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let chain: Vec<String> = std::iter::successors(Some(e), |e| e.source())
        .map(ToString::to_string)
        .collect();
    chain.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_port_and_urls_are_accepted() {
        for (given, url) in [
            ("127.0.0.1:50051", "http://127.0.0.1:50051/"),
            (" http://10.0.0.1:7 ", "http://10.0.0.1:7/"),
            ("[::1]:50051", "http://[::1]:50051/"),
        ] {
            let e = endpoint(given, Timeouts::default()).unwrap();
            assert_eq!(e.uri().to_string(), url, "{given}");
        }
    }

    #[test]
    fn socket_paths_are_accepted_in_three_spellings() {
        for given in [
            "unix:/run/quilt/runtime.sock",
            "unix:///run/quilt/runtime.sock",
            "/run/quilt/runtime.sock",
        ] {
            assert_eq!(
                Target::parse(given).unwrap(),
                Target::Unix("/run/quilt/runtime.sock".into()),
                "{given}"
            );
            assert!(endpoint(given, Timeouts::default()).is_ok(), "{given}");
            assert_eq!(url_of(given), "unix:/run/quilt/runtime.sock");
        }
    }

    #[test]
    fn bad_addresses_are_refused_naming_them() {
        for bad in [
            "",
            "127.0.0.1",
            "ftp://a:1",
            "http://:1",
            "not an address:x",
            "unix:relative.sock",
        ] {
            let e = endpoint(bad, Timeouts::default()).unwrap_err();
            assert!(
                matches!(&e, ConnectError::BadAddress { address, .. } if address == bad),
                "{bad}: {e}"
            );
        }
    }

    #[test]
    fn https_needs_a_ca_and_tls_files_need_https() {
        let e = endpoint("https://rt.example:443", Timeouts::default()).unwrap_err();
        assert!(e.to_string().contains("needs the CA"), "{e}");
        let tls = TlsOptions {
            ca: Some("/nonexistent/ca.pem".into()),
            ..TlsOptions::default()
        };
        let e = endpoint_with("https://rt.example:443", Timeouts::default(), &tls).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/ca.pem"), "{e}");
        let e = endpoint_with("127.0.0.1:50051", Timeouts::default(), &tls).unwrap_err();
        assert!(e.to_string().contains("not https"), "{e}");
        let e = endpoint_with("unix:/x.sock", Timeouts::default(), &tls).unwrap_err();
        assert!(e.to_string().contains("unix socket"), "{e}");
    }

    #[tokio::test]
    async fn an_unanswered_address_is_unreachable_with_its_url() {
        let e = connect("127.0.0.1:9", Timeouts::default())
            .await
            .unwrap_err();
        assert!(
            e.to_string()
                .starts_with("cannot reach quilt-runtime at http://127.0.0.1:9:"),
            "{e}"
        );
        let e = connect("unix:/nonexistent/quilt.sock", Timeouts::default())
            .await
            .unwrap_err();
        assert!(
            e.to_string()
                .starts_with("cannot reach quilt-runtime at unix:/nonexistent/quilt.sock:"),
            "{e}"
        );
    }
}
