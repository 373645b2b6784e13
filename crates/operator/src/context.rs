//! What every reconcile shares: the client, the proxy image, metrics, the event recorder and the
//! per-object retry backoff (kube-runtime has none of its own).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::ObjectRef;
use kube::{Resource, ResourceExt};
use prometheus::{HistogramVec, IntCounterVec};

pub struct Context {
    pub client: kube::Client,
    pub proxy_image: String,
    /// Prefixes a resource's `spec.image` must start with.
    pub allowed_images: Vec<String>,
    pub metrics: Metrics,
    /// Kafka admin clients, one per cluster.
    pub kafka: crate::topics::Admins,
    /// Reconciles doing work at once. Each may wait on Kafka; the bound keeps a burst of a
    /// thousand new resources from holding a thousand requests and their buffers at once. A
    /// FIFO semaphore rather than kube-runtime's `concurrency`, whose held-back queue is a hash
    /// set: with owned Deployments re-triggering busy objects, some objects were never picked.
    pub reconcile_slots: tokio::sync::Semaphore,
    /// Bounds the short-lived consumers that read consumer-group offsets (librdkafka can only
    /// read a group's offsets from a consumer of that group).
    pub lag_readers: tokio::sync::Semaphore,
    recorder: Recorder,
    /// Consecutive failures per object (by uid: a new object of the same name starts afresh),
    /// for exponential backoff; emptied when it passes `MAX_BACKED_OFF`.
    failures: Mutex<HashMap<String, u32>>,
}

impl Context {
    pub fn new(
        client: kube::Client,
        proxy_image: String,
        allowed_images: Vec<String>,
        registry: &prometheus::Registry,
    ) -> anyhow::Result<Self> {
        let reporter = Reporter {
            controller: crate::FIELD_MANAGER.into(),
            instance: std::env::var("POD_NAME").ok(),
        };
        // Without a list, only the default image's own repository (any tag or digest).
        let repository = proxy_image
            .rsplit_once('@')
            .map(|(repo, _)| repo)
            .or_else(|| {
                proxy_image
                    .rsplit_once(':')
                    .filter(|(_, tag)| !tag.contains('/'))
                    .map(|(repo, _)| repo)
            })
            .unwrap_or(&proxy_image);
        let allowed_images = match allowed_images.is_empty() {
            true => vec![format!("{repository}:"), format!("{repository}@")],
            false => allowed_images,
        };
        Ok(Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            allowed_images,
            proxy_image,
            metrics: Metrics::register(registry)?,
            kafka: crate::topics::Admins::default(),
            reconcile_slots: tokio::sync::Semaphore::new(16),
            lag_readers: tokio::sync::Semaphore::new(4),
            failures: Mutex::default(),
        })
    }

    /// The image a resource's pods run: `spec_image` when it is on the allow-list, else the
    /// operator's default. A resource may not run any image it likes with its Secrets mounted.
    pub fn proxy_image(&self, spec_image: Option<&str>) -> Result<String, ReconcileError> {
        let Some(image) = spec_image else {
            return Ok(self.proxy_image.clone());
        };
        if self
            .allowed_images
            .iter()
            .any(|prefix| image.starts_with(prefix.as_str()))
        {
            return Ok(image.to_string());
        }
        Err(ReconcileError::ImageNotAllowed {
            image: image.into(),
            allowed: self.allowed_images.join(", "),
        })
    }

    pub fn reset_backoff<K: Resource<DynamicType = ()>>(&self, object: &K) {
        self.failures
            .lock()
            .expect("not poisoned")
            .remove(&backoff_key(object));
    }

    /// An Event on `object` (a Ready transition), so `kubectl describe` tells the story.
    pub async fn event<K: Resource<DynamicType = ()>>(
        &self,
        object: &K,
        normal: bool,
        reason: &str,
        message: &str,
    ) {
        let event = Event {
            type_: if normal {
                EventType::Normal
            } else {
                EventType::Warning
            },
            reason: reason.into(),
            note: Some(message.chars().take(1000).collect()),
            action: "Reconcile".into(),
            secondary: None,
        };
        if let Err(error) = self.recorder.publish(&event, &object.object_ref(&())).await {
            tracing::warn!(%error, "could not record an event");
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error("Secret {name:?} (named in {field}) does not exist")]
    MissingSecret { name: String, field: String },
    #[error("Secret {name:?} lacks {keys}")]
    SecretKeys { name: String, keys: String },
    #[error("ConfigMap {name:?} (named in {field}) does not exist")]
    MissingConfigMap { name: String, field: String },
    #[error(transparent)]
    Topics(#[from] crate::topics::TopicError),
    #[error(transparent)]
    Lag(#[from] crate::kafka::LagError),
    #[error(transparent)]
    RenderRoute(#[from] crate::grpc_route::render::RenderError),
    #[error("finalizer: {0}")]
    Finalizer(String),
    #[error(
        "deleting the topics this resource created ({topics}): {error}; retrying, giving up in {}s \
         (spec.deletionTimeoutSeconds)", give_up_in.as_secs()
    )]
    TopicsNotDeleted {
        topics: String,
        error: String,
        /// Time left before the finalizer lets go: the next retry comes no later.
        give_up_in: Duration,
    },
    #[error(transparent)]
    Render(#[from] crate::mqtt_bridge::render::RenderError),
    #[error(
        "spec.monitoring.serviceMonitor is on, but the cluster has no ServiceMonitor CRD \
         (monitoring.coreos.com/v1): install the Prometheus Operator or turn it off"
    )]
    ServiceMonitorUnavailable,
    #[error(
        "{kind} {name:?} already exists and is not owned by this resource: rename the resource or \
         remove the {kind} (the operator never takes over an object it did not create)"
    )]
    NotOwned { kind: String, name: String },
    #[error(
        "spec.image {image:?} is not allowed: it must start with one of {allowed} (the chart's \
         allowedImages)"
    )]
    ImageNotAllowed { image: String, allowed: String },
    #[error("relay link certificates: {0}")]
    Pki(#[from] crate::relay_pki::PkiError),
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
}

impl ReconcileError {
    /// The CamelCase reason of the `Ready=False` condition.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::MissingSecret { .. } => "SecretNotFound",
            Self::SecretKeys { .. } => "SecretIncomplete",
            Self::MissingConfigMap { .. } => "ConfigMapNotFound",
            Self::Topics(error) => error.reason(),
            Self::Lag(crate::kafka::LagError::Unreachable { .. }) => "KafkaUnreachable",
            Self::Lag(_) => "LagUnknown",
            Self::RenderRoute(_) => "InvalidSpec",
            Self::Finalizer(_) => "FinalizerFailed",
            Self::TopicsNotDeleted { .. } => "TopicDeletionPending",
            Self::Render(_) => "InvalidSpec",
            Self::ServiceMonitorUnavailable => "ServiceMonitorCrdMissing",
            Self::NotOwned { .. } => "ObjectNotOwned",
            Self::Pki(_) => "CertificateFailed",
            Self::ImageNotAllowed { .. } => "ImageNotAllowed",
            Self::Kube(_) => "KubernetesApiError",
        }
    }
}

/// `Api<K>` over `namespace`, or over every namespace when `None` (cluster-wide mode).
pub fn scoped<K>(client: &kube::Client, namespace: Option<&str>) -> kube::Api<K>
where
    K: Resource<DynamicType = (), Scope = kube::core::NamespaceResourceScope>,
{
    match namespace {
        Some(namespace) => kube::Api::namespaced(client.clone(), namespace),
        None => kube::Api::all(client.clone()),
    }
}

/// A controller over the resources of kind `K` that reacts to what users change (spec, deletion,
/// finalizers, labels, annotations) but not to the status the operator writes itself: a status
/// that moves with load (lag, sessions) would otherwise wake the very reconcile that wrote it.
pub fn controller_for<K>(
    client: &kube::Client,
    namespace: Option<&str>,
) -> kube::runtime::Controller<K>
where
    K: Resource<DynamicType = (), Scope = kube::core::NamespaceResourceScope>,
    K: Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + Sync + 'static,
{
    use kube::runtime::WatchStreamExt as _;
    let (reader, writer) = kube::runtime::reflector::store();
    let trigger = kube::runtime::watcher(
        scoped::<K>(client, namespace),
        kube::runtime::watcher::Config::default(),
    )
    .default_backoff()
    .reflect(writer)
    .applied_objects()
    .predicate_filter(user_changes::<K>, Default::default());
    kube::runtime::Controller::for_stream(trigger, reader)
}

fn user_changes<K: Resource>(object: &K) -> Option<u64> {
    use std::hash::{DefaultHasher, Hash as _, Hasher as _};
    let meta = object.meta();
    let mut hasher = DefaultHasher::new();
    meta.uid.hash(&mut hasher);
    meta.generation.hash(&mut hasher);
    meta.deletion_timestamp
        .as_ref()
        .map(|t| t.0.as_second())
        .hash(&mut hasher);
    meta.finalizers.hash(&mut hasher);
    meta.labels.hash(&mut hasher);
    meta.annotations.hash(&mut hasher);
    Some(hasher.finish())
}

/// The watch mapper that wakes, when a Secret appears or changes, the resources in its namespace
/// whose `names` list it.
pub fn woken_by_secret<K>(
    store: kube::runtime::reflector::Store<K>,
    names: fn(&K) -> Vec<(String, String)>,
) -> impl Fn(kube::core::PartialObjectMeta<k8s_openapi::api::core::v1::Secret>) -> Vec<ObjectRef<K>>
where
    K: Resource<DynamicType = ()> + ResourceExt + Clone + 'static,
{
    woken_by(store, names)
}

/// Like [`woken_by_secret`], for any kind of object a resource names (e.g. a ConfigMap).
pub fn woken_by<K, W>(
    store: kube::runtime::reflector::Store<K>,
    names: fn(&K) -> Vec<(String, String)>,
) -> impl Fn(kube::core::PartialObjectMeta<W>) -> Vec<ObjectRef<K>>
where
    K: Resource<DynamicType = ()> + ResourceExt + Clone + 'static,
    W: Resource<DynamicType = ()>,
{
    move |named| {
        let (name, namespace) = (named.name_any(), named.namespace());
        store
            .state()
            .into_iter()
            .filter(|object| {
                object.namespace() == namespace
                    && names(object).iter().any(|(secret, _)| *secret == name)
            })
            .map(|object| ObjectRef::from_obj(object.as_ref()))
            .collect()
    }
}

/// Objects whose failures are counted at most: past it the counts start over (a backoff that
/// restarts early costs a few retries; a map that only grows costs the operator its memory).
const MAX_BACKED_OFF: usize = 10_000;

/// An object's key in `failures`: its kind, namespace, name and uid.
fn backoff_key<K: Resource<DynamicType = ()>>(object: &K) -> String {
    format!(
        "{}#{}",
        ObjectRef::from_obj(object),
        object.meta().uid.as_deref().unwrap_or_default()
    )
}

/// Retries a failed object with exponential backoff from 1 s up to 5 minutes.
pub fn error_policy<K: Resource<DynamicType = ()> + ResourceExt>(
    object: Arc<K>,
    error: &ReconcileError,
    ctx: Arc<Context>,
) -> Action {
    let key = ObjectRef::from_obj(object.as_ref()).to_string();
    let mut failures = ctx.failures.lock().expect("not poisoned");
    if failures.len() >= MAX_BACKED_OFF {
        failures.clear();
    }
    let count = failures.entry(backoff_key(object.as_ref())).or_default();
    *count = count.saturating_add(1);
    let mut delay = Duration::from_secs(1u64 << (*count - 1).min(8)).min(Duration::from_secs(300));
    if let ReconcileError::TopicsNotDeleted { give_up_in, .. } = error {
        // The finalizer's deadline holds whatever the backoff has grown to.
        delay = delay.min(*give_up_in);
    }
    tracing::warn!(object = %key, %error, retry_in = ?delay, "reconcile failed");
    ctx.metrics
        .errors
        .with_label_values(&[K::kind(&()).as_ref(), error.reason()])
        .inc();
    Action::requeue(delay)
}

/// Every metric [`Metrics`] registers (the chart's dashboard and alerts are checked against it,
/// with [`crate::monitoring::RESOURCE_METRIC_NAMES`]).
pub const METRIC_NAMES: &[&str] = &[
    "strait_operator_reconciles_total",
    "strait_operator_reconcile_errors_total",
    "strait_operator_reconcile_duration_seconds",
];

pub struct Metrics {
    reconciles: IntCounterVec,
    errors: IntCounterVec,
    duration: HistogramVec,
    topic_cleanups: IntCounterVec,
}

impl Metrics {
    fn register(registry: &prometheus::Registry) -> prometheus::Result<Self> {
        let reconciles = IntCounterVec::new(
            prometheus::opts!(
                "strait_operator_reconciles_total",
                "Reconciles by kind and result."
            ),
            &["kind", "result"],
        )?;
        let errors = IntCounterVec::new(
            prometheus::opts!(
                "strait_operator_reconcile_errors_total",
                "Failed reconciles by kind and reason."
            ),
            &["kind", "reason"],
        )?;
        let duration = HistogramVec::new(
            prometheus::histogram_opts!(
                "strait_operator_reconcile_duration_seconds",
                "Time one reconcile took.",
                vec![0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0]
            ),
            &["kind"],
        )?;
        let topic_cleanups = IntCounterVec::new(
            prometheus::opts!(
                "strait_operator_topic_cleanups_total",
                "Deleted resources under deletionPolicy Delete, by kind and result: deleted, or \
                 left_behind when the deletion timeout passed first."
            ),
            &["kind", "result"],
        )?;
        registry.register(Box::new(topic_cleanups.clone()))?;
        registry.register(Box::new(reconciles.clone()))?;
        registry.register(Box::new(errors.clone()))?;
        registry.register(Box::new(duration.clone()))?;
        Ok(Self {
            reconciles,
            errors,
            duration,
            topic_cleanups,
        })
    }

    /// One resource's topics deleted (`deleted`) or given up on (`left_behind`).
    pub fn topic_cleanup(&self, kind: &str, result: &str) {
        self.topic_cleanups.with_label_values(&[kind, result]).inc();
    }

    pub fn observe(&self, kind: &str, took: Duration, ok: bool) {
        let result = if ok { "ok" } else { "error" };
        self.reconciles.with_label_values(&[kind, result]).inc();
        self.duration
            .with_label_values(&[kind])
            .observe(took.as_secs_f64());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registers_exactly_the_listed_metrics() {
        let registry = prometheus::Registry::new();
        let metrics = Metrics::register(&registry).unwrap();
        // Labelled families appear once a series exists.
        metrics.observe("MqttBridge", Duration::from_millis(5), false);
        metrics
            .errors
            .with_label_values(&["MqttBridge", "KafkaUnreachable"])
            .inc();
        let mut listed = METRIC_NAMES.to_vec();
        listed.sort();
        assert_eq!(strait_runtime::metric_names(&registry), listed);
    }
}
