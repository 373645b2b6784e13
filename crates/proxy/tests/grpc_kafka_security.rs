//! The gRPC front end's trust boundaries, end to end against the real Kafka: who may call which
//! method (JWT bearer tokens over TLS, client certificates), which metadata reaches Kafka,
//! which topics kafka-grpc writes replies to, and whose answer an idempotent retry gets.

mod grpc_support;

use std::net::SocketAddr;
use std::time::Duration;

use grpc_support::pb::echo_client::EchoClient;
use grpc_support::pb::{EchoReply, EchoRequest};
use grpc_support::*;
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::message::{Header, Headers as _, Message as _, OwnedHeaders};
use rdkafka::producer::FutureProducer;
use serde_json::json;
use strait_e2e::jwt::{Signer, now, write_jwks};
use strait_e2e::pki::Pki;
use strait_e2e::{http_get, require, unique_name, wait_until};
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity};
use tonic::{Code, Request, Status};

const ISSUER: &str = "https://auth.grpc.test/";

/// How the secured grpc-kafka authenticates its callers.
enum Mode {
    /// `auth.jwt` with `methodsClaim: grpc_methods`; tokens signed by this key.
    Jwt(Box<Signer>),
    /// `tls.clientCa` and `auth.clientCertificate`.
    ClientCertificates,
}

/// grpc-kafka over TLS with caller authentication, kafka-grpc and the test service.
struct Secured {
    bridge: Bridge,
    service: Service,
    pki: Pki,
    mode: Mode,
}

impl Secured {
    async fn start(bootstrap: &str, mode: Mode) -> Self {
        let (target, service) = start_service().await;
        let pki = Pki::new();
        let auth = match &mode {
            Mode::Jwt(signer) => {
                let jwks = pki.dir.join("jwks.json");
                write_jwks(&jwks, &[signer]);
                format!(
                    "tls: {{ cert: '{}', key: '{}' }}\n\
                     auth: {{ jwt: {{ issuer: '{ISSUER}', keysFile: '{}', methodsClaim: grpc_methods }} }}\n",
                    pki.path("tls.pem"),
                    pki.path("tls.key"),
                    jwks.display()
                )
            }
            Mode::ClientCertificates => format!(
                "tls: {{ cert: '{}', key: '{}', clientCa: '{}' }}\n\
                 auth: {{ clientCertificate: true }}\n",
                pki.path("tls.pem"),
                pki.path("tls.key"),
                pki.path("ca.pem")
            ),
        };
        let bridge = Bridge::start_full(bootstrap, &format!("http://{target}"), &auth, "").await;
        Self {
            bridge,
            service,
            pki,
            mode,
        }
    }

    /// A TLS channel to grpc-kafka, presenting `identity` when given.
    async fn channel(
        &self,
        identity: Option<Identity>,
    ) -> Result<Channel, tonic::transport::Error> {
        let mut tls =
            ClientTlsConfig::new().ca_certificate(Certificate::from_pem(self.pki.pem("ca.pem")));
        if let Some(identity) = identity {
            tls = tls.identity(identity);
        }
        Channel::from_shared(format!("https://localhost:{}", self.bridge.addr.port()))
            .unwrap()
            .tls_config(tls)
            .unwrap()
            .connect()
            .await
    }

    /// Caller `who`: a token for `sub: who` granting `methods`, or a client certificate with
    /// common name `who`.
    async fn caller(&self, who: &str, methods: &[&str]) -> Caller {
        match &self.mode {
            Mode::Jwt(signer) => Caller {
                client: EchoClient::new(self.channel(None).await.unwrap()),
                token: Some(signer.sign(&claims(who, methods))),
            },
            Mode::ClientCertificates => {
                let (cert, key) = self.pki.client(who);
                let channel = self
                    .channel(Some(Identity::from_pem(cert, key)))
                    .await
                    .unwrap_or_else(|e| panic!("TLS connect: {e:?}\n{}", self.bridge.logs()));
                Caller {
                    client: EchoClient::new(channel),
                    token: None,
                }
            }
        }
    }

    /// Waits until grpc-kafka's metrics show `count` calls refused for `reason`.
    async fn refused(&self, reason: &str, count: u32) {
        metric(
            self.bridge.front.admin,
            &format!(
                "strait_grpc_refused_total{{reason=\"{reason}\",role=\"grpc-kafka\"}} {count}"
            ),
        )
        .await;
    }
}

fn claims(sub: &str, methods: &[&str]) -> serde_json::Value {
    json!({"iss": ISSUER, "sub": sub, "exp": now() + 600, "grpc_methods": methods})
}

struct Caller {
    client: EchoClient<Channel>,
    token: Option<String>,
}

impl Caller {
    fn request<T>(&self, message: T, idempotency_key: Option<&str>) -> Request<T> {
        let mut request = with_timeout(message, CALL);
        if let Some(token) = &self.token {
            request
                .metadata_mut()
                .insert("authorization", format!("Bearer {token}").parse().unwrap());
        }
        if let Some(key) = idempotency_key {
            request
                .metadata_mut()
                .insert("idempotency-key", key.parse().unwrap());
        }
        request
    }

    async fn unary(&mut self, text: &str, idempotency_key: Option<&str>) -> Result<String, Status> {
        let request = self.request(grpc_support::request(text), idempotency_key);
        Ok(self.client.unary(request).await?.into_inner().text)
    }
}

/// Waits until the metrics at `admin` hold the line `want`.
async fn metric(admin: SocketAddr, want: &str) {
    wait_until(Duration::from_secs(10), want, || async {
        let (_, metrics) = http_get(admin, "/metrics").await.ok()?;
        metrics.lines().any(|l| l == want).then_some(())
    })
    .await;
}

#[tokio::test]
async fn calls_without_a_valid_token_or_outside_its_methods_are_refused() {
    let bootstrap = require!("KAFKA_BOOTSTRAP", "kafka");
    let front = Secured::start(&bootstrap, Mode::Jwt(Box::new(Signer::new("grpc")))).await;
    let mut unary_only = front.caller("alice", &["strait.test.v1.Echo/Unary"]).await;
    assert_eq!(
        unary_only
            .unary("granted", None)
            .await
            .unwrap_or_else(|s| panic!("{s}\n{}", front.bridge.logs())),
        "granted",
        "a permitted method over TLS is answered by the service"
    );

    let mut anonymous = front.caller("nobody", &[]).await;
    anonymous.token = None;
    let status = anonymous.unary("no token", None).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");

    // Same kid, another key: what an attacker who knows the issuer can make.
    let forger = Signer::new("grpc");
    anonymous.token = Some(forger.sign(&claims("alice", &["*"])));
    let status = anonymous.unary("forged", None).await.unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");

    let request = unary_only.request(grpc_support::request("not granted"), None);
    let status = unary_only.client.server_stream(request).await.unwrap_err();
    assert_eq!(status.code(), Code::PermissionDenied, "{status:?}");

    let mut everything = front.caller("bob", &["strait.test.v1.Echo/*"]).await;
    let request = everything.request(
        EchoRequest {
            text: "streamed".into(),
            repeat: 2,
            ..Default::default()
        },
        None,
    );
    let (replies, status) = collect(
        everything
            .client
            .server_stream(request)
            .await
            .unwrap()
            .into_inner(),
    )
    .await;
    assert!(status.is_none(), "{status:?}");
    assert_eq!(replies.len(), 2, "a wildcard grants the whole service");

    for text in ["no token", "forged", "not granted"] {
        assert_eq!(front.service.count(text), 0, "{text} reached the service");
    }
    front.refused("missing_token", 1).await;
    front.refused("bad_signature", 1).await;
    front.refused("method_not_permitted", 1).await;
}

/// Every header of every record in `topic` (from the beginning), once `count` records are read.
async fn record_headers(bootstrap: &str, topic: &str, count: usize) -> Vec<Vec<(String, Vec<u8>)>> {
    let consumer = inspector(bootstrap, topic);
    let mut records = Vec::new();
    while records.len() < count {
        let message = tokio::time::timeout(CALL, consumer.recv())
            .await
            .expect("the request records")
            .unwrap();
        let headers = message
            .headers()
            .map(|h| {
                h.iter()
                    .map(|h| (h.key.to_owned(), h.value.unwrap_or_default().to_vec()))
                    .collect()
            })
            .unwrap_or_default();
        records.push(headers);
    }
    records
}

#[tokio::test]
async fn a_requests_authorization_header_never_appears_in_any_kafka_record() {
    let bootstrap = require!("KAFKA_BOOTSTRAP", "kafka");
    let front = Secured::start(&bootstrap, Mode::Jwt(Box::new(Signer::new("grpc")))).await;
    let mut caller = front.caller("alice", &["*"]).await;
    let token = caller.token.clone().unwrap();
    let mut request = caller.request(grpc_support::request("with secrets"), None);
    let metadata = request.metadata_mut();
    metadata.insert("cookie", "session=s3cr3t".parse().unwrap());
    metadata.insert("proxy-authorization", "Basic czNjcjN0".parse().unwrap());
    metadata.insert("x-tenant", "acme".parse().unwrap());
    let reply = caller.client.unary(request).await.unwrap().into_inner();
    assert_eq!(
        reply.metadata.get("x-tenant").map(String::as_str),
        Some("acme"),
        "other metadata still reaches the service"
    );
    // The call wrote its request record and the end record; nothing else uses the topic.
    let records = record_headers(&bootstrap, &front.bridge.requests, 2).await;
    for headers in &records {
        let names: Vec<&str> = headers.iter().map(|(k, _)| k.as_str()).collect();
        for secret in [
            "meta:authorization",
            "meta:cookie",
            "meta:proxy-authorization",
        ] {
            assert!(!names.contains(&secret), "{secret} in {names:?}");
        }
        assert!(names.contains(&"meta:x-tenant"), "{names:?}");
        for (name, value) in headers {
            let value = String::from_utf8_lossy(value);
            assert!(
                !value.contains(&token) && !value.contains("s3cr3t"),
                "a credential in header {name}"
            );
        }
    }
}

#[tokio::test]
async fn two_callers_with_one_idempotency_key_each_get_their_own_answer() {
    let bootstrap = require!("KAFKA_BOOTSTRAP", "kafka");
    for mode in [
        Mode::Jwt(Box::new(Signer::new("grpc"))),
        Mode::ClientCertificates,
    ] {
        let front = Secured::start(&bootstrap, mode).await;
        let key = unique_name("order");
        let mut alice = front.caller("alice", &["*"]).await;
        let mut bob = front.caller("bob", &["*"]).await;
        let mine = alice.unary("alice's order", Some(&key)).await.unwrap();
        let theirs = bob.unary("bob's order", Some(&key)).await.unwrap();
        assert_eq!(
            (mine.as_str(), theirs.as_str()),
            ("alice's order", "bob's order")
        );
        // A retry by the first caller is still answered from Kafka, without a second call.
        let again = alice.unary("alice's order", Some(&key)).await.unwrap();
        assert_eq!(again, "alice's order");
        assert_eq!(front.service.count("alice's order"), 1);
        assert_eq!(front.service.count("bob's order"), 1);
    }
}

#[tokio::test]
async fn a_client_certificate_is_required_when_the_listener_asks_for_one() {
    let bootstrap = require!("KAFKA_BOOTSTRAP", "kafka");
    let front = Secured::start(&bootstrap, Mode::ClientCertificates).await;
    // rustls refuses the handshake; depending on timing the client sees it at connect or at
    // its first call.
    if let Ok(channel) = front.channel(None).await {
        let status = EchoClient::new(channel)
            .unary(with_timeout(grpc_support::request("anonymous"), CALL))
            .await
            .unwrap_err();
        assert_ne!(status.code(), Code::Ok);
    }
    assert_eq!(front.service.count("anonymous"), 0);
}

#[tokio::test]
async fn a_reply_to_outside_the_routes_topics_is_refused_and_counted() {
    let bootstrap = require!("KAFKA_BOOTSTRAP", "kafka");
    let (target, service) = start_service().await;
    let bridge = Bridge::start(&bootstrap, target).await;
    let elsewhere = unique_name("grpc-not-a-reply-topic");
    create_topic(&bootstrap, &elsewhere, 1).await;
    // What anyone allowed to write requests could write: a call answered into another topic.
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .create()
        .unwrap();
    let id = unique_name("hijack");
    let headers = {
        [
            ("zilla:service", "strait.test.v1.Echo"),
            ("zilla:method", "Unary"),
            ("zilla:reply-to", elsewhere.as_str()),
            ("zilla:correlation-id", id.as_str()),
        ]
        .into_iter()
        .fold(OwnedHeaders::new(), |h, (key, value)| {
            h.insert(Header {
                key,
                value: Some(value),
            })
        })
    };
    let body = prost::Message::encode_to_vec(&grpc_support::request("hijack"));
    produce_call(&producer, &bridge.requests, &id, &body, headers).await;
    metric(
        bridge.back[0].admin,
        "strait_grpc_refused_total{reason=\"reply_to_not_allowed\",role=\"kafka-grpc\"} 2",
    )
    .await;
    assert_eq!(service.count("hijack"), 0, "the service was not called");
    let peek: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &bootstrap)
        .create()
        .unwrap();
    let (_, high) = peek
        .fetch_watermarks(&elsewhere, 0, Duration::from_secs(10))
        .unwrap();
    assert_eq!(high, 0, "nothing was written to {elsewhere}");
    // The refused records are committed past: the route's own calls go on.
    let mut client = bridge.client().await;
    let reply: EchoReply = client
        .unary(with_timeout(grpc_support::request("allowed"), CALL))
        .await
        .unwrap_or_else(|s| panic!("{s}\n{}", bridge.logs()))
        .into_inner();
    assert_eq!(reply.text, "allowed");
}
