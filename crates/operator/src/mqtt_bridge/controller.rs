//! Reconciles an `MqttBridge`: applies what `render` produces (server-side apply, one field
//! manager, owner references so Kubernetes deletes it all with the bridge), then reports how far
//! the rollout got in the status. In Kafka mode the topics it created are deleted with it only
//! under `deletionPolicy: Delete` (see crate::deletion).

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt as _;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{ConfigMap, Secret, Service};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use kube::api::Api;
use kube::core::PartialObjectMeta;
use kube::runtime::controller::Action;
use kube::runtime::finalizer::Event as Finalizer;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Resource, ResourceExt};

use super::render::{self, Inputs};
use super::scaling;
use super::spec::{ACL_KEY, MqttBridge, MqttBridgeStatus, PASSWORDS_KEY};
use crate::context::{Context, ReconcileError, scoped};
use crate::kafka_access::{get_secret, has_keys, require_keys};
use crate::relay_pki;
use crate::status::{self, Check};
use crate::workload::apply_owned;

/// Runs the controller over `namespace` (every namespace when `None`) until the process stops it.
pub async fn run(ctx: Arc<Context>, namespace: Option<String>) {
    let client = ctx.client.clone();
    let ns = namespace.as_deref();
    let controller = crate::context::controller_for::<MqttBridge>(&client, ns);
    // A referenced Secret that appears or changes wakes the bridges that name it.
    let bridges = controller.store();
    let acl_readers = bridges.clone();
    // Owned objects and Secrets are watched by metadata only (`PartialObjectMeta`): the
    // reconciler reads what it needs from the apply answers, so the operator never caches Secret
    // data or whole Deployments.
    controller
        .watches(
            scoped::<PartialObjectMeta<Secret>>(&client, ns),
            watcher::Config::default(),
            crate::context::woken_by_secret(bridges, |bridge: &MqttBridge| {
                // Its own link PKI too: a deleted certificate is issued again at once.
                let mut secrets = bridge.spec.secrets();
                secrets.extend(relay_pki::secret_names(&bridge.name_any()));
                secrets
            }),
        )
        // An ACL ConfigMap that changes rolls r-proxy (it reads the ACL at start).
        .watches(
            scoped::<PartialObjectMeta<ConfigMap>>(&client, ns),
            watcher::Config::default(),
            crate::context::woken_by(acl_readers, |bridge: &MqttBridge| {
                let acl = bridge.spec.auth.acl_config_map.as_ref();
                acl.map(|c| (c.name.clone(), "spec.auth.aclConfigMap".into()))
                    .into_iter()
                    .collect()
            }),
        )
        // An autoscaler that starts or stops targeting a role changes who sets its replicas.
        .watches(
            scoped::<HorizontalPodAutoscaler>(&client, ns),
            watcher::Config::default(),
            |hpa| {
                let namespace = hpa.namespace();
                crate::hpa::owners_of(&hpa, "MqttBridge", &["-r-proxy", "-s-proxy"])
                    .map(|name| ObjectRef::new(&name).within(namespace.as_deref().unwrap_or("")))
            },
        )
        .owns(
            scoped::<PartialObjectMeta<Deployment>>(&client, ns),
            watcher::Config::default(),
        )
        .owns(
            scoped::<PartialObjectMeta<Service>>(&client, ns),
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

async fn reconcile(bridge: Arc<MqttBridge>, ctx: Arc<Context>) -> Result<Action, ReconcileError> {
    let _slot = ctx.reconcile_slots.acquire().await.expect("never closed");
    let started = Instant::now();
    let policy = bridge.spec.deletion_policy;
    let result = crate::deletion::reconcile(&ctx, bridge.clone(), policy, |event| async {
        match event {
            Finalizer::Apply(bridge) => apply(&bridge, &ctx).await,
            Finalizer::Cleanup(bridge) => cleanup(&bridge, &ctx).await,
        }
    })
    .await;
    ctx.metrics
        .observe("MqttBridge", started.elapsed(), result.is_ok());
    let deleting = bridge.meta().deletion_timestamp.is_some();
    if let Err(error) = &result
        && !deleting
    {
        // The failure goes into the status too, so `kubectl get mqb` says why it is not Ready.
        let check = Check::failed(status::READY, error.reason(), error.to_string());
        // The other fields keep what the last full pass found.
        let previous = bridge.status.clone().unwrap_or_default();
        let _ = status::write(
            bridge.as_ref(),
            &ctx,
            &previous,
            previous.clone(),
            vec![check],
        )
        .await;
    } else {
        ctx.reset_backoff(bridge.as_ref());
    }
    result
}

/// Deletes the topics the bridge created (Kafka mode, `deletionPolicy: Delete`), or gives up on
/// them after `deletionTimeoutSeconds`.
async fn cleanup(bridge: &MqttBridge, ctx: &Context) -> Result<Action, ReconcileError> {
    let created = bridge.status.as_ref().map(|s| s.created_topics.as_slice());
    let topics = crate::deletion::Topics {
        policy: bridge.spec.deletion_policy,
        kafka: bridge.spec.upstream.kafka.as_ref().map(|k| k.kafka_ref()),
        created: created.unwrap_or_default(),
        timeout_seconds: bridge.spec.deletion_timeout_seconds,
    };
    crate::deletion::cleanup(bridge, ctx, topics).await
}

async fn apply(bridge: &MqttBridge, ctx: &Context) -> Result<Action, ReconcileError> {
    if bridge.meta().deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    let namespace = bridge.namespace().expect("MqttBridge is namespaced");
    let client = ctx.client.clone();
    let mut inputs = Inputs {
        image: ctx.proxy_image(bridge.spec.image.as_deref())?,
        broker_client_cert: false,
        kafka_client_cert: false,
        kafka_credentials: None,
        r_proxy_files: None,
        s_proxy_replicas: Default::default(),
        r_proxy_replicas: Default::default(),
    };
    // Referenced Secrets must exist before pods that mount them can start.
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &namespace);
    if let Some(tls) = &bridge.spec.listener.tls {
        let secret = get_secret(&secrets, &tls.secret_name, "spec.listener.tls.secretName").await?;
        require_keys(&secret, &tls.secret_name, &["tls.crt", "tls.key"])?;
        if tls.require_client_certificate {
            require_keys(&secret, &tls.secret_name, &["ca.crt"])?;
        }
    }
    if let Some(tls) = bridge
        .spec
        .upstream
        .broker
        .as_ref()
        .and_then(|b| b.tls.as_ref())
    {
        let secret = get_secret(
            &secrets,
            &tls.secret_name,
            "spec.upstream.broker.tls.secretName",
        )
        .await?;
        require_keys(&secret, &tls.secret_name, &["ca.crt"])?;
        inputs.broker_client_cert = has_keys(&secret, &["tls.crt", "tls.key"]);
    }

    if let Some(jwt) = &bridge.spec.auth.jwt {
        let keys = &jwt.keys_secret;
        let secret = get_secret(&secrets, &keys.name, "spec.auth.jwt.keysSecret.name").await?;
        require_keys(&secret, &keys.name, &[keys.key.as_str()])?;
    }
    // r-proxy reads the password file and the ACL only at start: their contents go into its pod
    // template hash, so a change rolls the pods (sessions drain with 0x8B and reconnect).
    let mut read_at_start = Vec::new();
    if let Some(passwords) = &bridge.spec.auth.password_secret {
        let field = "spec.auth.passwordSecret.name";
        let secret = get_secret(&secrets, &passwords.name, field).await?;
        let key = passwords.key_or(PASSWORDS_KEY);
        require_keys(&secret, &passwords.name, &[key])?;
        let data = secret.data.as_ref().and_then(|d| d.get(key));
        read_at_start.extend(data.map(|d| d.0.clone()).unwrap_or_default());
    }
    if let Some(acl) = &bridge.spec.auth.acl_config_map {
        let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), &namespace);
        let rules = config_maps
            .get_opt(&acl.name)
            .await?
            .and_then(|c| c.data?.remove(acl.key_or(ACL_KEY)));
        let Some(rules) = rules else {
            return Err(ReconcileError::MissingConfigMap {
                name: acl.name.clone(),
                field: format!("spec.auth.aclConfigMap (key {})", acl.key_or(ACL_KEY)),
            });
        };
        read_at_start.extend(rules.into_bytes());
    }
    if !read_at_start.is_empty() {
        inputs.r_proxy_files = Some(crate::workload::config_hash(&String::from_utf8_lossy(
            &read_at_start,
        )));
    }

    let kafka_access = match &bridge.spec.upstream.kafka {
        Some(kafka) => Some(kafka.kafka_ref().resolve(&secrets).await?),
        None => None,
    };
    inputs.kafka_client_cert = kafka_access.as_ref().is_some_and(|a| a.client_cert());
    inputs.kafka_credentials = kafka_access.as_ref().map(|a| a.cache_key());
    let scaled = scaling::scale(bridge, ctx).await?;
    inputs.r_proxy_replicas = scaled.r_proxy.replicas;
    inputs.s_proxy_replicas = scaled.s_proxy.replicas;
    let rendered = render::render(bridge, &inputs)?;
    let owner = render::owner(bridge);
    // The link certificates exist before the pods that mount them; renewal wakes us in time.
    let mut next_pass = scaled.poll.unwrap_or(Duration::from_secs(300));
    if !bridge.spec.relay.plaintext {
        let names = render::s_proxy_names(bridge);
        let identity = render::r_proxy_identity(bridge);
        let renew_in = relay_pki::ensure(&secrets, &owner, &names, &identity).await?;
        next_pass = next_pass.min(renew_in + Duration::from_secs(1));
    }
    let config_maps: Api<ConfigMap> = Api::namespaced(client.clone(), &namespace);
    apply_owned(&config_maps, &rendered.config_map, &owner).await?;
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), &namespace);
    let mut checks = vec![Check::warnings(&rendered.warnings), scaled.check];
    let mut ready_r_proxies = None;
    let mut rolling = Vec::new();
    for deployment in &rendered.deployments {
        let applied = apply_owned(&deployments, deployment, &owner).await?;
        let role = deployment.name_any();
        let (ready, message) = rollout(&applied);
        if role.ends_with("-r-proxy") {
            ready_r_proxies = applied.status.as_ref().and_then(|s| s.ready_replicas);
        }
        if !ready {
            rolling.push(format!("{role}: {message}"));
        }
    }
    checks.push(if rolling.is_empty() {
        Check::ok(
            status::PROXIES_READY,
            "PodsReady",
            "r-proxy and s-proxy pods are ready",
        )
    } else {
        Check::failed(status::PROXIES_READY, "RollingOut", rolling.join("; "))
    });
    let services: Api<Service> = Api::namespaced(client, &namespace);
    for service in &rendered.services {
        apply_owned(&services, service, &owner).await?;
    }
    let budgets: Api<PodDisruptionBudget> = Api::namespaced(ctx.client.clone(), &namespace);
    for budget in &rendered.disruption_budgets {
        apply_owned(&budgets, budget, &owner).await?;
    }
    let policies: Api<NetworkPolicy> = Api::namespaced(ctx.client.clone(), &namespace);
    for policy in &rendered.network_policies {
        apply_owned(&policies, policy, &owner).await?;
    }
    crate::monitoring::reconcile(&ctx.client, &owner, &bridge.spec.monitoring).await?;
    let mut shared = None;
    let mode = if let Some(access) = &kafka_access {
        let topics = render::kafka_topics(bridge);
        let admin = ctx.kafka.get(access)?;
        let ensured = crate::topics::ensure(&admin, &access.bootstrap, &topics).await?;
        crate::deletion::record_created(bridge, ctx, &ensured.created).await?;
        checks.push(ensured.check(format!(
            "{} topics ready in Kafka",
            ensured.partitions.len()
        )));
        shared = scaling::shared_lag(bridge, ctx, access).await?;
        "kafka"
    } else {
        checks.push(Check::ok(
            status::TOPICS_READY,
            "NotNeeded",
            "broker mode keeps no Kafka topics",
        ));
        "broker"
    };
    let previous = bridge.status.clone().unwrap_or_default();
    let next = MqttBridgeStatus {
        mode: Some(mode.into()),
        endpoints: rendered.endpoints,
        replicas: ready_r_proxies.or(Some(0)),
        lag: shared.as_ref().map(|s| s.lag),
        shared_groups: shared.as_ref().map(|s| s.groups as i32),
        r_proxy: scaled.r_proxy.status,
        s_proxy: scaled.s_proxy.status,
        ..previous.clone()
    };
    status::write(bridge, ctx, &previous, next, checks).await?;
    // Owned Deployments wake the controller when their pods change; the periodic resync is a
    // safety net.
    Ok(Action::requeue(next_pass))
}

/// Whether a Deployment has rolled out its current template, and if not, how far it got.
pub fn rollout(deployment: &Deployment) -> (bool, String) {
    let want = deployment
        .spec
        .as_ref()
        .and_then(|s| s.replicas)
        .unwrap_or(1);
    let Some(status) = &deployment.status else {
        return (false, "no status yet".into());
    };
    let current = status.observed_generation >= deployment.metadata.generation;
    let updated = status.updated_replicas.unwrap_or(0);
    let ready = status.ready_replicas.unwrap_or(0);
    let available = status.available_replicas.unwrap_or(0);
    let done = current
        && updated >= want
        && ready >= want
        && available >= want
        && status.replicas.unwrap_or(0) == want;
    (
        done,
        format!("{ready} of {want} pods ready, {updated} updated"),
    )
}
