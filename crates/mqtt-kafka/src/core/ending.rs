//! How long a session lives and how it ends, as plain decisions: the session expiry from
//! CONNECT and DISCONNECT, what the client is told when the session ends, and whether and when
//! its will is published. The session driver (`io::session`) carries them out.

use strait_mqtt_codec::{Connect, Protocol, Publish, ReasonCode, Will};

use crate::core::state::StoredWill;

/// Why a session ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum End {
    /// DISCONNECT from the client (its reason code).
    Disconnect(ReasonCode),
    /// The client went away without DISCONNECT.
    Dropped,
    /// Another connection took the session over.
    TakenOver,
    /// We end it with this reason (and detail).
    Server(ReasonCode, String),
    Shutdown,
    /// r-proxy is restarting; the client reconnects elsewhere.
    RelayRestart,
}

impl End {
    /// A short label for logs.
    pub fn label(&self) -> &'static str {
        match self {
            Self::Disconnect(_) => "disconnect",
            Self::Dropped => "dropped",
            Self::TakenOver => "taken over",
            Self::Server(..) => "server",
            Self::Shutdown => "shutdown",
            Self::RelayRestart => "r-proxy restart",
        }
    }

    /// Whether the will is due (after its delay): the connection ended without a normal
    /// DISCONNECT (MQTT-3.1.2-8), or with 0x04 Disconnect with Will Message. Not on a takeover
    /// (see [`will_plan`]), a shutdown or an r-proxy restart, which the client did not cause.
    pub fn publishes_will(&self) -> bool {
        match self {
            Self::Disconnect(reason) => *reason == ReasonCode::DISCONNECT_WITH_WILL_MESSAGE,
            Self::Dropped | Self::Server(..) => true,
            Self::TakenOver | Self::Shutdown | Self::RelayRestart => false,
        }
    }

    /// The DISCONNECT reason and detail the client is told before its stream closes, if any.
    pub fn close(&self) -> Option<(ReasonCode, String)> {
        match self {
            Self::TakenOver => Some((
                ReasonCode::SESSION_TAKEN_OVER,
                "another connection took the session over".into(),
            )),
            Self::Server(reason, detail) => Some((*reason, detail.clone())),
            Self::Shutdown => Some((
                ReasonCode::SERVER_SHUTTING_DOWN,
                "s-proxy shutting down".into(),
            )),
            Self::Disconnect(_) | Self::Dropped | Self::RelayRestart => None,
        }
    }
}

/// The session expiry interval in seconds a CONNECT asks for: 3.1.1's clean session is 0 and a
/// persistent one never expires; v5 says it (absent: 0).
pub fn session_expiry(protocol: Protocol, connect: &Connect) -> u32 {
    match protocol {
        Protocol::V311 if connect.clean_start => 0,
        Protocol::V311 => u32::MAX,
        Protocol::V5 => connect.properties.session_expiry_interval.unwrap_or(0),
    }
}

/// The expiry after a DISCONNECT that may carry a new one: only a session that had an expiry
/// may change it (MQTT-3.14.2-2).
pub fn expiry_after_disconnect(current: u32, requested: Option<u32>) -> u32 {
    match requested {
        Some(expiry) if current > 0 => expiry,
        _ => current,
    }
}

/// When a session's will is published.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WillPlan {
    None,
    Now,
    /// After this many seconds, unless the client has reconnected meanwhile.
    After(u32),
}

/// The will of a session that ended with `end`, whose session expiry is `expiry`: the will
/// delay is capped by the session expiry (MQTT-3.1.3-9). A taken-over connection's will is
/// published at once when it has no delay (MQTT-3.1.4-3), and cancelled by the new connection
/// when it has one.
pub fn will_plan(will: Option<&Will>, end: &End, expiry: u32) -> WillPlan {
    let Some(will) = will else {
        return WillPlan::None;
    };
    let delay = will.properties.will_delay_interval.unwrap_or(0);
    if *end == End::TakenOver {
        return if delay == 0 {
            WillPlan::Now
        } else {
            WillPlan::None
        };
    }
    if !end.publishes_will() {
        return WillPlan::None;
    }
    match delay.min(expiry) {
        0 => WillPlan::Now,
        delay => WillPlan::After(delay),
    }
}

/// The PUBLISH a will becomes.
pub fn will_publish(will: &Will) -> Publish {
    StoredWill::from_will(will).to_publish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use strait_mqtt_codec::QoS;

    fn will(delay: Option<u32>) -> Will {
        let mut will = Will {
            topic: "status/c".into(),
            payload: bytes::Bytes::from_static(b"offline"),
            qos: QoS::AtLeastOnce,
            retain: true,
            ..Default::default()
        };
        will.properties.will_delay_interval = delay;
        will.properties.content_type = Some("text/plain".into());
        will
    }

    #[test]
    fn session_expiry_from_connect_and_disconnect() {
        let mut connect = Connect {
            client_id: "c".into(),
            clean_start: true,
            ..Default::default()
        };
        assert_eq!(session_expiry(Protocol::V311, &connect), 0);
        connect.clean_start = false;
        assert_eq!(session_expiry(Protocol::V311, &connect), u32::MAX);
        assert_eq!(session_expiry(Protocol::V5, &connect), 0, "v5 default");
        connect.properties.session_expiry_interval = Some(300);
        assert_eq!(session_expiry(Protocol::V5, &connect), 300);

        assert_eq!(expiry_after_disconnect(300, Some(10)), 10);
        assert_eq!(expiry_after_disconnect(300, None), 300);
        assert_eq!(
            expiry_after_disconnect(0, Some(10)),
            0,
            "a session without expiry may not get one at DISCONNECT"
        );
    }

    #[test]
    fn the_will_after_each_kind_of_end() {
        let now = will(None);
        let plans = [
            (End::Dropped, WillPlan::Now),
            (
                End::Server(ReasonCode::PROTOCOL_ERROR, "x".into()),
                WillPlan::Now,
            ),
            (End::Disconnect(ReasonCode::SUCCESS), WillPlan::None),
            (
                End::Disconnect(ReasonCode::DISCONNECT_WITH_WILL_MESSAGE),
                WillPlan::Now,
            ),
            (End::Shutdown, WillPlan::None),
            (End::RelayRestart, WillPlan::None),
            (End::TakenOver, WillPlan::Now),
        ];
        for (end, plan) in plans {
            assert_eq!(will_plan(Some(&now), &end, 300), plan, "{end:?}");
        }
        assert_eq!(will_plan(None, &End::Dropped, 300), WillPlan::None);
    }

    #[test]
    fn will_delay_is_capped_by_the_session_expiry_and_cancelled_by_a_takeover() {
        let delayed = will(Some(60));
        assert_eq!(
            will_plan(Some(&delayed), &End::Dropped, 300),
            WillPlan::After(60)
        );
        assert_eq!(
            will_plan(Some(&delayed), &End::Dropped, 10),
            WillPlan::After(10)
        );
        assert_eq!(
            will_plan(Some(&delayed), &End::Dropped, 0),
            WillPlan::Now,
            "a session that ends with the connection publishes at once"
        );
        assert_eq!(
            will_plan(Some(&delayed), &End::TakenOver, 300),
            WillPlan::None,
            "the new connection cancels a delayed will"
        );
    }

    #[test]
    fn the_client_is_told_why_the_server_ended_the_session() {
        assert_eq!(
            End::TakenOver.close().map(|(r, _)| r),
            Some(ReasonCode::SESSION_TAKEN_OVER)
        );
        assert_eq!(
            End::Shutdown.close().map(|(r, _)| r),
            Some(ReasonCode::SERVER_SHUTTING_DOWN)
        );
        assert_eq!(End::Dropped.close(), None);
        assert_eq!(End::Disconnect(ReasonCode::SUCCESS).close(), None);
    }

    #[test]
    fn a_will_becomes_the_publish_it_describes() {
        let publish = will_publish(&will(Some(5)));
        assert_eq!(&*publish.topic, "status/c");
        assert_eq!(&publish.payload[..], b"offline");
        assert_eq!((publish.qos, publish.retain), (QoS::AtLeastOnce, true));
        assert_eq!(
            publish.properties.content_type.as_deref(),
            Some("text/plain")
        );
    }
}
