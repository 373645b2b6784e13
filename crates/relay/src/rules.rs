//! The relay's rules, as plain logic without sockets: the queue and HTTP/2 settings both ends
//! share, the CONNACK that refuses a session (r-proxy and both s-proxy upstreams send it), and
//! what r-proxy itself enforces on a relayed MQTT session ([`SessionRules`]).
//!
//! Everything else (authorization, QoS flows, session state) is the upstream's job; r-proxy only
//! guards what it must to stay transparent and bounded: the packets a client may send, the
//! keep-alive, and the packet size it advertises.

use std::time::Duration;

use strait_mqtt_codec::{ConnAck, Connect, Disconnect, Packet, Protocol, ReasonCode};

/// Frames queued per session and direction before the relay stops reading the sending side.
pub const FRAME_QUEUE: usize = 16;

/// HTTP/2 settings of the relay link, the same on both ends.
pub mod link {
    /// Flow-control windows: large, so a busy session is limited by its peers rather than by
    /// round trips for window updates.
    pub const CONNECTION_WINDOW: u32 = 8 * 1024 * 1024;
    pub const STREAM_WINDOW: u32 = 1024 * 1024;
    /// Largest DATA frame each end accepts. h2 writes one DATA frame per `writev` and reads
    /// about a frame per `read`; at the default 16 KiB a 64 KiB batch costs four of each.
    pub const MAX_FRAME: u32 = 256 * 1024;
}

/// Largest gRPC message of the relay: one whole packet of `max_packet_size` plus a batch of
/// small ones.
pub fn max_frame_size(max_packet_size: u32) -> usize {
    max_packet_size as usize + 1024 * 1024
}

/// Per-session rules, created from the client's CONNECT.
#[derive(Debug, Clone)]
pub struct SessionRules {
    protocol: Protocol,
    /// What the client asked for, in seconds (0: none).
    requested_keep_alive: u16,
    /// What applies until the CONNACK: the request within r-proxy's cap.
    keep_alive: u16,
    /// r-proxy's largest keep-alive, in seconds (`None`: any, including none).
    max_keep_alive: Option<u16>,
    max_packet_size: u32,
}

impl SessionRules {
    /// `max_packet_size` is the largest packet r-proxy accepts from the client; `max_keep_alive`
    /// the longest keep-alive (seconds) it lets a client have: a client asking for more, or for
    /// none, gets this one (MQTT 5 clients are told in the CONNACK; 3.1.1 clients cannot be, and
    /// are disconnected after one and a half of it in silence like any other).
    pub fn new(
        protocol: Protocol,
        connect: &Connect,
        max_packet_size: u32,
        max_keep_alive: Option<u16>,
    ) -> Self {
        let requested = connect.keep_alive;
        Self {
            protocol,
            requested_keep_alive: requested,
            keep_alive: capped(requested, max_keep_alive),
            max_keep_alive,
            max_packet_size,
        }
    }

    /// Whether r-proxy's cap lowered (or set) the client's keep-alive.
    pub fn keep_alive_capped(&self) -> bool {
        self.keep_alive != self.requested_keep_alive
    }

    pub fn protocol(&self) -> Protocol {
        self.protocol
    }

    /// How long the client may stay silent: one and a half times its keep-alive (MQTT-3.1.2-24),
    /// or `None` when keep-alive is off.
    pub fn idle_timeout(&self) -> Option<Duration> {
        idle_timeout(self.keep_alive)
    }

    /// The keep-alive in force once `connack` is what the client gets: the upstream's Server
    /// Keep Alive if it sent one, else the client's, both within r-proxy's cap.
    fn keep_alive_after(&self, connack: &ConnAck) -> u16 {
        match connack.properties.server_keep_alive {
            Some(server) => capped(server, self.max_keep_alive),
            None => self.keep_alive,
        }
    }

    /// Checks a packet from the client once the session is open. `Err` carries the reason code
    /// to disconnect with.
    pub fn check_inbound(&self, packet: &Packet) -> Result<(), ReasonCode> {
        match packet {
            // A second CONNECT is a protocol violation (MQTT-3.1.0-2).
            Packet::Connect(_)
            // Packets only a server sends.
            | Packet::ConnAck(_)
            | Packet::SubAck(_)
            | Packet::UnsubAck(_)
            | Packet::PingResp => Err(ReasonCode::PROTOCOL_ERROR),
            _ => Ok(()),
        }
    }

    /// Adjusts the upstream's CONNACK before it reaches the client: a v5 client learns the
    /// largest packet r-proxy accepts (the smaller of the upstream's limit and ours) and, as
    /// Server Keep Alive, any keep-alive other than the one it asked for (r-proxy's cap, or the
    /// upstream's own). Returns the idle timeout from then on (`None` inside: keep-alive off).
    pub fn apply_connack(&self, connack: &mut ConnAck) -> Option<Option<Duration>> {
        let keep_alive = self.keep_alive_after(connack);
        if self.protocol == Protocol::V5 && !connack.reason_code.is_error() {
            let limit = &mut connack.properties.maximum_packet_size;
            *limit = Some(limit.map_or(self.max_packet_size, |l| l.min(self.max_packet_size)));
            if keep_alive != self.requested_keep_alive {
                connack.properties.server_keep_alive = Some(keep_alive);
            }
        }
        (keep_alive != self.keep_alive).then(|| idle_timeout(keep_alive))
    }

    /// The packet telling the client why the server ends the session: a v5 DISCONNECT with the
    /// reason code, nothing for 3.1.1 (whose servers just close the connection).
    pub fn disconnect(&self, reason: ReasonCode, detail: Option<&str>) -> Option<Packet> {
        (self.protocol == Protocol::V5).then(|| {
            let mut disconnect = Disconnect {
                reason_code: reason,
                ..Default::default()
            };
            disconnect.properties.reason_string = detail.map(str::to_string);
            Packet::Disconnect(disconnect)
        })
    }
}

fn idle_timeout(keep_alive_seconds: u16) -> Option<Duration> {
    (keep_alive_seconds != 0).then(|| Duration::from_secs(keep_alive_seconds.into()) * 3 / 2)
}

/// `keep_alive` within `max`: 0 (none) or more than `max` becomes `max`.
fn capped(keep_alive: u16, max: Option<u16>) -> u16 {
    match max {
        Some(max) if max > 0 && (keep_alive == 0 || keep_alive > max) => max,
        _ => keep_alive,
    }
}

/// The CONNACK refusing a session before it is open (upstream unreachable, overloaded…). The
/// codec maps the v5 reason to one of 3.1.1's six return codes when encoding for 3.1.1.
pub fn refusal(reason: ReasonCode) -> Packet {
    Packet::ConnAck(ConnAck {
        reason_code: reason,
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use strait_mqtt_codec::{PubAck, Publish};

    fn rules(protocol: Protocol, keep_alive: u16) -> SessionRules {
        let connect = Connect {
            keep_alive,
            client_id: "c1".into(),
            ..Default::default()
        };
        SessionRules::new(protocol, &connect, 65_536, None)
    }

    fn capped_rules(protocol: Protocol, keep_alive: u16, max: u16) -> SessionRules {
        let connect = Connect {
            keep_alive,
            client_id: "c1".into(),
            ..Default::default()
        };
        SessionRules::new(protocol, &connect, 65_536, Some(max))
    }

    #[test]
    fn the_cap_applies_to_none_and_to_more_and_v5_clients_are_told() {
        for (asked, applies) in [(0, 120), (600, 120), (60, 60), (120, 120)] {
            let rules = capped_rules(Protocol::V5, asked, 120);
            assert_eq!(
                rules.idle_timeout(),
                Some(Duration::from_secs(u64::from(applies)) * 3 / 2),
                "asked {asked}"
            );
            assert_eq!(rules.keep_alive_capped(), asked != applies, "asked {asked}");
            let mut connack = ConnAck::default();
            assert_eq!(
                rules.apply_connack(&mut connack),
                None,
                "no change at CONNACK"
            );
            let told = (asked != applies).then_some(applies);
            assert_eq!(connack.properties.server_keep_alive, told, "asked {asked}");
        }
        // 3.1.1 has no Server Keep Alive; the cap is enforced all the same.
        let v3 = capped_rules(Protocol::V311, 0, 120);
        assert_eq!(v3.idle_timeout(), Some(Duration::from_secs(180)));
        let mut connack = ConnAck::default();
        v3.apply_connack(&mut connack);
        assert_eq!(connack.properties.server_keep_alive, None);
    }

    #[test]
    fn an_upstreams_server_keep_alive_is_capped_too() {
        let rules = capped_rules(Protocol::V5, 60, 120);
        let mut connack = ConnAck::default();
        connack.properties.server_keep_alive = Some(0);
        assert_eq!(
            rules.apply_connack(&mut connack),
            Some(Some(Duration::from_secs(180))),
            "the upstream's 'none' is the cap"
        );
        assert_eq!(connack.properties.server_keep_alive, Some(120));
        let mut connack = ConnAck::default();
        connack.properties.server_keep_alive = Some(30);
        assert_eq!(
            rules.apply_connack(&mut connack),
            Some(Some(Duration::from_secs(45)))
        );
        assert_eq!(connack.properties.server_keep_alive, Some(30));
    }

    #[test]
    fn idle_timeout_is_one_and_a_half_keep_alives() {
        assert_eq!(
            rules(Protocol::V5, 10).idle_timeout(),
            Some(Duration::from_secs(15))
        );
        assert_eq!(
            rules(Protocol::V311, 0).idle_timeout(),
            None,
            "0 turns keep-alive off"
        );
    }

    #[test]
    fn server_keep_alive_replaces_the_clients() {
        let rules = rules(Protocol::V5, 60);
        let mut connack = ConnAck::default();
        assert_eq!(
            rules.apply_connack(&mut connack),
            None,
            "client's keep-alive stands"
        );
        connack.properties.server_keep_alive = Some(4);
        assert_eq!(
            rules.apply_connack(&mut connack),
            Some(Some(Duration::from_secs(6)))
        );
        connack.properties.server_keep_alive = Some(0);
        assert_eq!(
            rules.apply_connack(&mut connack),
            Some(None),
            "server turned it off"
        );
    }

    #[test]
    fn v5_client_learns_the_smaller_packet_limit() {
        let mut connack = ConnAck::default();
        rules(Protocol::V5, 60).apply_connack(&mut connack);
        assert_eq!(
            connack.properties.maximum_packet_size,
            Some(65_536),
            "ours when upstream has none"
        );

        connack.properties.maximum_packet_size = Some(1_000);
        rules(Protocol::V5, 60).apply_connack(&mut connack);
        assert_eq!(
            connack.properties.maximum_packet_size,
            Some(1_000),
            "upstream's when smaller"
        );

        let mut v3 = ConnAck::default();
        rules(Protocol::V311, 60).apply_connack(&mut v3);
        assert_eq!(
            v3.properties.maximum_packet_size, None,
            "3.1.1 has no such property"
        );

        let mut refused = ConnAck {
            reason_code: ReasonCode::NOT_AUTHORIZED,
            ..Default::default()
        };
        rules(Protocol::V5, 60).apply_connack(&mut refused);
        assert_eq!(
            refused.properties.maximum_packet_size, None,
            "a refusal is passed on as is"
        );
    }

    #[test]
    fn client_may_not_send_server_packets_or_a_second_connect() {
        let rules = rules(Protocol::V5, 60);
        for bad in [
            Packet::Connect(Connect::default()),
            Packet::ConnAck(ConnAck::default()),
            Packet::PingResp,
        ] {
            assert_eq!(
                rules.check_inbound(&bad),
                Err(ReasonCode::PROTOCOL_ERROR),
                "{bad:?}"
            );
        }
        for good in [
            Packet::Publish(Publish::default()),
            Packet::PubAck(PubAck::default()),
            Packet::PingReq,
        ] {
            assert_eq!(rules.check_inbound(&good), Ok(()), "{good:?}");
        }
    }

    #[test]
    fn disconnect_only_exists_in_v5() {
        let v5 = rules(Protocol::V5, 60).disconnect(ReasonCode::SERVER_SHUTTING_DOWN, Some("bye"));
        let Some(Packet::Disconnect(d)) = v5 else {
            panic!("v5 gets a DISCONNECT")
        };
        assert_eq!(d.reason_code, ReasonCode::SERVER_SHUTTING_DOWN);
        assert_eq!(d.properties.reason_string.as_deref(), Some("bye"));
        assert!(
            rules(Protocol::V311, 60)
                .disconnect(ReasonCode::SERVER_SHUTTING_DOWN, None)
                .is_none()
        );
    }

    #[test]
    fn refusal_maps_to_the_3_1_1_return_code() {
        let mut v3 = bytes::BytesMut::new();
        strait_mqtt_codec::encode(&refusal(ReasonCode::SERVER_BUSY), Protocol::V311, &mut v3)
            .unwrap();
        assert_eq!(&v3[..], [0x20, 2, 0, 3], "3 = server unavailable");
        let mut v5 = bytes::BytesMut::new();
        strait_mqtt_codec::encode(&refusal(ReasonCode::SERVER_BUSY), Protocol::V5, &mut v5)
            .unwrap();
        assert_eq!(&v5[..4], [0x20, 3, 0, 0x89]);
    }
}
