//! The MqttRelay protocol (`proto/strait/mqtt/v1/relay.proto`): one bidirectional gRPC stream per
//! MQTT client session between r-proxy and s-proxy, and the conversion of its packets from and to
//! the MQTT codec's ([`convert`]).

pub mod codec;
pub mod convert;

pub use convert::{ConvertError, ErrorKind};

/// Generated protobuf types and the tonic client and server for `strait.mqtt.v1`.
pub mod v1 {
    tonic::include_proto!("strait.mqtt.v1");
}
