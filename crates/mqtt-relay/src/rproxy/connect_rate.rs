//! CONNECT admission pacing (`limits.maxConnectRate`, `limits.maxConnectRatePerAddress`).
//!
//! Every CONNECT starts work beyond r-proxy: a relay stream, and on Kafka a session record
//! written and the sessions table read. A reconnect storm (a network blip, a fleet rebooting,
//! a client reconnecting in a loop) starting all of it at once takes the CPU the open sessions
//! need. The process-wide pace lets CONNECTs in at a steady rate, each waiting its turn; the
//! per-address pace refuses an address going faster than its share at once.
//!
//! Both are GCRA ([`strait_runtime::pace`]).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use strait_runtime::pace::{Gcra, Pace, Turn};

/// Addresses tracked at once by the per-address pace. Only addresses that connected within the
/// last burst window are kept; past this many, a new address is refused until some age out.
const MAX_TRACKED_ADDRESSES: usize = 65_536;

/// Why a CONNECT was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Its address connects faster than `limits.maxConnectRatePerAddress`.
    Address,
    /// Its turn under `limits.maxConnectRate` would come after its connect deadline.
    Process,
}

/// The paces of one r-proxy.
pub struct ConnectRates {
    process: Option<Pace>,
    per_address: Option<(Gcra, Mutex<HashMap<IpAddr, Instant>>)>,
}

impl ConnectRates {
    /// Paces of `per_second` and `per_address_per_second` CONNECTs (`0`: not paced).
    pub fn new(per_second: u32, per_address_per_second: u32) -> Self {
        Self {
            process: Pace::per_second(per_second),
            per_address: (per_address_per_second > 0)
                .then(|| (Gcra::per_second(per_address_per_second), Mutex::default())),
        }
    }

    /// The wait before a CONNECT from `address` may go on, or why it may not. The address is
    /// checked first (at once, no waiting), so an address refused costs the others nothing.
    pub fn admit(
        &self,
        address: IpAddr,
        now: Instant,
        max_wait: Duration,
    ) -> Result<Duration, Refusal> {
        if let Some((rate, tats)) = &self.per_address {
            let mut tats = tats.lock().expect("never poisoned");
            if tats.len() >= MAX_TRACKED_ADDRESSES && !tats.contains_key(&address) {
                // Addresses whose burst allowance is whole again need no entry.
                tats.retain(|_, tat| *tat > now);
            }
            if tats.len() >= MAX_TRACKED_ADDRESSES && !tats.contains_key(&address) {
                return Err(Refusal::Address);
            }
            let tat = tats.entry(address).or_insert(now);
            if rate.turn(tat, now, Duration::ZERO) == Turn::Refused {
                return Err(Refusal::Address);
            }
        }
        match &self.process {
            None => Ok(Duration::ZERO),
            Some(pace) => match pace.turn(now, max_wait) {
                Turn::After(wait) => Ok(wait),
                Turn::Refused => Err(Refusal::Process),
            },
        }
    }

    #[cfg(test)]
    fn tracked_addresses(&self) -> usize {
        self.per_address
            .as_ref()
            .map_or(0, |(_, tats)| tats.lock().unwrap().len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn an_address_over_its_share_is_refused_at_once_without_slowing_others() {
        let rates = ConnectRates::new(1000, 20); // per address: bursts of 2, 50 ms apart
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let t0 = Instant::now();
        let wait = Duration::from_secs(10);
        assert!(rates.admit(a, t0, wait).is_ok());
        assert!(rates.admit(a, t0, wait).is_ok());
        assert_eq!(rates.admit(a, t0, wait), Err(Refusal::Address));
        assert_eq!(rates.admit(b, t0, wait), Ok(Duration::ZERO));
        assert!(rates.admit(a, t0 + 50 * MS, wait).is_ok(), "its next turn");
    }

    #[test]
    fn the_process_pace_refuses_only_past_the_wait_allowed() {
        let rates = ConnectRates::new(10, 0); // bursts of 1, 100 ms apart
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let t0 = Instant::now();
        assert_eq!(rates.admit(a, t0, Duration::ZERO), Ok(Duration::ZERO));
        assert_eq!(rates.admit(a, t0, Duration::from_secs(1)), Ok(100 * MS));
        assert_eq!(rates.admit(a, t0, 150 * MS), Err(Refusal::Process));
        let off = ConnectRates::new(0, 0);
        for _ in 0..10_000 {
            assert_eq!(off.admit(a, t0, Duration::ZERO), Ok(Duration::ZERO));
        }
    }

    #[test]
    fn addresses_are_forgotten_once_their_burst_is_whole_again() {
        let rates = ConnectRates::new(0, 10);
        let t0 = Instant::now();
        for i in 0..MAX_TRACKED_ADDRESSES as u32 {
            let address = IpAddr::from(i.to_be_bytes());
            assert!(rates.admit(address, t0, Duration::ZERO).is_ok());
        }
        let newcomer: IpAddr = "255.255.255.255".parse().unwrap();
        assert_eq!(
            rates.admit(newcomer, t0, Duration::ZERO),
            Err(Refusal::Address),
            "a full table refuses new addresses while every entry is recent"
        );
        let later = t0 + Duration::from_secs(1);
        assert!(rates.admit(newcomer, later, Duration::ZERO).is_ok());
        assert_eq!(rates.tracked_addresses(), 1, "the aged-out entries went");
    }
}
