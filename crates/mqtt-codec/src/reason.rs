//! MQTT 5 reason codes, and how 3.1.1 return codes map onto them.

use std::fmt;

use crate::PacketType;

/// An MQTT 5 reason code (spec §2.4).
///
/// A newtype rather than an enum because the same value means different
/// things in different packets (0x00 is Success, Normal disconnection and
/// Granted QoS 0) and because a relay must be able to carry a code it does not
/// interpret. The associated constants name every code of the spec; several
/// names share a value on purpose.
///
/// MQTT 3.1.1 has no reason codes; the unified packet model still uses
/// `ReasonCode` and maps:
///
/// * CONNACK return codes 0–5 ↔ 0x00, 0x84, 0x85, 0x88, 0x86, 0x87
///   ([`ReasonCode::from_v311_connack`], [`ReasonCode::to_v311_connack`]);
/// * SUBACK return codes 0x00–0x02 ↔ Granted QoS 0–2 and 0x80 "Failure" ↔
///   0x80 Unspecified error (any v5 failure code is sent as 0x80 to a 3.1.1 peer);
/// * every other 3.1.1 packet decodes with [`ReasonCode::SUCCESS`].
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
pub struct ReasonCode(pub u8);

impl ReasonCode {
    /// 0x00 in CONNACK, PUBACK, PUBREC, PUBREL, PUBCOMP, UNSUBACK, AUTH.
    pub const SUCCESS: Self = Self(0x00);
    /// 0x00 in DISCONNECT.
    pub const NORMAL_DISCONNECTION: Self = Self(0x00);
    /// 0x00 in SUBACK.
    pub const GRANTED_QOS_0: Self = Self(0x00);
    pub const GRANTED_QOS_1: Self = Self(0x01);
    pub const GRANTED_QOS_2: Self = Self(0x02);
    pub const DISCONNECT_WITH_WILL_MESSAGE: Self = Self(0x04);
    pub const NO_MATCHING_SUBSCRIBERS: Self = Self(0x10);
    pub const NO_SUBSCRIPTION_EXISTED: Self = Self(0x11);
    pub const CONTINUE_AUTHENTICATION: Self = Self(0x18);
    pub const RE_AUTHENTICATE: Self = Self(0x19);
    pub const UNSPECIFIED_ERROR: Self = Self(0x80);
    pub const MALFORMED_PACKET: Self = Self(0x81);
    pub const PROTOCOL_ERROR: Self = Self(0x82);
    pub const IMPLEMENTATION_SPECIFIC_ERROR: Self = Self(0x83);
    pub const UNSUPPORTED_PROTOCOL_VERSION: Self = Self(0x84);
    pub const CLIENT_IDENTIFIER_NOT_VALID: Self = Self(0x85);
    pub const BAD_USER_NAME_OR_PASSWORD: Self = Self(0x86);
    pub const NOT_AUTHORIZED: Self = Self(0x87);
    pub const SERVER_UNAVAILABLE: Self = Self(0x88);
    pub const SERVER_BUSY: Self = Self(0x89);
    pub const BANNED: Self = Self(0x8A);
    pub const SERVER_SHUTTING_DOWN: Self = Self(0x8B);
    pub const BAD_AUTHENTICATION_METHOD: Self = Self(0x8C);
    pub const KEEP_ALIVE_TIMEOUT: Self = Self(0x8D);
    pub const SESSION_TAKEN_OVER: Self = Self(0x8E);
    pub const TOPIC_FILTER_INVALID: Self = Self(0x8F);
    pub const TOPIC_NAME_INVALID: Self = Self(0x90);
    pub const PACKET_IDENTIFIER_IN_USE: Self = Self(0x91);
    pub const PACKET_IDENTIFIER_NOT_FOUND: Self = Self(0x92);
    pub const RECEIVE_MAXIMUM_EXCEEDED: Self = Self(0x93);
    pub const TOPIC_ALIAS_INVALID: Self = Self(0x94);
    pub const PACKET_TOO_LARGE: Self = Self(0x95);
    pub const MESSAGE_RATE_TOO_HIGH: Self = Self(0x96);
    pub const QUOTA_EXCEEDED: Self = Self(0x97);
    pub const ADMINISTRATIVE_ACTION: Self = Self(0x98);
    pub const PAYLOAD_FORMAT_INVALID: Self = Self(0x99);
    pub const RETAIN_NOT_SUPPORTED: Self = Self(0x9A);
    pub const QOS_NOT_SUPPORTED: Self = Self(0x9B);
    pub const USE_ANOTHER_SERVER: Self = Self(0x9C);
    pub const SERVER_MOVED: Self = Self(0x9D);
    pub const SHARED_SUBSCRIPTIONS_NOT_SUPPORTED: Self = Self(0x9E);
    pub const CONNECTION_RATE_EXCEEDED: Self = Self(0x9F);
    pub const MAXIMUM_CONNECT_TIME: Self = Self(0xA0);
    pub const SUBSCRIPTION_IDENTIFIERS_NOT_SUPPORTED: Self = Self(0xA1);
    pub const WILDCARD_SUBSCRIPTIONS_NOT_SUPPORTED: Self = Self(0xA2);

    /// Codes of 0x80 and above report a failure (spec §2.4).
    pub const fn is_error(self) -> bool {
        self.0 >= 0x80
    }

    /// The SUBACK code granting `qos`.
    pub const fn granted(qos: crate::QoS) -> Self {
        Self(qos as u8)
    }

    /// Whether the spec allows this code in `packet` (MQTT 5). Decoding a v5
    /// packet rejects any other code as [`crate::DecodeError::InvalidReasonCode`].
    pub fn is_valid_for(self, packet: PacketType) -> bool {
        let allowed: &[u8] = match packet {
            PacketType::ConnAck => CONNACK,
            PacketType::PubAck | PacketType::PubRec => PUBACK,
            PacketType::PubRel | PacketType::PubComp => PUBREL,
            PacketType::SubAck => SUBACK,
            PacketType::UnsubAck => UNSUBACK,
            PacketType::Disconnect => DISCONNECT,
            PacketType::Auth => AUTH,
            _ => &[],
        };
        allowed.contains(&self.0)
    }

    /// The 3.1.1 CONNACK return code for this code.
    ///
    /// 3.1.1 only knows six outcomes, so this is lossy: authentication
    /// failures become 4 (bad user name or password), bans become 5 (not
    /// authorized) and every other failure becomes 3 (server unavailable).
    pub const fn to_v311_connack(self) -> u8 {
        match self.0 {
            0x00 => 0,
            0x84 => 1,
            0x85 => 2,
            0x86 | 0x8C => 4,
            0x87 | 0x8A => 5,
            _ => 3,
        }
    }

    /// The code for a 3.1.1 CONNACK return code, `None` for the reserved values 6–255.
    pub const fn from_v311_connack(code: u8) -> Option<Self> {
        match code {
            0 => Some(Self::SUCCESS),
            1 => Some(Self::UNSUPPORTED_PROTOCOL_VERSION),
            2 => Some(Self::CLIENT_IDENTIFIER_NOT_VALID),
            3 => Some(Self::SERVER_UNAVAILABLE),
            4 => Some(Self::BAD_USER_NAME_OR_PASSWORD),
            5 => Some(Self::NOT_AUTHORIZED),
            _ => None,
        }
    }

    /// The 3.1.1 SUBACK return code: granted QoS 0–2 as is, anything else 0x80 (Failure).
    pub const fn to_v311_suback(self) -> u8 {
        match self.0 {
            0..=2 => self.0,
            _ => 0x80,
        }
    }

    /// The spec's name for the code (the generic one where a value has several).
    pub const fn name(self) -> &'static str {
        match self.0 {
            0x00 => "Success",
            0x01 => "Granted QoS 1",
            0x02 => "Granted QoS 2",
            0x04 => "Disconnect with Will Message",
            0x10 => "No matching subscribers",
            0x11 => "No subscription existed",
            0x18 => "Continue authentication",
            0x19 => "Re-authenticate",
            0x80 => "Unspecified error",
            0x81 => "Malformed Packet",
            0x82 => "Protocol Error",
            0x83 => "Implementation specific error",
            0x84 => "Unsupported Protocol Version",
            0x85 => "Client Identifier not valid",
            0x86 => "Bad User Name or Password",
            0x87 => "Not authorized",
            0x88 => "Server unavailable",
            0x89 => "Server busy",
            0x8A => "Banned",
            0x8B => "Server shutting down",
            0x8C => "Bad authentication method",
            0x8D => "Keep Alive timeout",
            0x8E => "Session taken over",
            0x8F => "Topic Filter invalid",
            0x90 => "Topic Name invalid",
            0x91 => "Packet Identifier in use",
            0x92 => "Packet Identifier not found",
            0x93 => "Receive Maximum exceeded",
            0x94 => "Topic Alias invalid",
            0x95 => "Packet too large",
            0x96 => "Message rate too high",
            0x97 => "Quota exceeded",
            0x98 => "Administrative action",
            0x99 => "Payload format invalid",
            0x9A => "Retain not supported",
            0x9B => "QoS not supported",
            0x9C => "Use another server",
            0x9D => "Server moved",
            0x9E => "Shared Subscriptions not supported",
            0x9F => "Connection rate exceeded",
            0xA0 => "Maximum connect time",
            0xA1 => "Subscription Identifiers not supported",
            0xA2 => "Wildcard Subscriptions not supported",
            _ => "Unknown",
        }
    }
}

impl fmt::Debug for ReasonCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ReasonCode({:#04x} {})", self.0, self.name())
    }
}

impl fmt::Display for ReasonCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#04x} ({})", self.0, self.name())
    }
}

impl From<u8> for ReasonCode {
    fn from(code: u8) -> Self {
        Self(code)
    }
}

impl From<ReasonCode> for u8 {
    fn from(code: ReasonCode) -> Self {
        code.0
    }
}

// Valid codes per packet, from the tables in spec §3.2.2.2, §3.4.2.1, §3.5.2.1,
// §3.6.2.1, §3.7.2.1, §3.9.3, §3.11.3, §3.14.2.1 and §3.15.2.1.
const CONNACK: &[u8] = &[
    0x00, 0x80, 0x81, 0x82, 0x83, 0x84, 0x85, 0x86, 0x87, 0x88, 0x89, 0x8A, 0x8C, 0x90, 0x95, 0x97,
    0x99, 0x9A, 0x9B, 0x9C, 0x9D, 0x9F,
];
const PUBACK: &[u8] = &[0x00, 0x10, 0x80, 0x83, 0x87, 0x90, 0x91, 0x97, 0x99];
const PUBREL: &[u8] = &[0x00, 0x92];
const SUBACK: &[u8] = &[
    0x00, 0x01, 0x02, 0x80, 0x83, 0x87, 0x8F, 0x91, 0x97, 0x9E, 0xA1, 0xA2,
];
const UNSUBACK: &[u8] = &[0x00, 0x11, 0x80, 0x83, 0x87, 0x8F, 0x91];
const DISCONNECT: &[u8] = &[
    0x00, 0x04, 0x80, 0x81, 0x82, 0x83, 0x87, 0x89, 0x8B, 0x8D, 0x8E, 0x8F, 0x90, 0x93, 0x94, 0x95,
    0x96, 0x97, 0x98, 0x99, 0x9A, 0x9B, 0x9C, 0x9D, 0x9E, 0x9F, 0xA0, 0xA1, 0xA2,
];
const AUTH: &[u8] = &[0x00, 0x18, 0x19];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v311_connack_codes_round_trip() {
        for code in 0..=5 {
            let rc = ReasonCode::from_v311_connack(code).unwrap();
            assert_eq!(rc.to_v311_connack(), code);
        }
        assert_eq!(ReasonCode::from_v311_connack(6), None);
        assert_eq!(ReasonCode::BANNED.to_v311_connack(), 5);
        assert_eq!(ReasonCode::SERVER_BUSY.to_v311_connack(), 3);
    }

    #[test]
    fn every_named_code_is_valid_somewhere() {
        for code in 0..=255u8 {
            let rc = ReasonCode(code);
            let named = rc.name() != "Unknown";
            let used = [
                PacketType::ConnAck,
                PacketType::PubAck,
                PacketType::PubRel,
                PacketType::SubAck,
                PacketType::UnsubAck,
                PacketType::Disconnect,
                PacketType::Auth,
            ]
            .into_iter()
            .any(|p| rc.is_valid_for(p));
            assert_eq!(named, used, "{rc:?}");
        }
    }
}
