//! `strait-proxy grpc-kafka` and `kafka-grpc`'s flags.

use std::net::SocketAddr;
use std::path::PathBuf;

use strait_config::grpc::{GrpcKafkaConfig, KafkaGrpcConfig};
use strait_config::{ConfigError, Validate as _, load};

use super::KafkaSecurityArgs;

/// `strait-proxy grpc-kafka`: serve gRPC calls by producing them to Kafka.
#[derive(Debug, Clone, clap::Args)]
#[command(
    after_help = "Example:\n  strait-proxy grpc-kafka --listen 0.0.0.0:50051 --kafka kafka:9092 \
    --config grpc-kafka.yaml\n\n\
    with grpc-kafka.yaml:\n\
    \x20 kafka: { bootstrap: kafka:9092 }\n\
    \x20 protos: { paths: [/etc/strait/protos] }      # .proto files or directories\n\
    \x20 routes:\n\
    \x20   - method: example.Greeter/*                # package.Service/Method, * wildcards\n\
    \x20     produce: { topic: greeter-requests, replyTo: greeter-replies }\n\
    \x20   - method: example.Events/Fetch\n\
    \x20     fetch: { topic: events }                 # stream a topic, resumable\n\
    \x20 # TLS and SASL to Kafka (or the --kafka-tls-*/--kafka-sasl-* flags):\n\
    \x20 # kafka: { bootstrap: kafka:9093, tls: { ca: ca.crt },\n\
    \x20 #          sasl: { mechanism: SCRAM-SHA-512, username: strait, passwordFile: /etc/strait/kafka/password } }\n\
    \x20 # The listener over TLS (clientCa: callers need a certificate it signed):\n\
    \x20 # tls: { cert: tls.crt, key: tls.key, clientCa: ca.crt }\n\
    \x20 # Callers authenticate (missing/invalid: UNAUTHENTICATED; method not granted: PERMISSION_DENIED):\n\
    \x20 # auth: { jwt: { issuer: https://auth.example.com/, keysFile: jwks.json, methodsClaim: grpc_methods } }\n\
    \x20 # auth: { clientCertificate: true }         # the certificate subject is the identity\n\
    \x20 # Request metadata copied into Kafka (default: all but authorization, cookie and other credentials):\n\
    \x20 # forwardMetadata: { allow: ['x-*'], deny: [authorization, cookie, proxy-authorization] }\n\n\
    Clients call grpc-kafka as if it were the service. A `strait-proxy kafka-grpc` consuming \
    greeter-requests calls the real service and writes the answers to greeter-replies."
)]
pub struct GrpcKafkaArgs {
    /// YAML config: routes, .proto files, Kafka (see docs/architecture.md).
    #[arg(long, env = "STRAIT_CONFIG")]
    pub config: PathBuf,
    /// gRPC listener (overrides `listen` of the config).
    #[arg(long, env = "STRAIT_LISTEN")]
    pub listen: Option<SocketAddr>,
    /// Kafka bootstrap servers, HOST:PORT[,HOST:PORT] (overrides `kafka.bootstrap`).
    #[arg(long, env = "STRAIT_KAFKA")]
    pub kafka: Option<String>,
    #[command(flatten)]
    pub kafka_security: KafkaSecurityArgs,
}

impl GrpcKafkaArgs {
    pub fn load(&self) -> Result<GrpcKafkaConfig, ConfigError> {
        let mut config: GrpcKafkaConfig = load(&self.config)?;
        if let Some(listen) = self.listen {
            config.listen = listen;
        }
        if let Some(kafka) = &self.kafka {
            config.kafka.bootstrap = kafka.clone();
        }
        let kafka = &mut config.kafka;
        self.kafka_security.apply(&mut kafka.tls, &mut kafka.sasl)?;
        config.validate()?;
        Ok(config)
    }
}

/// `strait-proxy kafka-grpc`: answer request records by calling the real gRPC service.
#[derive(Debug, Clone, clap::Args)]
#[command(
    after_help = "Example:\n  strait-proxy kafka-grpc --kafka kafka:9092 --target http://greeter:50051 \
    --config kafka-grpc.yaml\n\n\
    with kafka-grpc.yaml:\n\
    \x20 kafka: { bootstrap: kafka:9092 }\n\
    \x20 target: http://greeter:50051              # h2c, or https:// with targetTls.ca\n\
    \x20 groupId: greeter-backend                  # replicas with one id share the partitions\n\
    \x20 routes: [{ topic: greeter-requests, replyTo: [greeter-replies] }]   # the only reply topics written\n\
    \x20 concurrency: 64\n\
    \x20 callTimeout: 30s\n\
    \x20 retries: { attempts: 5, initialBackoff: 100ms, maxBackoff: 5s }   # on UNAVAILABLE\n\
    \x20 deadLetterTopic: greeter-dead-letters\n\
    \x20 # TLS and SASL to Kafka: kafka.tls and kafka.sasl, or the --kafka-tls-*/--kafka-sasl-* flags\n\n\
    Requests come from `strait-proxy grpc-kafka` (or any producer using Zilla's record layout); \
    answers go to each request's zilla:reply-to topic when its route's replyTo lists it (others are \
    refused without calling the service)."
)]
pub struct KafkaGrpcArgs {
    /// YAML config: request topics, target, group, retries (see docs/architecture.md).
    #[arg(long, env = "STRAIT_CONFIG")]
    pub config: PathBuf,
    /// Kafka bootstrap servers, HOST:PORT[,HOST:PORT] (overrides `kafka.bootstrap`).
    #[arg(long, env = "STRAIT_KAFKA")]
    pub kafka: Option<String>,
    /// The real gRPC service, http://HOST:PORT or https://HOST:PORT (overrides `target`).
    #[arg(long, env = "STRAIT_TARGET")]
    pub target: Option<String>,
    #[command(flatten)]
    pub kafka_security: KafkaSecurityArgs,
}

impl KafkaGrpcArgs {
    pub fn load(&self) -> Result<KafkaGrpcConfig, ConfigError> {
        let mut config: KafkaGrpcConfig = load(&self.config)?;
        if let Some(kafka) = &self.kafka {
            config.kafka.bootstrap = kafka.clone();
        }
        if let Some(target) = &self.target {
            config.target = target.clone();
        }
        let kafka = &mut config.kafka;
        self.kafka_security.apply(&mut kafka.tls, &mut kafka.sasl)?;
        config.validate()?;
        Ok(config)
    }
}
