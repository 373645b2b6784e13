//! Pure rendering: a `GrpcKafkaRoute` → its topics, the grpc-kafka and kafka-grpc configs and the
//! Kubernetes objects that run them.
//!
//! The grpc-kafka and kafka-grpc configs (the ConfigMap's content) are in `configs`; here the
//! topics, names and the objects that run the proxies.

mod configs;
#[cfg(test)]
mod tests;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::{Resource, ResourceExt};
use serde_json::json;
use strait_config::Validate;

use super::spec::GrpcKafkaRoute;
use crate::kafka_access::KafkaAccess;
use crate::topics::TopicSpec;
use crate::workload::{self, Owner, ProxyPods, from_json};

pub const FRONTEND: &str = "grpc-kafka";
pub const BACKEND: &str = "kafka-grpc";
const PROTOS_DIR: &str = "/etc/strait/protos";
const LISTENER_TLS_DIR: &str = "/etc/strait/tls/listener";
/// The `spec.backend.tls` Secret in kafka-grpc's pods.
const BACKEND_TLS_DIR: &str = "/etc/strait/tls/backend";
/// The JWT keys Secret, mounted whole (not by subPath) so Secret updates reach the pods.
const JWT_KEYS_DIR: &str = "/etc/strait/jwt";

#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error(
        "spec.auth.jwt: callers would send their tokens in clear text to a port without TLS; \
         set spec.frontend.tls, or spell out spec.frontend.allowPlaintextCredentials: true"
    )]
    PlaintextCredentials,
    #[error("the rendered {role} config is invalid: {error}")]
    Config {
        role: &'static str,
        error: strait_config::ConfigError,
    },
    #[error("spec.backend.callTimeout: {0}")]
    CallTimeout(String),
    #[error("spec.backend.{field}: {message}")]
    Duration {
        field: &'static str,
        message: String,
    },
}

pub fn owner(route: &GrpcKafkaRoute) -> Owner {
    Owner {
        instance: route.name_any(),
        namespace: route.namespace(),
        reference: route
            .controller_owner_ref(&())
            .expect("a stored GrpcKafkaRoute has a name and uid"),
    }
}

/// Every topic the routes name, with its partitions and settings.
pub fn topics(route: &GrpcKafkaRoute) -> Vec<TopicSpec> {
    let spec = &route.spec;
    let mut names: Vec<&str> = Vec::new();
    for r in &spec.routes {
        if let Some(produce) = &r.produce {
            names.push(&produce.topic);
            names.extend(produce.reply_to.as_deref());
        }
        if let Some(fetch) = &r.fetch {
            names.push(&fetch.topic);
        }
    }
    names.extend(spec.backend.dead_letter_topic.as_deref());
    let mut seen = std::collections::BTreeSet::new();
    names
        .into_iter()
        .filter(|name| seen.insert(*name))
        .map(|name| {
            let settings = spec.topics.get(name).unwrap_or(&spec.topic_defaults);
            TopicSpec {
                name: name.into(),
                partitions: settings.partitions,
                replication_factor: settings.replication_factor,
                config: settings.config.clone(),
                may_grow: !TopicSpec::compacted(&settings.config),
            }
        })
        .collect()
}

/// The request topics kafka-grpc consumes (what the autoscaler measures).
pub fn request_topics(route: &GrpcKafkaRoute) -> Vec<String> {
    let mut topics: Vec<String> = route
        .spec
        .routes
        .iter()
        .filter_map(|r| r.produce.as_ref().map(|p| p.topic.clone()))
        .collect();
    topics.dedup();
    topics
}

pub fn group_id(route: &GrpcKafkaRoute) -> String {
    let backend = &route.spec.backend;
    if let Some(zilla) = backend
        .zilla_group
        .as_ref()
        .filter(|_| backend.group_id.is_none())
    {
        return format!("zilla:{}-{}", zilla.namespace, zilla.binding);
    }
    backend.group_id.clone().unwrap_or_else(|| {
        format!(
            "strait-{}-{}",
            route.namespace().unwrap_or_default(),
            route.name_any()
        )
    })
}

pub struct Rendered {
    pub config_map: ConfigMap,
    pub deployments: Vec<Deployment>,
    pub service: Service,
    pub disruption_budgets: Vec<PodDisruptionBudget>,
    /// Clients reach grpc-kafka's port only; kafka-grpc serves nothing but its admin port.
    pub network_policies: Vec<NetworkPolicy>,
    pub endpoint: String,
    /// Insecure settings the spec asked for (the `Warning` condition).
    pub warnings: Vec<String>,
}

/// `backend_replicas`: what the autoscaler decided, or `None` to leave them alone.
pub fn render(
    route: &GrpcKafkaRoute,
    image: &str,
    backend_replicas: Option<i32>,
    kafka: &KafkaAccess,
) -> Result<Rendered, RenderError> {
    let kafka_client_cert = kafka.client_cert();
    // Both roles read the Kafka credentials only at start: a rotated password rolls them.
    let credentials = kafka.cache_key();
    let spec = &route.spec;
    let mut warnings = Vec::new();
    if spec.auth.as_ref().is_some_and(|a| a.jwt.is_some()) && spec.frontend.tls.is_none() {
        if !spec.frontend.allow_plaintext_credentials {
            return Err(RenderError::PlaintextCredentials);
        }
        warnings.push(
            "callers send tokens to a port without TLS (spec.frontend.allowPlaintextCredentials)"
                .to_string(),
        );
    }
    let frontend = frontend_config(route, kafka_client_cert);
    frontend.validate().map_err(|error| RenderError::Config {
        role: FRONTEND,
        error,
    })?;
    let backend = backend_config(route, kafka_client_cert)?;
    backend.validate().map_err(|error| RenderError::Config {
        role: BACKEND,
        error,
    })?;
    let (front_yaml, back_yaml) = (
        strait_config::to_yaml(&frontend),
        strait_config::to_yaml(&backend),
    );
    let owner = owner(route);
    let config_map = from_json(json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": owner.meta(owner.config_map_name(), "config"),
        "data": {"grpc-kafka.yaml": front_yaml, "kafka-grpc.yaml": back_yaml},
    }));
    let protos_volume = json!({"name": "protos", "configMap": {"name": spec.protos.config_map}});
    let protos_mount = json!({"name": "protos", "mountPath": PROTOS_DIR, "readOnly": true});
    let (kafka_volumes, kafka_mounts) = spec.kafka.kafka_ref().volumes();
    let (mut backend_volumes, mut backend_mounts) = (Vec::new(), Vec::new());
    if let Some(tls) = &spec.backend.tls {
        backend_volumes
            .push(json!({"name": "backend-tls", "secret": {"secretName": tls.secret_name}}));
        backend_mounts
            .push(json!({"name": "backend-tls", "mountPath": BACKEND_TLS_DIR, "readOnly": true}));
    }
    let (mut front_volumes, mut front_mounts) = (vec![protos_volume], vec![protos_mount]);
    let mut secret_dir = |name: &str, secret: &str, dir: &str| {
        front_volumes.push(json!({"name": name, "secret": {"secretName": secret}}));
        front_mounts.push(json!({"name": name, "mountPath": dir, "readOnly": true}));
    };
    if let Some(tls) = &spec.frontend.tls {
        secret_dir("listener-tls", &tls.secret_name, LISTENER_TLS_DIR);
    }
    if let Some(jwt) = spec.auth.as_ref().and_then(|a| a.jwt.as_ref()) {
        secret_dir("jwt-keys", &jwt.keys_secret.name, JWT_KEYS_DIR);
    }
    // The protos ConfigMap is part of the frontend's config: a change rolls it too.
    let deployments = vec![
        ProxyPods {
            role: FRONTEND,
            image,
            config_yaml: &front_yaml,
            credentials: Some(&credentials),
            replicas: Some(spec.frontend.replicas),
            ports: vec![json!({"name": "grpc", "containerPort": spec.frontend.port})],
            volumes: [front_volumes, kafka_volumes.clone()].concat(),
            mounts: [front_mounts, kafka_mounts.clone()].concat(),
            resources: spec.frontend.resources.as_ref(),
        }
        .deployment(&owner),
        ProxyPods {
            role: BACKEND,
            image,
            config_yaml: &back_yaml,
            credentials: Some(&credentials),
            replicas: backend_replicas,
            ports: Vec::new(),
            volumes: [kafka_volumes, backend_volumes].concat(),
            mounts: [kafka_mounts, backend_mounts].concat(),
            resources: spec.backend.resources.as_ref(),
        }
        .deployment(&owner),
    ];
    let service = workload::service(
        &owner,
        route.name_any(),
        FRONTEND,
        "ClusterIP",
        vec![json!({"name": "grpc", "port": spec.frontend.port, "targetPort": "grpc"})],
    );
    let disruption_budgets = [FRONTEND, BACKEND]
        .into_iter()
        .map(|role| workload::disruption_budget(&owner, role))
        .collect();
    let network_policies = vec![
        workload::network_policy(
            &owner,
            FRONTEND,
            &[spec.frontend.port],
            None,
            &spec.monitoring,
            false,
        ),
        workload::network_policy(&owner, BACKEND, &[], None, &spec.monitoring, false),
    ];
    Ok(Rendered {
        config_map,
        deployments,
        service,
        disruption_budgets,
        network_policies,
        warnings,
        endpoint: format!(
            "{}.{}.svc:{}",
            route.name_any(),
            route.namespace().unwrap_or_default(),
            spec.frontend.port
        ),
    })
}

pub use configs::{backend_config, frontend_config};
