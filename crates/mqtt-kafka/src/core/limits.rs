//! The limits of `kafka.limits` as plain rules: which filter of a SUBSCRIBE a session may add,
//! and the names they are counted under.

use strait_config::mqtt_kafka::SessionLimits;

/// A limit a client ran into (`strait_mqtt_kafka_limit_hits_total{limit}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    Subscriptions = 0,
    FiltersPerSubscribe = 1,
    SharedSubscriptions = 2,
    SharedGroups = 3,
    ReceiveMaximum = 4,
    /// Not refused: the session got the server's maximum expiry instead of its own.
    SessionExpiry = 5,
    /// Not refused: the catch-up waited for a free reader.
    CatchUps = 6,
    Retained = 7,
    /// A CONNECT waited its turn, or was refused with 0x9F (`maxConnectRate`).
    ConnectRate = 8,
}

impl Limit {
    /// Label values, indexed by `Limit as usize`.
    pub const LABELS: [&'static str; 9] = [
        "subscriptions",
        "filters_per_subscribe",
        "shared_subscriptions",
        "shared_groups",
        "receive_maximum",
        "session_expiry",
        "catch_ups",
        "retained",
        "connect_rate",
    ];

    pub fn label(self) -> &'static str {
        Self::LABELS[self as usize]
    }
}

/// What a session holds when a SUBSCRIBE comes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Held {
    pub subscriptions: usize,
    pub shared: usize,
}

/// Whether the filter at `position` (from 0) of a SUBSCRIBE may be added to a session that
/// holds `held`; `new` when the session does not have it yet (replacing one costs nothing).
pub fn subscribe_quota(
    limits: &SessionLimits,
    position: usize,
    new: bool,
    shared: bool,
    held: Held,
) -> Result<(), Limit> {
    if position >= limits.max_filters_per_subscribe as usize {
        return Err(Limit::FiltersPerSubscribe);
    }
    if !new {
        return Ok(());
    }
    if held.subscriptions >= limits.max_subscriptions as usize {
        return Err(Limit::Subscriptions);
    }
    if shared && held.shared >= limits.max_shared_subscriptions as usize {
        return Err(Limit::SharedSubscriptions);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> SessionLimits {
        SessionLimits {
            max_subscriptions: 3,
            max_filters_per_subscribe: 4,
            max_shared_subscriptions: 1,
            ..SessionLimits::default()
        }
    }

    #[test]
    fn a_session_at_its_limits_may_still_replace_what_it_has() {
        let limits = limits();
        let full = Held {
            subscriptions: 3,
            shared: 1,
        };
        assert_eq!(
            subscribe_quota(&limits, 0, true, false, full),
            Err(Limit::Subscriptions)
        );
        assert_eq!(subscribe_quota(&limits, 0, false, true, full), Ok(()));
        let one_shared = Held {
            subscriptions: 1,
            shared: 1,
        };
        assert_eq!(
            subscribe_quota(&limits, 1, true, true, one_shared),
            Err(Limit::SharedSubscriptions)
        );
        assert_eq!(subscribe_quota(&limits, 1, true, false, one_shared), Ok(()));
    }

    #[test]
    fn filters_beyond_the_per_packet_limit_are_refused_even_when_known() {
        let limits = limits();
        assert_eq!(
            subscribe_quota(&limits, 4, false, false, Held::default()),
            Err(Limit::FiltersPerSubscribe)
        );
        assert_eq!(
            subscribe_quota(&limits, 3, true, false, Held::default()),
            Ok(())
        );
    }

    #[test]
    fn labels_follow_the_variants() {
        assert_eq!(Limit::CatchUps.label(), "catch_ups");
        assert_eq!(Limit::Subscriptions.label(), "subscriptions");
        assert_eq!(Limit::ConnectRate.label(), "connect_rate");
    }
}
