//! The grpc-kafka (frontend) and kafka-grpc (backend) configs a `GrpcKafkaRoute` renders into.

use serde_json::json;
use strait_config::grpc::{GrpcAuth, GrpcJwtAuth, GrpcKafkaConfig, KafkaGrpcConfig};
use strait_config::tls::ServerTls;

use super::{
    BACKEND_TLS_DIR, JWT_KEYS_DIR, LISTENER_TLS_DIR, PROTOS_DIR, RenderError, group_id,
    request_topics,
};
use crate::grpc_route::spec::GrpcKafkaRoute;

/// `kafka_client_cert`: whether the Kafka TLS Secret holds a client certificate.
pub fn frontend_config(route: &GrpcKafkaRoute, kafka_client_cert: bool) -> GrpcKafkaConfig {
    let spec = &route.spec;
    // Through JSON so every field the resource does not set takes the proxy's own default.
    let mut config: GrpcKafkaConfig = serde_json::from_value(json!({
        "listen": format!("0.0.0.0:{}", spec.frontend.port),
        "kafka": spec.kafka.kafka_ref().connection(kafka_client_cert),
        "protos": {"paths": [PROTOS_DIR]},
        "routes": spec.routes,
    }))
    .expect("the route spec holds the grpc-kafka route type");
    if let Some(tls) = &spec.frontend.tls {
        let file = |name: &str| -> Option<std::path::PathBuf> {
            Some(format!("{LISTENER_TLS_DIR}/{name}").into())
        };
        config.tls = ServerTls {
            cert: file("tls.crt"),
            key: file("tls.key"),
            client_ca: file("ca.crt").filter(|_| tls.require_client_certificate),
        };
    }
    if let Some(auth) = &spec.auth {
        config.auth = GrpcAuth {
            jwt: auth.jwt.as_ref().map(|jwt| {
                let mut config = GrpcJwtAuth::new(
                    jwt.issuer.clone(),
                    format!("{JWT_KEYS_DIR}/{}", jwt.keys_secret.key),
                );
                config.audience = jwt.audience.clone();
                if !jwt.algorithms.is_empty() {
                    config.algorithms = jwt.algorithms.clone();
                }
                config.methods_claim = jwt.methods_claim.clone();
                Box::new(config)
            }),
            client_certificate: auth.client_certificate,
        };
    }
    if let Some(forward) = &spec.forward_metadata {
        config.forward_metadata = forward.clone();
    }
    if let Some(limits) = &spec.frontend.limits {
        config.limits = limits.clone();
    }
    config
}

pub fn backend_config(
    route: &GrpcKafkaRoute,
    kafka_client_cert: bool,
) -> Result<KafkaGrpcConfig, RenderError> {
    let backend = &route.spec.backend;
    let topics = request_topics(route);
    let topics: Vec<&str> = topics.iter().map(String::as_str).collect();
    let mut config = KafkaGrpcConfig::new(
        &route.spec.kafka.bootstrap,
        &backend.target,
        &group_id(route),
        &topics,
    );
    config.kafka = route.spec.kafka.kafka_ref().connection(kafka_client_cert);
    config.concurrency = backend.concurrency.max(1) as usize;
    if let Some(timeout) = &backend.call_timeout {
        config.call_timeout = humantime::parse_duration(timeout)
            .map_err(|e| RenderError::CallTimeout(format!("{timeout:?}: {e}")))?;
    }
    if let Some(retries) = &backend.retries {
        config.retries = retries.clone();
    }
    config.dead_letter_topic = backend.dead_letter_topic.clone();
    if let Some(zilla) = backend
        .zilla_group
        .as_ref()
        .filter(|_| backend.group_id.is_none())
    {
        config.group_id = None;
        config.zilla_group = Some(zilla.clone());
    }
    if let Some(acks) = backend.acks {
        config.acks = acks;
    }
    let duration = |field: &'static str, value: &Option<String>| {
        value
            .as_deref()
            .map(|text| {
                humantime::parse_duration(text).map_err(|e| RenderError::Duration {
                    field,
                    message: format!("{text:?}: {e}"),
                })
            })
            .transpose()
    };
    if let Some(window) = duration("dedupWindow", &backend.dedup_window)? {
        config.dedup_window = window;
    }
    if let Some(timeout) = duration("sessionTimeout", &backend.session_timeout)? {
        config.session_timeout = timeout;
    }
    // Negative values are refused by the CRD's schema.
    if let Some(bytes) = backend.dedup_max_bytes {
        config.dedup_max_bytes = bytes.max(0) as usize;
    }
    if let Some(bytes) = backend.dedup_max_answer_bytes {
        config.dedup_max_answer_bytes = bytes.max(0) as usize;
    }
    if let Some(tls) = &backend.tls {
        let file = |name: &str| Some(format!("{BACKEND_TLS_DIR}/{name}").into());
        config.target_tls.ca = file("ca.crt");
        if tls.client_certificate {
            config.target_tls.cert = file("tls.crt");
            config.target_tls.key = file("tls.key");
        }
    }
    // Replies go only to the reply topics the routes name for that request topic.
    for kafka_route in &mut config.routes {
        for produce in route.spec.routes.iter().filter_map(|r| r.produce.as_ref()) {
            if let Some(reply_to) = &produce.reply_to
                && produce.topic == kafka_route.topic
                && !kafka_route.reply_to.contains(reply_to)
            {
                kafka_route.reply_to.push(reply_to.clone());
            }
        }
    }
    Ok(config)
}
