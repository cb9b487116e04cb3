//! quiltctl as a user runs it: operator commands against a real control plane and a
//! real runtime (each inside a namespace this test makes, quiltctl run there too), with
//! `--json` parsed; and `lab up` refusing what it must refuse.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use quilt_api::ControlClient;
use quilt_api::types::{NodeInfo, NodeList, RegisterRequest};
use quilt_testkit::netns::{OwnedNetns, Underlay, block_on_in, privileged_or_skip, unique_name};

const QUILTCTL: &str = env!("CARGO_BIN_EXE_quiltctl");
const TOKEN: &str = "lab-join-token-0123456789";

/// The daemons, next to quiltctl in the target folder, built fresh.
fn daemons() -> PathBuf {
    quilt_testkit::bins::build(&["quilt-mesh-control", "quilt-runtime"])
        .unwrap_or_else(|e| panic!("{e}"))
}

/// A namespace running the control plane on 127.0.0.1:8080 and, when asked, a runtime
/// on 127.0.0.1:50051 with a `vxlan100` to route over.
struct Site {
    ns: OwnedNetns,
    dir: tempfile::TempDir,
    children: Vec<Child>,
}

impl Site {
    fn new() -> Self {
        let ns = OwnedNetns::create(&unique_name("qctl")).unwrap();
        Self {
            ns,
            dir: tempfile::tempdir().unwrap(),
            children: Vec::new(),
        }
    }

    fn spawn(&mut self, bin: &Path, args: &[&str], log: &str) {
        let log = std::fs::File::create(self.dir.path().join(log)).unwrap();
        let child = self
            .ns
            .command(bin)
            .args(args)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.children.push(child);
    }

    fn wait_port(&self, port: u16) {
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            let open = quilt_kernel::netns::run_in(self.ns.name(), || {
                std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
            })
            .unwrap();
            if open {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("nothing listens on port {port} in {}", self.ns.name());
    }

    fn start_control(&mut self, bins: &Path) {
        let db = self.dir.path().join("control.db");
        self.spawn(
            &bins.join("quilt-mesh-control"),
            &[
                "--listen",
                "127.0.0.1:8080",
                "--db-path",
                db.to_str().unwrap(),
                "--join-token",
                TOKEN,
            ],
            "control.log",
        );
        self.wait_port(8080);
    }

    fn start_runtime(&mut self, bins: &Path) {
        self.ns.add_underlay("192.168.61.1/24").unwrap();
        self.ns.add_vxlan100("192.168.61.1").unwrap();
        let state = self.dir.path().join("runtime");
        self.spawn(
            &bins.join("quilt-runtime"),
            &[
                "--grpc-addr",
                "127.0.0.1:50051",
                "--grpc-socket",
                state.join("runtime.sock").to_str().unwrap(),
                "--state-dir",
                state.to_str().unwrap(),
                "--reconcile-interval",
                "1h",
            ],
            "runtime.log",
        );
        self.wait_port(50051);
    }

    /// Runs quiltctl inside the namespace with `env`.
    fn quiltctl(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        let mut command = self.ns.command(QUILTCTL);
        command
            .args(args)
            .env_remove("QUILT_CONTROL_PLANE")
            .env_remove("QUILT_JOIN_TOKEN");
        for (k, v) in env {
            command.env(k, v);
        }
        for proxy in [
            "http_proxy",
            "HTTP_PROXY",
            "https_proxy",
            "HTTPS_PROXY",
            "all_proxy",
            "ALL_PROXY",
        ] {
            command.env_remove(proxy);
        }
        command.output().unwrap()
    }

    /// Registers a node the way an agent does; answers its id and token.
    fn register(&self, hostname: &str, host_ip: &str) -> (String, String) {
        let request = RegisterRequest {
            hostname: hostname.into(),
            host_ip: host_ip.into(),
            cpu_cores: Some(2),
            ram_mb: None,
            vtep_mac: None,
            subnet: None,
            vxlan_port: None,
            vni: None,
        };
        block_on_in(self.ns.name(), async || {
            ControlClient::builder(["http://127.0.0.1:8080"])
                .join_token(Some(TOKEN.into()))
                .no_proxy()
                .build()
                .unwrap()
                .register(&request)
                .await
                .map(|a| (a.node.node_id, a.node_token))
                .unwrap()
        })
    }

    /// Sends node `id`'s heartbeat reporting `condition`, as a held agent does.
    fn heartbeat(&self, id: &str, token: &str, condition: &quilt_api::types::NodeCondition) {
        block_on_in(self.ns.name(), async || {
            ControlClient::builder(["http://127.0.0.1:8080"])
                .no_proxy()
                .build()
                .unwrap()
                .heartbeat(id, token, Some(condition))
                .await
                .unwrap();
        });
    }

    fn runtime<T: Send, F>(
        &self,
        f: impl FnOnce(
            quilt_proto::quilt_runtime_client::QuiltRuntimeClient<tonic::transport::Channel>,
        ) -> F
        + Send,
    ) -> T
    where
        F: std::future::Future<Output = T>,
    {
        block_on_in(self.ns.name(), async || {
            let c = quilt_proto::connect::connect(
                quilt_common::defaults::RUNTIME_ADDR,
                Default::default(),
            )
            .await
            .unwrap();
            f(c).await
        })
    }
}

impl Drop for Site {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn stdout(o: &Output) -> String {
    assert!(
        o.status.success(),
        "quiltctl failed ({}): {}{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

const CP: &str = "--control-plane=http://127.0.0.1:8080";

#[test]
fn nodes_status_and_node_delete_against_a_running_control_plane() {
    if !privileged_or_skip("nodes_status_and_node_delete_against_a_running_control_plane") {
        return;
    }
    let bins = daemons();
    let mut site = Site::new();
    site.start_control(&bins);
    let (first, first_token) = site.register("worker-1", "192.168.61.11");
    site.register("worker-2", "192.168.61.12");

    let list: NodeList =
        serde_json::from_str(&stdout(&site.quiltctl(&["nodes", "--json", CP], &[]))).unwrap();
    let names: Vec<&str> = list.nodes.iter().map(|n| n.hostname.as_str()).collect();
    assert_eq!(names, ["worker-1", "worker-2"]);
    assert_eq!(list.nodes[0].subnet.to_string(), "10.42.1.0/24");

    // The table, with the control plane from the environment.
    let table = stdout(&site.quiltctl(
        &["nodes"],
        &[("QUILT_CONTROL_PLANE", "http://127.0.0.1:8080")],
    ));
    let lines: Vec<&str> = table.lines().collect();
    assert!(
        lines[0].starts_with("ID") && lines[0].contains("LAST HEARTBEAT"),
        "{table}"
    );
    assert!(
        lines[1].contains("node-1")
            && lines[1].contains("192.168.61.11")
            && lines[1].contains("up"),
        "{table}"
    );
    let cells: Vec<&str> = lines[1].split_whitespace().collect();
    assert_eq!(cells[cells.len() - 2..], ["ago", "-"], "{table}");

    // A node whose agent reports a condition shows it, and what it means.
    site.heartbeat(
        &first,
        &first_token,
        &quilt_api::types::NodeCondition {
            reason: "SubnetInUse".into(),
            message: "the runtime keeps 10.42.9.0/24".into(),
        },
    );
    let table = stdout(&site.quiltctl(&["nodes", CP], &[]));
    let lines: Vec<&str> = table.lines().collect();
    assert!(lines[0].trim_end().ends_with("CONDITION"), "{table}");
    assert!(lines[1].trim_end().ends_with("SubnetInUse"), "{table}");
    assert!(
        table.contains("node-1 SubnetInUse: the runtime keeps 10.42.9.0/24"),
        "{table}"
    );

    // A control plane that does not answer is skipped for the next one.
    let fallback = site.quiltctl(
        &[
            "nodes",
            "--json",
            "--control-plane",
            "http://127.0.0.1:1,http://127.0.0.1:8080",
        ],
        &[],
    );
    let again: NodeList = serde_json::from_str(&stdout(&fallback)).unwrap();
    assert_eq!(again.nodes.len(), 2);

    let status: serde_json::Value =
        serde_json::from_str(&stdout(&site.quiltctl(&["status", "--json", CP], &[]))).unwrap();
    assert_eq!(status["health"], "ok");
    assert_eq!(status["nodes"]["total"], 2);
    assert_eq!(status["nodes"]["up"], 2);
    assert_eq!(status["leases"]["capacity"], 255);
    assert_eq!(status["leases"]["free"], 253);
    let text = stdout(&site.quiltctl(&["status", CP], &[]));
    assert!(text.contains("2 of 255 used, 253 free"), "{text}");

    // Deleting needs the join token when one is configured.
    let refused = site.quiltctl(&["node", "delete", "node-2", CP], &[]);
    assert!(!refused.status.success());
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(err.contains("401"), "{err}");
    let deleted: NodeInfo = serde_json::from_str(&stdout(&site.quiltctl(
        &["node", "delete", "node-2", "--json", CP],
        &[("QUILT_JOIN_TOKEN", TOKEN)],
    )))
    .unwrap();
    assert_eq!(deleted.hostname, "worker-2");
    let text = stdout(&site.quiltctl(
        &["node", "delete", "node-1", CP, "--join-token", TOKEN],
        &[],
    ));
    assert!(
        text.contains("deleted node-1") && text.contains("10.42.1.0/24 is free"),
        "{text}"
    );
    let list: NodeList =
        serde_json::from_str(&stdout(&site.quiltctl(&["nodes", "--json", CP], &[]))).unwrap();
    assert!(list.nodes.is_empty());

    let unknown = site.quiltctl(
        &["node", "delete", "node-99", CP, "--join-token", TOKEN],
        &[],
    );
    assert!(!unknown.status.success());
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("404"));

    // Nothing listening: a clear error, exit 1.
    let down = site.quiltctl(&["status", "--control-plane", "http://127.0.0.1:9"], &[]);
    assert_eq!(down.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&down.stderr).contains("no control plane answered"));
}

#[test]
fn routes_shows_what_the_runtime_manages_and_what_the_kernel_lost() {
    if !privileged_or_skip("routes_shows_what_the_runtime_manages_and_what_the_kernel_lost") {
        return;
    }
    let bins = daemons();
    let mut site = Site::new();
    site.start_runtime(&bins);
    site.runtime(|mut c| async move {
        let r = c
            .configure_node_subnet(quilt_proto::ConfigureNodeSubnetRequest {
                subnet: "10.42.1.0/24".into(),
            })
            .await
            .unwrap()
            .into_inner();
        assert!(r.success, "{}", r.error);
        for n in [2, 3] {
            let r = c
                .inject_route(quilt_proto::InjectRouteRequest {
                    destination: format!("10.42.{n}.0/24"),
                    via_interface: "vxlan100".into(),
                    gateway: format!("10.42.{n}.0"),
                })
                .await
                .unwrap()
                .into_inner();
            assert!(r.success, "{}", r.error);
        }
    });
    // Someone removes a route behind the runtime's back.
    site.ns.ip(&["route", "del", "10.42.3.0/24"]).unwrap();

    let report: serde_json::Value = serde_json::from_str(&stdout(
        &site.quiltctl(&["routes", "--json", "--runtime", "127.0.0.1:50051"], &[]),
    ))
    .unwrap();
    assert_eq!(report["node_subnet"], "10.42.1.0/24");
    assert_eq!(report["route_protocol"], 158);
    let routes = report["routes"].as_array().unwrap();
    let row = |dest: &str| {
        routes
            .iter()
            .find(|r| r["destination"] == dest)
            .unwrap()
            .clone()
    };
    assert_eq!(routes.len(), 2, "{report}");
    assert_eq!(row("10.42.2.0/24")["in_kernel"], true);
    assert_eq!(row("10.42.2.0/24")["gateway"], "10.42.2.0");
    assert_eq!(row("10.42.3.0/24")["in_kernel"], false);

    // The same over the runtime's unix socket, named as an operator would.
    let socket = format!(
        "unix:{}",
        site.dir.path().join("runtime/runtime.sock").display()
    );
    let table = stdout(&site.quiltctl(&["routes", "--runtime", &socket], &[]));
    assert!(table.contains("node subnet 10.42.1.0/24"), "{table}");
    let missing = table
        .lines()
        .find(|l| l.starts_with("10.42.3.0/24"))
        .unwrap();
    assert!(missing.contains("MISSING"), "{table}");

    let unreachable = site.quiltctl(&["routes", "--runtime", "http://127.0.0.1:9"], &[]);
    assert_eq!(unreachable.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&unreachable.stderr)
            .contains("cannot reach quilt-runtime at http://127.0.0.1:9")
    );
}

#[test]
fn lab_up_refuses_a_clashing_name_and_missing_privileges() {
    if !privileged_or_skip("lab_up_refuses_a_clashing_name_and_missing_privileges") {
        return;
    }
    let bins = daemons();
    let root = tempfile::tempdir().unwrap();
    let name = format!("clash{}", std::process::id());
    let foreign = OwnedNetns::create(&format!("qlab-{name}-h2")).unwrap();
    let out = Command::new(QUILTCTL)
        .args(["lab", "up", "--no-agents", "--name", &name, "--root"])
        .arg(root.path())
        .arg("--bin-dir")
        .arg(&bins)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!(
            "network namespace qlab-{name}-h2 already exists and was not made by lab {name}"
        )),
        "{err}"
    );
    assert!(
        foreign.ip(&["link", "show", "lo"]).is_ok(),
        "the foreign namespace must survive"
    );
    let ours: Vec<String> = std::fs::read_dir("/run/netns")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with(&format!("qlab-{name}-")))
        .collect();
    assert_eq!(ours, vec![format!("qlab-{name}-h2")]);

    // Without root: refused, saying what is needed, before anything is made.
    use std::os::unix::process::CommandExt;
    let out = Command::new(QUILTCTL)
        .args(["lab", "up", "--name", "noroot", "--root"])
        .arg(root.path())
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("needs root") && err.contains("CAP_SYS_ADMIN"),
        "{err}"
    );
}
