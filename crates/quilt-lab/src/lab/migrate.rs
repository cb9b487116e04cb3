//! Moving a running lab's control plane from SQLite to etcd, as an operator would move a
//! real cluster: stop the SQLite server, start etcd members, `quilt-mesh-control migrate`,
//! then start the replicas over etcd. The agents are not touched: they carry on through
//! the URL they have (replica 1 listens where the SQLite server did).

use std::time::Duration;

use super::Lab;
use super::daemons::{issue_control_certificate, start_etcd_of, stop_control_of};
use super::spec::{CONTROL_BIN, MAX_CONTROL_REPLICAS};
use crate::LabError;
use crate::process;

impl Lab {
    /// Moves the control plane to `replicas` replicas (2 or more) over an etcd cluster of
    /// as many members (on hosts 1..=replicas), keeping every node, lease and token;
    /// answers what `migrate` printed.
    pub fn migrate_to_etcd(&mut self, replicas: u16) -> Result<String, LabError> {
        let what = format!("migrate the lab to {replicas} replicas over etcd");
        if self.state.uses_etcd() {
            return Err(LabError::setup(what, "the lab already runs over etcd"));
        }
        if replicas < 2 || replicas > self.state.nodes || replicas > MAX_CONTROL_REPLICAS {
            return Err(LabError::setup(
                what,
                format!(
                    "replicas over etcd run one per host, with an etcd member each: between 2 and the lab's {} hosts (at most {MAX_CONTROL_REPLICAS})",
                    self.state.nodes
                ),
            ));
        }
        stop_control_of(&mut self.state, 1, &mut self.children)?;
        self.state.control_replicas = replicas;
        let members: Vec<u16> = self.state.replica_hosts().map(|h| h.index).collect();
        self.state.save()?;
        for &host in &members {
            let child = start_etcd_of(&mut self.state, host)?;
            self.children.push(child);
        }
        self.wait_etcd_serving(Duration::from_secs(30))?;
        let database = self
            .state
            .dir
            .join("data")
            .join("control")
            .join("control.db");
        let h1 = self.state.hosts[0].netns.clone();
        let mut command = process::command_in(&h1, self.state.binaries_dir.join(CONTROL_BIN));
        command
            .arg("migrate")
            .arg("--from")
            .arg(format!("sqlite:{}", database.display()))
            .arg("--to")
            .arg(format!("etcd:{}", self.state.etcd_endpoints().join(",")));
        let output = process::run_bounded(command, None, Duration::from_secs(60))
            .map_err(|e| LabError::setup("run quilt-mesh-control migrate", e))?;
        if !output.status.success() {
            return Err(LabError::setup(
                "run quilt-mesh-control migrate",
                format!("{}{}", output.stdout, output.stderr),
            ));
        }
        issue_control_certificate(&self.state)?;
        for &host in &members {
            self.launch_control(host)?;
        }
        Ok(output.stdout.trim().to_string())
    }
}
