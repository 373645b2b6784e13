//! Compiles proto/strait/mqtt/v1/relay.proto with protox (pure Rust: no protoc to install).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let proto_root = "../../proto";
    let file = "strait/mqtt/v1/relay.proto";
    println!("cargo:rerun-if-changed={proto_root}/{file}");
    let descriptors = protox::compile([file], [proto_root])?;
    tonic_prost_build::configure()
        .bytes(".")
        // Keeps ClientFrame small: it sits in every session's bounded channel.
        .boxed(".strait.mqtt.v1.ClientFrame.open")
        // Keeps Packet (a batch holds hundreds) as small as PUBLISH, the packet that matters.
        .boxed(".strait.mqtt.v1.Packet.packet.connect")
        .boxed(".strait.mqtt.v1.Packet.packet.connack")
        // Both ends of the stream are in crate::stream, which reads frames without tonic's copy.
        .build_client(false)
        .build_server(false)
        .compile_fds(descriptors)?;
    Ok(())
}
