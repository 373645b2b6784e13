//! gRPC over Kafka: `grpc` (what both roles share: the pass-through codec, service descriptions
//! compiled from `.proto` files at run time, Zilla's record layout, fetch message ids, metrics),
//! `grpckafka` (the gRPC server that turns calls into request records and answers them from
//! reply records) and `kafkagrpc` (the group consumer that calls the real service and writes
//! the replies). Their Kafka clients come from strait-kafka.

pub mod grpc;
pub mod grpckafka;
pub mod kafkagrpc;

use std::net::SocketAddr;
use std::path::PathBuf;

/// Why grpc-kafka or kafka-grpc could not start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum RoleError {
    #[error(transparent)]
    Kafka(#[from] strait_kafka::KafkaClientError),
    #[error("protos")]
    Protos(#[source] grpc::protos::ProtoError),
    #[error("tls")]
    Tls(#[source] strait_tls::TlsError),
    #[error("auth.jwt")]
    Jwt(#[source] strait_jwt::KeyFileError),
    #[error("listen: cannot bind {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("listener address")]
    LocalAddr(#[source] std::io::Error),
    #[error("registering metrics")]
    Metrics(#[from] prometheus::Error),
    #[error("target")]
    Target(#[source] tonic::transport::Error),
    #[error("target: targetTls.{field}: cannot read {}", path.display())]
    TargetTls {
        field: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot start a thread")]
    Thread(#[source] std::io::Error),
    #[error("cannot subscribe to {topics:?}")]
    Subscribe {
        topics: Vec<String>,
        #[source]
        source: rdkafka::error::KafkaError,
    },
}
