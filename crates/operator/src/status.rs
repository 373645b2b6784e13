//! Status conditions, shared by both resources: `Ready` sums up the others, every condition has a
//! CamelCase reason and a message for humans, and `lastTransitionTime` only moves when the status
//! does (a status write that changes nothing is skipped, so the controller does not wake itself).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use kube::{Resource, ResourceExt};
use serde_json::json;

use crate::context::{Context, ReconcileError};

pub const READY: &str = "Ready";
pub const PROXIES_READY: &str = "ProxiesReady";
pub const TOPICS_READY: &str = "TopicsReady";
/// Insecure settings the spec spelled out: `True` while there are any. Never holds up `Ready`.
pub const WARNING: &str = "Warning";

/// One condition as the reconciler sees it, before timestamps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Check {
    pub type_: &'static str,
    pub ok: bool,
    pub reason: String,
    pub message: String,
}

impl Check {
    /// The `Warning` condition for `warnings` (`False` when there are none).
    pub fn warnings(warnings: &[String]) -> Self {
        match warnings.is_empty() {
            true => Self::failed(WARNING, "None", "no insecure settings"),
            false => Self::ok(WARNING, "InsecureSettings", warnings.join("; ")),
        }
    }

    pub fn ok(type_: &'static str, reason: &str, message: impl Into<String>) -> Self {
        Self {
            type_,
            ok: true,
            reason: reason.into(),
            message: message.into(),
        }
    }

    pub fn failed(type_: &'static str, reason: &str, message: impl Into<String>) -> Self {
        Self {
            type_,
            ok: false,
            reason: reason.into(),
            message: message.into(),
        }
    }
}

/// `Ready` from the other checks: true when all are, else the first failure's reason and message.
pub fn ready(checks: &[Check]) -> Check {
    match checks.iter().find(|c| !c.ok && c.type_ != WARNING) {
        None => Check::ok(READY, "Ready", "every part is ready"),
        Some(failed) => Check::failed(READY, &failed.reason, failed.message.clone()),
    }
}

/// The conditions to store: `previous` updated with `checks`, keeping `lastTransitionTime` of
/// every condition whose status did not change.
pub fn merge(previous: &[Condition], checks: &[Check], generation: Option<i64>) -> Vec<Condition> {
    let now = Time(Timestamp::now());
    checks
        .iter()
        .map(|check| {
            let status = if check.ok { "True" } else { "False" };
            let since = previous
                .iter()
                .find(|c| c.type_ == check.type_ && c.status == status)
                .map(|c| c.last_transition_time.clone())
                .unwrap_or_else(|| now.clone());
            Condition {
                type_: check.type_.into(),
                status: status.into(),
                reason: check.reason.clone(),
                message: check.message.clone(),
                last_transition_time: since,
                observed_generation: generation,
            }
        })
        .collect()
}

/// The status of a resource kind, as far as the shared writer needs to know it.
pub trait Conditioned: Clone + PartialEq + serde::Serialize {
    fn conditions(&self) -> &[Condition];
    fn set_conditions(&mut self, generation: Option<i64>, conditions: Vec<Condition>);
}

/// Stores `next` with `checks` merged into the previous conditions (and `Ready` summing them up
/// unless a check is `Ready` itself), records an Event when `Ready` flips, and writes nothing
/// when nothing changed, so the controller does not wake itself.
pub async fn write<K>(
    object: &K,
    ctx: &Context,
    previous: &K::Status,
    mut next: K::Status,
    mut checks: Vec<Check>,
) -> Result<(), ReconcileError>
where
    K: kube::core::object::HasStatus + ResourceExt,
    K: Resource<DynamicType = (), Scope = kube::core::NamespaceResourceScope>,
    K: Clone + std::fmt::Debug + serde::de::DeserializeOwned,
    K::Status: Conditioned,
{
    if checks.iter().all(|c| c.type_ != READY) {
        checks.insert(0, ready(&checks));
    }
    let generation = object.meta().generation;
    let mut conditions = merge(previous.conditions(), &checks, generation);
    // Keep the conditions this pass did not evaluate (an error pass only knows Ready).
    for old in previous.conditions() {
        if !conditions.iter().any(|c| c.type_ == old.type_) {
            conditions.push(old.clone());
        }
    }
    next.set_conditions(generation, conditions);
    if &next == previous {
        return Ok(());
    }
    let ready_of = |status: &K::Status| {
        status
            .conditions()
            .iter()
            .find(|c| c.type_ == READY)
            .cloned()
    };
    if let Some(now) = ready_of(&next)
        && ready_of(previous).map(|c| c.status) != Some(now.status.clone())
    {
        ctx.event(object, now.status == "True", &now.reason, &now.message)
            .await;
    }
    let api: Api<K> = Api::namespaced(ctx.client.clone(), &object.namespace().unwrap_or_default());
    api.patch_status(
        &object.name_any(),
        &PatchParams::apply(crate::FIELD_MANAGER).force(),
        &Patch::Apply(json!({
            "apiVersion": K::api_version(&()),
            "kind": K::kind(&()),
            "status": next,
        })),
    )
    .await?;
    Ok(())
}

/// Conditions as a list keyed by `type`, so server-side apply merges them per type.
pub fn conditions_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
    let mut schema = generator.subschema_for::<Vec<Condition>>();
    schema.insert("x-kubernetes-list-type".into(), "map".into());
    schema.insert(
        "x-kubernetes-list-map-keys".into(),
        serde_json::json!(["type"]),
    );
    schema
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_names_the_first_failure() {
        let checks = [
            Check::ok(TOPICS_READY, "NotNeeded", "broker mode"),
            Check::failed(PROXIES_READY, "Rollout", "r-proxy: 0 of 2 pods ready"),
        ];
        let ready = ready(&checks);
        assert!(!ready.ok);
        assert_eq!(ready.reason, "Rollout");
        assert!(ready.message.contains("r-proxy"));
    }

    #[test]
    fn transition_time_only_moves_when_the_status_changes() {
        let first = merge(&[], &[Check::failed(READY, "Rollout", "waiting")], Some(1));
        let same = merge(&first, &[Check::failed(READY, "Rollout", "still")], Some(2));
        assert_eq!(same[0].last_transition_time, first[0].last_transition_time);
        assert_eq!(same[0].observed_generation, Some(2));
        std::thread::sleep(std::time::Duration::from_millis(2));
        let flipped = merge(&same, &[Check::ok(READY, "Ready", "ok")], Some(2));
        assert_ne!(
            flipped[0].last_transition_time,
            first[0].last_transition_time
        );
    }
}
