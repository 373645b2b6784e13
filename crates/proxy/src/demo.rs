//! `strait-proxy demo-service`: the demo gRPC service (`strait.demo.v1.Echo`) on its own, the
//! backend `strait-proxy dev` runs in-process. Deployed beside a GrpcKafkaRoute it makes the
//! example runnable as it is, and `--delay` makes it slow enough to build Kafka lag and watch the
//! operator scale kafka-grpc.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context as _;
use strait_runtime::Process;
use tonic::{Request, Response, Status};

/// The demo service's generated code (proto/strait/demo/v1/echo.proto).
pub mod proto {
    tonic::include_proto!("strait.demo.v1");
}

/// The .proto file a route needs to serve the demo service (grpc-kafka's `protos`).
pub const PROTO: &str = include_str!("../../../proto/strait/demo/v1/echo.proto");
/// The demo service's full name.
pub const SERVICE: &str = "strait.demo.v1.Echo";
/// Set once the demo service listens.
pub const READINESS: &str = "demo-service";
/// Most answers `Repeat` gives.
const MAX_REPEAT: u32 = 100;

/// `strait-proxy demo-service`.
#[derive(Debug, Clone, clap::Args)]
#[command(
    long_about = "The demo gRPC service strait.demo.v1.Echo (proto/strait/demo/v1/echo.proto) \
    on its own: Say answers with the request's text, Repeat streams it `count` times (default 3, \
    at most 100). It is what `strait-proxy dev` calls through Kafka, and a backend to try a \
    GrpcKafkaRoute with (examples/grpckafkaroute.yaml)."
)]
pub struct DemoServiceArgs {
    /// Address to serve the demo service on.
    #[arg(long, env = "STRAIT_DEMO_LISTEN", default_value = "0.0.0.0:50051")]
    pub listen: SocketAddr,
    /// How long each call waits before it answers (e.g. 200ms): a slow service builds lag on the
    /// request topic, for trying kafka-grpc's autoscaling.
    #[arg(long, env = "STRAIT_DEMO_DELAY", default_value = "0s", value_parser = humantime::parse_duration)]
    pub delay: Duration,
}

/// Serves the demo service until shutdown.
pub async fn run(args: DemoServiceArgs, process: &Process) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding the demo service to {}", args.listen))?;
    tracing::info!(listen = %args.listen, delay = ?args.delay, service = SERVICE, "serving the demo service");
    process.health.flag(READINESS).set(true);
    serve(listener, args.delay, process.shutdown.token()).await
}

/// Serves the demo service on `listener` until `shutdown` fires.
pub async fn serve(
    listener: tokio::net::TcpListener,
    delay: Duration,
    shutdown: tokio_util::sync::CancellationToken,
) -> anyhow::Result<()> {
    tonic::transport::Server::builder()
        .add_service(proto::echo_server::EchoServer::new(Echo { delay }))
        .serve_with_incoming_shutdown(
            // Small answers go out at once (tonic sets this only on listeners it binds).
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
            shutdown.cancelled_owned(),
        )
        .await
        .context("the demo service failed")
}

/// Answers with what it was sent, after `delay`.
struct Echo {
    delay: Duration,
}

#[tonic::async_trait]
impl proto::echo_server::Echo for Echo {
    async fn say(
        &self,
        request: Request<proto::EchoRequest>,
    ) -> Result<Response<proto::EchoReply>, Status> {
        tokio::time::sleep(self.delay).await;
        let text = request.into_inner().text;
        Ok(Response::new(proto::EchoReply { text, index: 1 }))
    }

    type RepeatStream = futures::stream::Iter<std::vec::IntoIter<Result<proto::EchoReply, Status>>>;

    async fn repeat(
        &self,
        request: Request<proto::EchoRequest>,
    ) -> Result<Response<Self::RepeatStream>, Status> {
        tokio::time::sleep(self.delay).await;
        let request = request.into_inner();
        let count = match request.count {
            0 => 3,
            n => n.min(MAX_REPEAT),
        };
        let replies: Vec<_> = (1..=count)
            .map(|index| {
                Ok(proto::EchoReply {
                    text: request.text.clone(),
                    index,
                })
            })
            .collect();
        Ok(Response::new(futures::stream::iter(replies)))
    }
}
