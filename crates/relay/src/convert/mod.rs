//! Lossless conversion between the codec's MQTT packets ([`strait_mqtt_codec::Packet`]) and the
//! relay's protobuf packets ([`v1::Packet`]).
//!
//! `codec → proto` cannot fail and takes the packet by value, so payloads, binary properties and
//! strings move instead of being copied (a PUBLISH payload keeps its buffer all the way into the
//! gRPC message). `proto → codec` comes from another process and is checked like any untrusted
//! input: protobuf's wider integers must fit their MQTT field, QoS and retain handling must be
//! defined values, and reason codes must be allowed in their packet (the codec's encoder does not
//! check that, and would otherwise send a client a packet it must reject). A [`ConvertError`]
//! names the offending field. Everything else the codec's encoder checks (zero packet
//! identifiers, string lengths, DUP on QoS 0…) is left to it, and topic syntax to the receiver.
//!
//! Here the errors, the field helpers and the packet envelope; the conversions of each packet
//! kind are in `connect` (CONNECT, CONNACK), `publish` (PUBLISH and its acknowledgements),
//! `subscribe` (SUBSCRIBE to UNSUBACK) and `disconnect` (DISCONNECT, AUTH).

mod connect;
mod disconnect;
mod publish;
mod subscribe;

use std::fmt;

use strait_mqtt_codec::properties::{
    AckProperties, AuthProperties, ConnAckProperties, ConnectProperties, DisconnectProperties,
    PublishProperties, SubscribeProperties, UnsubscribeProperties, UserProperties, WillProperties,
};
use strait_mqtt_codec::{self as codec, PacketType, Protocol, QoS, ReasonCode, RetainHandling};

use crate::v1;
use crate::v1::packet::Packet as Oneof;

/// A protobuf packet that has no codec equivalent: `field` says where (`"PUBLISH.qos"`,
/// `"SUBACK.reason_codes[1]"`), `kind` what is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {kind}")]
pub struct ConvertError {
    pub field: String,
    pub kind: ErrorKind,
}

/// What is wrong with a field of a protobuf packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ErrorKind {
    /// A `Packet` without any packet in its oneof.
    #[error("empty oneof")]
    EmptyOneof,
    /// `PROTOCOL_VERSION_UNSPECIFIED`, which is also what prost's getter returns for an unknown
    /// value (say 3, MQTT 3.1).
    #[error("unspecified or unknown protocol version")]
    UnspecifiedProtocol,
    /// A uint32 too large for its 16-bit MQTT field.
    #[error("{value} is out of range (max {max})")]
    OutOfRange { value: u32, max: u32 },
    #[error("{0} is not a QoS")]
    NotQoS(u32),
    /// A string carried as bytes (a PUBLISH topic) that is not UTF-8.
    #[error("not UTF-8")]
    NotUtf8,
    #[error("{0} is not a retain handling")]
    NotRetainHandling(i32),
    /// Not a reason code of the spec (or above 255).
    #[error("{0:#04x} is not a reason code")]
    NotReasonCode(u32),
    /// A reason code of the spec, but not one this packet may carry.
    #[error("{code} is not a reason code of {packet}")]
    ReasonCodeNotAllowed {
        code: ReasonCode,
        packet: &'static str,
    },
}

/// Adds the packet and field to an [`ErrorKind`], formatting the path only on error.
trait At<T> {
    fn at(self, packet: PacketType, field: impl fmt::Display) -> Result<T, ConvertError>;
}

impl<T> At<T> for Result<T, ErrorKind> {
    fn at(self, packet: PacketType, field: impl fmt::Display) -> Result<T, ConvertError> {
        self.map_err(|kind| ConvertError {
            field: format!("{packet}.{field}"),
            kind,
        })
    }
}

// ------------------------------------------------------------------------------ field helpers

fn u16_of(value: u32) -> Result<u16, ErrorKind> {
    u16::try_from(value).map_err(|_| ErrorKind::OutOfRange {
        value,
        max: u16::MAX.into(),
    })
}

fn opt_u16(value: Option<u32>) -> Result<Option<u16>, ErrorKind> {
    value.map(u16_of).transpose()
}

fn qos(value: u32) -> Result<QoS, ErrorKind> {
    u8::try_from(value)
        .ok()
        .and_then(QoS::from_u8)
        .ok_or(ErrorKind::NotQoS(value))
}

fn reason_code(value: u32, packet: PacketType) -> Result<ReasonCode, ErrorKind> {
    let code = u8::try_from(value)
        .map(ReasonCode)
        .map_err(|_| ErrorKind::NotReasonCode(value))?;
    if code.is_valid_for(packet) {
        Ok(code)
    } else if code.name() == "Unknown" {
        // The codec names exactly the codes some packet allows (it tests that).
        Err(ErrorKind::NotReasonCode(value))
    } else {
        Err(ErrorKind::ReasonCodeNotAllowed {
            code,
            packet: packet.name(),
        })
    }
}

fn reason_codes(values: Vec<u32>, packet: PacketType) -> Result<Vec<ReasonCode>, ConvertError> {
    values
        .into_iter()
        .enumerate()
        .map(|(i, v)| reason_code(v, packet).at(packet, format_args!("reason_codes[{i}]")))
        .collect()
}

fn codes_to_proto(codes: Vec<ReasonCode>) -> Vec<u32> {
    codes.into_iter().map(|c| c.0.into()).collect()
}

fn user_to_proto(properties: UserProperties) -> Vec<v1::UserProperty> {
    properties
        .into_iter()
        .map(|(key, value)| v1::UserProperty { key, value })
        .collect()
}

fn user_from_proto(properties: Vec<v1::UserProperty>) -> UserProperties {
    properties.into_iter().map(|p| (p.key, p.value)).collect()
}

fn ack_properties(reason_string: Option<String>, user: Vec<v1::UserProperty>) -> AckProperties {
    AckProperties {
        reason_string,
        user_properties: user_from_proto(user),
    }
}

// ------------------------------------------------------------------------------ Packet

impl From<codec::Packet> for v1::Packet {
    fn from(packet: codec::Packet) -> Self {
        use codec::Packet as P;
        let oneof = match packet {
            P::Connect(p) => Oneof::Connect(Box::new(p.into())),
            P::ConnAck(p) => Oneof::Connack(Box::new(p.into())),
            P::Publish(p) => Oneof::Publish(p.into()),
            P::PubAck(p) => Oneof::Puback(p.into()),
            P::PubRec(p) => Oneof::Pubrec(p.into()),
            P::PubRel(p) => Oneof::Pubrel(p.into()),
            P::PubComp(p) => Oneof::Pubcomp(p.into()),
            P::Subscribe(p) => Oneof::Subscribe(p.into()),
            P::SubAck(p) => Oneof::Suback(p.into()),
            P::Unsubscribe(p) => Oneof::Unsubscribe(p.into()),
            P::UnsubAck(p) => Oneof::Unsuback(p.into()),
            P::PingReq => Oneof::Pingreq(v1::PingReq {}),
            P::PingResp => Oneof::Pingresp(v1::PingResp {}),
            P::Disconnect(p) => Oneof::Disconnect(p.into()),
            P::Auth(p) => Oneof::Auth(p.into()),
        };
        Self {
            packet: Some(oneof),
        }
    }
}

impl TryFrom<v1::Packet> for codec::Packet {
    type Error = ConvertError;

    fn try_from(packet: v1::Packet) -> Result<Self, ConvertError> {
        use codec::Packet as P;
        let oneof = packet.packet.ok_or_else(|| ConvertError {
            field: "Packet".into(),
            kind: ErrorKind::EmptyOneof,
        })?;
        Ok(match oneof {
            Oneof::Connect(p) => P::Connect((*p).try_into()?),
            Oneof::Connack(p) => P::ConnAck((*p).try_into()?),
            Oneof::Publish(p) => P::Publish(p.try_into()?),
            Oneof::Puback(p) => P::PubAck(p.try_into()?),
            Oneof::Pubrec(p) => P::PubRec(p.try_into()?),
            Oneof::Pubrel(p) => P::PubRel(p.try_into()?),
            Oneof::Pubcomp(p) => P::PubComp(p.try_into()?),
            Oneof::Subscribe(p) => P::Subscribe(p.try_into()?),
            Oneof::Suback(p) => P::SubAck(p.try_into()?),
            Oneof::Unsubscribe(p) => P::Unsubscribe(p.try_into()?),
            Oneof::Unsuback(p) => P::UnsubAck(p.try_into()?),
            Oneof::Pingreq(v1::PingReq {}) => P::PingReq,
            Oneof::Pingresp(v1::PingResp {}) => P::PingResp,
            Oneof::Disconnect(p) => P::Disconnect(p.try_into()?),
            Oneof::Auth(p) => P::Auth(p.try_into()?),
        })
    }
}

// ------------------------------------------------------------------------------ ProtocolVersion

impl From<Protocol> for v1::ProtocolVersion {
    fn from(protocol: Protocol) -> Self {
        match protocol {
            Protocol::V311 => Self::V311,
            Protocol::V5 => Self::V5,
        }
    }
}

/// The error names `SessionOpen.protocol`, the only field of that type.
impl TryFrom<v1::ProtocolVersion> for Protocol {
    type Error = ConvertError;

    fn try_from(version: v1::ProtocolVersion) -> Result<Self, ConvertError> {
        match version {
            v1::ProtocolVersion::V311 => Ok(Self::V311),
            v1::ProtocolVersion::V5 => Ok(Self::V5),
            v1::ProtocolVersion::Unspecified => Err(ConvertError {
                field: "SessionOpen.protocol".into(),
                kind: ErrorKind::UnspecifiedProtocol,
            }),
        }
    }
}
