//! The rendering rules, on bridges built from specs (no cluster).

use super::*;
use strait_config::tls::{ClientTls, ServerTls};
use strait_config::{RProxyConfig, SProxyConfig};

use crate::mqtt_bridge::spec::MqttBridgeSpec;

/// A bridge from a spec; one without `auth` says `mode: anonymous`, as the CRD requires.
fn bridge(spec: serde_json::Value) -> MqttBridge {
    let spec: MqttBridgeSpec = serde_json::from_value(spec).unwrap();
    let mut bridge = MqttBridge::new("devices", spec);
    bridge.metadata.namespace = Some("iot".into());
    bridge.metadata.uid = Some("1234".into());
    bridge
}

fn inputs() -> Inputs {
    Inputs {
        image: "strait/strait-proxy:test".into(),
        broker_client_cert: false,
        kafka_client_cert: false,
        kafka_credentials: None,
        r_proxy_files: None,
        s_proxy_replicas: Replicas::Spec,
        r_proxy_replicas: Replicas::Spec,
    }
}

#[test]
fn broker_bridge_renders_configs_the_proxies_accept() {
    let bridge = bridge(json!({
        "upstream": {"broker": {"address": "mosquitto.mqtt.svc:1883"}},
        "listener": {"port": 1883, "websocket": {"port": 8080, "path": "/mqtt"}},
        "limits": {"maxPacketSize": 65536},
    }));
    let rendered = render(&bridge, &inputs()).unwrap();
    let data = rendered.config_map.data.unwrap();
    let r: RProxyConfig = serde_saphyr::from_str(&data["r-proxy.yaml"]).unwrap();
    r.validate().unwrap();
    assert_eq!(
        r.s_proxy.endpoints,
        ["https://devices-s-proxy-pods.iot.svc:50516"]
    );
    assert_eq!(r.limits.max_packet_size, 65536);
    assert_eq!(r.listeners.ws.unwrap().port(), 8080);
    let s: SProxyConfig = serde_saphyr::from_str(&data["s-proxy.yaml"]).unwrap();
    s.validate().unwrap();
    assert_eq!(s.broker.unwrap().address, "mosquitto.mqtt.svc:1883");
    assert_eq!(
        rendered.endpoints,
        [
            "mqtt://devices.iot.svc:1883",
            "ws://devices.iot.svc:8080/mqtt"
        ]
    );
    for deployment in &rendered.deployments {
        let owner = &deployment.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!(
            (owner.kind.as_str(), owner.controller),
            ("MqttBridge", Some(true))
        );
    }
}

#[test]
fn a_config_change_changes_the_pod_template_hash() {
    let hash = |bridge: &MqttBridge| {
        let rendered = render(bridge, &inputs()).unwrap();
        rendered.deployments[1]
            .spec
            .as_ref()
            .unwrap()
            .template
            .metadata
            .as_ref()
            .unwrap()
            .annotations
            .as_ref()
            .unwrap()[crate::workload::CONFIG_HASH]
            .clone()
    };
    let before = bridge(json!({"upstream": {"broker": {"address": "b:1883"}}}));
    let after = bridge(json!({
        "upstream": {"broker": {"address": "b:1883"}},
        "limits": {"maxPacketSize": 4096},
    }));
    assert_ne!(hash(&before), hash(&after));
    assert_eq!(hash(&before), hash(&before.clone()));
}

#[test]
fn jwt_keys_secret_is_mounted_whole_and_named_by_the_r_proxy_config() {
    let bridge = bridge(json!({
        "upstream": {"broker": {"address": "b:1883"}},
        "auth": {"mode": "jwt", "jwt": {
            "issuer": "https://auth.example.com/",
            "keysSecret": {"name": "device-jwks"},
            "algorithms": ["ES256"],
            "publishClaim": "mqtt_publish",
        }},
        "listener": {"tls": {"secretName": "devices-tls"}},
    }));
    let rendered = render(&bridge, &inputs()).unwrap();
    let data = rendered.config_map.data.unwrap();
    let r: RProxyConfig = serde_saphyr::from_str(&data["r-proxy.yaml"]).unwrap();
    r.validate().unwrap();
    let jwt = r.auth.jwt.unwrap();
    assert_eq!(jwt.keys_file.to_str(), Some("/etc/strait/jwt/jwks.json"));
    assert_eq!(jwt.issuer, "https://auth.example.com/");
    assert_eq!(jwt.algorithms, [strait_config::auth::JwtAlgorithm::ES256]);
    assert_eq!(jwt.publish_claim.as_deref(), Some("mqtt_publish"));
    let pod = rendered.deployments[1]
        .spec
        .as_ref()
        .unwrap()
        .template
        .spec
        .clone()
        .unwrap();
    let volume = pod
        .volumes
        .unwrap()
        .into_iter()
        .find(|v| v.name == "jwt-keys")
        .unwrap();
    assert_eq!(
        volume.secret.unwrap().secret_name.as_deref(),
        Some("device-jwks")
    );
    let mount = pod.containers[0]
        .volume_mounts
        .clone()
        .unwrap()
        .into_iter()
        .find(|m| m.name == "jwt-keys")
        .unwrap();
    assert_eq!(mount.mount_path, "/etc/strait/jwt");
    assert_eq!(
        mount.sub_path, None,
        "a subPath mount would never see a rotated key"
    );
    assert!(bridge.spec.secrets().contains(&(
        "device-jwks".to_string(),
        "spec.auth.jwt.keysSecret.name".to_string()
    )));
}

#[test]
fn tls_secrets_are_mounted_and_referenced_by_path() {
    let bridge = bridge(json!({
        "upstream": {"broker": {"address": "b:8883", "tls": {"secretName": "broker-ca"}}},
        "listener": {"tls": {"secretName": "devices-tls", "requireClientCertificate": true}},
    }));
    let rendered = render(&bridge, &inputs()).unwrap();
    let data = rendered.config_map.data.unwrap();
    let r: RProxyConfig = serde_saphyr::from_str(&data["r-proxy.yaml"]).unwrap();
    assert_eq!(
        r.tls.client_ca.unwrap().to_str(),
        Some("/etc/strait/tls/listener/ca.crt")
    );
    let s: SProxyConfig = serde_saphyr::from_str(&data["s-proxy.yaml"]).unwrap();
    let tls = s.broker.unwrap().tls.unwrap();
    assert_eq!(
        tls.ca.unwrap().to_str(),
        Some("/etc/strait/tls/broker/ca.crt")
    );
    assert_eq!(tls.cert, None);
    let volumes = |i: usize| {
        rendered.deployments[i]
            .spec
            .as_ref()
            .unwrap()
            .template
            .spec
            .as_ref()
            .unwrap()
            .volumes
            .as_ref()
            .unwrap()
            .iter()
            .filter_map(|v| v.secret.as_ref()?.secret_name.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(volumes(0), ["devices-s-proxy-link-tls", "broker-ca"]);
    assert_eq!(volumes(1), ["devices-r-proxy-link-tls", "devices-tls"]);
}

fn configs(rendered: &Rendered) -> (RProxyConfig, SProxyConfig) {
    let data = rendered.config_map.data.as_ref().unwrap();
    let r: RProxyConfig = serde_saphyr::from_str(&data["r-proxy.yaml"]).unwrap();
    let s: SProxyConfig = serde_saphyr::from_str(&data["s-proxy.yaml"]).unwrap();
    r.validate().unwrap();
    s.validate().unwrap();
    (r, s)
}

fn service_ports(rendered: &Rendered) -> Vec<(String, i32)> {
    let service = rendered.services.iter().find(|s| s.name_any() == "devices");
    let spec = service.unwrap().spec.as_ref().unwrap();
    let ports = spec.ports.as_ref().unwrap();
    ports
        .iter()
        .map(|p| (p.name.clone().unwrap(), p.port))
        .collect()
}

#[test]
fn a_bridge_with_only_a_broker_address_gets_a_mutual_tls_relay_link() {
    let bridge = bridge(json!({"upstream": {"broker": {"address": "b:1883"}}}));
    let rendered = render(&bridge, &inputs()).unwrap();
    let (r, s) = configs(&rendered);
    assert_eq!(
        r.s_proxy.endpoints,
        ["https://devices-s-proxy-pods.iot.svc:50516"]
    );
    let link = |f: &str| {
        Some(std::path::PathBuf::from(format!(
            "/etc/strait/tls/link/{f}"
        )))
    };
    assert_eq!(
        r.s_proxy.tls,
        ClientTls {
            ca: link("ca.crt"),
            cert: link("tls.crt"),
            key: link("tls.key"),
        }
    );
    assert_eq!(
        s.tls,
        ServerTls {
            cert: link("tls.crt"),
            key: link("tls.key"),
            client_ca: link("ca.crt"),
        },
        "s-proxy requires r-proxy's client certificate"
    );
    // The server certificate covers the name r-proxy dials.
    assert!(s_proxy_names(&bridge).contains(&"devices-s-proxy.iot.svc".to_string()));
    // The one thing left open is said so: the broker, not r-proxy, judges devices.
    assert_eq!(rendered.warnings.len(), 1, "{:?}", rendered.warnings);
    assert!(rendered.warnings[0].contains("spec.auth.mode unset"));
    assert_eq!(service_ports(&rendered), [("mqtt".to_string(), 1883)]);
}

#[test]
fn a_plain_relay_link_only_when_spelled_out_and_then_with_a_warning() {
    let bridge = bridge(json!({
        "upstream": {"broker": {"address": "b:1883"}},
        "relay": {"plaintext": true},
    }));
    let rendered = render(&bridge, &inputs()).unwrap();
    let (r, s) = configs(&rendered);
    assert_eq!(
        r.s_proxy.endpoints,
        ["http://devices-s-proxy-pods.iot.svc:50516"]
    );
    assert!(!s.tls.is_enabled());
    assert!(
        rendered
            .warnings
            .iter()
            .any(|w| w.contains("spec.relay.plaintext")),
        "{:?}",
        rendered.warnings
    );
}

#[test]
fn with_a_tls_listener_there_is_no_plain_port_unless_one_is_given() {
    let tls = bridge(json!({
        "upstream": {"broker": {"address": "b:1883"}},
        "listener": {"tls": {"secretName": "devices-tls"}, "websocket": {}},
    }));
    let rendered = render(&tls, &inputs()).unwrap();
    assert_eq!(
        service_ports(&rendered),
        [("mqtts".to_string(), 8883), ("wss".to_string(), 8080)],
        "no plain MQTT and WebSocket over TLS"
    );
    let (r, _) = configs(&rendered);
    assert_eq!((r.listeners.tcp, r.listeners.ws), (None, None));
    assert_eq!(r.listeners.wss.unwrap().port(), 8080);
    assert_eq!(
        rendered.endpoints,
        [
            "mqtts://devices.iot.svc:8883",
            "wss://devices.iot.svc:8080/mqtt"
        ]
    );

    let both = bridge(json!({
        "upstream": {"broker": {"address": "b:1883"}},
        "listener": {"port": 1883, "tls": {"secretName": "devices-tls"}, "websocket": {"tls": false}},
    }));
    let rendered = render(&both, &inputs()).unwrap();
    assert_eq!(
        service_ports(&rendered),
        [
            ("mqtt".to_string(), 1883),
            ("mqtts".to_string(), 8883),
            ("ws".to_string(), 8080)
        ]
    );
}

#[test]
fn tokens_over_a_plain_listener_are_refused_unless_allowed() {
    let jwt = json!({"issuer": "https://auth.example.com/", "keysSecret": {"name": "jwks"}});
    let plain = bridge(json!({
        "upstream": {"broker": {"address": "b:1883"}},
        "auth": {"mode": "jwt", "jwt": jwt},
    }));
    let error = render(&plain, &inputs()).unwrap_err();
    assert!(matches!(error, RenderError::PlaintextCredentials));
    assert!(
        error
            .to_string()
            .contains("spec.listener.allowPlaintextCredentials")
    );

    let plain_ws = bridge(json!({
        "upstream": {"broker": {"address": "b:1883"}},
        "listener": {"tls": {"secretName": "t"}, "websocket": {"tls": false}},
        "auth": {"mode": "jwt", "jwt": jwt},
    }));
    assert!(matches!(
        render(&plain_ws, &inputs()),
        Err(RenderError::PlaintextCredentials)
    ));

    let allowed = bridge(json!({
        "upstream": {"broker": {"address": "b:1883"}},
        "listener": {"allowPlaintextCredentials": true},
        "auth": {"mode": "jwt", "jwt": jwt},
    }));
    let rendered = render(&allowed, &inputs()).unwrap();
    assert!(rendered.warnings[0].contains("allowPlaintextCredentials"));

    let passwords = bridge(json!({
        "upstream": {"broker": {"address": "b:1883"}},
        "auth": {"mode": "password", "passwordSecret": {"name": "p"}},
    }));
    assert!(matches!(
        render(&passwords, &inputs()),
        Err(RenderError::PlaintextCredentials)
    ));
}

#[test]
fn network_policies_let_only_r_proxy_reach_s_proxy_and_clients_only_the_listeners() {
    let bridge = bridge(json!({
        "upstream": {"broker": {"address": "b:1883"}},
        "listener": {"tls": {"secretName": "t"}},
    }));
    let rendered = render(&bridge, &inputs()).unwrap();
    let policy = |name: &str| {
        let policy = rendered
            .network_policies
            .iter()
            .find(|p| p.name_any() == name)
            .unwrap();
        serde_json::to_value(policy.spec.as_ref().unwrap()).unwrap()
    };
    let s_proxy = policy("devices-s-proxy");
    assert_eq!(
        s_proxy["podSelector"]["matchLabels"]["app.kubernetes.io/component"],
        "s-proxy"
    );
    assert_eq!(s_proxy["policyTypes"], json!(["Ingress"]));
    let rules = s_proxy["ingress"].as_array().unwrap();
    assert_eq!(
        rules.len(),
        2,
        "the relay port from r-proxy, the admin port: {rules:?}"
    );
    assert_eq!(
        rules[0]["from"][0]["podSelector"]["matchLabels"]["app.kubernetes.io/component"],
        "r-proxy"
    );
    assert_eq!(rules[0]["ports"][0]["port"], 50516);
    assert_eq!(rules[1]["ports"][0]["port"], 9090);
    assert_eq!(
        rules[1]["from"],
        json!([{"podSelector": {}}]),
        "admin: own namespace"
    );
    let r_proxy = policy("devices-r-proxy");
    let rules = r_proxy["ingress"].as_array().unwrap();
    assert_eq!(rules[0].get("from"), None, "clients come from anywhere");
    assert_eq!(
        rules[0]["ports"],
        json!([{"protocol": "TCP", "port": 8883}])
    );

    let monitored = bridge_with_metrics_from();
    let rendered = render(&monitored, &inputs()).unwrap();
    let spec = serde_json::to_value(rendered.network_policies[1].spec.as_ref().unwrap()).unwrap();
    assert_eq!(
        spec["ingress"][1]["from"][0]["namespaceSelector"]["matchLabels"]["kubernetes.io/metadata.name"],
        "monitoring"
    );
}

fn bridge_with_metrics_from() -> MqttBridge {
    bridge(json!({
        "upstream": {"broker": {"address": "b:1883"}},
        "monitoring": {"metricsFrom": [
            {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
        ]},
    }))
}

#[test]
fn a_rotated_kafka_password_rolls_s_proxy_but_not_r_proxy() {
    let bridge = bridge(json!({"upstream": {"kafka": {"bootstrap": "k:9092"}}}));
    let hashes = |credentials: &str| {
        let inputs = Inputs {
            kafka_credentials: Some(credentials.into()),
            ..inputs()
        };
        let rendered = render(&bridge, &inputs).unwrap();
        rendered
            .deployments
            .iter()
            .map(|d| {
                let template = d.spec.as_ref().unwrap().template.metadata.as_ref();
                template.unwrap().annotations.as_ref().unwrap()[crate::workload::CONFIG_HASH]
                    .clone()
            })
            .collect::<Vec<_>>()
    };
    let (before, after) = (hashes("old password digest"), hashes("new password digest"));
    assert_ne!(
        before[0], after[0],
        "s-proxy reads the password at start: it rolls"
    );
    assert_eq!(before[1], after[1], "r-proxy does not use Kafka");
}

#[test]
fn password_secret_and_acl_config_map_are_mounted_and_named_with_the_mode() {
    let bridge = bridge(json!({
        "upstream": {"broker": {"address": "b:1883"}},
        "listener": {"tls": {"secretName": "devices-tls"}},
        "auth": {
            "mode": "password",
            "passwordSecret": {"name": "device-passwords"},
            "aclConfigMap": {"name": "device-acl", "key": "rules.yaml"},
        },
    }));
    let rendered = render(&bridge, &inputs()).unwrap();
    let data = rendered.config_map.data.unwrap();
    let r: RProxyConfig = serde_saphyr::from_str(&data["r-proxy.yaml"]).unwrap();
    r.validate().unwrap();
    assert_eq!(r.auth.mode(), strait_config::auth::AuthMode::Password);
    assert_eq!(
        r.auth.password_file.unwrap().to_str(),
        Some("/etc/strait/passwords/passwords")
    );
    assert_eq!(
        r.auth.acl_file.unwrap().to_str(),
        Some("/etc/strait/acl/rules.yaml")
    );
    let pod = rendered.deployments[1]
        .spec
        .as_ref()
        .unwrap()
        .template
        .spec
        .clone()
        .unwrap();
    let volumes = pod.volumes.unwrap();
    let volume = |name: &str| volumes.iter().find(|v| v.name == name).unwrap().clone();
    assert_eq!(
        volume("passwords").secret.unwrap().secret_name.as_deref(),
        Some("device-passwords")
    );
    assert_eq!(volume("acl").config_map.unwrap().name, "device-acl");
    let mounts: Vec<_> = pod.containers[0]
        .volume_mounts
        .clone()
        .unwrap()
        .into_iter()
        .map(|m| (m.name, m.mount_path))
        .collect();
    for want in [
        ("passwords", "/etc/strait/passwords"),
        ("acl", "/etc/strait/acl"),
    ] {
        assert!(
            mounts.contains(&(want.0.into(), want.1.into())),
            "{mounts:?}"
        );
    }
    assert!(bridge.spec.secrets().contains(&(
        "device-passwords".to_string(),
        "spec.auth.passwordSecret.name".to_string()
    )));
}

#[test]
fn anonymous_is_rendered_explicitly_and_client_certificates_need_a_tls_listener() {
    let rendered = render(
        &bridge(json!({"upstream": {"broker": {"address": "b:1883"}}})),
        &inputs(),
    )
    .unwrap();
    let r: RProxyConfig =
        serde_saphyr::from_str(&rendered.config_map.data.unwrap()["r-proxy.yaml"]).unwrap();
    assert_eq!(r.auth.mode, Some(strait_config::auth::AuthMode::Anonymous));

    let without_tls = bridge(json!({
        "upstream": {"broker": {"address": "b:1883"}},
        "auth": {"mode": "clientCertificate"},
    }));
    let error = render(&without_tls, &inputs()).unwrap_err().to_string();
    assert!(error.contains("auth.mode"), "{error}");
    let with_tls = bridge(json!({
        "upstream": {"broker": {"address": "b:1883"}},
        "listener": {"tls": {"secretName": "devices-tls", "requireClientCertificate": true}},
        "auth": {"mode": "clientCertificate"},
    }));
    render(&with_tls, &inputs()).unwrap();
}

#[test]
fn session_queue_replica_lease_and_limits_reach_s_proxy() {
    let bridge = bridge(json!({
        "upstream": {"kafka": {"bootstrap": "k:9092", "sessionQueue": 64, "replicaLease": "30s",
            "limits": {"maxSharedGroups": 5, "maxSessionExpiry": "1h", "receiveMaximum": 32}}},
        "auth": {"mode": "anonymous"},
    }));
    let (_, s) = configs(&render(&bridge, &inputs()).unwrap());
    let kafka = s.kafka.unwrap();
    assert_eq!(kafka.session_queue, 64);
    assert_eq!(kafka.replica_lease, std::time::Duration::from_secs(30));
    assert_eq!(kafka.limits.max_shared_groups, 5);
    assert_eq!(kafka.limits.max_session_expiry_seconds(), 3600);
    assert_eq!(kafka.limits.receive_maximum, 32);
    assert_eq!(kafka.limits.max_subscriptions, 100, "unset: the default");
}

#[test]
fn s_proxy_creates_only_routed_topics_and_the_operator_the_rest_with_route_settings() {
    let bridge = bridge(json!({
        "upstream": {"kafka": {
            "bootstrap": "k:9092",
            "newTopics": {"partitions": 2},
            "maxRoutedTopics": 50,
            "routes": [
                {"topic": "sensors/{id}/#", "messages": "telemetry.${params.id}",
                 "partitions": 6, "topicPattern": "telemetry\\.dev-[0-9]+"},
                {"topic": "alerts/#", "messages": "alerts", "partitions": 4,
                 "topicConfig": {"retention.ms": "60000"}},
            ],
        }},
        "auth": {"mode": "anonymous"},
    }));
    let (_, s) = configs(&render(&bridge, &inputs()).unwrap());
    let kafka = s.kafka.unwrap();
    assert!(!kafka.create_topics && kafka.creates_routed_topics());
    assert_eq!(kafka.max_routed_topics, 50);
    assert_eq!(kafka.routes[0].partitions, Some(6));
    let topics = kafka_topics(&bridge);
    let names: Vec<_> = topics.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(
        names,
        ["mqtt-messages", "mqtt-retained", "mqtt-sessions", "alerts"],
        "routed topics are left to s-proxy"
    );
    assert_eq!(topics[3].partitions, 4);
    assert_eq!(topics[3].config["retention.ms"], "60000");

    let mut bad = bridge.clone();
    bad.spec.upstream.kafka.as_mut().unwrap().routes[0].topic_pattern = Some("(".into());
    let error = render(&bad, &inputs()).unwrap_err().to_string();
    assert!(error.contains("kafka.routes.topicPattern"), "{error}");
}

#[test]
fn the_compacted_tables_are_never_grown() {
    let bridge = bridge(json!({
        "upstream": {"kafka": {"bootstrap": "k:9092", "newTopics": {"partitions": 6, "replicationFactor": 1}}},
        "auth": {"mode": "anonymous"},
    }));
    let growable: Vec<(String, bool)> = kafka_topics(&bridge)
        .into_iter()
        .map(|t| (t.name, t.may_grow))
        .collect();
    assert_eq!(
        growable,
        [
            ("mqtt-messages".to_string(), true),
            ("mqtt-retained".to_string(), false),
            ("mqtt-sessions".to_string(), false),
        ]
    );
}
