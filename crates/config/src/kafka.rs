//! How every Strait Kafka client connects: bootstrap servers, TLS and SASL, shared by s-proxy
//! (`upstream: kafka`), grpc-kafka, kafka-grpc and `dev --kafka`, and the produce
//! acknowledgement setting they all use.
//!
//! Secrets are files (in Kubernetes, a mounted Secret): the SASL password is read from
//! `sasl.passwordFile` when a client is built and never appears in a config, a flag, a log line
//! or a `Debug` print.
//!
//! ```yaml
//! kafka:
//!   bootstrap: kafka-0:9093,kafka-1:9093
//!   tls: { ca: /etc/strait/kafka/ca.crt }          # cert/key for mutual TLS
//!   sasl: { mechanism: SCRAM-SHA-512, username: strait, passwordFile: /etc/strait/kafka/password }
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::ConfigError;

/// The connection settings of a role's Kafka clients. Errors name the fields under `kafka.`,
/// the section every role keeps them in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KafkaConnection {
    /// Comma-separated `HOST:PORT` list of brokers (`--kafka` overrides it).
    pub bootstrap: String,
    /// TLS to the brokers (`ca`; `cert` and `key` for mutual TLS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<KafkaTls>,
    /// SASL authentication; the password is read from a file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sasl: Option<KafkaSasl>,
    /// Extra librdkafka properties (e.g. `linger.ms: "5"`); may not repeat what the typed
    /// fields above set.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub properties: BTreeMap<String, String>,
}

/// TLS to the brokers. Present means on: the client speaks TLS (`SSL`, or `SASL_SSL` with
/// `sasl`) and checks the brokers' certificates against `ca` and their host names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KafkaTls {
    /// PEM CA bundle the brokers' certificates must chain to. Required: Strait never silently
    /// falls back to the system roots (for a public CA, name the system bundle, e.g.
    /// `/etc/ssl/certs/ca-certificates.crt`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<PathBuf>,
    /// PEM client certificate presented to the brokers (mutual TLS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert: Option<PathBuf>,
    /// PEM private key of `cert`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<PathBuf>,
    /// Check that each broker's certificate names the host it was reached at (librdkafka's
    /// `ssl.endpoint.identification.algorithm=https`). Turn off only for certificates without
    /// the brokers' names; the chain is checked against `ca` either way.
    #[serde(default = "default_true", skip_serializing_if = "is_true")]
    pub verify_hostname: bool,
}

impl KafkaTls {
    /// TLS trusting `ca`, host names checked.
    pub fn with_ca(ca: impl Into<PathBuf>) -> Self {
        Self {
            ca: Some(ca.into()),
            ..Self::default()
        }
    }
}

/// No files yet (not valid until `ca` is set), host names checked.
impl Default for KafkaTls {
    fn default() -> Self {
        Self {
            ca: None,
            cert: None,
            key: None,
            verify_hostname: true,
        }
    }
}

/// SASL credentials. Only mechanisms librdkafka implements itself with OpenSSL (no Cyrus SASL,
/// no Kerberos).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KafkaSasl {
    pub mechanism: SaslMechanism,
    pub username: String,
    /// File holding the password (a mounted Secret), never the password itself; one trailing
    /// newline is ignored.
    pub password_file: PathBuf,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum SaslMechanism {
    #[serde(rename = "PLAIN")]
    Plain,
    #[serde(rename = "SCRAM-SHA-256")]
    ScramSha256,
    #[serde(rename = "SCRAM-SHA-512")]
    ScramSha512,
}

impl SaslMechanism {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Plain => "PLAIN",
            Self::ScramSha256 => "SCRAM-SHA-256",
            Self::ScramSha512 => "SCRAM-SHA-512",
        }
    }
}

impl std::str::FromStr for SaslMechanism {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        [Self::Plain, Self::ScramSha256, Self::ScramSha512]
            .into_iter()
            .find(|m| m.as_str().eq_ignore_ascii_case(s))
            .ok_or_else(|| format!("{s:?} is not PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512"))
    }
}

/// Kafka produce acknowledgement. Its `Default` is `leader`, the QoS 0 default of MQTT over
/// Kafka; every other acks setting (gRPC routes, kafka-grpc replies) defaults to `all` through
/// its own field default.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub enum Acks {
    /// acks=0: fire and forget (what Zilla does for MQTT QoS 0).
    None,
    /// acks=1: the partition leader has written it.
    #[default]
    Leader,
    /// acks=all: every in-sync replica has written it.
    All,
}

impl Acks {
    /// The default of settings that must be durable (gRPC routes, kafka-grpc replies).
    pub fn all() -> Self {
        Self::All
    }

    /// The librdkafka `acks` value.
    pub fn as_kafka(self) -> &'static str {
        match self {
            Self::None => "0",
            Self::Leader => "1",
            Self::All => "all",
        }
    }
}

/// Whether a pass-through librdkafka property would override what `bootstrap`, `tls` or `sasl`
/// set (any `ssl.*` or `sasl.*` key counts: TLS and SASL are configured through the typed
/// fields only).
pub fn is_typed_property(key: &str) -> bool {
    matches!(key, "bootstrap.servers" | "security.protocol")
        || key.starts_with("ssl.")
        || key.starts_with("sasl.")
}

impl KafkaConnection {
    pub fn new(bootstrap: impl Into<String>) -> Self {
        Self {
            bootstrap: bootstrap.into(),
            tls: None,
            sasl: None,
            properties: BTreeMap::new(),
        }
    }

    /// Checks the section (errors name `kafka.…`). Files are not opened here: the operator
    /// validates configs whose files exist only in the pods; [`Self::client_properties`] reads
    /// them.
    pub fn check(&self) -> Result<(), ConfigError> {
        check_security(&self.bootstrap, self.tls.as_ref(), self.sasl.as_ref())?;
        if let Some(key) = self.properties.keys().find(|k| is_typed_property(k)) {
            return Err(ConfigError::invalid(
                "kafka.properties",
                format!("{key:?} is set by the typed fields (bootstrap, tls, sasl); use those"),
            ));
        }
        Ok(())
    }

    /// The librdkafka properties for bootstrap, TLS and SASL (the pass-through `properties`
    /// are not included), reading the password file. Errors name the field and the file.
    pub fn client_properties(&self) -> Result<ClientProperties, ConfigError> {
        let mut properties = vec![
            ("bootstrap.servers", self.bootstrap.clone()),
            ("security.protocol", self.security_protocol().into()),
        ];
        if let Some(tls) = &self.tls {
            for (key, field, path) in [
                ("ssl.ca.location", "kafka.tls.ca", &tls.ca),
                ("ssl.certificate.location", "kafka.tls.cert", &tls.cert),
                ("ssl.key.location", "kafka.tls.key", &tls.key),
            ] {
                if let Some(path) = path {
                    readable(field, path)?;
                    properties.push((key, path.display().to_string()));
                }
            }
            if !tls.verify_hostname {
                properties.push(("ssl.endpoint.identification.algorithm", "none".into()));
            }
        }
        if let Some(sasl) = &self.sasl {
            let password = read_password(&sasl.password_file)?;
            properties.push(("sasl.mechanism", sasl.mechanism.as_str().into()));
            properties.push(("sasl.username", sasl.username.clone()));
            properties.push(("sasl.password", password));
        }
        Ok(ClientProperties(properties))
    }

    /// librdkafka's `security.protocol` for the TLS and SASL settings.
    pub fn security_protocol(&self) -> &'static str {
        match (self.tls.is_some(), self.sasl.is_some()) {
            (false, false) => "PLAINTEXT",
            (true, false) => "SSL",
            (false, true) => "SASL_PLAINTEXT",
            (true, true) => "SASL_SSL",
        }
    }
}

/// The bootstrap, TLS and SASL rules shared by every Kafka section (fields named `kafka.…`).
pub fn check_security(
    bootstrap: &str,
    tls: Option<&KafkaTls>,
    sasl: Option<&KafkaSasl>,
) -> Result<(), ConfigError> {
    if bootstrap.split(',').any(|server| {
        !matches!(server.trim().rsplit_once(':'),
            Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok())
    }) {
        return Err(ConfigError::invalid(
            "kafka.bootstrap",
            format!("{bootstrap:?} is not a HOST:PORT[,HOST:PORT…] list"),
        ));
    }
    if let Some(tls) = tls {
        if tls.ca.is_none() {
            return Err(ConfigError::invalid(
                "kafka.tls.ca",
                "TLS to Kafka needs the CA that signs the brokers' certificates",
            ));
        }
        match (&tls.cert, &tls.key) {
            (Some(_), None) => {
                return Err(ConfigError::invalid(
                    "kafka.tls.key",
                    "tls.cert is set but tls.key is not",
                ));
            }
            (None, Some(_)) => {
                return Err(ConfigError::invalid(
                    "kafka.tls.cert",
                    "tls.key is set but tls.cert is not",
                ));
            }
            _ => {}
        }
    }
    if let Some(sasl) = sasl {
        if sasl.username.is_empty() {
            return Err(ConfigError::invalid(
                "kafka.sasl.username",
                "must not be empty",
            ));
        }
        if sasl.password_file.as_os_str().is_empty() {
            return Err(ConfigError::invalid(
                "kafka.sasl.passwordFile",
                "must name the file holding the password",
            ));
        }
    }
    Ok(())
}

fn readable(field: &'static str, path: &Path) -> Result<(), ConfigError> {
    std::fs::File::open(path)
        .map(drop)
        .map_err(|e| ConfigError::invalid(field, format!("cannot read {}: {e}", path.display())))
}

fn read_password(path: &Path) -> Result<String, ConfigError> {
    let field = "kafka.sasl.passwordFile";
    let text = std::fs::read_to_string(path)
        .map_err(|e| ConfigError::invalid(field, format!("cannot read {}: {e}", path.display())))?;
    let password = text
        .strip_suffix('\n')
        .map(|t| t.strip_suffix('\r').unwrap_or(t))
        .unwrap_or(&text);
    if password.is_empty() {
        return Err(ConfigError::invalid(
            field,
            format!("{} is empty", path.display()),
        ));
    }
    Ok(password.to_owned())
}

/// librdkafka properties, in the order they were set. `Debug` hides the password.
#[derive(Clone, PartialEq, Eq)]
pub struct ClientProperties(Vec<(&'static str, String)>);

impl ClientProperties {
    pub fn iter(&self) -> impl Iterator<Item = (&'static str, &str)> {
        self.0.iter().map(|(k, v)| (*k, v.as_str()))
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.iter().find(|(k, _)| *k == key).map(|(_, v)| v)
    }
}

impl std::fmt::Debug for ClientProperties {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map()
            .entries(self.0.iter().map(|(k, v)| {
                let shown = if *k == "sasl.password" {
                    "<redacted>"
                } else {
                    v
                };
                (k, shown)
            }))
            .finish()
    }
}

fn default_true() -> bool {
    true
}

fn is_true(value: &bool) -> bool {
    *value
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field_of(result: Result<impl std::fmt::Debug, ConfigError>) -> &'static str {
        match result {
            Err(ConfigError::Invalid { field, .. }) => field,
            other => panic!("expected an invalid-field error, got {other:?}"),
        }
    }

    fn temp_file(name: &str, contents: &str) -> PathBuf {
        let path =
            std::env::temp_dir().join(format!("strait-config-kafka-{}-{name}", std::process::id()));
        std::fs::write(&path, contents).unwrap();
        path
    }

    fn sasl(password_file: PathBuf) -> KafkaSasl {
        KafkaSasl {
            mechanism: SaslMechanism::ScramSha512,
            username: "strait".into(),
            password_file,
        }
    }

    #[test]
    fn full_section_parses_and_round_trips() {
        let yaml = "bootstrap: 'k1:9093,k2:9093'\n\
                    tls: { ca: /ca.crt, cert: /c.crt, key: /c.key, verifyHostname: false }\n\
                    sasl: { mechanism: SCRAM-SHA-256, username: u, passwordFile: /pw }\n\
                    properties: { linger.ms: '5' }\n";
        let config: KafkaConnection = serde_saphyr::from_str(yaml).unwrap();
        config.check().unwrap();
        assert!(!config.tls.as_ref().unwrap().verify_hostname);
        assert_eq!(
            config.sasl.as_ref().unwrap().mechanism,
            SaslMechanism::ScramSha256
        );
        let back: KafkaConnection = serde_saphyr::from_str(&crate::to_yaml(&config)).unwrap();
        assert_eq!(back, config);
        let tls: KafkaTls = serde_saphyr::from_str("ca: /ca.crt").unwrap();
        assert_eq!(
            tls,
            KafkaTls::with_ca("/ca.crt"),
            "hostnames checked by default"
        );
    }

    #[test]
    fn inline_passwords_and_unknown_mechanisms_are_rejected() {
        let error =
            serde_saphyr::from_str::<KafkaSasl>("mechanism: PLAIN\nusername: u\npassword: secret")
                .unwrap_err()
                .to_string();
        assert!(error.contains("unknown field `password`"), "{error}");
        let error = serde_saphyr::from_str::<KafkaSasl>(
            "mechanism: GSSAPI\nusername: u\npasswordFile: /pw",
        )
        .unwrap_err()
        .to_string();
        assert!(error.contains("GSSAPI"), "{error}");
        assert_eq!(
            "scram-sha-512".parse::<SaslMechanism>(),
            Ok(SaslMechanism::ScramSha512)
        );
        assert!("GSSAPI".parse::<SaslMechanism>().is_err());
    }

    #[test]
    fn invalid_sections_name_the_field() {
        let base = || KafkaConnection::new("k:9092");
        base().check().unwrap();
        let mut c = base();
        c.bootstrap = "k".into();
        assert_eq!(field_of(c.check()), "kafka.bootstrap");
        let mut c = base();
        c.tls = Some(KafkaTls::default());
        assert_eq!(field_of(c.check()), "kafka.tls.ca");
        let mut c = base();
        c.tls = Some(KafkaTls {
            cert: Some("/c".into()),
            ..KafkaTls::with_ca("/x")
        });
        assert_eq!(field_of(c.check()), "kafka.tls.key");
        let mut c = base();
        c.sasl = Some(KafkaSasl {
            username: String::new(),
            ..sasl("/pw".into())
        });
        assert_eq!(field_of(c.check()), "kafka.sasl.username");
        for key in ["sasl.password", "ssl.ca.location", "security.protocol"] {
            let mut c = base();
            c.properties.insert(key.into(), "x".into());
            assert_eq!(field_of(c.check()), "kafka.properties", "{key}");
        }
    }

    #[test]
    fn client_properties_map_tls_and_sasl_to_librdkafka() {
        let plain = KafkaConnection::new("k:9092").client_properties().unwrap();
        assert_eq!(plain.get("security.protocol"), Some("PLAINTEXT"));
        assert_eq!(plain.get("bootstrap.servers"), Some("k:9092"));

        let ca = temp_file("ca.crt", "not parsed here");
        let password = temp_file("password", "s3cret-Pw\n");
        let mut c = KafkaConnection::new("k:9093");
        c.tls = Some(KafkaTls::with_ca(&ca));
        let tls = c.client_properties().unwrap();
        assert_eq!(tls.get("security.protocol"), Some("SSL"));
        assert_eq!(tls.get("ssl.ca.location"), ca.to_str());
        assert_eq!(tls.get("ssl.endpoint.identification.algorithm"), None);

        c.sasl = Some(sasl(password.clone()));
        let both = c.client_properties().unwrap();
        assert_eq!(both.get("security.protocol"), Some("SASL_SSL"));
        assert_eq!(both.get("sasl.mechanism"), Some("SCRAM-SHA-512"));
        assert_eq!(both.get("sasl.username"), Some("strait"));
        assert_eq!(
            both.get("sasl.password"),
            Some("s3cret-Pw"),
            "one trailing newline dropped"
        );

        c.tls = None;
        let sasl_only = c.client_properties().unwrap();
        assert_eq!(sasl_only.get("security.protocol"), Some("SASL_PLAINTEXT"));
        assert_eq!(sasl_only.get("ssl.ca.location"), None);

        let _ = std::fs::remove_file(ca);
        let _ = std::fs::remove_file(password);
    }

    #[test]
    fn unreadable_files_are_named_with_their_field() {
        let mut c = KafkaConnection::new("k:9092");
        c.sasl = Some(sasl("/nonexistent/strait-password".into()));
        let error = c.client_properties().unwrap_err().to_string();
        assert!(
            error.contains("kafka.sasl.passwordFile: cannot read /nonexistent/strait-password:"),
            "{error}"
        );
        let empty = temp_file("empty-password", "\n");
        c.sasl = Some(sasl(empty.clone()));
        assert_eq!(field_of(c.client_properties()), "kafka.sasl.passwordFile");
        let _ = std::fs::remove_file(empty);

        let mut c = KafkaConnection::new("k:9092");
        c.tls = Some(KafkaTls::with_ca("/nonexistent/ca.crt"));
        let error = c.client_properties().unwrap_err().to_string();
        assert!(
            error.contains("kafka.tls.ca: cannot read /nonexistent/ca.crt"),
            "{error}"
        );
    }

    #[test]
    fn debug_output_never_shows_the_password() {
        let password = temp_file("debug-password", "hunter2-secret");
        let mut c = KafkaConnection::new("k:9092");
        c.sasl = Some(sasl(password.clone()));
        let properties = c.client_properties().unwrap();
        for shown in [format!("{properties:?}"), format!("{c:?}")] {
            assert!(!shown.contains("hunter2"), "{shown}");
        }
        assert!(format!("{properties:?}").contains("<redacted>"));
        let _ = std::fs::remove_file(password);
    }
}
