//! The quilt-cni binary: a container engine runs it with the CNI_* environment and the
//! network configuration on stdin; the answer (result or error JSON) goes to stdout.

use std::io::{Read, Write};

fn main() {
    let mut stdin = Vec::new();
    let env = quilt_cni::Env::from_process();
    let outcome = match std::io::stdin().read_to_end(&mut stdin) {
        Ok(_) => quilt_cni::run(&env, &stdin),
        Err(e) => Err(quilt_cni::CniError::new(
            quilt_cni::code::IO_FAILURE,
            format!("cannot read stdin: {e}"),
        )),
    };
    let mut stdout = std::io::stdout().lock();
    let status = match outcome {
        Ok(Some(answer)) => {
            let _ = writeln!(stdout, "{answer}");
            0
        }
        Ok(None) => 0,
        Err(error) => {
            let _ = writeln!(
                stdout,
                "{}",
                error.to_json(&quilt_cni::requested_version(&stdin))
            );
            1
        }
    };
    let _ = stdout.flush();
    std::process::exit(status);
}
