//! The `GrpcKafkaRoute` resource and its controller.

mod controller;
pub mod render;
pub mod spec;

pub use controller::run;
pub use spec::GrpcKafkaRoute;
