//! Compiles the gRPC services' .proto files with protox (no system protoc) and generates
//! their prost messages and tonic service code into OUT_DIR.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto");
    let files = protox::compile(["kiseki/keys/v1/keys.proto"], ["proto"])?;
    tonic_prost_build::configure().build_transport(false).compile_fds(files)?;
    Ok(())
}
