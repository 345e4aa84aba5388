//! Generates the `ringway.gateway.v1` types with protox, a pure-Rust protobuf compiler, so a fresh
//! machine builds the gateway without a system `protoc`.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = ["proto/ringway/gateway/v1/gateway.proto"];
    for p in protos {
        println!("cargo:rerun-if-changed={p}");
    }
    let fds = protox::compile(protos, ["proto"])?;
    prost_build::Config::new().bytes(["."]).compile_fds(fds)?;
    Ok(())
}
