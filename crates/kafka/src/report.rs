//! The reporting of failed connections in words a user can act on (authentication failed,
//! certificate not trusted), shared by every Kafka client, and the wait that keeps a role not
//! ready until the cluster answers.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::ConsumerContext;
use rdkafka::error::KafkaError;
use rdkafka::producer::{FutureProducer, Producer as _};
use rdkafka::types::RDKafkaErrorCode;
use strait_config::kafka::KafkaConnection;
use tokio_util::sync::CancellationToken;

use crate::KafkaClientError;

/// What a failed connection to Kafka was, as far as librdkafka tells.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Problem {
    /// The brokers refused the SASL credentials (or the mechanism).
    Authentication,
    /// The brokers' certificate is not trusted by `kafka.tls.ca` (or does not name the host).
    Certificate,
    /// Another TLS failure (e.g. TLS against a plaintext listener).
    Tls,
    Other,
}

impl Problem {
    pub fn classify(code: Option<RDKafkaErrorCode>, reason: &str) -> Self {
        let lower = reason.to_ascii_lowercase();
        if lower.contains("certificate verify failed") || lower.contains("verify that ssl.ca") {
            Self::Certificate
        } else if code == Some(RDKafkaErrorCode::Authentication)
            || lower.contains("sasl authentication error")
            || lower.contains("authentication failed")
        {
            Self::Authentication
        } else if code == Some(RDKafkaErrorCode::SSL) || lower.contains("ssl handshake failed") {
            Self::Tls
        } else {
            Self::Other
        }
    }
}

/// A `ClientContext` that reports librdkafka's errors: authentication and certificate failures
/// as errors that say what failed and name the bootstrap servers, the rest as warnings; the same
/// problem again within 30 s only at debug level. Clones share the last problem, which
/// [`wait_for_cluster`] repeats while it waits.
///
/// Every client made by [`crate::KafkaClients`] has it (or a context that passes errors and
/// logs on to it): librdkafka hands errors with their reason to the context of producers and
/// admin clients (consumers mostly get only the error code from `poll`).
#[derive(Clone)]
pub struct KafkaReport {
    inner: Arc<ReportInner>,
}

struct ReportInner {
    bootstrap: String,
    /// e.g. `SASL_SSL, SASL SCRAM-SHA-512 as "strait"`: what was tried, never the password.
    credentials: String,
    /// Where the user sets the SASL credentials and the CA, for the advice in messages.
    check_sasl: String,
    check_ca: String,
    last: Mutex<Option<Reported>>,
}

struct Reported {
    /// The problem and librdkafka's reason without its varying `(after …)` tail.
    key: String,
    logged_at: Instant,
    message: String,
}

/// Where a user fixes the settings behind a failure, as messages advise it.
pub struct Advice {
    /// e.g. `kafka.sasl (user name, password file, mechanism enabled on the brokers)`.
    pub sasl: String,
    /// e.g. `kafka.tls.ca (/etc/ca.crt)`: what the brokers' certificate must chain to.
    pub ca: String,
}

/// The same problem is logged again (at its level) after this long.
const REPEAT_AFTER: Duration = Duration::from_secs(30);

impl KafkaReport {
    /// The report of a proxy's connection, whose messages name its `kafka.…` config fields.
    pub fn new(connection: &KafkaConnection) -> Self {
        let ca = connection.tls.as_ref().and_then(|t| t.ca.as_ref());
        let ca = ca.map_or_else(|| "none".into(), |path| path.display().to_string());
        Self::with_advice(
            &connection.bootstrap,
            connection.security_protocol(),
            connection
                .sasl
                .as_ref()
                .map(|sasl| (sasl.mechanism.as_str(), sasl.username.as_str())),
            Advice {
                sasl: "kafka.sasl (user name, password file, mechanism enabled on the brokers)"
                    .into(),
                ca: format!("kafka.tls.ca ({ca})"),
            },
        )
    }

    /// The report of a connection made from other settings (the operator's, from Secrets):
    /// `protocol` is librdkafka's `security.protocol`, `sasl` the mechanism and user name.
    pub fn with_advice(
        bootstrap: &str,
        protocol: &str,
        sasl: Option<(&str, &str)>,
        advice: Advice,
    ) -> Self {
        let credentials = match sasl {
            Some((mechanism, username)) => format!("{protocol}, SASL {mechanism} as {username:?}"),
            None => protocol.to_string(),
        };
        Self {
            inner: Arc::new(ReportInner {
                bootstrap: bootstrap.to_string(),
                credentials,
                check_sasl: advice.sasl,
                check_ca: advice.ca,
                last: Mutex::new(None),
            }),
        }
    }

    /// The last problem reported, as logged.
    pub fn last_problem(&self) -> Option<String> {
        let last = self.inner.last.lock().expect("report lock");
        last.as_ref().map(|r| r.message.clone())
    }

    pub fn report(&self, error: &KafkaError, reason: &str) {
        let inner = &*self.inner;
        let bootstrap = &inner.bootstrap;
        let code = error.rdkafka_error_code();
        if code == Some(RDKafkaErrorCode::AllBrokersDown) {
            // Follows every failed connection, whose own error says why.
            tracing::debug!(bootstrap, "Kafka: {reason}");
            return;
        }
        let problem = Problem::classify(code, reason);
        let key = format!(
            "{problem:?} {}",
            reason.split(" (after ").next().unwrap_or(reason)
        );
        let mut last = inner.last.lock().expect("report lock");
        let repeated = last
            .as_ref()
            .is_some_and(|r| r.key == key && r.logged_at.elapsed() < REPEAT_AFTER);
        let message = self.describe(problem, error, reason);
        if repeated {
            tracing::debug!(bootstrap, "{message}");
        } else if problem == Problem::Other {
            tracing::warn!(bootstrap, "{message}");
        } else {
            tracing::error!(bootstrap, problem = ?problem, "{message}");
        }
        let logged_at = match last.take() {
            Some(r) if repeated => r.logged_at,
            _ => Instant::now(),
        };
        *last = Some(Reported {
            key,
            logged_at,
            message,
        });
    }

    fn describe(&self, problem: Problem, error: &KafkaError, reason: &str) -> String {
        let inner = &*self.inner;
        let bootstrap = &inner.bootstrap;
        match problem {
            Problem::Authentication => format!(
                "Kafka authentication failed at {bootstrap} ({}): check {}: {reason}",
                inner.credentials, inner.check_sasl
            ),
            Problem::Certificate => format!(
                "Kafka TLS certificate verify failed at {bootstrap}: the brokers' certificate \
                 does not chain to {} or does not name the host: {reason}",
                inner.check_ca
            ),
            Problem::Tls => format!(
                "Kafka TLS handshake failed at {bootstrap} ({}): {reason}",
                inner.credentials
            ),
            Problem::Other => format!("Kafka client error at {bootstrap}: {error}: {reason}"),
        }
    }
}

impl ClientContext for KafkaReport {
    fn error(&self, error: KafkaError, reason: &str) {
        self.report(&error, reason);
    }

    /// librdkafka's own log lines; its `FAIL` lines repeat what [`Self::error`] reports, so
    /// they go to debug.
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        match level {
            _ if fac == "FAIL" => tracing::debug!(target: "librdkafka", "{fac} {message}"),
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error => tracing::error!(target: "librdkafka", "{fac} {message}"),
            RDKafkaLogLevel::Warning => tracing::warn!(target: "librdkafka", "{fac} {message}"),
            RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
                tracing::info!(target: "librdkafka", "{fac} {message}")
            }
            RDKafkaLogLevel::Debug => tracing::debug!(target: "librdkafka", "{fac} {message}"),
        }
    }
}

impl ConsumerContext for KafkaReport {}

/// Waits until the cluster answers a metadata request through `config` (the settings every
/// client of the role uses), so a role is ready only once Kafka lets it in. Each failure is
/// logged as it happens (see [`KafkaReport`]); every 30 s a line says the role still waits.
/// Returns false if `shutdown` came first.
pub(crate) async fn wait_for_cluster(
    config: &ClientConfig,
    report: &KafkaReport,
    shutdown: &CancellationToken,
) -> Result<bool, KafkaClientError> {
    const ATTEMPT: Duration = Duration::from_secs(5);
    const REMIND: Duration = Duration::from_secs(30);
    // A producer: librdkafka gives its context the errors with their reasons.
    let probe: Arc<FutureProducer<KafkaReport>> = Arc::new(
        config
            .create_with_context(report.clone())
            .map_err(|error| KafkaClientError::Client {
                what: "probe",
                error,
            })?,
    );
    let bootstrap = report.inner.bootstrap.clone();
    let started = Instant::now();
    let mut reminded = started;
    loop {
        let client = probe.clone();
        let answer = tokio::select! {
            () = shutdown.cancelled() => return Ok(false),
            answer = tokio::task::spawn_blocking(move || {
                let metadata = client.client().fetch_metadata(None, ATTEMPT);
                metadata.map(|m| m.brokers().len())
            }) => answer.unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic())),
        };
        match answer {
            Ok(brokers) if brokers > 0 => {
                tracing::info!(%bootstrap, brokers, waited = ?started.elapsed(), "Kafka answers");
                return Ok(true);
            }
            Ok(_) | Err(_) if reminded == started || reminded.elapsed() >= REMIND => {
                reminded = Instant::now();
                let problem = report
                    .last_problem()
                    .unwrap_or_else(|| format!("{:?}", answer.err()));
                tracing::warn!(
                    %bootstrap,
                    waited = ?started.elapsed(),
                    "waiting for Kafka (not ready until it answers): {problem}"
                );
            }
            _ => {}
        }
        tokio::select! {
            () = shutdown.cancelled() => return Ok(false),
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use strait_config::kafka::{KafkaSasl, KafkaTls, SaslMechanism};

    #[test]
    fn librdkafka_reasons_are_classified() {
        let auth = "sasl_ssl://127.0.0.1:9093/bootstrap: SASL authentication error: \
                    Authentication failed during authentication due to invalid credentials with \
                    SASL mechanism SCRAM-SHA-512 (after 5ms in state AUTH_REQ)";
        assert_eq!(
            Problem::classify(Some(RDKafkaErrorCode::Authentication), auth),
            Problem::Authentication
        );
        let cert = "ssl://127.0.0.1:9093/bootstrap: SSL handshake failed: error:0A000086:SSL \
                    routines::certificate verify failed: broker certificate could not be \
                    verified, verify that ssl.ca.location is correctly configured";
        assert_eq!(
            Problem::classify(Some(RDKafkaErrorCode::SSL), cert),
            Problem::Certificate
        );
        assert_eq!(
            Problem::classify(
                Some(RDKafkaErrorCode::SSL),
                "SSL handshake failed: wrong version"
            ),
            Problem::Tls
        );
        assert_eq!(
            Problem::classify(
                Some(RDKafkaErrorCode::AllBrokersDown),
                "1/1 brokers are down"
            ),
            Problem::Other
        );
    }

    #[test]
    fn the_report_says_what_was_tried_but_not_the_password() {
        let mut connection = KafkaConnection::new("k:9093");
        connection.tls = Some(KafkaTls::with_ca("/ca.crt"));
        connection.sasl = Some(KafkaSasl {
            mechanism: SaslMechanism::ScramSha512,
            username: "strait".into(),
            password_file: "/pw".into(),
        });
        let report = KafkaReport::new(&connection);
        report.report(
            &KafkaError::Global(RDKafkaErrorCode::Authentication),
            "SASL authentication error: Authentication failed",
        );
        let logged = report.last_problem().unwrap();
        assert!(
            logged.starts_with(
                "Kafka authentication failed at k:9093 (SASL_SSL, SASL SCRAM-SHA-512 as \"strait\")"
            ),
            "{logged}"
        );
    }
}
