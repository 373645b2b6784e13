//! How many r-proxy and s-proxy pods a bridge runs: a HorizontalPodAutoscaler that targets a
//! role's Deployment sets them; else `spec.<role>.autoscale` from the load the pods report
//! (r-proxy: connections, s-proxy: sessions); else `spec.<role>.replicas`. Also the lag of the
//! bridge's shared subscription groups, for the status.

use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use kube::api::Api;

use super::render::{self, Replicas};
use super::spec::{MqttBridge, PodAutoscale, ProxyPods, RoleScaling};
use crate::autoscale;
use crate::context::{Context, ReconcileError};
use crate::hpa;
use crate::kafka_access::KafkaAccess;
use crate::status::Check;

/// One role's outcome.
pub struct RoleScale {
    pub replicas: Replicas,
    pub status: Option<RoleScaling>,
    /// A clause of the `Scaling` condition.
    pub summary: String,
    pub external: bool,
}

/// The scaling of both roles, and the `Scaling` condition summing them up.
pub struct Scaled {
    pub r_proxy: RoleScale,
    pub s_proxy: RoleScale,
    pub check: Check,
    /// When to read the load again (the shortest poll interval of the autoscaled roles).
    pub poll: Option<Duration>,
}

pub async fn scale(bridge: &MqttBridge, ctx: &Context) -> Result<Scaled, ReconcileError> {
    let previous = bridge.status.clone().unwrap_or_default();
    let namespace = bridge.namespace().unwrap_or_default();
    let autoscalers = hpa::Autoscalers::list(&ctx.client, &namespace).await?;
    let r_proxy = role(
        bridge,
        ctx,
        &autoscalers,
        "r-proxy",
        &bridge.spec.r_proxy,
        previous.r_proxy,
    )
    .await?;
    let s_proxy = role(
        bridge,
        ctx,
        &autoscalers,
        "s-proxy",
        &bridge.spec.s_proxy,
        previous.s_proxy,
    )
    .await?;
    let autoscaled = [&bridge.spec.r_proxy, &bridge.spec.s_proxy]
        .into_iter()
        .filter_map(|pods| pods.autoscale.as_ref());
    let poll = autoscaled
        .map(|a| Duration::from_secs(a.poll_interval_seconds.max(1) as u64))
        .min();
    let reason = if r_proxy.external || s_proxy.external {
        "ExternalAutoscaler"
    } else if poll.is_some() {
        "LoadTracked"
    } else {
        "Manual"
    };
    let message = format!("{}; {}", r_proxy.summary, s_proxy.summary);
    Ok(Scaled {
        check: Check::ok("Scaling", reason, message),
        r_proxy,
        s_proxy,
        poll,
    })
}

async fn role(
    bridge: &MqttBridge,
    ctx: &Context,
    autoscalers: &hpa::Autoscalers,
    role: &str,
    pods: &ProxyPods,
    previous: Option<RoleScaling>,
) -> Result<RoleScale, ReconcileError> {
    let namespace = bridge.namespace().unwrap_or_default();
    let deployment = format!("{}-{role}", bridge.name_any());
    let autoscalers = autoscalers.targeting("Deployment", &deployment);
    if !autoscalers.is_empty() {
        let deployments: Api<Deployment> = Api::namespaced(ctx.client.clone(), &namespace);
        hpa::release_replicas(&deployments, &deployment).await?;
        let ignored = match pods.autoscale {
            Some(_) => format!(" (spec.{} is not applied)", field(role)),
            None => String::new(),
        };
        return Ok(RoleScale {
            replicas: Replicas::External,
            status: None,
            summary: format!(
                "{role}: HorizontalPodAutoscaler {} sets its replicas{ignored}",
                autoscalers.join(", ")
            ),
            external: true,
        });
    }
    let Some(autoscale) = &pods.autoscale else {
        return Ok(RoleScale {
            replicas: Replicas::Spec,
            status: None,
            summary: format!("{role}: {} pods (spec)", pods.replicas),
            external: false,
        });
    };
    let owner = render::owner(bridge);
    let load =
        crate::pod_load::read(&ctx.client, &namespace, &owner.selector_string(role), role).await?;
    let (recommended, why) = recommend(autoscale, &load, role);
    let history = previous.map(|p| p.recommendations).unwrap_or_default();
    let window = Duration::from_secs(autoscale.scale_down_stabilization_seconds.max(0) as u64);
    let (replicas, recommendations) =
        autoscale::stabilize(&history, window, Timestamp::now(), recommended);
    let held = match replicas > recommended {
        true => format!(", holding {replicas} for the scale-down window"),
        false => String::new(),
    };
    let answered = load.pods - load.unreadable.len() as i32;
    Ok(RoleScale {
        replicas: Replicas::Scaled(replicas),
        status: Some(RoleScaling {
            pods: load.pods,
            sessions: (answered > 0 || load.pods == 0).then_some(load.sessions),
            desired_replicas: Some(replicas),
            recommendations,
        }),
        summary: format!("{role}: {why}{held}"),
        external: false,
    })
}

/// ceil(sessions / sessionsPerPod) within the bounds; never fewer than the pods now when some of
/// them could not be read (their sessions are unknown).
fn recommend(policy: &PodAutoscale, load: &crate::pod_load::Load, role: &str) -> (i32, String) {
    let per_pod = policy.sessions_per_pod.max(1);
    let wanted = i32::try_from((load.sessions + per_pod - 1) / per_pod).unwrap_or(i32::MAX);
    let noun = if role == "r-proxy" {
        "connections"
    } else {
        "sessions"
    };
    let mut replicas = wanted.clamp(policy.min_replicas, policy.max_replicas);
    let mut why = format!(
        "{} {noun} on {} pods, {per_pod} per pod → {replicas} (min {}, max {})",
        load.sessions, load.pods, policy.min_replicas, policy.max_replicas
    );
    if !load.unreadable.is_empty() {
        replicas = replicas.max(load.pods.min(policy.max_replicas));
        let shown: Vec<&str> = load.unreadable.iter().take(3).map(String::as_str).collect();
        why = format!(
            "{why}; not scaling down: {} pods unread ({})",
            load.unreadable.len(),
            shown.join("; ")
        );
    }
    (replicas, why)
}

fn field(role: &str) -> &'static str {
    match role {
        "r-proxy" => "rProxy.autoscale",
        _ => "sProxy.autoscale",
    }
}

/// Lag of the bridge's shared subscription groups over its messages topics, and how many groups
/// there are. Shared groups are named `strait-share:<messages topic>:<group>:<filter>`.
pub async fn shared_lag(
    bridge: &MqttBridge,
    ctx: &Context,
    access: &KafkaAccess,
) -> Result<Option<crate::kafka::GroupsLag>, ReconcileError> {
    let Some(kafka) = &bridge.spec.upstream.kafka else {
        return Ok(None);
    };
    let prefix = format!("strait-share:{}:", kafka.topics.messages);
    let topics: Vec<String> = std::iter::once(kafka.topics.messages.clone())
        .chain(
            kafka
                .routes
                .iter()
                .filter(|r| !r.messages.contains("${"))
                .map(|r| r.messages.clone()),
        )
        .collect();
    let _reader = ctx.lag_readers.acquire().await.expect("never closed");
    let access = access.clone();
    let lag =
        tokio::task::spawn_blocking(move || crate::kafka::groups_lag(&access, &prefix, &topics))
            .await
            .expect("lag reading does not panic")?;
    Ok(Some(lag))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pod_load::Load;

    fn policy() -> PodAutoscale {
        PodAutoscale {
            min_replicas: 1,
            max_replicas: 5,
            sessions_per_pod: 100,
            scale_down_stabilization_seconds: 0,
            poll_interval_seconds: 15,
        }
    }

    fn load(pods: i32, sessions: i64, unreadable: usize) -> Load {
        Load {
            pods,
            sessions,
            unreadable: (0..unreadable)
                .map(|i| format!("pod-{i}: refused"))
                .collect(),
        }
    }

    #[test]
    fn sessions_per_pod_within_bounds() {
        for (sessions, want) in [(0, 1), (100, 1), (101, 2), (450, 5), (10_000, 5)] {
            let (replicas, why) = recommend(&policy(), &load(2, sessions, 0), "s-proxy");
            assert_eq!(replicas, want, "{sessions} sessions: {why}");
            assert!(
                why.contains(&format!("{sessions} sessions on 2 pods")),
                "{why}"
            );
        }
    }

    #[test]
    fn unread_pods_never_cause_a_scale_down() {
        let (replicas, why) = recommend(&policy(), &load(4, 10, 1), "r-proxy");
        assert_eq!(replicas, 4);
        assert!(
            why.contains("10 connections") && why.contains("1 pods unread"),
            "{why}"
        );
        // Scaling up still happens on what could be read.
        assert_eq!(recommend(&policy(), &load(2, 450, 1), "r-proxy").0, 5);
    }
}
