//! Generates the protobuf and gRPC types with protox, a pure-Rust protobuf compiler, so a fresh
//! machine builds the gateway without a system `protoc`; and records the git commit built.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protos = [
        "proto/ringway/gateway/v1/gateway.proto",
        "proto/ringway/backend/v1/backend.proto",
    ];
    for p in protos {
        println!("cargo:rerun-if-changed={p}");
    }
    // The commit built, for `--version` and `ringway_build_info`; "unknown" outside a git
    // checkout (a source tarball).
    let sha = std::process::Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=RINGWAY_GIT_SHA={sha}");
    println!("cargo:rerun-if-changed=.git/HEAD");
    println!("cargo:rerun-if-changed=.git/refs/heads");
    let fds = protox::compile(protos, ["proto"])?;
    let mut config = prost_build::Config::new();
    config.bytes(["."]);
    tonic_prost_build::configure().compile_fds_with_config(fds, config)?;
    Ok(())
}
