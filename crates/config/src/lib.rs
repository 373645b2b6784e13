//! Strait's configuration types. Each proxy role has one Rust type that is at once the shape of
//! its YAML config file, the source of its defaults and the place its rules are checked, so the
//! operator renders exactly what the proxy reads. Field names are camelCase, as in Kubernetes.

pub mod auth;
pub mod grpc;
pub mod kafka;
pub mod mqtt_kafka;
pub mod relay;
pub mod session_limits;
pub mod tls;

use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;

pub use grpc::{GrpcKafkaConfig, KafkaGrpcConfig};
pub use kafka::KafkaConnection;
pub use relay::{RProxyConfig, SProxyConfig};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    // The underlying errors are part of the message rather than a `source`, so a report shows
    // them once (the YAML parser's already quotes the offending line and column).
    #[error("cannot read config file {path}: {error}")]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("invalid config file {path}: {error}")]
    Parse {
        path: PathBuf,
        error: Box<serde_saphyr::Error>,
    },
    #[error("invalid config: {field}: {reason}")]
    Invalid { field: &'static str, reason: String },
}

impl ConfigError {
    pub fn invalid(field: &'static str, reason: impl Into<String>) -> Self {
        Self::Invalid {
            field,
            reason: reason.into(),
        }
    }
}

/// A config whose rules go beyond what its types express.
pub trait Validate {
    fn validate(&self) -> Result<(), ConfigError>;
}

/// Reads a YAML config file; unknown fields are errors (a typo never silently means a default).
pub fn load<T: DeserializeOwned>(path: &Path) -> Result<T, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|error| ConfigError::Read {
        path: path.into(),
        error,
    })?;
    serde_saphyr::from_str(&text).map_err(|error| ConfigError::Parse {
        path: path.into(),
        error: Box::new(error),
    })
}

/// Renders a config as YAML (what the operator writes into a ConfigMap).
pub fn to_yaml<T: serde::Serialize>(config: &T) -> String {
    serde_saphyr::to_string(config).expect("config types always serialize")
}
