//! Sans-IO codec for MQTT 3.1.1 and 5.0: bytes in, typed packets out, and back.
//!
//! # Why our own codec
//!
//! Before writing this crate we looked at the existing ones. `flowsdk` (0.7)
//! decodes from `&[u8]` into separate v3/v5 types with `Vec<u8>` payloads (a
//! copy per PUBLISH), enforces no maximum packet size while decoding, and pulls
//! tokio/TLS by default (MPL-2.0). `mqttbytes` (0.6) is unmaintained since 2021
//! and its v5 module has no AUTH packet. `mqtt-protocol` only speaks 3.1.1.
//! `ntex-mqtt` ties its codec to the ntex runtime and `ntex-bytes`. rumqttc's
//! internal `mqttbytes` is part of a tokio client (TLS, websockets…), keeps
//! v4 and v5 as two models, and is lax (duplicate properties and properties
//! not allowed for the packet are not rejected). None offers one model for
//! both versions with per-packet property validation and typed errors that map
//! to reason codes, so Strait has its own, small codec.
//!
//! # Use
//!
//! A server reads the first packet with [`decode_first`], which also says
//! which [`Protocol`] the client speaks, and every later one with [`decode`].
//! Both return `Ok(None)` until a whole packet is buffered; oversized packets
//! are refused from their fixed header, before their body is read ([`check`]).
//! [`encode`] writes a packet for a protocol; [`encoded_len`] and
//! [`encode_with_max`] check it against the peer's Maximum Packet Size first.
//!
//! ```
//! use bytes::BytesMut;
//! use strait_mqtt_codec::{decode, encode, Packet, Protocol, PubAck, Publish, QoS};
//!
//! let publish = Packet::Publish(Publish {
//!     qos: QoS::AtLeastOnce,
//!     topic: "sensors/1".into(),
//!     packet_id: 7,
//!     payload: "21.5".into(),
//!     ..Publish::default()
//! });
//! let mut buf = BytesMut::new();
//! encode(&publish, Protocol::V5, &mut buf).unwrap();
//! assert_eq!(decode(&mut buf, Protocol::V5, 1024).unwrap(), Some(publish));
//! assert!(buf.is_empty());
//!
//! let ack = Packet::PubAck(PubAck { packet_id: 7, ..PubAck::default() });
//! encode(&ack, Protocol::V311, &mut buf).unwrap();
//! assert_eq!(&buf[..], b"\x40\x02\x00\x07");
//! ```
//!
//! On a [`DecodeError`] the connection must be closed; MQTT 5 peers first get
//! a CONNACK or DISCONNECT with [`DecodeError::reason_code`].
//!
//! # One model for both versions
//!
//! [`Packet`] and its structs serve 3.1.1 and 5.0. Decoding 3.1.1 leaves the
//! 5.0-only fields at their `Default` (no properties, Success reason codes,
//! default subscription options). Encoding for 3.1.1 drops them, maps CONNACK
//! and SUBACK codes to 3.1.1 return codes (see [`ReasonCode`]), and fails
//! where 3.1.1 cannot say the same thing: AUTH, a PUBACK/PUBREC/PUBREL/PUBCOMP
//! failure code, a password without user name, an empty topic.
//!
//! # What is validated
//!
//! Decoding enforces the packet format: fixed-header flags, remaining length
//! (at most 4 bytes, shortest form), QoS 3, DUP on QoS 0, non-zero packet
//! identifiers, CONNECT and CONNACK flags, strings (UTF-8, no U+0000),
//! topic names (no wildcards) and filters (wildcard placement, `$share/`),
//! subscription options, properties (allowed per packet, no duplicates,
//! ranges), reason codes per packet, empty SUBSCRIBE/UNSUBSCRIBE, and no
//! trailing bytes. The `$share/{group}/{filter}` syntax is enforced in both
//! versions (brokers commonly accept shared subscriptions from 3.1.1
//! clients). Session rules are the caller's: a second CONNECT, who
//! may send which packet, topic alias mapping, receive maximum, client
//! identifier policy.
//!
//! Strings: U+0000 is rejected as malformed (spec §1.5.4). The other code
//! points the spec says senders SHOULD NOT use (U+0001..U+001F,
//! U+007F..U+009F, non-characters) are accepted and passed through
//! unchanged: rejecting them is optional, costs a per-character scan, and
//! would only break odd but working clients. A BOM (U+FEFF) is kept.
//!
//! # Cost
//!
//! Decoding splits the frame off the input without copying; PUBLISH payloads,
//! correlation data, passwords and other binary fields are `Bytes` slices of
//! it. The only allocations are the `String`s and `Vec`s a packet holds
//! (for a PUBLISH, its topic). Encoding reserves the output once.

#[cfg(feature = "arbitrary")]
pub mod arbitrary;
mod decode;
mod encode;
mod error;
mod packet;
pub mod properties;
mod reason;
pub mod topic;

use std::fmt;

pub use bytestring::ByteString;
pub use decode::{FixedHeader, check, decode, decode_first};
pub use encode::{encode, encode_with_max, encoded_len};
pub use error::{ConnectError, DecodeError, EncodeError};
pub use packet::{
    Auth, ConnAck, Connect, Disconnect, Packet, PacketType, PubAck, PubComp, PubRec, PubRel,
    Publish, QoS, RetainHandling, SubAck, Subscribe, Subscription, SubscriptionOptions, UnsubAck,
    Unsubscribe, Will,
};
pub use properties::{
    AckProperties, AuthProperties, ConnAckProperties, ConnectProperties, DisconnectProperties,
    PublishProperties, SubscribeProperties, UnsubscribeProperties, UserProperties, WillProperties,
};
pub use reason::ReasonCode;

/// Largest remaining length a fixed header can carry (4-byte variable byte integer).
pub const MAX_REMAINING_LENGTH: usize = 268_435_455;

/// Largest possible packet: 1 type byte, 4 length bytes, [`MAX_REMAINING_LENGTH`].
/// Pass it as `max_packet_size` for "no limit but the protocol's".
pub const MAX_PACKET_SIZE: usize = 1 + 4 + MAX_REMAINING_LENGTH;

/// The protocol version of a connection, from the CONNECT protocol level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Protocol {
    /// MQTT 3.1.1, protocol level 4.
    V311,
    /// MQTT 5.0, protocol level 5.
    V5,
}

impl Protocol {
    /// The protocol level byte of CONNECT.
    pub const fn level(self) -> u8 {
        match self {
            Self::V311 => 4,
            Self::V5 => 5,
        }
    }

    /// `None` for any level but 4 and 5 (MQTT 3.1's level 3 included).
    pub const fn from_level(level: u8) -> Option<Self> {
        match level {
            4 => Some(Self::V311),
            5 => Some(Self::V5),
            _ => None,
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::V311 => "3.1.1",
            Self::V5 => "5.0",
        })
    }
}
