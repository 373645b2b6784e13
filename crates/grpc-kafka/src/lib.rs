//! gRPC over Kafka: `grpc` (what both roles share: the pass-through codec, service descriptions
//! compiled from `.proto` files at run time, Zilla's record layout, fetch message ids, metrics),
//! `grpckafka` (the gRPC server that turns calls into request records and answers them from
//! reply records) and `kafkagrpc` (the group consumer that calls the real service and writes
//! the replies). Their Kafka clients come from strait-kafka.

pub mod grpc;
pub mod grpckafka;
pub mod kafkagrpc;
