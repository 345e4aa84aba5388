//! Generates the protobuf and gRPC types with protox, a pure-Rust protobuf compiler, so a fresh
//! machine builds the gateway without a system `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "proto/ringway/gateway/v1/gateway.proto",
        "proto/ringway/backend/v1/backend.proto",
    ];
    for p in protos {
        println!("cargo:rerun-if-changed={p}");
    }
    let fds = protox::compile(protos, ["proto"])?;
    let mut config = prost_build::Config::new();
    config.bytes(["."]);
    tonic_prost_build::configure().compile_fds_with_config(fds, config)?;
    Ok(())
}
