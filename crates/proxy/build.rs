//! Compiles with protox (no protoc): the demo service `strait-proxy dev` serves
//! (proto/strait/demo/v1/echo.proto), and the test service of the gRPC-over-Kafka tests
//! (tests/proto), which only the integration tests include.

fn main() -> Result<(), Box<dyn std::error::Error>> {
    for (root, file) in [
        ("../../proto", "strait/demo/v1/echo.proto"),
        ("tests/proto", "strait/test/v1/echo.proto"),
    ] {
        println!("cargo:rerun-if-changed={root}/{file}");
        let descriptors = protox::compile([file], [root])?;
        tonic_prost_build::configure().compile_fds(descriptors)?;
    }
    Ok(())
}
