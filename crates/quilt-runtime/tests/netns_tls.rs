//! TLS on the runtime's TCP listener, against the real binary in a fresh namespace with
//! test certificates: with `--tls-ca` only clients holding a certificate from that CA
//! get through (and are then trusted whoever runs them); a client trusting another CA,
//! one without a certificate, one with another CA's certificate and plain text are all
//! refused. Start-up refuses a non-loopback address without TLS and bad TLS files, each
//! naming the flag or file.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use quilt_testkit::netns::privileged_or_skip;
use quilt_testkit::runtime::RuntimeHost;
use quilt_testkit::users::TestUser;
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair, KeyUsagePurpose};

/// The runtime listens on the namespace's underlay address: beyond loopback, which is
/// allowed because TLS is on.
const TLS_ADDR: &str = "192.168.50.1:50051";

struct Ca {
    issuer: Issuer<'static, KeyPair>,
    pem: String,
}

fn ca(name: &str) -> Ca {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, name);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let key = KeyPair::generate().unwrap();
    let pem = params.self_signed(&key).unwrap().pem();
    Ca {
        issuer: Issuer::new(params, key),
        pem,
    }
}

/// A certificate for `names` (DNS names or IP addresses) from `ca`: (cert, key) PEM.
fn leaf(ca: &Ca, names: &[&str]) -> (String, String) {
    let params =
        CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, &ca.issuer).unwrap();
    (cert.pem(), key.serialize_pem())
}

/// Writes `files` into `dir` readable by everyone (the probe runs unprivileged).
fn write_all(dir: &Path, files: &[(&str, &str)]) {
    for (name, content) in files {
        let path = dir.join(name);
        std::fs::write(&path, content).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
}

fn probe(host: &RuntimeHost, user: Option<&TestUser>, address: &str, tls: [&PathBuf; 3]) -> String {
    let mut command = host.ns.command("setpriv");
    match user {
        Some(user) => command.args(user.setpriv_args(false)),
        None => command.arg("--reuid=0"),
    };
    let output = command
        .arg(quilt_testkit::bins::probe())
        .args([address, "reads"])
        .args(tls)
        .output()
        .expect("run quilt-rpc-probe");
    String::from_utf8_lossy(&output.stdout).to_string()
}

fn served(out: &str) -> bool {
    let lines: Vec<&str> = out.lines().collect();
    lines.len() == 3 && lines.iter().all(|l| l.ends_with(" Ok"))
}

#[test]
fn with_tls_ca_only_certificates_from_the_ca_get_through() {
    if !privileged_or_skip("with_tls_ca_only_certificates_from_the_ca_get_through") {
        return;
    }
    let certs = tempfile::tempdir().unwrap();
    std::fs::set_permissions(certs.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let ours = ca("quilt test ca");
    let other = ca("another ca");
    let (server_cert, server_key) = leaf(&ours, &["192.168.50.1", "localhost"]);
    let (client_cert, client_key) = leaf(&ours, &["client"]);
    let (stranger_cert, stranger_key) = leaf(&other, &["client"]);
    write_all(
        certs.path(),
        &[
            ("ca.pem", &ours.pem),
            ("other-ca.pem", &other.pem),
            ("server.pem", &server_cert),
            ("server-key.pem", &server_key),
            ("client.pem", &client_cert),
            ("client-key.pem", &client_key),
            ("stranger.pem", &stranger_cert),
            ("stranger-key.pem", &stranger_key),
        ],
    );
    let file = |name: &str| -> PathBuf { certs.path().join(name) };
    let none = PathBuf::new();

    let mut host = RuntimeHost::new();
    let (cert, key, ca_file) = (file("server.pem"), file("server-key.pem"), file("ca.pem"));
    host.start_with(&[
        "--grpc-addr",
        TLS_ADDR,
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
        "--tls-ca",
        ca_file.to_str().unwrap(),
    ]);
    let https = format!("https://{TLS_ADDR}");
    let outsider = TestUser::create(&[]);

    // A client trusting our CA with a certificate from it: served, even unprivileged.
    let out = probe(
        &host,
        Some(&outsider),
        &https,
        [
            &file("ca.pem"),
            &file("client.pem"),
            &file("client-key.pem"),
        ],
    );
    assert!(
        served(&out),
        "a certificate from the ca was not served:\n{out}"
    );
    let out = probe(
        &host,
        None,
        &https,
        [
            &file("ca.pem"),
            &file("client.pem"),
            &file("client-key.pem"),
        ],
    );
    assert!(
        served(&out),
        "root with a certificate was not served:\n{out}"
    );

    // Refused: trusting another CA, no client certificate, another CA's certificate,
    // plain text to the TLS port. Root gains nothing either: TLS comes first.
    for (what, user, tls) in [
        (
            "a client trusting another ca",
            None,
            [
                &file("other-ca.pem"),
                &file("client.pem"),
                &file("client-key.pem"),
            ],
        ),
        (
            "no client certificate",
            None,
            [&file("ca.pem"), &none, &none],
        ),
        (
            "a certificate from another ca",
            Some(&outsider),
            [
                &file("ca.pem"),
                &file("stranger.pem"),
                &file("stranger-key.pem"),
            ],
        ),
    ] {
        let out = probe(&host, user, &https, tls);
        assert!(
            !out.is_empty() && !out.contains(" Ok"),
            "{what} got through:\n{out}"
        );
    }
    let out = probe(
        &host,
        None,
        &format!("http://{TLS_ADDR}"),
        [&none, &none, &none],
    );
    assert!(
        !out.is_empty() && !out.contains(" Ok"),
        "plain text got through:\n{out}"
    );

    // The unix socket is unchanged by TLS: root is served there.
    let out = probe(&host, None, &host.socket_address(), [&none, &none, &none]);
    assert!(served(&out), "{out}");
}

/// Runs the binary in the host's namespace with `args`, expects it to fail, and answers
/// its stderr.
fn start_fails(host: &RuntimeHost, args: &[&str]) -> String {
    let mut command = host
        .ns
        .command(quilt_testkit::bins::binary("quilt-runtime"));
    if !args.contains(&"--grpc-socket") {
        command.arg("--grpc-socket").arg(host.socket_path());
    }
    let output = command
        .arg("--state-dir")
        .arg(host.state_path())
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr).to_string();
    assert!(!output.status.success(), "started with {args:?}:\n{stderr}");
    stderr
}

#[test]
fn bad_listener_settings_and_tls_files_stop_the_start_naming_them() {
    if !privileged_or_skip("bad_listener_settings_and_tls_files_stop_the_start_naming_them") {
        return;
    }
    let host = RuntimeHost::new();
    let certs = tempfile::tempdir().unwrap();
    let ours = ca("quilt test ca");
    let (cert, key) = leaf(&ours, &["192.168.50.1"]);
    let (_, other_key) = leaf(&ours, &["other"]);
    write_all(
        certs.path(),
        &[
            ("server.pem", &cert),
            ("server-key.pem", &key),
            ("other-key.pem", &other_key),
            ("garbage.pem", "not a certificate"),
        ],
    );
    let file = |name: &str| certs.path().join(name).display().to_string();

    let stderr = start_fails(&host, &["--grpc-addr", TLS_ADDR]);
    assert!(
        stderr.contains("grpc address 192.168.50.1:50051 is not loopback")
            && stderr.contains("--tls-cert"),
        "{stderr}"
    );
    let missing = file("missing.pem");
    let stderr = start_fails(
        &host,
        &["--tls-cert", &missing, "--tls-key", &file("server-key.pem")],
    );
    assert!(
        stderr.contains(&format!("--tls-cert file {missing}")),
        "{stderr}"
    );
    let stderr = start_fails(
        &host,
        &[
            "--tls-cert",
            &file("server.pem"),
            "--tls-key",
            &file("other-key.pem"),
        ],
    );
    assert!(
        stderr.contains(&format!(
            "--tls-key file {} does not match",
            file("other-key.pem")
        )),
        "{stderr}"
    );
    let stderr = start_fails(
        &host,
        &[
            "--tls-cert",
            &file("server.pem"),
            "--tls-key",
            &file("server-key.pem"),
            "--tls-ca",
            &file("garbage.pem"),
        ],
    );
    assert!(
        stderr.contains(&format!("--tls-ca file {}", file("garbage.pem"))),
        "{stderr}"
    );
    let stderr = start_fails(&host, &["--grpc-socket-group", "no-such-group-quilt"]);
    assert!(stderr.contains("\"no-such-group-quilt\""), "{stderr}");
    let stderr = start_fails(&host, &["--grpc-addr", "off", "--grpc-socket", "off"]);
    assert!(
        stderr.contains("both --grpc-socket and --grpc-addr are off"),
        "{stderr}"
    );
    assert!(
        !host.socket_path().exists(),
        "a failed start left its socket"
    );
}
