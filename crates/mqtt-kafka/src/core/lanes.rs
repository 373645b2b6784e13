//! Which producer a QoS ≥ 1 PUBLISH goes through: the quick lane (no linger) while the process
//! is lightly loaded, the batch lane (`linger.ms` 5) once it is not.
//!
//! Why two: a linger is what makes Kafka cheap under load (fewer, fuller requests), but a
//! client that waits for each PUBACK pays it in full on every message; at a few thousand
//! messages a second there is nothing to batch anyway. librdkafka cannot change a producer's
//! linger while it runs, so s-proxy keeps one producer of each and picks per record.
//!
//! Order: MQTT keeps a client's messages in order, and two producers could overtake each
//! other. So a session changes lane only when none of its records is waiting for Kafka
//! ([`next_lane`]); until then it stays where its last records went.

use std::sync::atomic::{AtomicU64, Ordering};

/// A producer for a session's QoS ≥ 1 records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Lane {
    /// No linger: each record is sent as soon as the producer can.
    Quick,
    /// The batching producer.
    #[default]
    Batch,
}

/// The lane a session's next record takes: its current lane while records of its own are in
/// flight (so they cannot be overtaken), otherwise what the load says.
pub fn next_lane(current: Lane, in_flight: usize, light: bool) -> Lane {
    match (in_flight, light) {
        (0, true) => Lane::Quick,
        (0, false) => Lane::Batch,
        _ => current,
    }
}

/// Records a second below which the process counts as lightly loaded: each record sent on
/// its own costs Kafka a request, which a few thousand a second afford; above it, batches
/// form and the linger costs little time per message.
pub const LIGHT_BELOW_PER_SEC: u64 = 5_000;

/// The window the load is counted over.
const WINDOW_MS: u64 = 100;

/// Records produced per window, process-wide: lock-free, approximate where windows turn
/// (a few records may count in the neighbouring window), which a load gauge can afford.
#[derive(Debug)]
pub struct LoadGauge {
    light_below_per_window: u64,
    window: AtomicU64,
    current: AtomicU64,
    previous: AtomicU64,
}

impl LoadGauge {
    /// `light_below_per_sec`: 0 never counts as light (every record takes the batch lane).
    pub fn new(light_below_per_sec: u64) -> Self {
        Self {
            light_below_per_window: light_below_per_sec * WINDOW_MS / 1000,
            window: AtomicU64::new(0),
            current: AtomicU64::new(0),
            previous: AtomicU64::new(0),
        }
    }

    /// Counts one record produced at `now_ms`.
    pub fn note(&self, now_ms: u64) {
        self.turn(now_ms);
        self.current.fetch_add(1, Ordering::Relaxed);
    }

    /// Whether the load is light at `now_ms`: both the last whole window and the one under
    /// way below the limit, so a rising load leaves the quick lane within a window.
    pub fn is_light(&self, now_ms: u64) -> bool {
        self.turn(now_ms);
        let busiest = self
            .current
            .load(Ordering::Relaxed)
            .max(self.previous.load(Ordering::Relaxed));
        busiest < self.light_below_per_window
    }

    fn turn(&self, now_ms: u64) {
        let window = now_ms / WINDOW_MS;
        let seen = self.window.load(Ordering::Relaxed);
        if seen == window
            || self
                .window
                .compare_exchange(seen, window, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            return;
        }
        let counted = self.current.swap(0, Ordering::Relaxed);
        // After an idle gap the last whole window held nothing.
        let previous = if window == seen + 1 { counted } else { 0 };
        self.previous.store(previous, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_session_with_records_in_flight_keeps_its_lane() {
        assert_eq!(next_lane(Lane::Batch, 3, true), Lane::Batch);
        assert_eq!(next_lane(Lane::Quick, 1, false), Lane::Quick);
    }

    #[test]
    fn a_session_with_nothing_in_flight_follows_the_load() {
        assert_eq!(next_lane(Lane::Batch, 0, true), Lane::Quick);
        assert_eq!(next_lane(Lane::Quick, 0, false), Lane::Batch);
    }

    #[test]
    fn the_load_is_light_until_a_window_holds_the_limit() {
        let gauge = LoadGauge::new(1_000); // 100 a window
        let start = 50_000;
        assert!(gauge.is_light(start));
        for _ in 0..99 {
            gauge.note(start);
        }
        assert!(gauge.is_light(start + 10));
        gauge.note(start + 20);
        assert!(!gauge.is_light(start + 30), "100 in the window under way");
        // The next window: the busy one just ended still counts.
        assert!(!gauge.is_light(start + WINDOW_MS));
        // One more window later with nothing produced: light again.
        assert!(gauge.is_light(start + 2 * WINDOW_MS));
    }

    #[test]
    fn an_idle_gap_forgets_the_busy_window_before_it() {
        let gauge = LoadGauge::new(1_000);
        for _ in 0..500 {
            gauge.note(1_000);
        }
        assert!(!gauge.is_light(1_050));
        assert!(gauge.is_light(1_000 + 10 * WINDOW_MS));
    }

    #[test]
    fn a_limit_of_zero_is_never_light() {
        let gauge = LoadGauge::new(0);
        assert!(!gauge.is_light(7));
    }

    proptest! {
        /// Over any sequence of publishes, acknowledgements and load changes, a session never
        /// changes lane while one of its records is in flight, so no record of it overtakes
        /// an earlier one.
        #[test]
        fn a_session_never_changes_lane_with_records_in_flight(
            steps in proptest::collection::vec((any::<bool>(), any::<bool>()), 1..200),
        ) {
            let (mut lane, mut in_flight) = (Lane::default(), 0usize);
            // The lane of each record still in flight.
            let mut lanes_in_flight: Vec<Lane> = Vec::new();
            for (publish, light) in steps {
                if publish {
                    lane = next_lane(lane, in_flight, light);
                    prop_assert!(lanes_in_flight.iter().all(|&l| l == lane));
                    lanes_in_flight.push(lane);
                    in_flight += 1;
                } else if in_flight > 0 {
                    lanes_in_flight.remove(0);
                    in_flight -= 1;
                }
            }
        }
    }
}
