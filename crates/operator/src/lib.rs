//! Strait's control plane: the custom resources, their controllers and the autoscaler. The
//! `strait-operator` binary (src/main.rs) is a thin shell around this library.

pub mod autoscale;
pub mod context;
pub mod crd;
pub mod deletion;
pub mod grpc_route;
pub mod hpa;
pub mod kafka;
pub mod kafka_access;
pub mod leader;
pub mod monitoring;
pub mod mqtt_bridge;
pub mod pod_load;
pub mod relay_pki;
pub mod status;
pub mod topics;
pub mod workload;

/// The one field manager for everything the operator applies.
pub const FIELD_MANAGER: &str = "strait-operator";
