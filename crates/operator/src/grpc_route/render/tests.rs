//! The rendering rules, on routes built from specs (no cluster).

use super::*;
use strait_config::grpc::{GrpcAuth, GrpcKafkaConfig, KafkaGrpcConfig};

use crate::grpc_route::spec::GrpcKafkaRouteSpec;

fn plain_kafka() -> KafkaAccess {
    KafkaAccess::plaintext("kafka:9092")
}

fn route(spec: serde_json::Value) -> GrpcKafkaRoute {
    let spec: GrpcKafkaRouteSpec = serde_json::from_value(spec).unwrap();
    let mut route = GrpcKafkaRoute::new("greeter", spec);
    route.metadata.namespace = Some("apps".into());
    route.metadata.uid = Some("42".into());
    route
}

fn example() -> GrpcKafkaRoute {
    route(json!({
        "kafka": {"bootstrap": "kafka:9092"},
        "protos": {"configMap": "greeter-protos"},
        "routes": [
            {"method": "example.Greeter/*", "produce": {"topic": "greeter-requests", "replyTo": "greeter-replies"}},
            {"method": "example.Events/Fetch", "fetch": {"topic": "events"}},
        ],
        "topics": {"greeter-requests": {"partitions": 6, "config": {"retention.ms": "3600000"}}},
        "backend": {"target": "http://greeter:50051", "callTimeout": "5s", "deadLetterTopic": "greeter-dead"},
    }))
}

#[test]
fn topics_come_from_the_routes_with_their_settings() {
    let topics = topics(&example());
    let names: Vec<_> = topics
        .iter()
        .map(|t| (t.name.as_str(), t.partitions))
        .collect();
    assert_eq!(
        names,
        [
            ("greeter-requests", 6),
            ("greeter-replies", 3),
            ("events", 3),
            ("greeter-dead", 3)
        ]
    );
    assert_eq!(topics[0].config["retention.ms"], "3600000");
    assert_eq!(request_topics(&example()), ["greeter-requests"]);
}

#[test]
fn both_configs_are_what_the_proxies_accept() {
    let route = example();
    let rendered = render(&route, "strait/strait-proxy:test", Some(2), &plain_kafka()).unwrap();
    let data = rendered.config_map.data.unwrap();
    let front: GrpcKafkaConfig = serde_saphyr::from_str(&data["grpc-kafka.yaml"]).unwrap();
    front.validate().unwrap();
    assert_eq!(front.routes, route.spec.routes);
    let back: KafkaGrpcConfig = serde_saphyr::from_str(&data["kafka-grpc.yaml"]).unwrap();
    back.validate().unwrap();
    assert_eq!(back.group_id.as_deref(), Some("strait-apps-greeter"));
    assert_eq!(back.call_timeout, std::time::Duration::from_secs(5));
    assert_eq!(
        rendered.deployments[1].spec.as_ref().unwrap().replicas,
        Some(2)
    );
    let unmanaged = render(&route, "i", None, &plain_kafka()).unwrap();
    assert_eq!(
        unmanaged.deployments[1].spec.as_ref().unwrap().replicas,
        None
    );
    assert_eq!(rendered.endpoint, "greeter.apps.svc:50051");
    assert_eq!(
        back.routes[0].reply_to,
        ["greeter-replies"],
        "kafka-grpc answers only on the routes' reply topics"
    );
    assert!(!front.tls.is_enabled());
    assert_eq!(front.auth, GrpcAuth::default());
    assert!(!front.forward_metadata.forwards("authorization"));
}

fn secured() -> GrpcKafkaRoute {
    let mut route = example();
    let mut spec = serde_json::to_value(&route.spec).unwrap();
    spec["frontend"]["tls"] =
        json!({"secretName": "greeter-tls", "requireClientCertificate": true});
    spec["auth"] = json!({"jwt": {
        "issuer": "https://auth.example.com/",
        "keysSecret": {"name": "greeter-jwks"},
        "algorithms": ["ES256"],
        "methodsClaim": "grpc_methods",
    }});
    spec["forwardMetadata"] = json!({"allow": ["x-*"], "deny": ["x-secret"]});
    route.spec = serde_json::from_value(spec).unwrap();
    route
}

fn front_of(rendered: &Rendered) -> GrpcKafkaConfig {
    let data = rendered.config_map.data.as_ref().unwrap();
    serde_saphyr::from_str(&data["grpc-kafka.yaml"]).unwrap()
}

#[test]
fn listener_tls_auth_and_metadata_forwarding_reach_grpc_kafka() {
    let route = secured();
    let rendered = render(&route, "i", None, &plain_kafka()).unwrap();
    let front = front_of(&rendered);
    front.validate().unwrap();
    assert_eq!(
        front.tls.cert.as_deref(),
        Some(std::path::Path::new("/etc/strait/tls/listener/tls.crt"))
    );
    assert_eq!(
        front.tls.key.as_deref(),
        Some(std::path::Path::new("/etc/strait/tls/listener/tls.key"))
    );
    assert_eq!(
        front.tls.client_ca.as_deref(),
        Some(std::path::Path::new("/etc/strait/tls/listener/ca.crt"))
    );
    let jwt = front.auth.jwt.as_ref().unwrap();
    assert_eq!(jwt.keys_file.to_str(), Some("/etc/strait/jwt/jwks.json"));
    assert_eq!(jwt.issuer, "https://auth.example.com/");
    assert_eq!(jwt.algorithms, [strait_config::auth::JwtAlgorithm::ES256]);
    assert_eq!(jwt.methods_claim.as_deref(), Some("grpc_methods"));
    assert!(front.forward_metadata.forwards("x-tenant"));
    assert!(!front.forward_metadata.forwards("x-secret"));
    assert!(!front.forward_metadata.forwards("tenant"));

    // Both Secrets mounted whole into grpc-kafka only (kafka-grpc needs neither).
    let pod = |i: usize| {
        rendered.deployments[i]
            .spec
            .as_ref()
            .unwrap()
            .template
            .spec
            .clone()
            .unwrap()
    };
    let front_pod = pod(0);
    let secret_of = |name: &str| {
        front_pod
            .volumes
            .as_ref()
            .unwrap()
            .iter()
            .find(|v| v.name == name)
            .and_then(|v| v.secret.as_ref())
            .and_then(|s| s.secret_name.clone())
    };
    assert_eq!(secret_of("listener-tls").as_deref(), Some("greeter-tls"));
    assert_eq!(secret_of("jwt-keys").as_deref(), Some("greeter-jwks"));
    let mounts = front_pod.containers[0].volume_mounts.clone().unwrap();
    for (name, path) in [
        ("listener-tls", "/etc/strait/tls/listener"),
        ("jwt-keys", "/etc/strait/jwt"),
    ] {
        let mount = mounts.iter().find(|m| m.name == name).unwrap();
        assert_eq!(mount.mount_path, path);
        assert!(mount.sub_path.is_none(), "whole, so Secret updates arrive");
    }
    assert!(
        pod(1)
            .volumes
            .unwrap_or_default()
            .iter()
            .all(|v| v.name != "jwt-keys" && v.name != "listener-tls")
    );
    let names: Vec<_> = route.spec.secrets().into_iter().map(|(n, _)| n).collect();
    assert_eq!(names, ["greeter-tls", "greeter-jwks"]);
    assert!(rendered.warnings.is_empty());
}

#[test]
fn tokens_are_not_sent_to_a_port_without_tls_unless_spelled_out() {
    let mut route = secured();
    route.spec.frontend.tls = None;
    let Err(error) = render(&route, "i", None, &plain_kafka()) else {
        panic!("rendered");
    };
    let error = error.to_string();
    assert!(error.contains("allowPlaintextCredentials"), "{error}");
    route.spec.frontend.allow_plaintext_credentials = true;
    let rendered = render(&route, "i", None, &plain_kafka()).unwrap();
    assert!(rendered.warnings[0].contains("allowPlaintextCredentials"));
    assert!(!front_of(&rendered).tls.is_enabled());
}

#[test]
fn client_certificate_auth_needs_required_client_certificates() {
    let mut route = secured();
    route
        .spec
        .frontend
        .tls
        .as_mut()
        .unwrap()
        .require_client_certificate = false;
    route.spec.auth = Some(crate::grpc_route::spec::AuthSpec {
        jwt: None,
        client_certificate: true,
    });
    let Err(error) = render(&route, "i", None, &plain_kafka()) else {
        panic!("rendered");
    };
    let error = error.to_string();
    assert!(error.contains("auth.clientCertificate"), "{error}");
    route
        .spec
        .frontend
        .tls
        .as_mut()
        .unwrap()
        .require_client_certificate = true;
    let front = front_of(&render(&route, "i", None, &plain_kafka()).unwrap());
    assert!(front.auth.client_certificate);
    assert!(front.auth.jwt.is_none());
}

#[test]
fn network_policies_open_only_the_grpc_port_and_the_admin_port() {
    let rendered = render(
        &example(),
        "strait/strait-proxy:test",
        Some(1),
        &plain_kafka(),
    )
    .unwrap();
    let spec = |i: usize| {
        serde_json::to_value(rendered.network_policies[i].spec.as_ref().unwrap()).unwrap()
    };
    let frontend = spec(0);
    assert_eq!(
        frontend["podSelector"]["matchLabels"]["app.kubernetes.io/component"],
        FRONTEND
    );
    let port = example().spec.frontend.port;
    assert_eq!(
        frontend["ingress"][0]["ports"],
        json!([{"protocol": "TCP", "port": port}])
    );
    assert_eq!(frontend["ingress"][1]["ports"][0]["port"], 9090);
    // kafka-grpc serves nothing but its admin port.
    let backend = spec(1);
    let rules = backend["ingress"].as_array().unwrap();
    assert_eq!(rules.len(), 1);
    assert_eq!(rules[0]["ports"][0]["port"], 9090);
}

#[test]
fn rotated_kafka_credentials_roll_both_roles() {
    let hashes = |access: &KafkaAccess| {
        let rendered = render(&example(), "i", Some(1), access).unwrap();
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
    let with = |password| plain_kafka().with_scram_password(password);
    let before = hashes(&with("old"));
    let after = hashes(&with("new"));
    assert_ne!(
        before[0], after[0],
        "grpc-kafka reads the password at start: it rolls"
    );
    assert_ne!(before[1], after[1], "so does kafka-grpc");
    assert_eq!(
        before,
        hashes(&with("old")),
        "unchanged credentials roll nothing"
    );
}

#[test]
fn https_backends_trust_the_system_roots_or_the_ca_of_a_secret() {
    let with_backend = |backend: serde_json::Value| {
        let mut spec = serde_json::to_value(&example().spec).unwrap();
        for (key, value) in backend.as_object().unwrap() {
            spec["backend"][key] = value.clone();
        }
        route(spec)
    };
    // No tls: the system's roots (kafka-grpc's config has no CA and is valid).
    let public = with_backend(json!({"target": "https://api.example.com:443"}));
    let rendered = render(&public, "i", Some(1), &plain_kafka()).unwrap();
    let back: KafkaGrpcConfig =
        serde_saphyr::from_str(&rendered.config_map.data.as_ref().unwrap()["kafka-grpc.yaml"])
            .unwrap();
    back.validate().unwrap();
    assert_eq!(back.target_tls.ca, None);

    let private = with_backend(json!({
        "target": "https://svc.apps.svc:50051",
        "tls": {"secretName": "svc-ca", "clientCertificate": true},
    }));
    let rendered = render(&private, "i", Some(1), &plain_kafka()).unwrap();
    let back: KafkaGrpcConfig =
        serde_saphyr::from_str(&rendered.config_map.data.as_ref().unwrap()["kafka-grpc.yaml"])
            .unwrap();
    back.validate().unwrap();
    let file = |name: &str| {
        Some(std::path::PathBuf::from(format!(
            "/etc/strait/tls/backend/{name}"
        )))
    };
    assert_eq!(back.target_tls.ca, file("ca.crt"));
    assert_eq!(back.target_tls.cert, file("tls.crt"));
    assert_eq!(back.target_tls.key, file("tls.key"));
    let pod = rendered.deployments[1]
        .spec
        .as_ref()
        .unwrap()
        .template
        .spec
        .as_ref()
        .unwrap();
    let secret = pod
        .volumes
        .as_ref()
        .unwrap()
        .iter()
        .find(|v| v.name == "backend-tls");
    assert_eq!(
        secret
            .unwrap()
            .secret
            .as_ref()
            .unwrap()
            .secret_name
            .as_deref(),
        Some("svc-ca")
    );
    assert!(private.spec.secrets().contains(&(
        "svc-ca".to_string(),
        "spec.backend.tls.secretName".to_string()
    )));
}

#[test]
fn backend_settings_reach_kafka_grpc_and_a_zilla_group_is_the_lag_group() {
    let mut spec = serde_json::to_value(&example().spec).unwrap();
    spec["backend"]["zillaGroup"] = json!({"namespace": "apps", "binding": "grpc0"});
    spec["backend"]["acks"] = json!("leader");
    spec["backend"]["dedupWindow"] = json!("1m");
    spec["backend"]["sessionTimeout"] = json!("20s");
    let route = route(spec);
    let back = backend_config(&route, false).unwrap();
    back.validate().unwrap();
    assert_eq!(back.group(), "zilla:apps-grpc0");
    assert_eq!(
        group_id(&route),
        "zilla:apps-grpc0",
        "the autoscaler reads this group"
    );
    assert_eq!(back.acks, strait_config::mqtt_kafka::Acks::Leader);
    assert_eq!(back.dedup_window, std::time::Duration::from_secs(60));
    assert_eq!(back.session_timeout, std::time::Duration::from_secs(20));
}

#[test]
fn limits_reach_grpc_kafka_and_kafka_grpc_and_a_bad_budget_names_its_field() {
    let mut spec = serde_json::to_value(&example().spec).unwrap();
    spec["frontend"]["limits"] = json!({"maxConnections": 100, "maxFetchStreams": 8});
    spec["backend"]["dedupMaxBytes"] = json!(1_048_576);
    spec["backend"]["dedupMaxAnswerBytes"] = json!(65_536);
    let route = route(spec.clone());
    let front = frontend_config(&route, false);
    front.validate().unwrap();
    assert_eq!(front.limits.max_connections, 100);
    assert_eq!(front.limits.max_fetch_streams, 8);
    assert_eq!(
        front.limits.max_pending_calls,
        strait_config::grpc::GrpcKafkaLimits::default().max_pending_calls,
        "unset: the default"
    );
    let back = backend_config(&route, false).unwrap();
    back.validate().unwrap();
    assert_eq!(back.dedup_max_bytes, 1_048_576);
    assert_eq!(back.dedup_max_answer_bytes, 65_536);

    spec["backend"]["dedupMaxBytes"] = json!(1000);
    let Err(error) = render(&self::route(spec), "i", None, &plain_kafka()) else {
        panic!("rendered");
    };
    assert!(error.to_string().contains("dedupMaxAnswerBytes"), "{error}");
}
