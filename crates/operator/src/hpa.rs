//! HorizontalPodAutoscalers (and KEDA, which makes one) that target a Deployment the operator
//! renders: their replicas are theirs. The operator then leaves `spec.replicas` out of its apply,
//! hands the field over once, and says so in the `Scaling` condition.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use kube::api::{Api, ListParams, Patch, PatchParams};
use serde_json::json;

/// The field manager that holds `spec.replicas` between the operator letting go and the
/// autoscaler's first write (server-side apply would otherwise delete the field, and the
/// Deployment would drop to one pod).
const HANDOVER_MANAGER: &str = "strait-operator-handover";

/// The autoscalers of one namespace, listed once per reconcile.
pub struct Autoscalers(Vec<HorizontalPodAutoscaler>);

impl Autoscalers {
    pub async fn list(client: &kube::Client, namespace: &str) -> Result<Self, kube::Error> {
        let api: Api<HorizontalPodAutoscaler> = Api::namespaced(client.clone(), namespace);
        Ok(Self(api.list(&ListParams::default()).await?.items))
    }

    /// The names of those that scale `kind`/`name`, sorted.
    pub fn targeting(&self, kind: &str, name: &str) -> Vec<String> {
        let mut found: Vec<String> = (self.0.iter())
            .filter(|hpa| {
                hpa.spec.as_ref().is_some_and(|s| {
                    s.scale_target_ref.kind == kind && s.scale_target_ref.name == name
                })
            })
            .filter_map(|hpa| hpa.metadata.name.clone())
            .collect();
        found.sort();
        found
    }
}

/// Makes sure the operator's field manager no longer owns the Deployment's `spec.replicas`, so
/// leaving it out of the next apply does not reset it.
pub async fn release_replicas(api: &Api<Deployment>, name: &str) -> Result<(), kube::Error> {
    let Some(live) = api.get_opt(name).await? else {
        return Ok(());
    };
    let ours = live.metadata.managed_fields.iter().flatten().any(|entry| {
        entry.manager.as_deref() == Some(crate::FIELD_MANAGER)
            && entry
                .fields_v1
                .as_ref()
                .and_then(|f| f.0.get("f:spec"))
                .is_some_and(|spec| spec.get("f:replicas").is_some())
    });
    let Some(replicas) = live.spec.and_then(|s| s.replicas).filter(|_| ours) else {
        return Ok(());
    };
    api.patch(
        name,
        &PatchParams::apply(HANDOVER_MANAGER).force(),
        &Patch::Apply(json!({
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": name},
            "spec": {"replicas": replicas},
        })),
    )
    .await?;
    tracing::info!(
        deployment = name,
        replicas,
        "handed spec.replicas over to the HorizontalPodAutoscaler"
    );
    Ok(())
}

/// The names of the resources whose Deployments an autoscaler targets: `NAME-<suffix>` for each
/// of `suffixes`, or `kind`/`NAME` itself (the scale subresource). For watch mappers.
pub fn owners_of(hpa: &HorizontalPodAutoscaler, kind: &str, suffixes: &[&str]) -> Option<String> {
    let target = &hpa.spec.as_ref()?.scale_target_ref;
    if target.kind == kind {
        return Some(target.name.clone());
    }
    if target.kind != "Deployment" {
        return None;
    }
    suffixes
        .iter()
        .find_map(|suffix| target.name.strip_suffix(suffix))
        .map(str::to_string)
}
