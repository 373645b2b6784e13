//! Pacing admissions at a steady rate with GCRA (the generic cell rate algorithm): one
//! "theoretical arrival time" per bucket, so a turn is reserved when it is given and waiters
//! never race each other for it. Used for CONNECTs (r-proxy per address, s-proxy on Kafka).

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// One rate: `per_second` admissions, of which a tenth of a second's worth may come at once.
#[derive(Debug, Clone, Copy)]
pub struct Gcra {
    interval: Duration,
    /// How far ahead of the steady pace a burst may run.
    tolerance: Duration,
}

/// The outcome of asking for a turn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Turn {
    /// Admitted after waiting this long (zero: at once).
    After(Duration),
    /// Refused: the turn would come later than the caller can wait.
    Refused,
}

impl Gcra {
    pub fn per_second(per_second: u32) -> Self {
        let interval = Duration::from_secs(1) / per_second.max(1);
        let burst = (per_second / 10).max(1);
        Self {
            interval,
            tolerance: interval * (burst - 1),
        }
    }

    /// The turn of a request at `now` that can wait at most `max_wait`, given the bucket's
    /// theoretical arrival time `tat` (advanced only when the turn is given).
    pub fn turn(&self, tat: &mut Instant, now: Instant, max_wait: Duration) -> Turn {
        let due = (*tat).max(now);
        let allowed_at = due.checked_sub(self.tolerance).unwrap_or(now).max(now);
        let wait = allowed_at - now;
        if wait > max_wait {
            return Turn::Refused;
        }
        *tat = due + self.interval;
        Turn::After(wait)
    }
}

/// One paced bucket: a rate and its next turn, shared by whoever asks (`None` when the rate
/// is `0`, no limit).
#[derive(Debug)]
pub struct Pace {
    rate: Gcra,
    tat: Mutex<Instant>,
}

impl Pace {
    pub fn per_second(per_second: u32) -> Option<Self> {
        (per_second > 0).then(|| Self {
            rate: Gcra::per_second(per_second),
            tat: Mutex::new(Instant::now()),
        })
    }

    /// The turn of a request at `now` that can wait at most `max_wait` (see [`Gcra::turn`]).
    pub fn turn(&self, now: Instant, max_wait: Duration) -> Turn {
        // Held for the arithmetic only; nothing else is locked inside.
        let mut tat = self.tat.lock().expect("never poisoned");
        self.rate.turn(&mut tat, now, max_wait)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn a_burst_of_a_tenth_goes_at_once_and_the_rest_is_paced() {
        let rate = Gcra::per_second(200); // 5 ms apart, bursts of 20
        let t0 = Instant::now();
        let mut tat = t0;
        let waits: Vec<Duration> = (0..200)
            .map(|_| match rate.turn(&mut tat, t0, Duration::from_secs(10)) {
                Turn::After(wait) => wait,
                Turn::Refused => panic!("refused within the deadline"),
            })
            .collect();
        assert!(
            waits[..20].iter().all(|w| w.is_zero()),
            "{:?}",
            &waits[..21]
        );
        assert_eq!(waits[20], 5 * MS);
        assert_eq!(
            waits[199],
            180 * 5 * MS,
            "200 at once are all in within a second"
        );
        assert!(waits.windows(2).all(|w| w[1] - w[0] <= 5 * MS));
    }

    #[test]
    fn a_turn_beyond_the_deadline_is_refused_and_not_reserved() {
        let rate = Gcra::per_second(10); // 100 ms apart, bursts of 1
        let t0 = Instant::now();
        let mut tat = t0;
        assert_eq!(
            rate.turn(&mut tat, t0, Duration::ZERO),
            Turn::After(Duration::ZERO)
        );
        assert_eq!(rate.turn(&mut tat, t0, 50 * MS), Turn::Refused);
        // The refusal took nothing: the next turn is still 100 ms after the first.
        assert_eq!(rate.turn(&mut tat, t0, 100 * MS), Turn::After(100 * MS));
        // Idle time does not bank more than the burst.
        let later = t0 + Duration::from_secs(60);
        assert_eq!(
            rate.turn(&mut tat, later, Duration::ZERO),
            Turn::After(Duration::ZERO)
        );
        assert_eq!(rate.turn(&mut tat, later, Duration::ZERO), Turn::Refused);
    }
}
