//! What happens to a resource's Kafka topics when the resource is deleted, shared by both kinds.
//!
//! Under `deletionPolicy: Delete` a finalizer holds the deletion until the topics the resource
//! created (recorded in `status.createdTopics`; never a topic that existed before) are deleted.
//! When Kafka or its Secret is gone it does not hold forever: after `deletionTimeoutSeconds` from
//! the deletion request it lets go, leaving the topics, and says so in a Warning Event.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::finalizer::{Event, finalizer};
use kube::{Resource, ResourceExt};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::context::{Context, ReconcileError};
use crate::kafka_access::KafkaRef;

pub const FINALIZER: &str = "strait.dev/topics";

/// The field manager of `status.createdTopics`: its own, so the list survives a status write
/// that does not know about a topic created moments before (the list is a set under
/// server-side apply, each entry kept while any manager owns it).
const CREATED_TOPICS_MANAGER: &str = "strait-operator-topics";

#[derive(
    schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq,
)]
pub enum DeletionPolicy {
    /// Topics stay when the resource is deleted (their data is yours).
    #[default]
    Retain,
    /// The topics this resource created (`status.createdTopics`) are deleted with it; a
    /// finalizer holds the deletion until they are, for at most `deletionTimeoutSeconds`.
    Delete,
}

pub fn default_timeout_seconds() -> i64 {
    300
}

/// Runs `handle` with `Apply`, or with `Cleanup` once the resource is being deleted, under the
/// topics finalizer when the policy is `Delete` (or the finalizer is still there from when it
/// was).
pub async fn reconcile<K, F, Fut>(
    ctx: &Context,
    object: Arc<K>,
    policy: DeletionPolicy,
    handle: F,
) -> Result<Action, ReconcileError>
where
    K: Resource<DynamicType = (), Scope = kube::core::NamespaceResourceScope>,
    K: Clone + std::fmt::Debug + Serialize + serde::de::DeserializeOwned,
    F: FnOnce(Event<K>) -> Fut,
    Fut: Future<Output = Result<Action, ReconcileError>>,
{
    let guarded =
        policy == DeletionPolicy::Delete || object.finalizers().iter().any(|f| f == FINALIZER);
    if guarded {
        let api: Api<K> =
            Api::namespaced(ctx.client.clone(), &object.namespace().unwrap_or_default());
        return finalizer(&api, FINALIZER, object, handle)
            .await
            .map_err(|error| match error {
                kube::runtime::finalizer::Error::ApplyFailed(e)
                | kube::runtime::finalizer::Error::CleanupFailed(e) => e,
                other => ReconcileError::Finalizer(other.to_string()),
            });
    }
    if object.meta().deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    handle(Event::Apply(object)).await
}

/// What a resource knows about its topics when it is deleted.
pub struct Topics<'a> {
    pub policy: DeletionPolicy,
    pub kafka: Option<KafkaRef<'a>>,
    /// `status.createdTopics`.
    pub created: &'a [String],
    /// `spec.deletionTimeoutSeconds`.
    pub timeout_seconds: i64,
}

/// Deletes the topics the resource created (under `Delete`). `Ok` lets the finalizer go: once
/// they are deleted, or once the timeout has passed since the deletion request, with a Warning
/// Event naming the topics left behind and why.
pub async fn cleanup<K>(
    object: &K,
    ctx: &Context,
    topics: Topics<'_>,
) -> Result<Action, ReconcileError>
where
    K: Resource<DynamicType = ()> + ResourceExt,
{
    let kind = K::kind(&());
    let (Some(kafka), DeletionPolicy::Delete, false) =
        (topics.kafka, topics.policy, topics.created.is_empty())
    else {
        return Ok(Action::await_change());
    };
    let names = topics.created;
    let timeout = Duration::from_secs(topics.timeout_seconds.max(0) as u64);
    let left = timeout.saturating_sub(since_deletion(object));
    let attempt = async {
        let secrets: Api<Secret> =
            Api::namespaced(ctx.client.clone(), &object.namespace().unwrap_or_default());
        let access = kafka.resolve(&secrets).await?;
        let admin = ctx.kafka.get(&access)?;
        crate::topics::delete(&admin, &access.bootstrap, names).await?;
        Ok::<_, ReconcileError>(())
    };
    // An attempt never runs past the deadline (a second at least, so a late retry still tries).
    let error = match tokio::time::timeout(left.max(Duration::from_secs(1)), attempt).await {
        Ok(Ok(())) => {
            tracing::info!(topics = ?names, "deleted the topics this resource created (deletionPolicy: Delete)");
            ctx.metrics.topic_cleanup(&kind, "deleted");
            let message = format!("deleted the topics it created: {}", names.join(", "));
            ctx.event(object, true, "TopicsDeleted", &message).await;
            return Ok(Action::await_change());
        }
        Ok(Err(error)) => error.to_string(),
        Err(_) => format!(
            "Kafka at {} gave no answer within {}s",
            kafka.bootstrap,
            left.max(Duration::from_secs(1)).as_secs()
        ),
    };
    let left = timeout.saturating_sub(since_deletion(object));
    if left.is_zero() {
        let message = format!(
            "gave up deleting the topics it created after {}s (spec.deletionTimeoutSeconds), \
             left behind: {} ({error}); delete them by hand if they are not needed",
            timeout.as_secs(),
            names.join(", "),
        );
        tracing::warn!(topics = ?names, %error, "left topics behind: the deletion timeout passed");
        ctx.metrics.topic_cleanup(&kind, "left_behind");
        ctx.event(object, false, "TopicsLeftBehind", &message).await;
        return Ok(Action::await_change());
    }
    Err(ReconcileError::TopicsNotDeleted {
        topics: names.join(", "),
        error,
        give_up_in: left,
    })
}

/// Adds `created` to `status.createdTopics` at once, before anything else can fail, so a topic
/// this resource created is never forgotten.
pub async fn record_created<K>(
    object: &K,
    ctx: &Context,
    created: &[String],
) -> Result<(), ReconcileError>
where
    K: Resource<DynamicType = (), Scope = kube::core::NamespaceResourceScope>,
    K: Clone + std::fmt::Debug + Serialize + serde::de::DeserializeOwned,
{
    if created.is_empty() {
        return Ok(());
    }
    let api: Api<K> = Api::namespaced(ctx.client.clone(), &object.namespace().unwrap_or_default());
    // This manager's whole list, read fresh: an entry it left out would no longer be its own.
    let current = api.get_status(&object.name_any()).await?;
    let mut topics: Vec<String> = serde_json::to_value(&current)
        .ok()
        .and_then(|v| serde_json::from_value(v["status"]["createdTopics"].clone()).ok())
        .unwrap_or_default();
    topics.extend(created.iter().cloned());
    topics.sort();
    topics.dedup();
    api.patch_status(
        &object.name_any(),
        &PatchParams::apply(CREATED_TOPICS_MANAGER).force(),
        &Patch::Apply(json!({
            "apiVersion": K::api_version(&()),
            "kind": K::kind(&()),
            "status": {"createdTopics": topics},
        })),
    )
    .await?;
    tracing::info!(topics = ?created, "created topics, recorded in status.createdTopics");
    Ok(())
}

/// Time since the deletion was requested (zero while it was not).
fn since_deletion<K: Resource>(object: &K) -> Duration {
    let since = object
        .meta()
        .deletion_timestamp
        .as_ref()
        .map_or(0, |requested| {
            Timestamp::now().as_second() - requested.0.as_second()
        });
    Duration::from_secs(since.max(0) as u64)
}

/// `status.createdTopics`: a set under server-side apply, so two field managers can add to it.
pub fn created_topics_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
    let mut schema = generator.subschema_for::<Vec<String>>();
    schema.insert("x-kubernetes-list-type".into(), "set".into());
    schema
}
