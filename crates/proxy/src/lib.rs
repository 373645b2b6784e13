//! Strait's data plane binary: `main.rs` picks the role, `cli` holds every role's command line
//! and how it is laid over the role's config file, and `dev` runs every role in one process.
//! The roles live in their own crates (strait-mqtt-relay, strait-mqtt-kafka, strait-grpc-kafka).

pub mod cli;
pub mod demo;
pub mod dev;
