//! Compiles the test service of the gRPC-over-Kafka tests (tests/proto) with protox (no protoc);
//! only the integration tests include the generated code.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let root = "tests/proto";
    let file = "strait/test/v1/echo.proto";
    println!("cargo:rerun-if-changed={root}/{file}");
    let descriptors = protox::compile([file], [root])?;
    tonic_prost_build::configure().compile_fds(descriptors)?;
    Ok(())
}
