//! Compiles `stoa/v1/*.proto` with protox (pure Rust, no `protoc`), then
//! generates the prost types, the tonic services, proto3-JSON serde impls
//! (pbjson) and the descriptor set that server reflection serves.

use prost::Message as _;

const FILES: &[&str] = &[
    "stoa/v1/config.proto",
    "stoa/v1/discovery.proto",
    "stoa/v1/admin.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    for f in FILES {
        println!("cargo:rerun-if-changed={f}");
    }
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    let fds = protox::compile(FILES, ["."])?;
    let bytes = fds.encode_to_vec();
    std::fs::write(out.join("stoa_descriptor.bin"), &bytes)?;
    tonic_prost_build::configure()
        .build_server(true)
        .build_client(true)
        .compile_fds(fds)?;
    pbjson_build::Builder::new()
        .register_descriptors(&bytes)?
        .build(&[".stoa.v1"])?;
    Ok(())
}
