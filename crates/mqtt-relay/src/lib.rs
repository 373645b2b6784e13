//! The MQTT relay: r-proxy (the MQTT server clients connect to, relaying each session to
//! s-proxy as one gRPC stream) and s-proxy (the gRPC end, driving an upstream per session: a
//! real MQTT broker here, or Kafka through strait-mqtt-kafka), with what they need: JWT
//! authentication of clients (`auth`), packet batching (`batch`), the drain of slow broker
//! reads (`drain`) and boxed byte streams (`net`).

pub mod auth;
pub mod batch;
pub mod drain;
pub mod net;
pub mod rproxy;
pub mod sproxy;
