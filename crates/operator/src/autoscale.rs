//! The consumer autoscaler's arithmetic, apart from Kafka and Kubernetes so every rule is unit
//! tested. KEDA's formula (`../shared/reference/operator.md` §2): replicas = ceil(lag / threshold),
//! clamped to [min, min(max, partitions)] (consumers beyond the partition count would sit idle),
//! activation from and to zero, and a scale-down stabilisation window so a dip in lag does not
//! cause a rebalance storm. Where the partition cap binds while every partition has a consumer and
//! lag persists, it recommends more partitions, up to the policy's maximum.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

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

/// The replicas the lag calls for right now, before stabilisation.
pub fn recommend(policy: &Policy, now: &Observation) -> Decision {
    let cap = policy.max_replicas.min(now.partitions).max(0);
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
    let capped = wanted > now.partitions && now.partitions <= policy.max_replicas;
    let grow_partitions_to = match policy.max_partitions {
        Some(max) if capped && now.members >= now.partitions && now.partitions < max => {
            Some(wanted.min(max).min(policy.max_replicas))
        }
        _ => None,
    }
    .filter(|&grow| grow > now.partitions);
    let (reason, message) = if capped {
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

/// Applies the scale-down window: scale up at once, scale down only to the highest
/// recommendation seen within the window.
#[derive(Debug, Default)]
pub struct Stabilizer {
    recent: VecDeque<(Instant, i32)>,
}

impl Stabilizer {
    pub fn stabilize(&mut self, window: Duration, now: Instant, recommended: i32) -> i32 {
        self.recent.push_back((now, recommended));
        while let Some(&(at, _)) = self.recent.front() {
            if now.duration_since(at) > window {
                self.recent.pop_front();
            } else {
                break;
            }
        }
        self.recent
            .iter()
            .map(|&(_, replicas)| replicas)
            .max()
            .unwrap_or(recommended)
    }
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
                recommend(&p, &observe(lag, partitions, 1)).replicas,
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
        assert_eq!(recommend(&p, &observe(10, 3, 0)).replicas, 0);
        assert_eq!(recommend(&p, &observe(11, 3, 0)).replicas, 1);
        p.min_replicas = 1;
        assert_eq!(recommend(&p, &observe(5, 3, 1)).replicas, 1);
    }

    #[test]
    fn partitions_grow_only_when_every_partition_has_a_consumer() {
        let mut p = policy();
        p.max_partitions = Some(8);
        let busy = recommend(&p, &observe(2_000, 4, 4));
        assert_eq!(
            (busy.replicas, busy.grow_partitions_to, busy.reason),
            (4, Some(8), "PartitionCapped")
        );
        let rebalancing = recommend(&p, &observe(2_000, 4, 2));
        assert_eq!(rebalancing.grow_partitions_to, None);
        p.max_partitions = None;
        assert_eq!(
            recommend(&p, &observe(2_000, 4, 4)).grow_partitions_to,
            None
        );
    }

    #[test]
    fn scale_down_waits_for_the_window_scale_up_does_not() {
        let mut s = Stabilizer::default();
        let window = Duration::from_secs(60);
        let t0 = Instant::now();
        assert_eq!(s.stabilize(window, t0, 5), 5);
        assert_eq!(s.stabilize(window, t0 + Duration::from_secs(10), 2), 5);
        assert_eq!(s.stabilize(window, t0 + Duration::from_secs(20), 7), 7);
        assert_eq!(s.stabilize(window, t0 + Duration::from_secs(50), 2), 7);
        assert_eq!(s.stabilize(window, t0 + Duration::from_secs(81), 2), 2);
    }
}
