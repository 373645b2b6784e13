//! Decode and encode errors.
//!
//! Both are small `Copy` enums (no boxing, no allocation): a server maps a
//! [`DecodeError`] to the reason code of its CONNACK or DISCONNECT with
//! [`DecodeError::reason_code`] and counts it with [`DecodeError::metric_label`].

use crate::packet::ConnAck;
use crate::topic::TopicError;
use crate::{Protocol, ReasonCode};

/// Why bytes could not be decoded into a packet.
///
/// Every variant is fatal for the connection: the spec requires closing it
/// (after a CONNACK or DISCONNECT carrying [`DecodeError::reason_code`] for MQTT 5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DecodeError {
    /// The whole packet (fixed header included) is larger than the limit.
    /// Detected from the fixed header, before the body is received.
    #[error("packet of {size} bytes exceeds the maximum packet size of {max} bytes")]
    PacketTooLarge { size: usize, max: usize },
    /// More than 4 bytes, or not the shortest encoding (spec §1.5.5).
    #[error("malformed remaining length")]
    MalformedRemainingLength,
    /// A variable byte integer inside the packet (property length, property
    /// identifier, Subscription Identifier) of more than 4 bytes or not minimally encoded.
    #[error("malformed variable byte integer")]
    MalformedVarInt,
    /// Packet type 0 (reserved).
    #[error("reserved packet type {0}")]
    InvalidPacketType(u8),
    /// A packet type that does not exist in the connection's protocol (AUTH in 3.1.1).
    #[error("{packet} does not exist in MQTT {protocol}")]
    UnsupportedPacket {
        packet: &'static str,
        protocol: Protocol,
    },
    /// The low nibble of the first byte is not what the packet type requires
    /// (0b0010 for PUBREL, SUBSCRIBE, UNSUBSCRIBE; 0 for others; DUP on a QoS 0 PUBLISH).
    #[error("invalid fixed header flags {flags:#06b} for {packet}")]
    InvalidFlags { packet: &'static str, flags: u8 },
    /// QoS 3 in a PUBLISH or a subscription (a will's QoS 3 is
    /// [`DecodeError::InvalidConnectFlags`]).
    #[error("invalid QoS {0}")]
    InvalidQoS(u8),
    /// A field runs past the end of the packet (or of its property block).
    #[error("{packet} is truncated: {needed} bytes needed, {available} left")]
    Truncated {
        packet: &'static str,
        needed: usize,
        available: usize,
    },
    /// Bytes left over after the last field of the packet.
    #[error("{count} unexpected bytes at the end of {packet}")]
    TrailingBytes { packet: &'static str, count: usize },
    /// CONNECT's protocol name is neither "MQTT" nor "MQIsdp".
    #[error("invalid protocol name in CONNECT")]
    InvalidProtocolName,
    /// CONNECT's protocol level is not 4 (3.1.1) or 5 (5.0). MQTT 3.1 (level 3,
    /// "MQIsdp") is rejected this way too.
    #[error("unsupported protocol level {0}")]
    InvalidProtocolLevel(u8),
    /// The first packet of a connection must be CONNECT.
    #[error("first packet is {packet}, not CONNECT")]
    FirstPacketNotConnect { packet: &'static str },
    /// Reserved bit set, will QoS/retain without will flag, will QoS 3, or
    /// (3.1.1) password without user name.
    #[error("invalid CONNECT flags {0:#010b}")]
    InvalidConnectFlags(u8),
    /// CONNACK acknowledge flags with a reserved bit set.
    #[error("invalid CONNACK flags {0:#010b}")]
    InvalidConnAckFlags(u8),
    #[error("string is not valid UTF-8")]
    InvalidUtf8,
    /// U+0000 in a string (spec §1.5.4: malformed).
    #[error("string contains U+0000")]
    NullCharacter,
    /// Packet identifier 0 where one is required.
    #[error("packet identifier 0 in {packet}")]
    ZeroPacketId { packet: &'static str },
    /// SUBSCRIBE, UNSUBSCRIBE, SUBACK or (5.0) UNSUBACK without any entry.
    #[error("{packet} has an empty payload")]
    EmptyPayload { packet: &'static str },
    /// PUBLISH or will topic name (or Response Topic) is not a valid topic name.
    #[error("invalid topic name: {0}")]
    InvalidTopicName(TopicError),
    /// MQTT 5 PUBLISH with an empty topic name and no Topic Alias.
    #[error("empty topic name without topic alias")]
    EmptyTopicWithoutAlias,
    #[error("invalid topic filter: {0}")]
    InvalidTopicFilter(TopicError),
    /// Reserved bits of a SUBSCRIBE options byte set.
    #[error("invalid subscription options {0:#010b}")]
    InvalidSubscriptionOptions(u8),
    /// Retain Handling 3.
    #[error("invalid retain handling {0}")]
    InvalidRetainHandling(u8),
    /// No Local on a shared subscription ([MQTT-3.8.3-4]).
    #[error("no local set on a shared subscription")]
    SharedSubscriptionNoLocal,
    /// A property identifier the spec does not define.
    #[error("unknown property identifier {0:#04x}")]
    UnknownProperty(u32),
    /// A defined property in a packet that does not allow it.
    #[error("property {property:#04x} is not allowed in {packet}")]
    PropertyNotAllowed { property: u8, packet: &'static str },
    /// A property that may appear once appears twice.
    #[error("duplicate property {0:#04x}")]
    DuplicateProperty(u8),
    /// A property value out of its range (a 0/1 byte that is 2, a zero
    /// Receive Maximum, Topic Alias, Maximum Packet Size or Subscription Identifier…).
    #[error("invalid value {value} for property {property:#04x}")]
    InvalidPropertyValue { property: u8, value: u32 },
    /// Authentication Data without Authentication Method.
    #[error("authentication data without authentication method")]
    AuthDataWithoutMethod,
    /// A reason (or return) code the packet does not allow.
    #[error("invalid reason code {code:#04x} in {packet}")]
    InvalidReasonCode { packet: &'static str, code: u8 },
}

impl DecodeError {
    /// The MQTT 5 reason code a server (or client) puts in the CONNACK or
    /// DISCONNECT it sends before closing the connection.
    pub const fn reason_code(&self) -> ReasonCode {
        use DecodeError::*;
        match self {
            PacketTooLarge { .. } => ReasonCode::PACKET_TOO_LARGE,
            InvalidProtocolName | InvalidProtocolLevel(_) => {
                ReasonCode::UNSUPPORTED_PROTOCOL_VERSION
            }
            InvalidTopicName(_) => ReasonCode::TOPIC_NAME_INVALID,
            InvalidTopicFilter(_) => ReasonCode::TOPIC_FILTER_INVALID,
            InvalidPropertyValue {
                property: crate::properties::id::TOPIC_ALIAS,
                ..
            } => ReasonCode::TOPIC_ALIAS_INVALID,
            FirstPacketNotConnect { .. }
            | ZeroPacketId { .. }
            | EmptyPayload { .. }
            | EmptyTopicWithoutAlias
            | InvalidRetainHandling(_)
            | SharedSubscriptionNoLocal
            | DuplicateProperty(_)
            | InvalidPropertyValue { .. }
            | AuthDataWithoutMethod => ReasonCode::PROTOCOL_ERROR,
            MalformedRemainingLength
            | MalformedVarInt
            | InvalidPacketType(_)
            | UnsupportedPacket { .. }
            | InvalidFlags { .. }
            | InvalidQoS(_)
            | Truncated { .. }
            | TrailingBytes { .. }
            | InvalidConnectFlags(_)
            | InvalidConnAckFlags(_)
            | InvalidUtf8
            | NullCharacter
            | InvalidSubscriptionOptions(_)
            | UnknownProperty(_)
            | PropertyNotAllowed { .. }
            | InvalidReasonCode { .. } => ReasonCode::MALFORMED_PACKET,
        }
    }

    /// A short, fixed label for metrics (bounded cardinality).
    pub const fn metric_label(&self) -> &'static str {
        use DecodeError::*;
        match self {
            PacketTooLarge { .. } => "packet_too_large",
            MalformedRemainingLength => "malformed_remaining_length",
            MalformedVarInt => "malformed_varint",
            InvalidPacketType(_) => "invalid_packet_type",
            UnsupportedPacket { .. } => "unsupported_packet",
            InvalidFlags { .. } => "invalid_flags",
            InvalidQoS(_) => "invalid_qos",
            Truncated { .. } => "truncated",
            TrailingBytes { .. } => "trailing_bytes",
            InvalidProtocolName => "invalid_protocol_name",
            InvalidProtocolLevel(_) => "invalid_protocol_level",
            FirstPacketNotConnect { .. } => "first_packet_not_connect",
            InvalidConnectFlags(_) => "invalid_connect_flags",
            InvalidConnAckFlags(_) => "invalid_connack_flags",
            InvalidUtf8 => "invalid_utf8",
            NullCharacter => "null_character",
            ZeroPacketId { .. } => "zero_packet_id",
            EmptyPayload { .. } => "empty_payload",
            InvalidTopicName(_) => "invalid_topic_name",
            EmptyTopicWithoutAlias => "empty_topic_without_alias",
            InvalidTopicFilter(_) => "invalid_topic_filter",
            InvalidSubscriptionOptions(_) => "invalid_subscription_options",
            InvalidRetainHandling(_) => "invalid_retain_handling",
            SharedSubscriptionNoLocal => "shared_subscription_no_local",
            UnknownProperty(_) => "unknown_property",
            PropertyNotAllowed { .. } => "property_not_allowed",
            DuplicateProperty(_) => "duplicate_property",
            InvalidPropertyValue { .. } => "invalid_property_value",
            AuthDataWithoutMethod => "auth_data_without_method",
            InvalidReasonCode { .. } => "invalid_reason_code",
        }
    }
}

/// Error of [`crate::decode_first`]: the decode error, plus the protocol
/// version when the CONNECT got far enough to tell it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("invalid CONNECT: {error}")]
pub struct ConnectError {
    /// Known once the protocol name and level have been read.
    pub protocol: Option<Protocol>,
    pub error: DecodeError,
}

impl ConnectError {
    /// The CONNACK to send before closing the connection, and the protocol to
    /// encode it with; `None` means "just close".
    ///
    /// * unsupported protocol level: 3.1.1 return code 1 (the spec requires it
    ///   for 3.1.1; 5.0 clients understand a 3.1.1 CONNACK here too);
    /// * any other error in a 5.0 CONNECT: a 5.0 CONNACK with
    ///   [`DecodeError::reason_code`] (the spec allows it, [MQTT-3.1.4-1]);
    /// * errors in a 3.1.1 CONNECT, or before the protocol is known: none,
    ///   3.1.1 has no return code for a malformed packet.
    pub fn connack(&self) -> Option<(Protocol, ConnAck)> {
        let ack = |reason_code| ConnAck {
            reason_code,
            ..ConnAck::default()
        };
        match (self.error, self.protocol) {
            (DecodeError::InvalidProtocolLevel(_), _) => Some((
                Protocol::V311,
                ack(ReasonCode::UNSUPPORTED_PROTOCOL_VERSION),
            )),
            (error, Some(Protocol::V5)) => Some((Protocol::V5, ack(error.reason_code()))),
            _ => None,
        }
    }
}

impl From<ConnectError> for DecodeError {
    fn from(e: ConnectError) -> Self {
        e.error
    }
}

/// Why a packet could not be encoded. Encoding leaves the output buffer
/// untouched when it fails.
///
/// Encoding checks what makes the bytes unrepresentable or a packet
/// impossible in the target protocol; it does not re-validate semantics the
/// decoder checks (topic syntax, property ranges, reason codes per packet).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EncodeError {
    /// The encoded packet would exceed the given maximum packet size (e.g. the
    /// peer's Maximum Packet Size).
    #[error("packet of {size} bytes exceeds the maximum packet size of {max} bytes")]
    PacketTooLarge { size: usize, max: usize },
    /// The remaining length (or a property block) would exceed 268,435,455 bytes.
    #[error("remaining length {0} exceeds 268435455")]
    RemainingLengthTooLarge(usize),
    #[error("string of {0} bytes exceeds 65535")]
    StringTooLong(usize),
    #[error("binary data of {0} bytes exceeds 65535")]
    BinaryTooLong(usize),
    /// A Subscription Identifier above 268,435,455.
    #[error("variable byte integer {0} exceeds 268435455")]
    VarIntTooLarge(u32),
    /// AUTH for 3.1.1.
    #[error("{packet} does not exist in MQTT {protocol}")]
    UnsupportedPacket {
        packet: &'static str,
        protocol: Protocol,
    },
    /// Packet identifier 0 where one is required (QoS > 0 PUBLISH, acks, (un)subscribe).
    #[error("packet identifier 0 in {packet}")]
    ZeroPacketId { packet: &'static str },
    /// A QoS 0 PUBLISH has no packet identifier field.
    #[error("packet identifier {0} on a QoS 0 PUBLISH")]
    PacketIdOnQoS0(u16),
    #[error("DUP set on a QoS 0 PUBLISH")]
    DupOnQoS0,
    /// Empty PUBLISH topic without a Topic Alias (always, in 3.1.1).
    #[error("empty topic name without topic alias")]
    EmptyTopicWithoutAlias,
    /// SUBSCRIBE, UNSUBSCRIBE, SUBACK or (5.0) UNSUBACK without entries.
    #[error("{packet} has an empty payload")]
    EmptyPayload { packet: &'static str },
    /// 3.1.1 does not allow a password without a user name.
    #[error("password without user name in MQTT 3.1.1")]
    PasswordWithoutUsername,
    /// A failure code in PUBACK/PUBREC/PUBREL/PUBCOMP, which 3.1.1 cannot express.
    #[error("{packet} reason code {code} cannot be sent to an MQTT 3.1.1 peer")]
    ReasonCodeNotInV311 {
        packet: &'static str,
        code: ReasonCode,
    },
}
