//! HTTPS and mutual TLS on the control plane, through the real client (quilt-api) and
//! a raw TLS client: a trusted CA works; a wrong CA, no client certificate, a certificate
//! from another CA, an expired one and another node's are refused; plain HTTP to the TLS
//! port gets nothing; SIGHUP swaps the certificate while a watcher stays connected.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use quilt_api::types::RegisterRequest;
use quilt_api::{ClientTls, ControlClient, ControlError};
use quilt_testkit::control::ControlServer;
use quilt_tls::Identity;
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, SanType};

/// A CA in a folder, issuing certificates into it.
struct Ca {
    dir: PathBuf,
    name: &'static str,
    issuer: Issuer<'static, KeyPair>,
}

impl Ca {
    fn new(dir: &Path, name: &'static str) -> Ca {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let cert = params.self_signed(&key).unwrap();
        std::fs::write(dir.join(format!("{name}.pem")), cert.pem()).unwrap();
        Ca {
            dir: dir.to_path_buf(),
            name,
            issuer: Issuer::new(params, key),
        }
    }

    fn pem(&self) -> PathBuf {
        self.dir.join(format!("{}.pem", self.name))
    }

    /// A certificate for `ips` (and `localhost`), valid from `days_from_now.0` to `.1`.
    fn issue(&self, file: &str, ips: &[&str], days: (i64, i64)) -> Identity {
        let key = KeyPair::generate().unwrap();
        let mut params = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
        for ip in ips {
            params
                .subject_alt_names
                .push(SanType::IpAddress(ip.parse().unwrap()));
        }
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now + time::Duration::days(days.0);
        params.not_after = now + time::Duration::days(days.1);
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        let identity = Identity {
            cert: self.dir.join(format!("{file}.pem")),
            key: self.dir.join(format!("{file}-key.pem")),
        };
        std::fs::write(&identity.cert, cert.pem()).unwrap();
        std::fs::write(&identity.key, key.serialize_pem()).unwrap();
        identity
    }
}

const VALID: (i64, i64) = (-1, 30);

fn client(server: &ControlServer, ca: &Ca, identity: Option<&Identity>) -> ControlClient {
    ControlClient::builder([server.base.replace("http://", "https://")])
        .no_proxy()
        .tls(Some(ClientTls {
            ca: ca.pem(),
            identity: identity.cloned(),
        }))
        .build()
        .unwrap()
}

fn node(host_ip: &str) -> RegisterRequest {
    RegisterRequest::new("n", host_ip)
}

async fn start(dir: &Path, server_id: &Identity, client_ca: Option<&Ca>) -> ControlServer {
    let cert = server_id.cert.display().to_string();
    let key = server_id.key.display().to_string();
    let mut args = vec!["--tls-cert".to_string(), cert, "--tls-key".into(), key];
    if let Some(ca) = client_ca {
        args.extend(["--tls-ca".to_string(), ca.pem().display().to_string()]);
    }
    let _ = dir;
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    ControlServer::start(&args).await
}

fn refused(e: &ControlError) -> bool {
    matches!(e, ControlError::Unreachable { .. }) || e.to_string().contains("error sending request")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn https_with_the_right_ca_works_and_anything_else_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(dir.path(), "ca");
    let other = Ca::new(dir.path(), "other-ca");
    let server_id = ca.issue("server", &["127.0.0.1"], VALID);
    let server = start(dir.path(), &server_id, None).await;

    let answer = client(&server, &ca, None)
        .register(&node("10.9.0.1"))
        .await
        .unwrap();
    assert_eq!(answer.node.subnet.to_string(), "10.42.1.0/24");

    let e = client(&server, &other, None).list().await.unwrap_err();
    assert!(refused(&e), "a server certificate from another CA: {e}");

    // Failover across several https:// URLs: a dead one is skipped for the live one.
    let https = server.base.replace("http://", "https://");
    let failover = ControlClient::builder(["https://127.0.0.1:9", https.as_str()])
        .no_proxy()
        .tls(Some(ClientTls {
            ca: ca.pem(),
            identity: None,
        }))
        .build()
        .unwrap();
    assert_eq!(failover.list().await.unwrap().nodes.len(), 1);

    // Plain HTTP to the TLS port: no answer at all.
    let plain = ControlClient::builder([server.base.clone()])
        .no_proxy()
        .build()
        .unwrap();
    let e = plain.list().await.unwrap_err();
    assert!(
        refused(&e) || matches!(e, ControlError::BadAnswer { .. }),
        "{e}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_mutual_tls_a_node_acts_only_with_its_own_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(dir.path(), "ca");
    let other = Ca::new(dir.path(), "other-ca");
    let server_id = ca.issue("server", &["127.0.0.1"], VALID);
    let server = start(dir.path(), &server_id, Some(&ca)).await;
    let a_id = ca.issue("node-a", &["10.9.0.1"], VALID);
    let b_id = ca.issue("node-b", &["10.9.0.2"], VALID);
    let a = client(&server, &ca, Some(&a_id));
    let b = client(&server, &ca, Some(&b_id));

    let registered = a.register(&node("10.9.0.1")).await.unwrap();
    let id = registered.node.node_id.clone();
    a.heartbeat(&id, &registered.node_token, None)
        .await
        .unwrap();

    // Node b's certificate cannot heartbeat, re-register or delete as node a, even with
    // node a's token.
    let e = b
        .heartbeat(&id, &registered.node_token, None)
        .await
        .unwrap_err();
    assert!(matches!(e, ControlError::StaleToken(_)), "{e}");
    match b.register(&node("10.9.0.1")).await.unwrap_err() {
        ControlError::Refused {
            status, message, ..
        } => {
            assert_eq!(status.as_u16(), 403);
            assert!(
                message.contains("host 10.9.0.1 needs a client certificate naming it"),
                "{message}"
            );
            assert!(message.contains("10.9.0.2"), "{message}");
        }
        e => panic!("{e}"),
    }
    let e = b.leave(&id, &registered.node_token).await.unwrap_err();
    assert!(e.to_string().contains("403"), "{e}");
    a.heartbeat(&id, &registered.node_token, None)
        .await
        .expect("node a's token was not rotated by the refused registration");

    // No certificate, one from another CA, an expired one: the handshake is refused.
    let stranger = other.issue("stranger", &["10.9.0.1"], VALID);
    let expired = ca.issue("expired", &["10.9.0.1"], (-30, -1));
    for (what, identity) in [
        ("none", None),
        ("another CA's", Some(&stranger)),
        ("expired", Some(&expired)),
    ] {
        let e = client(&server, &ca, identity).list().await.unwrap_err();
        assert!(refused(&e), "{what} certificate: {e}");
    }
    // The list is still there for a good certificate.
    assert_eq!(a.list().await.unwrap().nodes.len(), 1);
}

/// A raw TLS client's view of the server certificate at `addr`.
async fn served_certificate(addr: &str, ca: &Ca, identity: &Identity) -> Vec<u8> {
    let config = quilt_tls::client_config(&ca.pem(), Some(identity)).unwrap();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let tls = connector.connect(name, tcp).await.unwrap();
    tls.get_ref().1.peer_certificates().unwrap()[0].to_vec()
}

fn der_of(pem: &Path) -> Vec<u8> {
    quilt_tls::certificates("certificate", pem).unwrap()[0].to_vec()
}

/// Waits up to 10 s until the server at `addr` presents certificate `der`.
async fn until_served(addr: &str, ca: &Ca, identity: &Identity, der: &[u8]) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while served_certificate(addr, ca, identity).await != der {
        assert!(
            std::time::Instant::now() < deadline,
            "the new certificate is not served"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_swaps_the_certificate_and_a_watcher_stays_connected() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(dir.path(), "ca");
    let server_id = ca.issue("server", &["127.0.0.1"], VALID);
    let server = start(dir.path(), &server_id, Some(&ca)).await;
    let addr = server.base.trim_start_matches("http://").to_string();
    let a_id = ca.issue("node-a", &["10.9.0.1"], VALID);
    let a = client(&server, &ca, Some(&a_id));
    let first = der_of(&server_id.cert);
    assert_eq!(served_certificate(&addr, &ca, &a_id).await, first);

    let watch = client(&server, &ca, Some(&a_id)).watch(0).await.unwrap();
    let mut watch = Box::pin(watch);

    // Rotate: new files in place, then SIGHUP.
    let rotated = ca.issue("server", &["127.0.0.1"], VALID);
    assert_eq!(rotated, server_id);
    let second = der_of(&rotated.cert);
    assert_ne!(first, second);
    nix::sys::signal::raise(nix::sys::signal::Signal::SIGHUP).unwrap();
    until_served(&addr, &ca, &a_id, &second).await;

    // The watcher opened before the rotation still hears changes.
    a.register(&node("10.9.0.1")).await.unwrap();
    let event = tokio::time::timeout(Duration::from_secs(5), futures::StreamExt::next(&mut watch))
        .await
        .expect("an event within 5 s")
        .expect("the stream is open")
        .unwrap();
    assert_eq!(event.node.host_ip.to_string(), "10.9.0.1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replaced_certificate_file_is_served_without_a_signal() {
    let dir = tempfile::tempdir().unwrap();
    let ca = Ca::new(dir.path(), "ca");
    let server_id = ca.issue("server", &["127.0.0.1"], VALID);
    let server = start(dir.path(), &server_id, Some(&ca)).await;
    let addr = server.base.trim_start_matches("http://").to_string();
    let a_id = ca.issue("node-a", &["10.9.0.1"], VALID);
    assert_eq!(
        served_certificate(&addr, &ca, &a_id).await,
        der_of(&server_id.cert)
    );
    // File times have a granularity; make sure the new files look newer.
    tokio::time::sleep(Duration::from_millis(20)).await;
    let rotated = ca.issue("server", &["127.0.0.1"], VALID);
    let second = der_of(&rotated.cert);
    until_served(&addr, &ca, &a_id, &second).await;
}
