//! The quiltctl binary: flags, logging, then [`quiltctl::run`].

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = quiltctl::cli::Cli::parse();
    quilt_common::logging::init(&cli.log_level);
    match quiltctl::run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("quiltctl: {e:#}");
            ExitCode::FAILURE
        }
    }
}
