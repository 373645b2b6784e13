//! The consumer autoscaler's arithmetic, apart from Kafka and Kubernetes so every rule is unit
//! tested. KEDA's formula (`../shared/reference/operator.md` §2): replicas = ceil(lag / threshold),
//! clamped to [min, min(max, partitions)] (consumers beyond the partition count would sit idle),
//! activation from and to zero, and a scale-down stabilisation window so a dip in lag does not
//! cause a rebalance storm. Where the partition cap binds while every partition has a consumer and
//! lag persists, it recommends more partitions, up to the policy's maximum.
//!
//! Group membership shapes the decision too: members that are not this resource's pods (Zilla's
//! consumers in a shared `zillaGroup`) take partitions of their own, and the condition message
//! says how many of our pods have joined the group.
//!
//! The scale-down window's memory lives in the resource's status ([`Recommendation`]), not in the
//! operator's memory, so a new leader continues where the old one left off.

use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub min_replicas: i32,
    pub max_replicas: i32,
    /// Lag one consumer is expected to keep up with.
    pub lag_threshold: i64,
    /// With `min_replicas: 0`, lag above this wakes the first consumer (KEDA: strictly greater).
    pub activation_lag: i64,
    /// A lower recommendation only applies once it has held for this long.
    pub scale_down_window: Duration,
    /// Grow partitions up to this many when they cap the scale (None: never grow).
    pub max_partitions: Option<i32>,
}

/// What Kafka says now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Observation {
    /// Σ over partitions of (high watermark − committed offset); uncommitted partitions count
    /// their whole log, like KEDA's `earliest` policy.
    pub lag: i64,
    pub partitions: i32,
    /// Consumer-group members.
    pub members: i32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub replicas: i32,
    /// Partitions to grow the topic to, when the partition cap binds.
    pub grow_partitions_to: Option<i32>,
    /// CamelCase, for the `Scaling` condition.
    pub reason: &'static str,
    pub message: String,
}

/// The replicas the lag calls for right now, before stabilisation. `running` is how many of this
/// resource's consumer pods exist now (`None` when unknown): group members beyond them belong to
/// someone else and keep their partitions.
pub fn recommend(policy: &Policy, now: &Observation, running: Option<i32>) -> Decision {
    let mut decision = recommend_from_lag(policy, now, running);
    let group = match running {
        // Fewer members than pods: some have not joined (yet), the group is rebalancing.
        Some(ours) if now.members < ours => format!(
            "group: {} members of {ours} pods of ours (rebalancing), {} partitions",
            now.members, now.partitions
        ),
        Some(ours) => format!(
            "group: {} members ({ours} pods of ours), {} partitions",
            now.members, now.partitions
        ),
        None => format!(
            "group: {} members, {} partitions",
            now.members, now.partitions
        ),
    };
    decision.message = format!("{}; {group}", decision.message);
    decision
}

fn recommend_from_lag(policy: &Policy, now: &Observation, running: Option<i32>) -> Decision {
    let others = running.map_or(0, |ours| (now.members - ours).max(0));
    let free_partitions = (now.partitions - others).max(1);
    let cap = policy.max_replicas.min(free_partitions).max(0);
    if now.lag <= policy.activation_lag && policy.min_replicas == 0 {
        return Decision {
            replicas: 0,
            grow_partitions_to: None,
            reason: "Idle",
            message: format!(
                "lag {} is at most the activation lag {}",
                now.lag, policy.activation_lag
            ),
        };
    }
    let wanted = ceil_div(now.lag, policy.lag_threshold.max(1));
    let wanted = i32::try_from(wanted).unwrap_or(i32::MAX);
    let replicas = wanted
        .max(policy.min_replicas)
        .max(1)
        .min(cap.max(policy.min_replicas));
    let capped = wanted > free_partitions && free_partitions <= policy.max_replicas;
    let grow_partitions_to = match policy.max_partitions {
        Some(max) if capped && now.members >= now.partitions && now.partitions < max => {
            Some(wanted.min(max).min(policy.max_replicas))
        }
        _ => None,
    }
    .filter(|&grow| grow > now.partitions);
    let (reason, message) = if capped && others > 0 {
        (
            "PartitionCapped",
            format!(
                "lag {} wants {wanted} consumers; {others} other members of the group hold \
                 partitions, {free_partitions} of {} are left for ours",
                now.lag, now.partitions
            ),
        )
    } else if capped {
        (
            "PartitionCapped",
            format!(
                "lag {} wants {wanted} consumers; the topic has {} partitions",
                now.lag, now.partitions
            ),
        )
    } else {
        (
            "LagTracked",
            format!(
                "lag {} / threshold {} → {replicas} consumers",
                now.lag, policy.lag_threshold
            ),
        )
    };
    Decision {
        replicas,
        grow_partitions_to,
        reason,
        message,
    }
}

/// One recommendation the scale-down window remembers, kept in the resource's status.
#[derive(schemars::JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Recommendation {
    pub time: Time,
    pub replicas: i32,
}

/// Recommendations kept at most; beyond it the oldest two merge, keeping the higher count for
/// longer (scale-down is only ever delayed, never hastened).
pub const MAX_RECOMMENDATIONS: usize = 16;

/// Applies the scale-down window: scale up at once, scale down only to the highest
/// recommendation seen within the window. Returns the replicas and the history to store.
///
/// The history holds strictly falling counts (a later, higher recommendation makes the earlier
/// lower ones irrelevant), so it stays short. A repeated recommendation refreshes its time at
/// most every eighth of the window, and entries count for the window plus that eighth: the
/// status is not rewritten on every pass, and the window is never shortened.
pub fn stabilize(
    history: &[Recommendation],
    window: Duration,
    now: Timestamp,
    recommended: i32,
) -> (i32, Vec<Recommendation>) {
    let window_ms = i64::try_from(window.as_millis()).unwrap_or(i64::MAX);
    if window_ms == 0 {
        return (recommended, Vec::new());
    }
    let grain_ms = window_ms / 8;
    let age_ms = |r: &Recommendation| now.as_millisecond() - r.time.0.as_millisecond();
    let mut kept: Vec<Recommendation> = history
        .iter()
        .filter(|r| age_ms(r) <= window_ms.saturating_add(grain_ms))
        .cloned()
        .collect();
    let fresh_repeat = kept
        .last()
        .is_some_and(|last| last.replicas == recommended && age_ms(last) < grain_ms);
    if !fresh_repeat {
        kept.retain(|r| r.replicas > recommended);
        kept.push(Recommendation {
            time: Time(now),
            replicas: recommended,
        });
    }
    while kept.len() > MAX_RECOMMENDATIONS {
        let oldest = kept.remove(0);
        kept[0].replicas = kept[0].replicas.max(oldest.replicas);
    }
    let replicas = kept.iter().map(|r| r.replicas).max().unwrap_or(recommended);
    (replicas, kept)
}

fn ceil_div(a: i64, b: i64) -> i64 {
    if a <= 0 { 0 } else { (a + b - 1) / b }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Policy {
        Policy {
            min_replicas: 1,
            max_replicas: 10,
            lag_threshold: 100,
            activation_lag: 0,
            scale_down_window: Duration::from_secs(60),
            max_partitions: None,
        }
    }

    fn observe(lag: i64, partitions: i32, members: i32) -> Observation {
        Observation {
            lag,
            partitions,
            members,
        }
    }

    #[test]
    fn replicas_follow_keda_formula_within_bounds() {
        let p = policy();
        for (lag, partitions, want) in [
            (0, 6, 1),       // min
            (1, 6, 1),       // ceil(1/100)
            (101, 6, 2),     // ceil(101/100)
            (450, 6, 5),     // ceil(4.5)
            (5_000, 6, 6),   // capped at partitions
            (5_000, 20, 10), // capped at max
        ] {
            assert_eq!(
                recommend(&p, &observe(lag, partitions, 1), Some(1)).replicas,
                want,
                "lag {lag}, {partitions} partitions"
            );
        }
    }

    #[test]
    fn activation_only_applies_from_zero() {
        let mut p = policy();
        p.min_replicas = 0;
        p.activation_lag = 10;
        assert_eq!(recommend(&p, &observe(10, 3, 0), Some(0)).replicas, 0);
        assert_eq!(recommend(&p, &observe(11, 3, 0), Some(0)).replicas, 1);
        p.min_replicas = 1;
        assert_eq!(recommend(&p, &observe(5, 3, 1), Some(1)).replicas, 1);
    }

    #[test]
    fn partitions_grow_only_when_every_partition_has_a_consumer() {
        let mut p = policy();
        p.max_partitions = Some(8);
        let busy = recommend(&p, &observe(2_000, 4, 4), Some(4));
        assert_eq!(
            (busy.replicas, busy.grow_partitions_to, busy.reason),
            (4, Some(8), "PartitionCapped")
        );
        let rebalancing = recommend(&p, &observe(2_000, 4, 2), None);
        assert_eq!(rebalancing.grow_partitions_to, None);
        p.max_partitions = None;
        assert_eq!(
            recommend(&p, &observe(2_000, 4, 4), Some(4)).grow_partitions_to,
            None
        );
    }

    #[test]
    fn other_members_keep_their_partitions() {
        // Two Zilla consumers share the group: of 6 partitions, 4 are left for ours.
        let d = recommend(&policy(), &observe(5_000, 6, 4), Some(2));
        assert_eq!((d.replicas, d.reason), (4, "PartitionCapped"));
        assert!(d.message.contains("2 other members"), "{}", d.message);
        assert!(
            d.message.contains("4 members (2 pods of ours)"),
            "{}",
            d.message
        );
    }

    #[test]
    fn a_rebalancing_group_is_named_in_the_message() {
        // 3 pods run, only 1 has joined.
        let d = recommend(&policy(), &observe(250, 6, 1), Some(3));
        assert_eq!(d.replicas, 3);
        assert!(
            d.message
                .contains("1 members of 3 pods of ours (rebalancing)"),
            "{}",
            d.message
        );
    }

    fn at(seconds: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + seconds).unwrap()
    }

    #[test]
    fn scale_down_waits_for_the_window_scale_up_does_not() {
        let window = Duration::from_secs(80);
        let step = |history: &[Recommendation], t, r| stabilize(history, window, at(t), r);
        let (r, h) = step(&[], 0, 5);
        assert_eq!(r, 5);
        let (r, h) = step(&h, 10, 2);
        assert_eq!(r, 5);
        let (r, h) = step(&h, 20, 7);
        assert_eq!(r, 7);
        let (r, h) = step(&h, 50, 2);
        assert_eq!(r, 7);
        // 7 was seen at 20 s: it holds until 20 + 80 (+ a tenth-ish grain), then 2 applies.
        let (r, h) = step(&h, 95, 2);
        assert_eq!(r, 7);
        let (r, _) = step(&h, 111, 2);
        assert_eq!(r, 2);
    }

    #[test]
    fn the_history_survives_a_restart_because_it_is_data() {
        let window = Duration::from_secs(60);
        let (_, h) = stabilize(&[], window, at(0), 9);
        // A new leader reads the status and continues: still 9 within the window.
        let json = serde_json::to_string(&h).unwrap();
        let restored: Vec<Recommendation> = serde_json::from_str(&json).unwrap();
        assert_eq!(stabilize(&restored, window, at(30), 1).0, 9);
    }

    #[test]
    fn a_steady_recommendation_does_not_rewrite_the_history_each_pass() {
        let window = Duration::from_secs(80);
        let (_, h0) = stabilize(&[], window, at(0), 3);
        let (_, h1) = stabilize(&h0, window, at(5), 3);
        assert_eq!(h0, h1, "refreshed only every window/8 = 10 s");
        let (_, h2) = stabilize(&h1, window, at(11), 3);
        assert_ne!(h1, h2);
        assert_eq!(h2.len(), 1);
    }

    #[test]
    fn the_history_stays_bounded_and_only_delays_scale_down() {
        // A falling recommendation every 100 s in a one-hour window: 36 distinct counts would
        // be remembered without the cap.
        let window = Duration::from_secs(3600);
        let mut history = Vec::new();
        let mut longest = 0;
        for i in 0..100 {
            let (replicas, h) = stabilize(&history, window, at(i * 100), 100 - i as i32);
            longest = longest.max(h.len());
            // At least the highest count recommended within the last hour.
            let highest_in_window = 100 - (i - 36).max(0) as i32;
            assert!(replicas >= highest_in_window, "pass {i}: {replicas}");
            history = h;
        }
        assert_eq!(longest, MAX_RECOMMENDATIONS);
    }

    #[test]
    fn no_window_keeps_no_history() {
        assert_eq!(stabilize(&[], Duration::ZERO, at(0), 4), (4, Vec::new()));
    }
}
