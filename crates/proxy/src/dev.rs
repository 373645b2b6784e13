//! `strait-proxy dev`: everything in one process for trying Strait out.
//!
//! An embedded Kafka (librdkafka's mock cluster: in-memory, on a local port any Kafka client
//! can use) or a real cluster (`--kafka`); s-proxy with Kafka as the MQTT broker; r-proxy
//! serving MQTT clients and relaying to that s-proxy; grpc-kafka and kafka-grpc with a demo
//! service (`strait.demo.v1.Echo`, served in-process) reached only through Kafka. Each role runs
//! exactly as its own subcommand would, on a view of this process (`Process::part`) so their
//! readiness flags stay apart; `/readyz` turns ready once every part is, and then the ways to
//! reach everything are printed.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context as _, bail};
use rdkafka::admin::{NewTopic, TopicReplication};
use rdkafka::mocking::MockCluster;
use strait_config::grpc::{GrpcKafkaConfig, GrpcRoute, KafkaGrpcConfig};
use strait_config::kafka::{KafkaConnection, KafkaSasl, KafkaTls};
use strait_config::mqtt_kafka::KafkaConfig;
use strait_config::relay::Upstream;
use strait_config::{RProxyConfig, SProxyConfig, Validate as _};
use strait_runtime::Process;
use tokio::task::JoinSet;
use tracing::Instrument as _;

use crate::cli::{KafkaGrpcArgs, KafkaSecurityArgs};
use strait_grpc_kafka::{grpckafka, kafkagrpc};
use strait_kafka::KafkaClients;
use strait_mqtt_kafka::TopicCheck;
use strait_mqtt_relay::{rproxy, sproxy};

/// The demo service's generated code (proto/strait/demo/v1/echo.proto).
pub use crate::demo::proto as demo;

/// The readiness flag of `dev` itself: set once every part is ready and the banner is printed
/// (each part's own flags are `PART/FLAG`).
pub const READINESS: &str = "dev";

/// What the embedded Kafka is, wherever it is named (logs, `--help`, the banner).
pub const EMBEDDED_LABEL: &str = "in-memory, for trying out; nothing survives a restart";

const DEMO_PROTO: &str = crate::demo::PROTO;
const DEMO_PROTO_FILE: &str = "echo.proto";
const DEMO_SERVICE: &str = crate::demo::SERVICE;
const DEMO_REQUESTS: &str = "demo-echo-requests";
const DEMO_REPLIES: &str = "demo-echo-replies";
const DEMO_GROUP: &str = "strait-dev-demo-echo";
/// Partitions of every topic dev creates.
const PARTITIONS: i32 = 3;

/// `strait-proxy dev`: MQTT and gRPC through Kafka in one process, for trying Strait out.
#[derive(Debug, Clone, clap::Args)]
#[command(
    long_about = "Everything in one process, for trying Strait out: an embedded Kafka \
    (librdkafka's mock cluster, on a local port any Kafka client can use; in-memory, for \
    trying out; nothing survives a restart, and each partition keeps only its latest ~5 MB), \
    or a real cluster with --kafka; s-proxy with Kafka as the MQTT broker; r-proxy serving MQTT \
    clients; grpc-kafka and kafka-grpc with a demo gRPC service reached through Kafka.\n\n\
    Once everything listens it prints how to reach each part (mosquitto_sub/mosquitto_pub, \
    kcat, grpcurl lines) and /readyz turns ready. Ctrl-C stops it.",
    after_help = "Examples:\n  strait-proxy dev\n  \
    strait-proxy dev --mqtt 0.0.0.0:1883 --grpc 0.0.0.0:50051\n  \
    strait-proxy dev --kafka localhost:9092      # a real cluster: topics are created there\n  \
    strait-proxy dev --kafka localhost:9093 --kafka-tls-ca ca.crt --kafka-sasl-mechanism \
    SCRAM-SHA-512 --kafka-sasl-username strait --kafka-sasl-password-file password.txt\n\n\
    Topics: mqtt-messages, mqtt-retained, mqtt-sessions (MQTT, Zilla's layout), \
    demo-echo-requests and demo-echo-replies (gRPC)."
)]
pub struct DevArgs {
    /// MQTT listener for clients (MQTT 3.1.1 and 5 over TCP).
    #[arg(long, default_value = "127.0.0.1:1883")]
    pub mqtt: SocketAddr,

    /// gRPC listener for clients of the demo service (answered through Kafka).
    #[arg(long, default_value = "127.0.0.1:50051")]
    pub grpc: SocketAddr,

    /// Use this Kafka cluster (HOST:PORT[,HOST:PORT…]) instead of the embedded one, which is
    /// in-memory, for trying out; nothing survives a restart. The topics are created there.
    #[arg(long, env = "STRAIT_KAFKA")]
    pub kafka: Option<String>,

    /// TLS and SASL to the cluster of --kafka (the embedded Kafka speaks plaintext only).
    #[command(flatten)]
    pub kafka_security: KafkaSecurityArgs,
}

/// The Kafka the parts use.
enum Kafka {
    Embedded(EmbeddedKafka),
    External(KafkaConnection),
}

impl Kafka {
    fn bootstrap(&self) -> &str {
        match self {
            Self::Embedded(embedded) => &embedded.bootstrap,
            Self::External(connection) => &connection.bootstrap,
        }
    }

    /// TLS and SASL settings of every part's clients.
    fn security(&self) -> (Option<KafkaTls>, Option<KafkaSasl>) {
        match self {
            Self::Embedded(_) => (None, None),
            Self::External(connection) => (connection.tls.clone(), connection.sasl.clone()),
        }
    }
}

/// librdkafka's mock cluster, owned by a thread of its own for the rest of the process:
/// `MockCluster` holds a raw pointer (it is not `Send`), so it cannot live in a task of the
/// multi-threaded runtime. It is never stopped before the process exits: the parts' Kafka
/// clients (readers on their own threads) may still be closing after the parts stopped, and
/// would log connection errors if it went first; its contents go with the process anyway.
struct EmbeddedKafka {
    bootstrap: String,
}

impl EmbeddedKafka {
    /// Starts the cluster with `topics` (name, partitions) created.
    fn start(topics: Vec<(String, i32)>) -> anyhow::Result<Self> {
        let (started, bootstrap) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("embedded-kafka".into())
            .spawn(move || {
                let cluster = match Self::create(&topics) {
                    Ok(cluster) => cluster,
                    Err(error) => {
                        let _ = started.send(Err(error));
                        return;
                    }
                };
                let _ = started.send(Ok(cluster.bootstrap_servers()));
                loop {
                    std::thread::park();
                }
            })
            .context("starting the embedded Kafka's thread")?;
        let bootstrap = bootstrap
            .recv()
            .context("the embedded Kafka's thread ended")??;
        Ok(Self { bootstrap })
    }

    fn create(
        topics: &[(String, i32)],
    ) -> anyhow::Result<MockCluster<'static, rdkafka::producer::DefaultProducerContext>> {
        let cluster = MockCluster::new(1).context("creating librdkafka's mock cluster")?;
        // The mock has no CreateTopics: its own API creates them.
        for (topic, partitions) in topics {
            cluster
                .create_topic(topic, *partitions, 1)
                .with_context(|| format!("creating topic {topic} in the embedded Kafka"))?;
        }
        Ok(cluster)
    }
}

/// Runs every part until shutdown, or until one of them fails (which stops the others).
pub async fn run(args: DevArgs, process: &Process) -> anyhow::Result<()> {
    let ready = process.health.flag(READINESS);
    if args.kafka.is_none() && args.kafka_security.any() {
        bail!(
            "--kafka-tls-*/--kafka-sasl-* need --kafka HOST:PORT: the embedded Kafka speaks \
             plaintext only"
        );
    }
    let mqtt_topics = KafkaConfig::new(String::new()).topics;
    let kafka = match &args.kafka {
        None => {
            let topics = [
                &mqtt_topics.messages,
                &mqtt_topics.retained,
                &mqtt_topics.sessions,
            ]
            .into_iter()
            .cloned()
            .chain([DEMO_REQUESTS.to_string(), DEMO_REPLIES.to_string()])
            .map(|topic| (topic, PARTITIONS))
            .collect();
            let embedded =
                tokio::task::spawn_blocking(move || EmbeddedKafka::start(topics)).await??;
            tracing::info!(
                bootstrap = %embedded.bootstrap,
                "embedded Kafka (librdkafka's mock cluster) listening: {EMBEDDED_LABEL}"
            );
            Kafka::Embedded(embedded)
        }
        Some(bootstrap) => {
            let mut connection = KafkaConnection::new(bootstrap.clone());
            args.kafka_security
                .apply(&mut connection.tls, &mut connection.sasl)?;
            connection.check()?;
            let clients = KafkaClients::new(&connection)?;
            if !clients.wait_for_cluster(&process.shutdown.token()).await? {
                return Ok(());
            }
            create_demo_topics(&clients, bootstrap).await?;
            tracing::info!(%bootstrap, "using the Kafka cluster given with --kafka");
            Kafka::External(connection)
        }
    };
    let dir = std::env::temp_dir().join(format!("strait-dev-{}", std::process::id()));
    let result = serve(&args, process, &kafka, &dir, ready).await;
    let _ = std::fs::remove_dir_all(&dir);
    result
}

type Parts = JoinSet<(&'static str, anyhow::Result<()>)>;

async fn serve(
    args: &DevArgs,
    process: &Process,
    kafka: &Kafka,
    dir: &Path,
    ready: strait_runtime::ReadinessFlag,
) -> anyhow::Result<()> {
    let bootstrap = kafka.bootstrap();
    let mut parts = Parts::new();
    // Each part's readiness, watched from here.
    let mut views = Vec::new();
    let mut part = |name: &'static str| {
        views.push(process.health.scoped(name));
        (process.part(name), tracing::info_span!("dev", role = name))
    };

    // s-proxy: Kafka is the MQTT broker. Its gRPC listener is only for the r-proxy below.
    let (s_process, span) = part("s-proxy");
    let mut s_config = SProxyConfig {
        listen: SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0),
        upstream: Upstream::Kafka,
        ..SProxyConfig::default()
    };
    let (tls, sasl) = kafka.security();
    let mut kafka_config = KafkaConfig::new(bootstrap.to_string());
    kafka_config.create_topics = matches!(kafka, Kafka::External(_));
    (kafka_config.tls, kafka_config.sasl) = (tls.clone(), sasl.clone());
    s_config.kafka = Some(Box::new(kafka_config));
    s_config.validate()?;
    let check = match kafka {
        Kafka::Embedded(_) => TopicCheck::EmbeddedKafka,
        Kafka::External(_) => TopicCheck::Verify,
    };
    let (s_addr, serving) = sproxy::start(s_config, &s_process, check)
        .instrument(span.clone())
        .await
        .context("s-proxy")?;
    parts.spawn(async move { ("s-proxy", serving.await.map_err(Into::into)) }.instrument(span));

    // r-proxy: MQTT clients, relayed to that s-proxy.
    let (r_process, span) = part("r-proxy");
    let mut r_config = RProxyConfig::new(vec![format!("http://{s_addr}")]);
    r_config.listeners.tcp = Some(args.mqtt);
    r_config.validate()?;
    let (bound, serving) = rproxy::start(r_config, &r_process)
        .instrument(span.clone())
        .await
        .context("r-proxy")?;
    let mqtt = bound
        .listeners
        .first()
        .map(|(_, addr)| *addr)
        .context("r-proxy bound no listener")?;
    parts.spawn(async move { ("r-proxy", serving.await.map_err(Into::into)) }.instrument(span));

    // The demo service, reached only through Kafka, and the two gRPC roles around it.
    let echo = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .await
        .context("binding the demo service")?;
    let echo_addr = echo.local_addr()?;
    let shutdown = process.shutdown.token();
    parts.spawn(async move {
        let served = crate::demo::serve(echo, Duration::ZERO, shutdown).await;
        ("demo service", served)
    });

    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let proto = dir.join(DEMO_PROTO_FILE);
    std::fs::write(&proto, DEMO_PROTO).with_context(|| format!("writing {}", proto.display()))?;
    let mut g_config = GrpcKafkaConfig::new(
        bootstrap,
        vec![proto],
        vec![GrpcRoute::produce(
            &format!("{DEMO_SERVICE}/*"),
            DEMO_REQUESTS,
            Some(DEMO_REPLIES),
        )],
    );
    g_config.listen = args.grpc;
    (g_config.kafka.tls, g_config.kafka.sasl) = (tls.clone(), sasl.clone());
    g_config.validate()?;
    write_config(dir, "grpc-kafka.yaml", &g_config)?;
    let (g_process, span) = part("grpc-kafka");
    let (grpc, serving) = grpckafka::start(g_config, &g_process)
        .instrument(span.clone())
        .await
        .context("grpc-kafka")?;
    parts.spawn(async move { ("grpc-kafka", serving.await.map_err(Into::into)) }.instrument(span));

    // kafka-grpc reads its config file, as it does as a subcommand: the file is the example.
    let mut k_config = KafkaGrpcConfig::new(
        bootstrap,
        &format!("http://{echo_addr}"),
        DEMO_GROUP,
        &[DEMO_REQUESTS],
    );
    k_config.routes[0].reply_to = vec![DEMO_REPLIES.into()];
    (k_config.kafka.tls, k_config.kafka.sasl) = (tls, sasl);
    k_config.validate()?;
    let k_args = KafkaGrpcArgs {
        config: write_config(dir, "kafka-grpc.yaml", &k_config)?,
        kafka: None,
        target: None,
        kafka_security: KafkaSecurityArgs::default(),
    };
    let (k_process, span) = part("kafka-grpc");
    parts.spawn(
        async move {
            let result = match k_args.load() {
                Ok(config) => kafkagrpc::run(config, &k_process).await.map_err(Into::into),
                Err(error) => Err(error.into()),
            };
            ("kafka-grpc", result)
        }
        .instrument(span),
    );

    let addresses = Addresses {
        kafka,
        mqtt,
        grpc,
        dir,
        admin: process.admin.local_addr(),
    };
    let first = tokio::select! {
        () = all_ready(&views) => {
            println!("{}", addresses.banner());
            tracing::info!(mqtt = %mqtt, grpc = %grpc, kafka = bootstrap, "dev ready");
            ready.set(true);
            parts.join_next().await
        }
        stopped = parts.join_next() => stopped,
    };
    let Some(first) = first else {
        return Ok(());
    };
    let requested = process.shutdown.is_triggered();
    process.shutdown.trigger();
    let (part, result) = first?;
    finish(parts, part, result, requested).await
}

/// After the first part stopped (and shutdown was triggered for the others): waits for them and
/// returns the first error. A part that stopped before shutdown was requested is an error too.
async fn finish(
    mut parts: Parts,
    first: &'static str,
    result: anyhow::Result<()>,
    requested: bool,
) -> anyhow::Result<()> {
    let mut error = match result {
        Err(e) => Some(e.context(first)),
        Ok(()) if !requested => Some(anyhow::anyhow!("{first} stopped on its own")),
        Ok(()) => None,
    };
    while let Some(stopped) = parts.join_next().await {
        let (part, result) = stopped?;
        if let (None, Err(e)) = (&error, result) {
            error = Some(e.context(part));
        }
    }
    match error {
        Some(error) => Err(error),
        None => Ok(()),
    }
}

/// Resolves once every part reports ready; says now and then which ones it still waits for.
async fn all_ready(views: &[strait_runtime::Health]) {
    let mut waited = Duration::ZERO;
    let step = Duration::from_millis(50);
    loop {
        let waiting: Vec<String> = views.iter().flat_map(|v| v.not_ready()).collect();
        if waiting.is_empty() {
            return;
        }
        if !waited.is_zero() && waited.as_millis().is_multiple_of(10_000) {
            tracing::info!(?waiting, "dev: waiting for parts to be ready");
        }
        tokio::time::sleep(step).await;
        waited += step;
    }
}

fn write_config<T: serde::Serialize>(
    dir: &Path,
    name: &str,
    config: &T,
) -> anyhow::Result<PathBuf> {
    let path = dir.join(name);
    std::fs::write(&path, strait_config::to_yaml(config))
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

/// The demo topics on a real cluster (s-proxy creates its own); existing ones are kept.
async fn create_demo_topics(clients: &KafkaClients, bootstrap: &str) -> anyhow::Result<()> {
    let admin = clients.admin()?;
    let topics = [DEMO_REQUESTS, DEMO_REPLIES]
        .map(|topic| NewTopic::new(topic, PARTITIONS, TopicReplication::Fixed(1)));
    let created = strait_kafka::create_topics(&admin, &topics, Duration::from_secs(10))
        .await
        .with_context(|| format!("creating the demo topics on {bootstrap}"))?;
    for topic in created {
        tracing::info!(topic, "created Kafka topic");
    }
    Ok(())
}

/// Where everything listens, for the banner.
struct Addresses<'a> {
    kafka: &'a Kafka,
    mqtt: SocketAddr,
    grpc: SocketAddr,
    dir: &'a Path,
    admin: SocketAddr,
}

/// An address to give clients: a wildcard listener is reached on loopback.
fn reachable(addr: SocketAddr) -> SocketAddr {
    if addr.ip().is_unspecified() {
        SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), addr.port())
    } else {
        addr
    }
}

impl Addresses<'_> {
    fn banner(&self) -> String {
        let bootstrap = self.kafka.bootstrap();
        let kafka_kind = match self.kafka {
            Kafka::Embedded(_) => format!("embedded Kafka: {EMBEDDED_LABEL}"),
            Kafka::External(_) => "the cluster given with --kafka".to_string(),
        };
        let mqtt = reachable(self.mqtt);
        let (host, port) = (mqtt.ip(), mqtt.port());
        let grpc = reachable(self.grpc);
        let dir = self.dir.display();
        let admin = reachable(self.admin);
        format!(
            "\n\
            Strait dev is ready: everything below runs in this one process.\n\
            \n\
            Kafka  {bootstrap}  ({kafka_kind})\n\
            \x20      topics mqtt-messages, mqtt-retained, mqtt-sessions; demo-echo-requests, demo-echo-replies\n\
            \x20      kcat -b {bootstrap} -C -t mqtt-messages -f '%k %s  %h\\n'\n\
            \n\
            MQTT   {mqtt}  (MQTT 3.1.1 and 5; every message is a record on mqtt-messages)\n\
            \x20      mosquitto_sub -h {host} -p {port} -t 'demo/#' -v\n\
            \x20      mosquitto_pub -h {host} -p {port} -t demo/hello -m hi\n\
            \n\
            gRPC   {grpc}  ({DEMO_SERVICE}: grpc-kafka -> {DEMO_REQUESTS} -> kafka-grpc -> demo service -> {DEMO_REPLIES})\n\
            \x20      grpcurl -plaintext -import-path {dir} -proto {DEMO_PROTO_FILE} -d '{{\"text\":\"hi\"}}' {grpc} {DEMO_SERVICE}/Say\n\
            \x20      grpcurl -plaintext -import-path {dir} -proto {DEMO_PROTO_FILE} -d '{{\"text\":\"hi\",\"count\":3}}' {grpc} {DEMO_SERVICE}/Repeat\n\
            \x20      configs: {dir}/grpc-kafka.yaml, {dir}/kafka-grpc.yaml\n\
            \n\
            Admin  http://{admin}/metrics  /healthz  /readyz\n\
            \n\
            Ctrl-C stops everything.\n"
        )
    }
}
