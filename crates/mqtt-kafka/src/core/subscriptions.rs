//! A session's subscriptions as plain rules: which filters a SUBSCRIBE may hold, whether
//! retained messages follow the SUBACK, what the SUBACK says in each protocol, and the PUBLISH
//! a subscriber gets for a record (granted QoS, No Local, Retain As Published, subscription
//! identifiers, the message expiry left).

use strait_mqtt_codec::{self as mqtt, Protocol, Publish, ReasonCode, RetainHandling};

use crate::core::flows::Violation;
use crate::core::headers::{self, Message};
use crate::core::state::StoredSubscription;

/// What becomes of one filter of a SUBSCRIBE.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Checked {
    /// Refused with this reason code in the SUBACK; the others still count.
    Refused(ReasonCode),
    /// Subscribed; `shared` for `$share/GROUP/FILTER`.
    Accepted { shared: bool },
}

/// Checks one filter of a SUBSCRIBE. No Local on a shared subscription breaks the protocol
/// (MQTT-3.8.3-4): the session ends.
pub fn check(sub: &mqtt::Subscription) -> Result<Checked, Violation> {
    if mqtt::topic::validate_filter(&sub.filter).is_err() {
        return Ok(Checked::Refused(ReasonCode::TOPIC_FILTER_INVALID));
    }
    let shared = mqtt::topic::parse_shared(&sub.filter).is_some();
    if shared && sub.options.no_local {
        return Err(Violation {
            reason: ReasonCode::PROTOCOL_ERROR,
            detail: "No Local on a shared subscription".into(),
        });
    }
    Ok(Checked::Accepted { shared })
}

/// Whether retained messages follow the SUBACK for this filter (`new`: it was not subscribed
/// before). Shared subscriptions get none.
pub fn sends_retained(shared: bool, handling: RetainHandling, new: bool) -> bool {
    !shared
        && match handling {
            RetainHandling::SendAtSubscribe => true,
            RetainHandling::SendAtSubscribeIfNew => new,
            RetainHandling::DoNotSend => false,
        }
}

/// SUBACK codes as the protocol has them: 3.1.1 knows only one failure code (0x80).
pub fn suback_codes(protocol: Protocol, codes: &mut [ReasonCode]) {
    if protocol == Protocol::V311 {
        for code in codes.iter_mut().filter(|c| c.is_error()) {
            *code = ReasonCode::UNSPECIFIED_ERROR;
        }
    }
}

/// The PUBLISH subscriber `client_id`, with these `matching` subscriptions, gets for a record
/// written at `timestamp_ms`; `None` when none of them wants it (No Local) or it expired.
pub fn to_publish(
    client_id: &str,
    message: &Message,
    timestamp_ms: i64,
    now_ms: i64,
    matching: &[&StoredSubscription],
) -> Option<Publish> {
    let mut qos = None;
    let mut ids = Vec::new();
    let mut retain = false;
    for sub in matching {
        if sub.no_local && message.local.as_deref() == Some(client_id) {
            continue;
        }
        qos = qos.max(Some(sub.qos()));
        ids.extend(sub.subscription_id);
        // Retain As Published (MQTT-3.3.1-12, -13): RETAIN as the publisher set it.
        retain |= sub.retain_as_published && message.retain;
    }
    let qos = qos?.min(message.qos);
    let expiry = headers::remaining_expiry(message.expiry, timestamp_ms, now_ms)?;
    let mut properties = message.properties.clone();
    properties.message_expiry_interval = expiry;
    properties.subscription_identifiers = ids;
    Some(Publish {
        qos,
        retain,
        topic: message.topic.as_str().into(),
        payload: message.payload.clone(),
        properties,
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use strait_mqtt_codec::{QoS, SubscriptionOptions};

    fn subscription(filter: &str, qos: QoS, no_local: bool) -> mqtt::Subscription {
        mqtt::Subscription {
            filter: filter.into(),
            options: SubscriptionOptions {
                qos,
                no_local,
                ..Default::default()
            },
        }
    }

    fn stored(filter: &str, qos: QoS, id: Option<u32>) -> StoredSubscription {
        StoredSubscription::new(&subscription(filter, qos, false), id)
    }

    fn message(qos: QoS) -> Message {
        Message {
            topic: "a/b".into(),
            payload: bytes::Bytes::from_static(b"m"),
            qos,
            local: Some("publisher".into()),
            retain: true,
            expiry: None,
            properties: Default::default(),
        }
    }

    #[test]
    fn filters_of_a_subscribe() {
        assert_eq!(
            check(&subscription("a/+", QoS::AtLeastOnce, true)),
            Ok(Checked::Accepted { shared: false })
        );
        assert_eq!(
            check(&subscription("$share/g/a/#", QoS::AtLeastOnce, false)),
            Ok(Checked::Accepted { shared: true })
        );
        assert_eq!(
            check(&subscription("a/#/b", QoS::AtMostOnce, false)),
            Ok(Checked::Refused(ReasonCode::TOPIC_FILTER_INVALID))
        );
        let violation = check(&subscription("$share/g/a", QoS::AtMostOnce, true)).unwrap_err();
        assert_eq!(violation.reason, ReasonCode::PROTOCOL_ERROR);
    }

    #[test]
    fn retained_messages_after_the_suback() {
        use RetainHandling::*;
        assert!(sends_retained(false, SendAtSubscribe, false));
        assert!(sends_retained(false, SendAtSubscribeIfNew, true));
        assert!(
            !sends_retained(false, SendAtSubscribeIfNew, false),
            "a re-subscribe"
        );
        assert!(!sends_retained(false, DoNotSend, true));
        assert!(
            !sends_retained(true, SendAtSubscribe, true),
            "shared: never"
        );
    }

    #[test]
    fn suback_failures_in_3_1_1_are_0x80() {
        let mut codes = [ReasonCode(1), ReasonCode::TOPIC_FILTER_INVALID];
        suback_codes(Protocol::V311, &mut codes);
        assert_eq!(codes, [ReasonCode(1), ReasonCode::UNSPECIFIED_ERROR]);
        let mut v5 = [ReasonCode::TOPIC_FILTER_INVALID];
        suback_codes(Protocol::V5, &mut v5);
        assert_eq!(v5, [ReasonCode::TOPIC_FILTER_INVALID]);
    }

    #[test]
    fn granted_qos_is_the_lower_of_publish_and_the_best_matching_subscription() {
        let low = stored("a/+", QoS::AtMostOnce, Some(1));
        let high = stored("a/#", QoS::ExactlyOnce, Some(2));
        let p = to_publish("c", &message(QoS::AtLeastOnce), 0, 0, &[&low, &high]).unwrap();
        assert_eq!(p.qos, QoS::AtLeastOnce);
        assert_eq!(p.properties.subscription_identifiers, [1, 2]);
        assert!(
            !p.retain,
            "live deliveries clear RETAIN unless Retain As Published"
        );
        let p = to_publish("c", &message(QoS::ExactlyOnce), 0, 0, &[&low]).unwrap();
        assert_eq!(p.qos, QoS::AtMostOnce);
    }

    #[test]
    fn no_local_and_retain_as_published() {
        let mut own = stored("a/b", QoS::AtLeastOnce, None);
        own.no_local = true;
        assert!(to_publish("publisher", &message(QoS::AtLeastOnce), 0, 0, &[&own]).is_none());
        assert!(to_publish("other", &message(QoS::AtLeastOnce), 0, 0, &[&own]).is_some());
        let mut rap = stored("a/b", QoS::AtLeastOnce, None);
        rap.retain_as_published = true;
        assert!(
            to_publish("c", &message(QoS::AtLeastOnce), 0, 0, &[&rap])
                .unwrap()
                .retain
        );
    }

    #[test]
    fn message_expiry_counts_down_and_expired_messages_are_not_delivered() {
        let sub = stored("a/b", QoS::AtLeastOnce, None);
        let mut m = message(QoS::AtLeastOnce);
        m.expiry = Some(10);
        let p = to_publish("c", &m, 1_000, 4_000, &[&sub]).unwrap();
        assert_eq!(p.properties.message_expiry_interval, Some(7));
        assert!(
            to_publish("c", &m, 1_000, 11_000, &[&sub]).is_none(),
            "expired"
        );
        m.expiry = None;
        let p = to_publish("c", &m, 1_000, 1_000_000, &[&sub]).unwrap();
        assert_eq!(
            p.properties.message_expiry_interval, None,
            "no expiry: forever"
        );
    }
}
