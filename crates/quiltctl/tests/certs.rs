//! `quiltctl certs`: a CA and certificates that a standard TLS tool (openssl) accepts as
//! a chain, for server and client use, with private keys.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

fn quiltctl(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_quiltctl"))
        .args(args)
        .output()
        .unwrap()
}

fn openssl(args: &[&str]) -> Output {
    Command::new("openssl")
        .args(args)
        .output()
        .expect("openssl (Debian package openssl) runs")
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn init_and_issue_make_a_chain_openssl_verifies_for_server_and_client() {
    let root = tempfile::tempdir().unwrap();
    let dir = root.path().join("pki");
    let d = dir.to_str().unwrap();
    let init = quiltctl(&["certs", "init", "--dir", d]);
    assert!(init.status.success(), "{}", text(&init));
    assert!(text(&init).contains("ca.pem"), "{}", text(&init));
    let issue = quiltctl(&[
        "certs",
        "issue",
        "--dir",
        d,
        "--name",
        "node-a",
        "--ip",
        "192.168.61.11",
        "--dns",
        "node-a.lab",
    ]);
    assert!(issue.status.success(), "{}", text(&issue));
    assert_eq!(mode(&dir), 0o700);
    for key in ["ca-key.pem", "node-a-key.pem"] {
        assert_eq!(mode(&dir.join(key)), 0o600, "{key}");
    }
    let ca = dir.join("ca.pem");
    let cert = dir.join("node-a.pem");
    for purpose in ["sslserver", "sslclient"] {
        let verified = openssl(&[
            "verify",
            "-purpose",
            purpose,
            "-CAfile",
            ca.to_str().unwrap(),
            cert.to_str().unwrap(),
        ]);
        assert!(verified.status.success(), "{purpose}: {}", text(&verified));
    }
    let shown = text(&openssl(&[
        "x509",
        "-noout",
        "-text",
        "-in",
        cert.to_str().unwrap(),
    ]));
    assert!(shown.contains("IP Address:192.168.61.11"), "{shown}");
    assert!(shown.contains("DNS:node-a.lab"), "{shown}");
    // The key matches the certificate.
    let from_cert = openssl(&["x509", "-noout", "-pubkey", "-in", cert.to_str().unwrap()]);
    let key = dir.join("node-a-key.pem");
    let from_key = openssl(&["pkey", "-pubout", "-in", key.to_str().unwrap()]);
    assert_eq!(from_cert.stdout, from_key.stdout);

    // Refusals are clear and leave the files alone.
    let again = quiltctl(&["certs", "init", "--dir", d]);
    assert!(!again.status.success());
    assert!(
        text(&again).contains("already exists; pass --force"),
        "{}",
        text(&again)
    );
    let bad = quiltctl(&[
        "certs", "issue", "--dir", d, "--name", "../x", "--ip", "10.0.0.1",
    ]);
    assert!(!bad.status.success());
    assert!(
        text(&bad).contains("certificate name \"../x\""),
        "{}",
        text(&bad)
    );
    let bad_ip = quiltctl(&[
        "certs",
        "issue",
        "--dir",
        d,
        "--name",
        "x",
        "--ip",
        "10.0.0.300",
    ]);
    assert!(!bad_ip.status.success());
    assert!(text(&bad_ip).contains("10.0.0.300"), "{}", text(&bad_ip));
    assert!(!dir.join("x.pem").exists());
}
