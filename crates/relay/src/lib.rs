//! The MqttRelay protocol (`proto/strait/mqtt/v1/relay.proto`): one bidirectional gRPC stream per
//! MQTT client session between r-proxy and s-proxy: both ends of the stream ([`stream`]), and the
//! conversion of its packets from and to the MQTT codec's ([`convert`]).

pub mod codec;
pub mod convert;
/// The bodies of the fuzz targets in `crates/relay/fuzz`, also run by `cargo test`.
#[doc(hidden)]
pub mod fuzzing;
pub mod metrics;
pub mod opening;
pub mod rules;
pub mod stream;
pub mod topics;

pub use convert::{ConvertError, ErrorKind};
pub use opening::Opening;
pub use stream::{Incoming, RelayServer, SessionHandler, open_session};

/// Generated protobuf types of `strait.mqtt.v1`.
pub mod v1 {
    tonic::include_proto!("strait.mqtt.v1");
}
