//! The command line of every role: the arguments of each subcommand and how they are laid over
//! the role's config file. Every flag of the binary is in this module, so they stay consistent,
//! and the role crates take validated configs, never flags: one file per role (`r_proxy`,
//! `s_proxy`; `grpc` for grpc-kafka and kafka-grpc), here the flags they share.

mod grpc;
mod r_proxy;
mod s_proxy;

use std::path::PathBuf;

use strait_config::ConfigError;
use strait_config::kafka::{KafkaSasl, KafkaTls, SaslMechanism};
use strait_config::tls::ServerTls;

pub use grpc::{GrpcKafkaArgs, KafkaGrpcArgs};
pub use r_proxy::{JwtArgs, RProxyArgs};
pub use s_proxy::{SProxyArgs, UpstreamArg};

/// `--kafka-tls-*` and `--kafka-sasl-*`: TLS and SASL for the role's Kafka clients, laid over
/// the config file's `kafka.tls` and `kafka.sasl`.
#[derive(Debug, Clone, Default, clap::Args)]
#[command(next_help_heading = "Kafka TLS and SASL (override kafka.tls and kafka.sasl)")]
pub struct KafkaSecurityArgs {
    /// Connect to Kafka over TLS, trusting this PEM CA bundle (kafka.tls.ca).
    #[arg(long, env = "STRAIT_KAFKA_TLS_CA", value_name = "FILE")]
    pub kafka_tls_ca: Option<PathBuf>,

    /// Client certificate presented to the brokers, PEM (mutual TLS; needs --kafka-tls-ca).
    #[arg(long, env = "STRAIT_KAFKA_TLS_CERT", value_name = "FILE")]
    pub kafka_tls_cert: Option<PathBuf>,

    /// Private key of --kafka-tls-cert, PEM.
    #[arg(long, env = "STRAIT_KAFKA_TLS_KEY", value_name = "FILE")]
    pub kafka_tls_key: Option<PathBuf>,

    /// SASL mechanism: PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512 (with --kafka-sasl-username and
    /// --kafka-sasl-password-file; over TLS when --kafka-tls-ca is set, SASL_PLAINTEXT otherwise).
    #[arg(long, env = "STRAIT_KAFKA_SASL_MECHANISM", value_name = "MECHANISM")]
    pub kafka_sasl_mechanism: Option<SaslMechanism>,

    /// SASL user name.
    #[arg(long, env = "STRAIT_KAFKA_SASL_USERNAME", value_name = "NAME")]
    pub kafka_sasl_username: Option<String>,

    /// File holding the SASL password (e.g. a mounted Secret; one trailing newline is ignored).
    /// The password itself is never taken from a flag or an environment variable.
    #[arg(long, env = "STRAIT_KAFKA_SASL_PASSWORD_FILE", value_name = "FILE")]
    pub kafka_sasl_password_file: Option<PathBuf>,
}

impl KafkaSecurityArgs {
    /// Whether any of the flags is given.
    pub fn any(&self) -> bool {
        self.sets_tls() || self.sets_sasl()
    }

    fn sets_tls(&self) -> bool {
        self.kafka_tls_ca.is_some() || self.kafka_tls_cert.is_some() || self.kafka_tls_key.is_some()
    }

    fn sets_sasl(&self) -> bool {
        self.kafka_sasl_mechanism.is_some()
            || self.kafka_sasl_username.is_some()
            || self.kafka_sasl_password_file.is_some()
    }

    /// Lays the flags given over a section's `tls` and `sasl`. Without a `sasl` in the config
    /// file, the three SASL flags go together.
    pub fn apply(
        &self,
        tls: &mut Option<KafkaTls>,
        sasl: &mut Option<KafkaSasl>,
    ) -> Result<(), ConfigError> {
        if self.sets_tls() {
            let tls = tls.get_or_insert_with(KafkaTls::default);
            for (field, flag) in [
                (&mut tls.ca, &self.kafka_tls_ca),
                (&mut tls.cert, &self.kafka_tls_cert),
                (&mut tls.key, &self.kafka_tls_key),
            ] {
                if let Some(path) = flag {
                    *field = Some(path.clone());
                }
            }
        }
        if !self.sets_sasl() {
            return Ok(());
        }
        match sasl {
            Some(sasl) => {
                if let Some(mechanism) = self.kafka_sasl_mechanism {
                    sasl.mechanism = mechanism;
                }
                if let Some(username) = &self.kafka_sasl_username {
                    sasl.username.clone_from(username);
                }
                if let Some(file) = &self.kafka_sasl_password_file {
                    sasl.password_file.clone_from(file);
                }
            }
            None => {
                let (Some(mechanism), Some(username), Some(password_file)) = (
                    self.kafka_sasl_mechanism,
                    &self.kafka_sasl_username,
                    &self.kafka_sasl_password_file,
                ) else {
                    return Err(ConfigError::invalid(
                        "kafka.sasl",
                        "--kafka-sasl-mechanism, --kafka-sasl-username and \
                         --kafka-sasl-password-file go together (or set kafka.sasl in the config file)",
                    ));
                };
                *sasl = Some(KafkaSasl {
                    mechanism,
                    username: username.clone(),
                    password_file: password_file.clone(),
                });
            }
        }
        Ok(())
    }
}

/// `--tls-cert`, `--tls-key`, `--tls-client-ca`: laid over the config file's `tls` block.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ServerTlsArgs {
    /// PEM certificate chain served to clients; enables TLS on the listener.
    #[arg(long = "tls-cert")]
    pub cert: Option<PathBuf>,
    /// PEM private key of --tls-cert.
    #[arg(long = "tls-key")]
    pub key: Option<PathBuf>,
    /// PEM CA bundle; when set, clients must present a certificate signed by it.
    #[arg(long = "tls-client-ca")]
    pub client_ca: Option<PathBuf>,
}

impl ServerTlsArgs {
    pub fn apply(self, tls: &mut ServerTls) {
        overlay(&mut tls.cert, self.cert);
        overlay(&mut tls.key, self.key);
        overlay(&mut tls.client_ca, self.client_ca);
    }
}

/// A flag given on the command line replaces the config file's value.
pub fn overlay<T>(field: &mut Option<T>, flag: Option<T>) {
    if flag.is_some() {
        *field = flag;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_fill_in_tls_and_sasl() {
        let args = KafkaSecurityArgs {
            kafka_tls_ca: Some("/ca.crt".into()),
            kafka_sasl_mechanism: Some(SaslMechanism::ScramSha512),
            kafka_sasl_username: Some("strait".into()),
            kafka_sasl_password_file: Some("/pw".into()),
            ..KafkaSecurityArgs::default()
        };
        let (mut tls, mut sasl) = (None, None);
        args.apply(&mut tls, &mut sasl).unwrap();
        assert_eq!(tls, Some(KafkaTls::with_ca("/ca.crt")));
        let sasl = sasl.unwrap();
        assert_eq!(
            (sasl.mechanism, sasl.username.as_str()),
            (SaslMechanism::ScramSha512, "strait")
        );

        // One flag over a config file's sasl replaces just that value.
        let mut from_file = Some(sasl);
        let args = KafkaSecurityArgs {
            kafka_sasl_username: Some("other".into()),
            ..KafkaSecurityArgs::default()
        };
        args.apply(&mut tls, &mut from_file).unwrap();
        assert_eq!(from_file.unwrap().username, "other");

        // Without one, the three SASL flags go together.
        let error = args.apply(&mut None, &mut None).unwrap_err().to_string();
        assert!(error.contains("kafka.sasl"), "{error}");
    }
}
