//! The rules of a catch-up read (a session reading what it missed from Kafka): where each
//! partition's read starts when Kafka no longer has the stored offset, and when the read gives
//! up waiting for Kafka.

use std::time::{Duration, Instant};

/// How long a catch-up waits for Kafka without getting a record before it fails (the session
/// ends and the client resumes from its stored progress on reconnecting).
pub const KAFKA_STALL: Duration = Duration::from_secs(60);

/// Where a catch-up reads partition records `[from, to)` from, given the partition's log start
/// `low` now (records below it were deleted by retention or delete-records).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeStart {
    /// From `from`: Kafka still has it.
    From(i64),
    /// The stored offset is gone: from the log start, what is left of the range. The records
    /// in between are lost for this session (counted and logged).
    LogStart(i64),
    /// Nothing of the range is left in Kafka.
    Nothing,
}

pub fn range_start(from: i64, to: i64, low: i64) -> RangeStart {
    if from >= to || low >= to {
        RangeStart::Nothing
    } else if from < low {
        RangeStart::LogStart(low)
    } else {
        RangeStart::From(from)
    }
}

/// Measures how long a catch-up has been waiting for Kafka. Only time spent polling Kafka
/// counts: time blocked handing a record on, while the client's receive window is closed (a
/// slow subscriber), is not a failure of Kafka, so delivery pauses instead of failing.
#[derive(Debug, Clone, Copy)]
pub struct KafkaWait {
    since: Instant,
}

impl KafkaWait {
    pub fn start(now: Instant) -> Self {
        Self { since: now }
    }

    /// Kafka gave a record and it was handed on (however long that took): waiting for Kafka
    /// starts again at `now`.
    pub fn progressed(&mut self, now: Instant) {
        self.since = now;
    }

    /// Kafka has given nothing for [`KAFKA_STALL`] of polling.
    pub fn stalled(&self, now: Instant) -> bool {
        now.saturating_duration_since(self.since) >= KAFKA_STALL
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_range_starts_at_its_offset_or_at_the_log_start_when_that_is_gone() {
        assert_eq!(range_start(5, 10, 0), RangeStart::From(5));
        assert_eq!(range_start(5, 10, 5), RangeStart::From(5));
        assert_eq!(range_start(3, 10, 7), RangeStart::LogStart(7));
        // Everything the session missed was deleted, or there was nothing to miss.
        assert_eq!(range_start(3, 10, 10), RangeStart::Nothing);
        assert_eq!(range_start(3, 10, 12), RangeStart::Nothing);
        assert_eq!(range_start(10, 10, 0), RangeStart::Nothing);
    }

    #[test]
    fn time_blocked_on_a_slow_client_does_not_count_as_waiting_for_kafka() {
        let t0 = Instant::now();
        let mut wait = KafkaWait::start(t0);
        // A record every few seconds, each held 50 s by a client with its window closed:
        // minutes in all, and never 60 s of waiting for Kafka.
        let mut now = t0;
        for _ in 0..10 {
            now += Duration::from_secs(5);
            assert!(!wait.stalled(now), "polled 5 s");
            now += Duration::from_secs(50);
            wait.progressed(now);
        }
        assert!(now - t0 > KAFKA_STALL * 5);
        assert!(!wait.stalled(now + Duration::from_secs(59)));
        // Kafka giving nothing for a minute is a failure.
        assert!(wait.stalled(now + KAFKA_STALL));
    }
}
