//! Reconciles a `GrpcKafkaRoute`: topics in Kafka, the proxies in Kubernetes, and the consumer
//! count from the group's lag. The topics it created are deleted with the resource only under
//! `deletionPolicy: Delete` (see crate::deletion).

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::jiff::Timestamp;
use kube::api::Api;
use kube::core::PartialObjectMeta;
use kube::runtime::controller::Action;
use kube::runtime::finalizer::Event as Finalizer;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Resource, ResourceExt};

use super::render::{self, BACKEND};
use super::spec::{GrpcKafkaRoute, GrpcKafkaRouteStatus};
use crate::autoscale::{self, Observation, Policy, Recommendation};
use crate::context::{Context, ReconcileError, scoped};
use crate::hpa;
use crate::kafka_access::{KafkaAccess, get_secret, require_keys};
use crate::status::{self, Check};
use crate::workload::apply_owned;

/// Runs the controller over `namespace` (every namespace when `None`) until the process stops it.
pub async fn run(ctx: Arc<Context>, namespace: Option<String>) {
    let client = ctx.client.clone();
    let ns = namespace.as_deref();
    let controller = crate::context::controller_for::<GrpcKafkaRoute>(&client, ns);
    // A Secret the route names (Kafka TLS or SASL, listener TLS, JWT keys) that appears or
    // changes wakes the routes that name it.
    let routes = controller.store();
    controller
        .watches(
            scoped::<PartialObjectMeta<Secret>>(&client, ns),
            watcher::Config::default(),
            crate::context::woken_by_secret(routes, |route: &GrpcKafkaRoute| route.spec.secrets()),
        )
        // An autoscaler that starts or stops targeting a route's consumers changes who sets
        // their replicas.
        .watches(
            scoped::<HorizontalPodAutoscaler>(&client, ns),
            watcher::Config::default(),
            |hpa| {
                let namespace = hpa.namespace();
                hpa::owners_of(&hpa, "GrpcKafkaRoute", &[&format!("-{BACKEND}")])
                    .map(|name| ObjectRef::new(&name).within(namespace.as_deref().unwrap_or("")))
            },
        )
        // Metadata only: enough to wake the owner (see the MqttBridge controller).
        .owns(
            scoped::<PartialObjectMeta<Deployment>>(&client, ns),
            watcher::Config::default(),
        )
        .owns(
            scoped::<PartialObjectMeta<ConfigMap>>(&client, ns),
            watcher::Config::default(),
        )
        .run(reconcile, crate::context::error_policy, ctx)
        .for_each(|_| async {})
        .await;
}

/// The Secrets the pods mount exist with the keys they need, before anything is applied.
async fn check_secrets(
    spec: &super::spec::GrpcKafkaRouteSpec,
    secrets: &Api<Secret>,
) -> Result<(), ReconcileError> {
    if let Some(tls) = &spec.frontend.tls {
        let field = "spec.frontend.tls.secretName";
        let secret = get_secret(secrets, &tls.secret_name, field).await?;
        let mut keys = vec!["tls.crt", "tls.key"];
        if tls.require_client_certificate {
            keys.push("ca.crt");
        }
        require_keys(&secret, &tls.secret_name, &keys)?;
    }
    if let Some(jwt) = spec.auth.as_ref().and_then(|a| a.jwt.as_ref()) {
        let keys = &jwt.keys_secret;
        let secret = get_secret(secrets, &keys.name, "spec.auth.jwt.keysSecret.name").await?;
        require_keys(&secret, &keys.name, &[keys.key.as_str()])?;
    }
    if let Some(tls) = &spec.backend.tls {
        let field = "spec.backend.tls.secretName";
        let secret = get_secret(secrets, &tls.secret_name, field).await?;
        let mut keys = vec!["ca.crt"];
        if tls.client_certificate {
            keys.extend(["tls.crt", "tls.key"]);
        }
        require_keys(&secret, &tls.secret_name, &keys)?;
    }
    Ok(())
}

async fn reconcile(
    route: Arc<GrpcKafkaRoute>,
    ctx: Arc<Context>,
) -> Result<Action, ReconcileError> {
    let _slot = ctx.reconcile_slots.acquire().await.expect("never closed");
    let started = Instant::now();
    let deleting = route.meta().deletion_timestamp.is_some();
    let policy = route.spec.deletion_policy;
    let result = crate::deletion::reconcile(&ctx, route.clone(), policy, |event| async {
        match event {
            Finalizer::Apply(route) => apply(&route, &ctx).await,
            Finalizer::Cleanup(route) => cleanup(&route, &ctx).await,
        }
    })
    .await;
    ctx.metrics
        .observe("GrpcKafkaRoute", started.elapsed(), result.is_ok());
    match &result {
        Err(error) if !deleting => {
            let check = Check::failed(status::READY, error.reason(), error.to_string());
            let _ = write_status(&route, &ctx, vec![check], GrpcKafkaRouteStatus::default()).await;
        }
        Err(_) => {}
        Ok(_) => ctx.reset_backoff(route.as_ref()),
    }
    result
}

/// Deletes the topics the route created (under `deletionPolicy: Delete`), or gives up on them
/// after `deletionTimeoutSeconds`.
async fn cleanup(route: &GrpcKafkaRoute, ctx: &Context) -> Result<Action, ReconcileError> {
    let created = route.status.as_ref().map(|s| s.created_topics.as_slice());
    let topics = crate::deletion::Topics {
        policy: route.spec.deletion_policy,
        kafka: Some(route.spec.kafka.kafka_ref()),
        created: created.unwrap_or_default(),
        timeout_seconds: route.spec.deletion_timeout_seconds,
    };
    crate::deletion::cleanup(route, ctx, topics).await
}

async fn apply(route: &GrpcKafkaRoute, ctx: &Context) -> Result<Action, ReconcileError> {
    let namespace = route.namespace().expect("namespaced");
    let client = ctx.client.clone();
    let bootstrap = &route.spec.kafka.bootstrap;
    let protos: Api<ConfigMap> = Api::namespaced(client.clone(), &namespace);
    if protos
        .get_opt(&route.spec.protos.config_map)
        .await?
        .is_none()
    {
        return Err(ReconcileError::MissingConfigMap {
            name: route.spec.protos.config_map.clone(),
            field: "spec.protos.configMap".into(),
        });
    }
    let secrets = Api::namespaced(client.clone(), &namespace);
    check_secrets(&route.spec, &secrets).await?;
    let access = route.spec.kafka.kafka_ref().resolve(&secrets).await?;
    let mut topics = render::topics(route);
    let admin = ctx.kafka.get(&access)?;
    let ensured = crate::topics::ensure(&admin, bootstrap, &topics).await?;
    crate::deletion::record_created(route, ctx, &ensured.created).await?;
    let mut checks = vec![topics_check(&ensured)];

    let owner = render::owner(route);
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &namespace);
    let scaled = scale(route, ctx, &deployments, &access).await?;
    if let Some(grow) = scaled.grow_partitions_to {
        let requests = render::request_topics(route);
        for topic in topics.iter_mut().filter(|t| requests.contains(&t.name)) {
            topic.partitions = topic.partitions.max(grow);
        }
        crate::topics::ensure(&admin, bootstrap, &topics).await?;
        tracing::info!(
            partitions = grow,
            "grew the request topics: consumers were capped by them"
        );
    }
    checks.push(scaled.check);
    let backend_replicas = scaled.replicas;

    let rendered = render::render(
        route,
        &ctx.proxy_image(route.spec.image.as_deref())?,
        backend_replicas,
        &access,
    )?;
    checks.push(Check::warnings(&rendered.warnings));
    let config_maps = Api::<ConfigMap>::namespaced(client.clone(), &namespace);
    apply_owned(&config_maps, &rendered.config_map, &owner).await?;
    let mut consumers = None;
    let mut rolling = Vec::new();
    for deployment in &rendered.deployments {
        let applied = apply_owned(&deployments, deployment, &owner).await?;
        let (ready, message) = crate::mqtt_bridge::rollout(&applied);
        if deployment.name_any().ends_with(BACKEND) {
            consumers = applied.status.as_ref().and_then(|s| s.replicas).or(Some(0));
        }
        if !ready {
            rolling.push(format!("{}: {message}", deployment.name_any()));
        }
    }
    checks.push(if rolling.is_empty() {
        Check::ok(
            status::PROXIES_READY,
            "PodsReady",
            "grpc-kafka and kafka-grpc pods are ready",
        )
    } else {
        Check::failed(status::PROXIES_READY, "RollingOut", rolling.join("; "))
    });
    let services = Api::<Service>::namespaced(client.clone(), &namespace);
    apply_owned(&services, &rendered.service, &owner).await?;
    let budgets: Api<PodDisruptionBudget> = Api::namespaced(client, &namespace);
    for budget in &rendered.disruption_budgets {
        apply_owned(&budgets, budget, &owner).await?;
    }

    let policies: Api<NetworkPolicy> = Api::namespaced(ctx.client.clone(), &namespace);
    for policy in &rendered.network_policies {
        apply_owned(&policies, policy, &owner).await?;
    }
    crate::monitoring::reconcile(&ctx.client, &owner, &route.spec.monitoring).await?;

    let status = GrpcKafkaRouteStatus {
        routes: Some(route.spec.routes.len() as i32),
        endpoints: vec![rendered.endpoint],
        replicas: consumers,
        selector: Some(owner.selector_string(BACKEND)),
        desired_replicas: scaled.desired,
        lag: scaled.observation.map(|o| o.lag),
        members: scaled.observation.map(|o| o.members),
        partitions: scaled.observation.map(|o| o.partitions),
        recommendations: scaled.recommendations,
        ..GrpcKafkaRouteStatus::default()
    };
    write_status(route, ctx, checks, status).await?;
    let poll = route
        .spec
        .backend
        .autoscale
        .as_ref()
        .map_or(300, |a| a.poll_interval_seconds.max(1) as u64);
    Ok(Action::requeue(Duration::from_secs(poll)))
}

/// What the consumer count comes out as this pass.
struct Scaled {
    /// kafka-grpc's replicas to apply; `None` leaves them to someone else.
    replicas: Option<i32>,
    /// What the operator's own autoscaler wants (status `desiredReplicas`).
    desired: Option<i32>,
    grow_partitions_to: Option<i32>,
    observation: Option<Observation>,
    recommendations: Vec<Recommendation>,
    check: Check,
}

/// Decides kafka-grpc's replicas: an autoscaler that targets its Deployment (or this route's
/// scale subresource) wins; else the lag autoscaler with its window kept in the status; else
/// `spec.backend.replicas`.
async fn scale(
    route: &GrpcKafkaRoute,
    ctx: &Context,
    deployments: &Api<Deployment>,
    access: &KafkaAccess,
) -> Result<Scaled, ReconcileError> {
    let namespace = route.namespace().unwrap_or_default();
    let deployment = format!("{}-{BACKEND}", route.name_any());
    let autoscalers = hpa::Autoscalers::list(&ctx.client, &namespace).await?;
    let on_deployment = autoscalers.targeting("Deployment", &deployment);
    let on_route = autoscalers.targeting("GrpcKafkaRoute", &route.name_any());
    let autoscale = route.spec.backend.autoscale.as_ref();
    let mut scaled = Scaled {
        replicas: route.spec.backend.replicas,
        desired: None,
        grow_partitions_to: None,
        observation: None,
        recommendations: Vec::new(),
        check: Check::ok(
            "Scaling",
            "Manual",
            "autoscaling is off; spec.backend.replicas or you set the consumers",
        ),
    };
    let ignored = if autoscale.is_some() {
        "; spec.backend.autoscale is not applied while it does"
    } else {
        ""
    };
    if !on_deployment.is_empty() {
        hpa::release_replicas(deployments, &deployment).await?;
        scaled.replicas = None;
        scaled.check = Check::ok(
            "Scaling",
            "ExternalAutoscaler",
            format!(
                "HorizontalPodAutoscaler {} scales {deployment}; the operator leaves its replicas \
                 alone{ignored}",
                on_deployment.join(", ")
            ),
        );
        return Ok(scaled);
    }
    if !on_route.is_empty() {
        scaled.check = Check::ok(
            "Scaling",
            "ExternalAutoscaler",
            format!(
                "HorizontalPodAutoscaler {} scales this route through spec.backend.replicas{ignored}",
                on_route.join(", ")
            ),
        );
        return Ok(scaled);
    }
    let Some(autoscale) = autoscale else {
        return Ok(scaled);
    };
    let observation = observe(route, ctx, access).await?;
    let policy = Policy {
        min_replicas: autoscale.min_replicas,
        max_replicas: autoscale.max_replicas,
        lag_threshold: autoscale.lag_threshold,
        activation_lag: autoscale.activation_lag,
        scale_down_window: Duration::from_secs(
            autoscale.scale_down_stabilization_seconds.max(0) as u64
        ),
        max_partitions: autoscale.max_partitions,
    };
    let running = deployments
        .get_opt(&deployment)
        .await?
        .map(|d| d.status.and_then(|s| s.ready_replicas).unwrap_or(0));
    let decision = autoscale::recommend(&policy, &observation, running);
    let history = route
        .status
        .as_ref()
        .map(|s| s.recommendations.as_slice())
        .unwrap_or_default();
    let (replicas, recommendations) = autoscale::stabilize(
        history,
        policy.scale_down_window,
        Timestamp::now(),
        decision.replicas,
    );
    let message = if replicas > decision.replicas {
        format!(
            "{}; holding {replicas} for the scale-down window ({}s)",
            decision.message, autoscale.scale_down_stabilization_seconds
        )
    } else {
        decision.message
    };
    Ok(Scaled {
        replicas: Some(replicas),
        desired: Some(replicas),
        grow_partitions_to: decision.grow_partitions_to,
        observation: Some(observation),
        recommendations,
        check: Check::ok("Scaling", decision.reason, message),
    })
}

/// The group's lag summed over the request topics; partitions of the widest topic (a consumer
/// beyond that count would sit idle under the default range assignment).
async fn observe(
    route: &GrpcKafkaRoute,
    ctx: &Context,
    access: &KafkaAccess,
) -> Result<Observation, ReconcileError> {
    let _reader = ctx.lag_readers.acquire().await.expect("never closed");
    let access = access.clone();
    let group = render::group_id(route);
    let topics = render::request_topics(route);
    let observations = tokio::task::spawn_blocking(move || {
        topics
            .iter()
            .map(|topic| crate::kafka::observe(&access, topic, &group))
            .collect::<Result<Vec<_>, _>>()
    })
    .await
    .expect("lag reading does not panic")?;
    Ok(observations.iter().fold(
        Observation {
            lag: 0,
            partitions: 0,
            members: 0,
        },
        |sum, o| Observation {
            lag: sum.lag + o.lag,
            partitions: sum.partitions.max(o.partitions),
            members: sum.members.max(o.members),
        },
    ))
}

/// `TopicsReady`: each topic with its partitions.
fn topics_check(ensured: &crate::topics::Ensured) -> Check {
    let listed = ensured
        .partitions
        .iter()
        .map(|(topic, n)| format!("{topic} ({n} partitions)"))
        .collect::<Vec<_>>()
        .join(", ");
    ensured.check(format!("{} topics: {listed}", ensured.partitions.len()))
}

async fn write_status(
    route: &GrpcKafkaRoute,
    ctx: &Context,
    checks: Vec<Check>,
    fresh: GrpcKafkaRouteStatus,
) -> Result<(), ReconcileError> {
    let previous = route.status.clone().unwrap_or_default();
    // An error pass knows only Ready: the other fields keep what the last full pass found.
    let next = if fresh.routes.is_some() {
        GrpcKafkaRouteStatus {
            // Owned by its own field manager (crate::deletion::record_created); carried along.
            created_topics: previous.created_topics.clone(),
            ..fresh
        }
    } else {
        previous.clone()
    };
    status::write(route, ctx, &previous, next, checks).await
}
