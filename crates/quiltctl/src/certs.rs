//! `quiltctl certs init|issue`: the cluster's CA and certificates, through
//! [`quilt_lab::pki`].

use std::process::ExitCode;

use quilt_lab::pki::{self, Issued, Subject};
use serde::Serialize;

use crate::cli::CertsCommand;

/// What `--json` prints.
#[derive(Serialize)]
struct Written<'a> {
    cert: &'a std::path::Path,
    key: &'a std::path::Path,
    not_after: &'a str,
}

pub fn run(command: CertsCommand, json: bool) -> anyhow::Result<ExitCode> {
    let (what, issued) = match command {
        CertsCommand::Init { dir, days, force } => ("CA", pki::init(&dir, days, force)?),
        CertsCommand::Issue {
            dir,
            name,
            ips,
            dns,
            days,
            force,
        } => {
            let subject = Subject {
                name,
                ips,
                dns,
                days,
            };
            ("certificate", pki::issue(&dir, &subject, force)?)
        }
    };
    print(what, &issued, json)?;
    Ok(ExitCode::SUCCESS)
}

fn print(what: &str, issued: &Issued, json: bool) -> anyhow::Result<()> {
    if json {
        let written = Written {
            cert: &issued.cert,
            key: &issued.key,
            not_after: &issued.not_after,
        };
        println!("{}", serde_json::to_string_pretty(&written)?);
    } else {
        println!(
            "{what} {} (key {}, 0600), valid until {}",
            issued.cert.display(),
            issued.key.display(),
            issued.not_after
        );
    }
    Ok(())
}
