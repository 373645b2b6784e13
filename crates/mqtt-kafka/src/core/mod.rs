//! The sans-IO part of MQTT on Kafka: no sockets, no Kafka clients, no clocks of its own, so
//! everything here is tested with plain unit tests.

pub mod catch_up;
pub mod ending;
pub mod exactly_once;
pub mod flows;
/// The bodies of the fuzz targets in `crates/mqtt-kafka/fuzz`, also run by `cargo test`.
#[doc(hidden)]
pub mod fuzzing;
pub mod headers;
pub mod limits;
pub mod members;
pub mod progress;
pub mod queue;
pub mod redelivery;
pub mod routing;
pub mod shared;
pub mod state;
pub mod subscriptions;
pub mod trie;
