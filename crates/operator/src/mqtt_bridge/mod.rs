//! The `MqttBridge` resource and its controller.

mod controller;
pub mod render;
mod scaling;
pub mod spec;

pub use controller::{rollout, run};
pub use spec::MqttBridge;
