//! TLS and SASL towards Kafka, as both resources declare them: Kubernetes Secrets instead of the
//! proxies' files. The operator reads the Secrets for its own admin and lag clients (PEM and
//! password in memory, never logged) and mounts them into the proxies' pods, whose configs name
//! the mounted files.

use std::path::PathBuf;

use k8s_openapi::api::core::v1::Secret;
use kube::KubeSchema;
use kube::api::Api;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use strait_config::kafka::{KafkaConnection, KafkaSasl, KafkaTls, SaslMechanism};
use strait_kafka::{Advice, KafkaClients, KafkaReport};

use crate::context::ReconcileError;

const TLS_DIR: &str = "/etc/strait/kafka/tls";
const SASL_DIR: &str = "/etc/strait/kafka/sasl";

/// TLS to the brokers. The Secret holds `ca.crt`, and `tls.crt` with `tls.key` for mutual TLS.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct KafkaTlsSpec {
    #[schemars(length(min = 1, max = 253))]
    pub secret_name: String,
    /// Check that each broker's certificate names the host it was reached at.
    #[serde(default = "yes")]
    pub verify_hostname: bool,
}

/// SASL (PLAIN, SCRAM-SHA-256, SCRAM-SHA-512) towards the brokers.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct KafkaSaslSpec {
    pub mechanism: SaslMechanism,
    #[schemars(length(min = 1))]
    pub username: String,
    /// The Secret key holding the password.
    pub password_secret: PasswordSecretRef,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct PasswordSecretRef {
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    #[serde(default = "password_key")]
    pub key: String,
}

fn yes() -> bool {
    true
}
fn password_key() -> String {
    "password".into()
}

/// What a resource says about reaching its Kafka, and the field path it says it under.
#[derive(Clone, Copy)]
pub struct KafkaRef<'a> {
    pub bootstrap: &'a str,
    pub tls: Option<&'a KafkaTlsSpec>,
    pub sasl: Option<&'a KafkaSaslSpec>,
    /// `spec.kafka` or `spec.upstream.kafka`, for errors.
    pub field: &'static str,
}

/// How the operator's own clients reach a resource's Kafka, Secrets read.
#[derive(Clone, PartialEq, Eq)]
pub struct KafkaAccess {
    pub bootstrap: String,
    tls: Option<(TlsPem, bool)>,
    sasl: Option<(SaslMechanism, String, String)>,
}

#[derive(Clone, PartialEq, Eq)]
struct TlsPem {
    ca: String,
    cert_and_key: Option<(String, String)>,
}

/// Never prints key material or the password.
impl std::fmt::Debug for KafkaAccess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaAccess")
            .field("bootstrap", &self.bootstrap)
            .field("tls", &self.tls.is_some())
            .field("sasl", &self.sasl.as_ref().map(|(m, user, _)| (m, user)))
            .finish()
    }
}

impl KafkaRef<'_> {
    /// Every Secret this names, with the field that names it.
    pub fn secrets(&self) -> Vec<(String, String)> {
        let mut secrets = Vec::new();
        if let Some(tls) = self.tls {
            secrets.push((
                tls.secret_name.clone(),
                format!("{}.tls.secretName", self.field),
            ));
        }
        if let Some(sasl) = self.sasl {
            secrets.push((
                sasl.password_secret.name.clone(),
                format!("{}.sasl.passwordSecret.name", self.field),
            ));
        }
        secrets
    }

    /// Reads the Secrets: missing ones or keys are errors naming the field.
    pub async fn resolve(&self, secrets: &Api<Secret>) -> Result<KafkaAccess, ReconcileError> {
        let mut access = KafkaAccess {
            bootstrap: self.bootstrap.to_string(),
            tls: None,
            sasl: None,
        };
        if let Some(tls) = self.tls {
            let field = format!("{}.tls.secretName", self.field);
            let secret = get_secret(secrets, &tls.secret_name, &field).await?;
            let ca = key(&secret, &tls.secret_name, "ca.crt")?;
            let cert_and_key = match (text(&secret, "tls.crt"), text(&secret, "tls.key")) {
                (Some(cert), Some(key)) => Some((cert, key)),
                _ => None,
            };
            access.tls = Some((TlsPem { ca, cert_and_key }, tls.verify_hostname));
        }
        if let Some(sasl) = self.sasl {
            let field = format!("{}.sasl.passwordSecret.name", self.field);
            let name = &sasl.password_secret.name;
            let secret = get_secret(secrets, name, &field).await?;
            let password = key(&secret, name, &sasl.password_secret.key)?;
            let password = password.strip_suffix('\n').unwrap_or(&password).to_string();
            access.sasl = Some((sasl.mechanism, sasl.username.clone(), password));
        }
        Ok(access)
    }

    /// The proxies' connection settings: the same Secrets, as files of their mounts.
    pub fn connection(&self, client_cert: bool) -> KafkaConnection {
        let mut connection = KafkaConnection::new(self.bootstrap);
        connection.tls = self.tls.map(|tls| KafkaTls {
            ca: Some(PathBuf::from(format!("{TLS_DIR}/ca.crt"))),
            cert: client_cert.then(|| format!("{TLS_DIR}/tls.crt").into()),
            key: client_cert.then(|| format!("{TLS_DIR}/tls.key").into()),
            verify_hostname: tls.verify_hostname,
        });
        connection.sasl = self.sasl.map(|sasl| KafkaSasl {
            mechanism: sasl.mechanism,
            username: sasl.username.clone(),
            password_file: format!("{SASL_DIR}/{}", sasl.password_secret.key).into(),
        });
        connection
    }

    /// Pod volumes and mounts for [`KafkaRef::connection`]'s files (whole Secrets, so rotated
    /// credentials reach running pods).
    pub fn volumes(&self) -> (Vec<Value>, Vec<Value>) {
        let mut volumes = Vec::new();
        let mut mounts = Vec::new();
        let mut add = |name: &str, secret: &str, dir: &str| {
            volumes.push(json!({"name": name, "secret": {"secretName": secret}}));
            mounts.push(json!({"name": name, "mountPath": dir, "readOnly": true}));
        };
        if let Some(tls) = self.tls {
            add("kafka-tls", &tls.secret_name, TLS_DIR);
        }
        if let Some(sasl) = self.sasl {
            add("kafka-sasl", &sasl.password_secret.name, SASL_DIR);
        }
        (volumes, mounts)
    }
}

impl KafkaAccess {
    /// No TLS, no SASL.
    pub fn plaintext(bootstrap: impl Into<String>) -> Self {
        Self {
            bootstrap: bootstrap.into(),
            tls: None,
            sasl: None,
        }
    }

    /// `self` with SASL/SCRAM credentials, for tests that need two passwords.
    #[cfg(test)]
    pub(crate) fn with_scram_password(mut self, password: &str) -> Self {
        self.sasl = Some((SaslMechanism::ScramSha512, "strait".into(), password.into()));
        self
    }

    /// Whether the TLS Secret carries a client certificate (mutual TLS).
    pub fn client_cert(&self) -> bool {
        self.tls
            .as_ref()
            .is_some_and(|(pem, _)| pem.cert_and_key.is_some())
    }

    /// The operator's own clients of this cluster (made by strait-kafka, reporting failures
    /// in words that point at the resource's Secrets).
    pub fn clients(&self) -> KafkaClients {
        let protocol = match (&self.tls, &self.sasl) {
            (None, None) => "PLAINTEXT",
            (Some(_), None) => "SSL",
            (None, Some(_)) => "SASL_PLAINTEXT",
            (Some(_), Some(_)) => "SASL_SSL",
        };
        let mut properties = vec![
            ("bootstrap.servers", self.bootstrap.as_str()),
            ("security.protocol", protocol),
        ];
        if let Some((pem, verify_hostname)) = &self.tls {
            properties.push(("ssl.ca.pem", &pem.ca));
            if let Some((cert, key)) = &pem.cert_and_key {
                properties.push(("ssl.certificate.pem", cert));
                properties.push(("ssl.key.pem", key));
            }
            properties.push((
                "ssl.endpoint.identification.algorithm",
                if *verify_hostname { "https" } else { "none" },
            ));
        }
        if let Some((mechanism, username, password)) = &self.sasl {
            properties.push(("sasl.mechanism", mechanism.as_str()));
            properties.push(("sasl.username", username));
            properties.push(("sasl.password", password));
        }
        let report = KafkaReport::with_advice(
            &self.bootstrap,
            protocol,
            self.sasl
                .as_ref()
                .map(|(mechanism, username, _)| (mechanism.as_str(), username.as_str())),
            Advice {
                sasl: "the resource's kafka.sasl (user name, the password in its Secret, \
                       mechanism enabled on the brokers)"
                    .into(),
                ca: "ca.crt of the resource's kafka.tls Secret".into(),
            },
        );
        KafkaClients::from_properties(properties, report)
    }

    /// Identifies the settings (a hash: credentials never become a map key in the clear).
    pub fn cache_key(&self) -> String {
        let mut digest = Sha256::new();
        digest.update(self.bootstrap.as_bytes());
        if let Some((pem, verify)) = &self.tls {
            digest.update([1, u8::from(*verify)]);
            digest.update(pem.ca.as_bytes());
            if let Some((cert, key)) = &pem.cert_and_key {
                digest.update(cert.as_bytes());
                digest.update(key.as_bytes());
            }
        }
        if let Some((mechanism, username, password)) = &self.sasl {
            digest.update([2]);
            digest.update(mechanism.as_str().as_bytes());
            digest.update([0]);
            digest.update(username.as_bytes());
            digest.update([0]);
            digest.update(password.as_bytes());
        }
        digest
            .finalize()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect()
    }
}

/// The Secret `name`, or [`ReconcileError::MissingSecret`] naming the spec `field` that refers
/// to it.
pub(crate) async fn get_secret(
    secrets: &Api<Secret>,
    name: &str,
    field: &str,
) -> Result<Secret, ReconcileError> {
    secrets
        .get_opt(name)
        .await?
        .ok_or_else(|| ReconcileError::MissingSecret {
            name: name.into(),
            field: field.into(),
        })
}

/// Whether the Secret holds every one of `keys`.
pub(crate) fn has_keys(secret: &Secret, keys: &[&str]) -> bool {
    let data = secret.data.as_ref();
    keys.iter()
        .all(|k| data.is_some_and(|d| d.contains_key(*k)))
}

/// [`ReconcileError::SecretKeys`] naming the keys when the Secret lacks any of them.
pub(crate) fn require_keys(
    secret: &Secret,
    name: &str,
    keys: &[&str],
) -> Result<(), ReconcileError> {
    if has_keys(secret, keys) {
        return Ok(());
    }
    Err(ReconcileError::SecretKeys {
        name: name.into(),
        keys: keys.join(", "),
    })
}

fn text(secret: &Secret, key: &str) -> Option<String> {
    let bytes = secret.data.as_ref()?.get(key)?;
    String::from_utf8(bytes.0.clone()).ok()
}

fn key(secret: &Secret, name: &str, key: &str) -> Result<String, ReconcileError> {
    text(secret, key).ok_or_else(|| ReconcileError::SecretKeys {
        name: name.into(),
        keys: key.into(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn access(password: &str) -> KafkaAccess {
        KafkaAccess {
            bootstrap: "k:9093".into(),
            tls: Some((
                TlsPem {
                    ca: "CA".into(),
                    cert_and_key: None,
                },
                true,
            )),
            sasl: Some((SaslMechanism::ScramSha512, "strait".into(), password.into())),
        }
    }

    #[test]
    fn operator_clients_speak_sasl_ssl_and_never_print_the_password() {
        let access = access("s3cret");
        let config = access.clients();
        assert_eq!(config.get("security.protocol"), Some("SASL_SSL"));
        assert_eq!(config.get("sasl.mechanism"), Some("SCRAM-SHA-512"));
        assert_eq!(config.get("ssl.ca.pem"), Some("CA"));
        assert!(!format!("{access:?}").contains("s3cret"));
        assert!(!access.cache_key().contains("s3cret"));
        assert_ne!(access.cache_key(), self::access("other").cache_key());
    }

    #[test]
    fn operator_client_failures_point_at_the_resources_secrets() {
        let report = access("s3cret").clients().report().clone();
        report.report(
            &rdkafka::error::KafkaError::Global(rdkafka::types::RDKafkaErrorCode::Authentication),
            "SASL authentication error: Authentication failed",
        );
        let logged = report.last_problem().unwrap();
        assert!(
            logged.starts_with(
                "Kafka authentication failed at k:9093 (SASL_SSL, SASL SCRAM-SHA-512 as \"strait\"): \
                 check the resource's kafka.sasl"
            ),
            "{logged}"
        );
        assert!(!logged.contains("s3cret"), "{logged}");
        report.report(
            &rdkafka::error::KafkaError::Global(rdkafka::types::RDKafkaErrorCode::SSL),
            "SSL handshake failed: certificate verify failed",
        );
        let logged = report.last_problem().unwrap();
        assert!(
            logged.contains("does not chain to ca.crt of the resource's kafka.tls Secret"),
            "{logged}"
        );
    }

    #[test]
    fn proxies_get_the_mounted_files() {
        let tls = KafkaTlsSpec {
            secret_name: "kafka-ca".into(),
            verify_hostname: true,
        };
        let sasl = KafkaSaslSpec {
            mechanism: SaslMechanism::Plain,
            username: "strait".into(),
            password_secret: PasswordSecretRef {
                name: "kafka-user".into(),
                key: password_key(),
            },
        };
        let kafka = KafkaRef {
            bootstrap: "k:9093",
            tls: Some(&tls),
            sasl: Some(&sasl),
            field: "spec.kafka",
        };
        let connection = kafka.connection(false);
        let files = connection.tls.as_ref().unwrap();
        assert_eq!(
            files.ca.as_deref(),
            Some(std::path::Path::new("/etc/strait/kafka/tls/ca.crt"))
        );
        assert_eq!(files.cert, None);
        assert_eq!(
            connection.sasl.unwrap().password_file,
            PathBuf::from("/etc/strait/kafka/sasl/password")
        );
        let (volumes, mounts) = kafka.volumes();
        assert_eq!(volumes.len(), 2);
        assert_eq!(mounts[1]["mountPath"], SASL_DIR);
        assert_eq!(
            kafka.secrets(),
            [
                (
                    "kafka-ca".to_string(),
                    "spec.kafka.tls.secretName".to_string()
                ),
                (
                    "kafka-user".to_string(),
                    "spec.kafka.sasl.passwordSecret.name".to_string()
                ),
            ]
        );
    }
}
