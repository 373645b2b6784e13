//! TLS settings as file paths: certificates and keys are read from files only (in Kubernetes, a
//! mounted Secret), never from flags or environment values, so they stay out of process listings
//! and logs.

use std::path::PathBuf;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::ConfigError;

/// A server's certificate and key, and optionally the CA that client certificates must chain to
/// (mutual TLS).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ServerTls {
    /// PEM certificate chain served to clients.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert: Option<PathBuf>,
    /// PEM private key of `cert`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<PathBuf>,
    /// PEM CA bundle; when set, clients must present a certificate signed by it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_ca: Option<PathBuf>,
}

impl ServerTls {
    pub fn is_enabled(&self) -> bool {
        self.cert.is_some()
    }

    /// `field` names this block in errors, e.g. `tls`.
    pub fn check(&self, field: &'static str) -> Result<(), ConfigError> {
        match (&self.cert, &self.key, &self.client_ca) {
            (Some(_), None, _) => Err(ConfigError::invalid(field, "cert is set but key is not")),
            (None, Some(_), _) => Err(ConfigError::invalid(field, "key is set but cert is not")),
            (None, None, Some(_)) => Err(ConfigError::invalid(
                field,
                "clientCa needs cert and key (client certificates are checked only over TLS)",
            )),
            _ => Ok(()),
        }
    }
}

/// A client's TLS settings: the CA it trusts and optionally its own certificate (mutual TLS).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClientTls {
    /// PEM CA bundle the server's certificate must chain to. Strait never silently falls back to
    /// the system roots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<PathBuf>,
    /// PEM client certificate presented to the server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert: Option<PathBuf>,
    /// PEM private key of `cert`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<PathBuf>,
}

impl ClientTls {
    pub fn check(&self, field: &'static str) -> Result<(), ConfigError> {
        match (&self.cert, &self.key) {
            (Some(_), None) => Err(ConfigError::invalid(field, "cert is set but key is not")),
            (None, Some(_)) => Err(ConfigError::invalid(field, "key is set but cert is not")),
            (Some(_), Some(_)) if self.ca.is_none() => Err(ConfigError::invalid(
                field,
                "a client certificate is only sent over TLS: set ca as well",
            )),
            _ => Ok(()),
        }
    }
}
