//! Compiles the etcd v3 API subset in `proto/` with protox (pure Rust, no system `protoc`)
//! into a gRPC client.

use std::path::PathBuf;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto_dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("proto");
    for file in ["rpc.proto", "mvcc.proto"] {
        println!("cargo:rerun-if-changed={}", proto_dir.join(file).display());
    }
    let descriptors = protox::compile([proto_dir.join("rpc.proto")], [&proto_dir])?;
    tonic_prost_build::configure()
        .build_server(false)
        .compile_fds(descriptors)?;
    Ok(())
}
