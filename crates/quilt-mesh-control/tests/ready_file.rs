//! `--ready-file`: once listening, the server writes the address it bound, so whoever
//! started it on port 0 learns the port without reading the log.

use std::time::{Duration, Instant};

use quilt_testkit::control::ControlServer;

#[tokio::test]
async fn the_ready_file_names_the_bound_address() {
    let dir = tempfile::tempdir().unwrap();
    let ready = dir.path().join("ready");
    let s = ControlServer::start(&["--ready-file", ready.to_str().unwrap()]).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    let text = loop {
        if let Ok(text) = std::fs::read_to_string(&ready) {
            break text;
        }
        assert!(
            Instant::now() < deadline,
            "no {} within 10 s",
            ready.display()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert_eq!(format!("http://{text}"), format!("{}\n", s.base));
    assert!(
        !dir.path().join("ready.tmp").exists(),
        "the temporary file is renamed"
    );
    s.stop().await;
}
