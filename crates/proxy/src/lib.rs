//! Strait's data plane. Each role is a module with an `Args` struct (its CLI) and a `run`;
//! the `strait-proxy` binary only picks the role.

pub mod auth;
pub mod batch;
pub mod cli;
pub mod dev;
pub mod drain;
pub mod net;
pub mod rproxy;
pub mod sproxy;
