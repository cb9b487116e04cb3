//! quiltctl, the Quilt Mesh operator CLI.
//!
//! - [`cli`]: the flags and commands.
//! - [`operator`]: `nodes`, `node delete`, `routes`, `status` against real daemons.
//! - [`lab`]: `lab up|status|exec|down|agent` on top of the `quilt-lab` library.
//! - [`mod@bench`]: `bench runtime|control|cni|convergence|dataplane`.
//! - [`certs`]: `certs init|issue`, the cluster's CA.
//! - [`table`]: plain aligned text tables.

pub mod bench;
pub mod certs;
pub mod cli;
pub mod lab;
pub mod operator;
pub mod table;

use std::process::ExitCode;

use cli::{Cli, Command};

/// Runs one command; answers the exit code (errors become exit code 1 in `main`).
pub fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let global = operator::Global {
        control_planes: cli.control_plane,
        join_token: cli.join_token,
        control_tls: cli.control_tls_ca.map(|ca| quilt_api::ClientTls {
            ca,
            identity: cli
                .control_tls_cert
                .zip(cli.control_tls_key)
                .map(|(cert, key)| quilt_tls::Identity { cert, key }),
        }),
        json: cli.json,
    };
    match cli.command {
        Command::Lab { command } => lab::run(command, global.json),
        Command::Bench { command } => bench::run(command, global.json),
        Command::Certs { command } => certs::run(command, global.json),
        Command::Operator(command) => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(operator::run(command, &global))
        }
    }
}
