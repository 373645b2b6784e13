//! The `MqttBridge` resource and its controller.

mod controller;
pub mod render;
pub mod spec;

pub use controller::{rollout, run};
pub use spec::MqttBridge;
