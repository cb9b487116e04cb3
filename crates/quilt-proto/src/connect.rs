//! One way to reach a quilt-runtime: the address as `HOST:PORT` or as an `http://` /
//! `https://` URL, the timeouts, and errors that name the address.

use std::time::Duration;

use tonic::transport::{Channel, Endpoint};

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

/// Why no channel to the runtime could be had.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("runtime address {address:?} is not HOST:PORT or an http(s) url: {reason}")]
    BadAddress { address: String, reason: String },
    #[error("cannot reach quilt-runtime at {url}: {message}")]
    Unreachable { url: String, message: String },
}

/// `HOST:PORT` becomes `http://HOST:PORT`; a URL is kept as it is.
pub fn url_of(address: &str) -> String {
    let address = address.trim();
    if address.contains("://") {
        address.to_string()
    } else {
        format!("http://{address}")
    }
}

/// The endpoint for `address`, not yet connected.
pub fn endpoint(address: &str, timeouts: Timeouts) -> Result<Endpoint, ConnectError> {
    let url = url_of(address);
    let bad = |reason: String| ConnectError::BadAddress {
        address: address.to_string(),
        reason,
    };
    if !(url.starts_with("http://") || url.starts_with("https://")) {
        return Err(bad("the scheme must be http or https".into()));
    }
    let endpoint = Endpoint::from_shared(url).map_err(|e| bad(e.to_string()))?;
    if endpoint.uri().host().is_none_or(str::is_empty) || endpoint.uri().port().is_none() {
        return Err(bad("it needs a host and a port".into()));
    }
    Ok(endpoint
        .connect_timeout(timeouts.connect)
        .timeout(timeouts.call))
}

/// A client that connects on its first call and reconnects after the runtime restarts.
pub fn connect_lazy(
    address: &str,
    timeouts: Timeouts,
) -> Result<QuiltRuntimeClient<Channel>, ConnectError> {
    Ok(QuiltRuntimeClient::new(
        endpoint(address, timeouts)?.connect_lazy(),
    ))
}

/// A client connected now: fails at once when the runtime does not answer.
pub async fn connect(
    address: &str,
    timeouts: Timeouts,
) -> Result<QuiltRuntimeClient<Channel>, ConnectError> {
    let endpoint = endpoint(address, timeouts)?;
    let url = endpoint.uri().to_string();
    let channel = endpoint
        .connect()
        .await
        .map_err(|e| ConnectError::Unreachable {
            url: url.trim_end_matches('/').to_string(),
            message: error_chain(&e),
        })?;
    Ok(QuiltRuntimeClient::new(channel))
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
            ("https://rt.example:443", "https://rt.example:443/"),
            ("[::1]:50051", "http://[::1]:50051/"),
        ] {
            let e = endpoint(given, Timeouts::default()).unwrap();
            assert_eq!(e.uri().to_string(), url, "{given}");
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
        ] {
            let e = endpoint(bad, Timeouts::default()).unwrap_err();
            assert!(
                matches!(&e, ConnectError::BadAddress { address, .. } if address == bad),
                "{bad}: {e}"
            );
        }
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
    }
}
