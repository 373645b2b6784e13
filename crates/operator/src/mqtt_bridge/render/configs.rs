//! The r-proxy and s-proxy configs an `MqttBridge` renders into, and the Kafka topics of Kafka
//! mode.

use std::collections::BTreeMap;

use kube::ResourceExt;
use strait_config::auth::{AuthMode, JwtAuth};
use strait_config::mqtt_kafka::KafkaConfig;
use strait_config::relay::{BrokerConfig, Listeners, SProxyLink, Upstream};
use strait_config::tls::{ClientTls, ServerTls};
use strait_config::{RProxyConfig, SProxyConfig};

use super::{
    ACL_DIR, BROKER_TLS_DIR, Inputs, JWT_KEYS_DIR, LISTENER_TLS_DIR, PASSWORDS_DIR, RenderError,
    S_PROXY_PORT, link_file, link_tls, s_proxy_name, s_proxy_pods_name,
};
use crate::mqtt_bridge::spec::{ACL_KEY, MqttBridge, PASSWORDS_KEY};
use crate::relay_pki;
use crate::topics::TopicSpec;

pub fn r_proxy_config(bridge: &MqttBridge) -> RProxyConfig {
    let spec = &bridge.spec;
    let any = |port: i32| format!("0.0.0.0:{port}").parse().ok();
    let namespace = bridge.namespace().unwrap_or_default();
    let mut tls = ServerTls::default();
    if let Some(listener_tls) = &spec.listener.tls {
        tls.cert = Some(format!("{LISTENER_TLS_DIR}/tls.crt").into());
        tls.key = Some(format!("{LISTENER_TLS_DIR}/tls.key").into());
        if listener_tls.require_client_certificate {
            tls.client_ca = Some(format!("{LISTENER_TLS_DIR}/ca.crt").into());
        }
    }
    let mut config = RProxyConfig::new(Vec::new());
    let websocket = spec.listener.websocket.as_ref();
    let wss = spec.listener.websocket_tls();
    config.listeners = Listeners {
        tcp: spec.listener.plain_port().and_then(any),
        tls: spec.listener.tls.as_ref().and_then(|t| any(t.port)),
        ws: websocket.filter(|_| !wss).and_then(|w| any(w.port)),
        wss: websocket.filter(|_| wss).and_then(|w| any(w.port)),
        ws_path: spec
            .listener
            .websocket
            .as_ref()
            .map_or_else(|| "/mqtt".into(), |w| w.path.clone()),
    };
    config.tls = tls;
    // Every s-proxy pod, found through the headless Service and re-resolved as pods come and go,
    // so sessions spread over all of them; the certificate names the s-proxy Service.
    let scheme = if link_tls(bridge) { "https" } else { "http" };
    config.s_proxy = SProxyLink {
        endpoints: vec![format!(
            "{scheme}://{}.{namespace}.svc:{S_PROXY_PORT}",
            s_proxy_pods_name(bridge)
        )],
        discover: true,
        ..config.s_proxy
    };
    if link_tls(bridge) {
        config.s_proxy.server_name = Some(format!("{}.{namespace}.svc", s_proxy_name(bridge)));
        config.s_proxy.tls = ClientTls {
            ca: link_file(relay_pki::CA_CERT),
            cert: link_file("tls.crt"),
            key: link_file("tls.key"),
        };
    }
    config.limits = spec.limits.clone();
    config.auth.jwt = spec.auth.jwt.as_ref().map(|jwt| {
        let mut auth = JwtAuth::new(
            jwt.issuer.clone(),
            format!("{JWT_KEYS_DIR}/{}", jwt.keys_secret.key),
        );
        auth.audience = jwt.audience.clone();
        if !jwt.algorithms.is_empty() {
            auth.algorithms = jwt.algorithms.clone();
        }
        auth.client_id_claim = jwt.client_id_claim.clone();
        auth.publish_claim = jwt.publish_claim.clone();
        auth.subscribe_claim = jwt.subscribe_claim.clone();
        Box::new(auth)
    });
    let auth = &spec.auth;
    config.auth.mode = Some(auth.mode.unwrap_or(AuthMode::Anonymous));
    config.auth.password_file = (auth.password_secret.as_ref())
        .map(|s| format!("{PASSWORDS_DIR}/{}", s.key_or(PASSWORDS_KEY)).into());
    config.auth.acl_file =
        (auth.acl_config_map.as_ref()).map(|c| format!("{ACL_DIR}/{}", c.key_or(ACL_KEY)).into());
    config
}

pub fn s_proxy_config(bridge: &MqttBridge, inputs: &Inputs) -> Result<SProxyConfig, RenderError> {
    let upstream = &bridge.spec.upstream;
    let mut config = SProxyConfig {
        listen: format!("0.0.0.0:{S_PROXY_PORT}")
            .parse()
            .expect("valid address"),
        max_packet_size: bridge.spec.limits.max_packet_size,
        ..SProxyConfig::default()
    };
    if link_tls(bridge) {
        // Only holders of this bridge's r-proxy certificate may open relay streams.
        config.tls = ServerTls {
            cert: link_file("tls.crt"),
            key: link_file("tls.key"),
            client_ca: link_file(relay_pki::CA_CERT),
        };
    }
    if let Some(kafka) = &upstream.kafka {
        let mut target = KafkaConfig::new(kafka.bootstrap.clone());
        target.topics = kafka.topics.clone();
        // The operator creates the topics it can name (with the right cleanup policies); s-proxy
        // only checks them, and creates the topics of `${params}` routes, named only as devices
        // publish.
        target.create_topics = false;
        target.create_routed_topics = Some(true);
        if let Some(max) = kafka.max_routed_topics {
            target.max_routed_topics = max;
        }
        target.new_topics = kafka.new_topics.clone();
        target.qos0_acks = kafka.qos0_acks;
        target.routes = kafka.routes.clone();
        target.clients = kafka.clients.clone();
        target.limits = kafka.limits.clone();
        if let Some(queue) = kafka.session_queue {
            target.session_queue = queue as usize;
        }
        if let Some(lease) = &kafka.replica_lease {
            target.replica_lease =
                humantime::parse_duration(lease).map_err(|e| RenderError::ReplicaLease {
                    message: format!("{lease:?}: {e}"),
                })?;
        }
        let connection = kafka.kafka_ref().connection(inputs.kafka_client_cert);
        target.tls = connection.tls;
        target.sasl = connection.sasl;
        config.upstream = Upstream::Kafka;
        config.kafka = Some(Box::new(target));
        return Ok(config);
    }
    let broker = upstream.broker.as_ref().ok_or(RenderError::NoUpstream)?;
    let mut target = BrokerConfig::new(broker.address.clone());
    if let Some(tls) = &broker.tls {
        let mut files = ClientTls {
            ca: Some(format!("{BROKER_TLS_DIR}/ca.crt").into()),
            ..ClientTls::default()
        };
        if inputs.broker_client_cert {
            files.cert = Some(format!("{BROKER_TLS_DIR}/tls.crt").into());
            files.key = Some(format!("{BROKER_TLS_DIR}/tls.key").into());
        }
        target.tls = Some(files);
        target.server_name = tls.server_name.clone();
    }
    config.broker = Some(target);
    Ok(config)
}

/// The three topics of Kafka mode and those of routes without `${params}` (s-proxy creates the
/// others as devices first publish to them, with the same route settings).
pub fn kafka_topics(bridge: &MqttBridge) -> Vec<TopicSpec> {
    let Some(kafka) = &bridge.spec.upstream.kafka else {
        return Vec::new();
    };
    let compacted = BTreeMap::from([("cleanup.policy".to_string(), "compact".to_string())]);
    // The retained and sessions tables are compacted and read by key: their partitions are
    // never raised after creation.
    let topic = |name: &str, config: BTreeMap<String, String>| TopicSpec {
        name: name.into(),
        partitions: kafka.new_topics.partitions,
        replication_factor: kafka.new_topics.replication_factor,
        may_grow: !TopicSpec::compacted(&config),
        config,
    };
    let mut topics = vec![
        topic(&kafka.topics.messages, BTreeMap::new()),
        topic(&kafka.topics.retained, compacted.clone()),
        topic(&kafka.topics.sessions, compacted),
    ];
    topics.extend(
        kafka
            .routes
            .iter()
            .filter(|r| !r.messages.contains("${"))
            .map(|r| TopicSpec {
                partitions: r.partitions.unwrap_or(kafka.new_topics.partitions),
                ..topic(&r.messages, r.topic_config.clone())
            }),
    );
    topics
}
