//! gRPC over Kafka, shared by grpc-kafka and kafka-grpc: the pass-through codec, service
//! descriptions compiled from `.proto` files at run time, the record layout (Zilla's), Kafka
//! clients and metrics.

pub mod codec;
pub mod fetch_id;
/// The body of the fuzz target in `crates/grpc-kafka/fuzz`, also run by `cargo test`.
#[doc(hidden)]
pub mod fuzzing;
pub mod metrics;
pub mod protos;
pub mod wire;
