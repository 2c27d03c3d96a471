//! Compiles the gRPC services' .proto files with protox (no system protoc), generates
//! their prost messages and tonic service code into OUT_DIR, and writes the encoded
//! file descriptor set (`kiseki_descriptor.bin`) that the server reflection service
//! answers from.

use prost::Message;

/// Every service file, relative to `proto/`.
const FILES: [&str; 5] = [
    "kiseki/keys/v1/keys.proto",
    "kiseki/data/v1/data.proto",
    "kiseki/admin/v1/admin.proto",
    "kiseki/control/v1/control.proto",
    "kiseki/audit/v1/audit.proto",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let files = protox::compile(FILES, ["proto"])?;
    let out_dir = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    std::fs::write(out_dir.join("kiseki_descriptor.bin"), files.encode_to_vec())?;
    tonic_prost_build::configure().build_transport(false).compile_fds(files)?;
    Ok(())
}
