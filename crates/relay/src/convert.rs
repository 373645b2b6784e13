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

// ------------------------------------------------------------------------------ CONNECT

impl From<codec::Connect> for v1::Connect {
    fn from(c: codec::Connect) -> Self {
        let p = c.properties;
        Self {
            client_id: c.client_id,
            clean_start: c.clean_start,
            keep_alive: c.keep_alive.into(),
            username: c.username,
            password: c.password,
            will: c.will.map(will_to_proto),
            session_expiry_interval: p.session_expiry_interval,
            receive_maximum: p.receive_maximum.map(Into::into),
            maximum_packet_size: p.maximum_packet_size,
            topic_alias_maximum: p.topic_alias_maximum.map(Into::into),
            request_response_information: p.request_response_information,
            request_problem_information: p.request_problem_information,
            user_properties: user_to_proto(p.user_properties),
            authentication_method: p.authentication_method,
            authentication_data: p.authentication_data,
        }
    }
}

impl TryFrom<v1::Connect> for codec::Connect {
    type Error = ConvertError;

    fn try_from(c: v1::Connect) -> Result<Self, ConvertError> {
        const P: PacketType = PacketType::Connect;
        Ok(Self {
            clean_start: c.clean_start,
            keep_alive: u16_of(c.keep_alive).at(P, "keep_alive")?,
            client_id: c.client_id,
            will: c.will.map(will_from_proto).transpose()?,
            username: c.username,
            password: c.password,
            properties: ConnectProperties {
                session_expiry_interval: c.session_expiry_interval,
                receive_maximum: opt_u16(c.receive_maximum).at(P, "receive_maximum")?,
                maximum_packet_size: c.maximum_packet_size,
                topic_alias_maximum: opt_u16(c.topic_alias_maximum).at(P, "topic_alias_maximum")?,
                request_response_information: c.request_response_information,
                request_problem_information: c.request_problem_information,
                user_properties: user_from_proto(c.user_properties),
                authentication_method: c.authentication_method,
                authentication_data: c.authentication_data,
            },
        })
    }
}

fn will_to_proto(w: codec::Will) -> v1::Will {
    let p = w.properties;
    v1::Will {
        topic: w.topic,
        payload: w.payload,
        qos: w.qos as u32,
        retain: w.retain,
        will_delay_interval: p.will_delay_interval,
        payload_format_indicator: p.payload_format_indicator,
        message_expiry_interval: p.message_expiry_interval,
        content_type: p.content_type,
        response_topic: p.response_topic,
        correlation_data: p.correlation_data,
        user_properties: user_to_proto(p.user_properties),
    }
}

fn will_from_proto(w: v1::Will) -> Result<codec::Will, ConvertError> {
    Ok(codec::Will {
        topic: w.topic,
        payload: w.payload,
        qos: qos(w.qos).at(PacketType::Connect, "will.qos")?,
        retain: w.retain,
        properties: WillProperties {
            will_delay_interval: w.will_delay_interval,
            payload_format_indicator: w.payload_format_indicator,
            message_expiry_interval: w.message_expiry_interval,
            content_type: w.content_type,
            response_topic: w.response_topic,
            correlation_data: w.correlation_data,
            user_properties: user_from_proto(w.user_properties),
        },
    })
}

// ------------------------------------------------------------------------------ CONNACK

impl From<codec::ConnAck> for v1::ConnAck {
    fn from(c: codec::ConnAck) -> Self {
        let p = c.properties;
        Self {
            session_present: c.session_present,
            reason_code: c.reason_code.0.into(),
            session_expiry_interval: p.session_expiry_interval,
            receive_maximum: p.receive_maximum.map(Into::into),
            maximum_qos: p.maximum_qos.map(|q| q as u32),
            retain_available: p.retain_available,
            maximum_packet_size: p.maximum_packet_size,
            assigned_client_identifier: p.assigned_client_identifier,
            topic_alias_maximum: p.topic_alias_maximum.map(Into::into),
            reason_string: p.reason_string,
            user_properties: user_to_proto(p.user_properties),
            wildcard_subscription_available: p.wildcard_subscription_available,
            subscription_identifier_available: p.subscription_identifier_available,
            shared_subscription_available: p.shared_subscription_available,
            server_keep_alive: p.server_keep_alive.map(Into::into),
            response_information: p.response_information,
            server_reference: p.server_reference,
            authentication_method: p.authentication_method,
            authentication_data: p.authentication_data,
        }
    }
}

impl TryFrom<v1::ConnAck> for codec::ConnAck {
    type Error = ConvertError;

    fn try_from(c: v1::ConnAck) -> Result<Self, ConvertError> {
        const P: PacketType = PacketType::ConnAck;
        Ok(Self {
            session_present: c.session_present,
            reason_code: reason_code(c.reason_code, P).at(P, "reason_code")?,
            properties: ConnAckProperties {
                session_expiry_interval: c.session_expiry_interval,
                receive_maximum: opt_u16(c.receive_maximum).at(P, "receive_maximum")?,
                maximum_qos: c.maximum_qos.map(qos).transpose().at(P, "maximum_qos")?,
                retain_available: c.retain_available,
                maximum_packet_size: c.maximum_packet_size,
                assigned_client_identifier: c.assigned_client_identifier,
                topic_alias_maximum: opt_u16(c.topic_alias_maximum).at(P, "topic_alias_maximum")?,
                reason_string: c.reason_string,
                user_properties: user_from_proto(c.user_properties),
                wildcard_subscription_available: c.wildcard_subscription_available,
                subscription_identifier_available: c.subscription_identifier_available,
                shared_subscription_available: c.shared_subscription_available,
                server_keep_alive: opt_u16(c.server_keep_alive).at(P, "server_keep_alive")?,
                response_information: c.response_information,
                server_reference: c.server_reference,
                authentication_method: c.authentication_method,
                authentication_data: c.authentication_data,
            },
        })
    }
}

// ------------------------------------------------------------------------------ PUBLISH

impl From<codec::Publish> for v1::Publish {
    fn from(p: codec::Publish) -> Self {
        let props = p.properties;
        Self {
            dup: p.dup,
            qos: p.qos as u32,
            retain: p.retain,
            topic: p.topic.into_bytes(),
            packet_id: p.packet_id.into(),
            payload: p.payload,
            payload_format_indicator: props.payload_format_indicator,
            message_expiry_interval: props.message_expiry_interval,
            topic_alias: props.topic_alias.map(Into::into),
            response_topic: props.response_topic,
            correlation_data: props.correlation_data,
            user_properties: user_to_proto(props.user_properties),
            subscription_identifiers: props.subscription_identifiers,
            content_type: props.content_type,
        }
    }
}

impl TryFrom<v1::Publish> for codec::Publish {
    type Error = ConvertError;

    fn try_from(p: v1::Publish) -> Result<Self, ConvertError> {
        const P: PacketType = PacketType::Publish;
        Ok(Self {
            dup: p.dup,
            qos: qos(p.qos).at(P, "qos")?,
            retain: p.retain,
            topic: codec::ByteString::try_from(p.topic)
                .map_err(|_| ErrorKind::NotUtf8)
                .at(P, "topic")?,
            packet_id: u16_of(p.packet_id).at(P, "packet_id")?,
            payload: p.payload,
            properties: PublishProperties {
                payload_format_indicator: p.payload_format_indicator,
                message_expiry_interval: p.message_expiry_interval,
                topic_alias: opt_u16(p.topic_alias).at(P, "topic_alias")?,
                response_topic: p.response_topic,
                correlation_data: p.correlation_data,
                user_properties: user_from_proto(p.user_properties),
                subscription_identifiers: p.subscription_identifiers,
                content_type: p.content_type,
            },
        })
    }
}

// ------------------------------------------------------------------------------ PUBACK family

/// PUBACK, PUBREC, PUBREL and PUBCOMP: the same fields, under the same type names on both sides.
macro_rules! pub_response {
    ($($name:ident),*) => {$(
        impl From<codec::$name> for v1::$name {
            fn from(p: codec::$name) -> Self {
                Self {
                    packet_id: p.packet_id.into(),
                    reason_code: p.reason_code.0.into(),
                    reason_string: p.properties.reason_string,
                    user_properties: user_to_proto(p.properties.user_properties),
                }
            }
        }

        impl TryFrom<v1::$name> for codec::$name {
            type Error = ConvertError;

            fn try_from(p: v1::$name) -> Result<Self, ConvertError> {
                const P: PacketType = PacketType::$name;
                Ok(Self {
                    packet_id: u16_of(p.packet_id).at(P, "packet_id")?,
                    reason_code: reason_code(p.reason_code, P).at(P, "reason_code")?,
                    properties: ack_properties(p.reason_string, p.user_properties),
                })
            }
        }
    )*};
}

pub_response!(PubAck, PubRec, PubRel, PubComp);

// ------------------------------------------------------------------------------ SUBSCRIBE, SUBACK

impl From<codec::Subscribe> for v1::Subscribe {
    fn from(s: codec::Subscribe) -> Self {
        Self {
            packet_id: s.packet_id.into(),
            subscriptions: s
                .subscriptions
                .into_iter()
                .map(subscription_to_proto)
                .collect(),
            subscription_identifier: s.properties.subscription_identifier,
            user_properties: user_to_proto(s.properties.user_properties),
        }
    }
}

impl TryFrom<v1::Subscribe> for codec::Subscribe {
    type Error = ConvertError;

    fn try_from(s: v1::Subscribe) -> Result<Self, ConvertError> {
        Ok(Self {
            packet_id: u16_of(s.packet_id).at(PacketType::Subscribe, "packet_id")?,
            subscriptions: s
                .subscriptions
                .into_iter()
                .enumerate()
                .map(subscription_from_proto)
                .collect::<Result<_, _>>()?,
            properties: SubscribeProperties {
                subscription_identifier: s.subscription_identifier,
                user_properties: user_from_proto(s.user_properties),
            },
        })
    }
}

fn subscription_to_proto(s: codec::Subscription) -> v1::Subscription {
    let retain_handling = match s.options.retain_handling {
        RetainHandling::SendAtSubscribe => v1::RetainHandling::SendOnSubscribe,
        RetainHandling::SendAtSubscribeIfNew => v1::RetainHandling::SendIfNewSubscription,
        RetainHandling::DoNotSend => v1::RetainHandling::DoNotSend,
    };
    v1::Subscription {
        filter: s.filter,
        qos: s.options.qos as u32,
        no_local: s.options.no_local,
        retain_as_published: s.options.retain_as_published,
        retain_handling: retain_handling.into(),
    }
}

/// `index` is the subscription's position in its SUBSCRIBE, for error messages.
fn subscription_from_proto(
    (index, s): (usize, v1::Subscription),
) -> Result<codec::Subscription, ConvertError> {
    const P: PacketType = PacketType::Subscribe;
    let retain_handling = match v1::RetainHandling::try_from(s.retain_handling) {
        Ok(v1::RetainHandling::SendOnSubscribe) => Ok(RetainHandling::SendAtSubscribe),
        Ok(v1::RetainHandling::SendIfNewSubscription) => Ok(RetainHandling::SendAtSubscribeIfNew),
        Ok(v1::RetainHandling::DoNotSend) => Ok(RetainHandling::DoNotSend),
        Err(_) => Err(ErrorKind::NotRetainHandling(s.retain_handling)),
    };
    Ok(codec::Subscription {
        filter: s.filter,
        options: codec::SubscriptionOptions {
            qos: qos(s.qos).at(P, format_args!("subscriptions[{index}].qos"))?,
            no_local: s.no_local,
            retain_as_published: s.retain_as_published,
            retain_handling: retain_handling
                .at(P, format_args!("subscriptions[{index}].retain_handling"))?,
        },
    })
}

impl From<codec::SubAck> for v1::SubAck {
    fn from(s: codec::SubAck) -> Self {
        Self {
            packet_id: s.packet_id.into(),
            reason_codes: codes_to_proto(s.reason_codes),
            reason_string: s.properties.reason_string,
            user_properties: user_to_proto(s.properties.user_properties),
        }
    }
}

impl TryFrom<v1::SubAck> for codec::SubAck {
    type Error = ConvertError;

    fn try_from(s: v1::SubAck) -> Result<Self, ConvertError> {
        const P: PacketType = PacketType::SubAck;
        Ok(Self {
            packet_id: u16_of(s.packet_id).at(P, "packet_id")?,
            reason_codes: reason_codes(s.reason_codes, P)?,
            properties: ack_properties(s.reason_string, s.user_properties),
        })
    }
}

// ------------------------------------------------------------------------------ UNSUBSCRIBE, UNSUBACK

impl From<codec::Unsubscribe> for v1::Unsubscribe {
    fn from(u: codec::Unsubscribe) -> Self {
        Self {
            packet_id: u.packet_id.into(),
            filters: u.filters,
            user_properties: user_to_proto(u.properties.user_properties),
        }
    }
}

impl TryFrom<v1::Unsubscribe> for codec::Unsubscribe {
    type Error = ConvertError;

    fn try_from(u: v1::Unsubscribe) -> Result<Self, ConvertError> {
        Ok(Self {
            packet_id: u16_of(u.packet_id).at(PacketType::Unsubscribe, "packet_id")?,
            filters: u.filters,
            properties: UnsubscribeProperties {
                user_properties: user_from_proto(u.user_properties),
            },
        })
    }
}

impl From<codec::UnsubAck> for v1::UnsubAck {
    fn from(u: codec::UnsubAck) -> Self {
        Self {
            packet_id: u.packet_id.into(),
            reason_codes: codes_to_proto(u.reason_codes),
            reason_string: u.properties.reason_string,
            user_properties: user_to_proto(u.properties.user_properties),
        }
    }
}

impl TryFrom<v1::UnsubAck> for codec::UnsubAck {
    type Error = ConvertError;

    fn try_from(u: v1::UnsubAck) -> Result<Self, ConvertError> {
        const P: PacketType = PacketType::UnsubAck;
        Ok(Self {
            packet_id: u16_of(u.packet_id).at(P, "packet_id")?,
            reason_codes: reason_codes(u.reason_codes, P)?,
            properties: ack_properties(u.reason_string, u.user_properties),
        })
    }
}

// ------------------------------------------------------------------------------ DISCONNECT, AUTH

impl From<codec::Disconnect> for v1::Disconnect {
    fn from(d: codec::Disconnect) -> Self {
        let p = d.properties;
        Self {
            reason_code: d.reason_code.0.into(),
            session_expiry_interval: p.session_expiry_interval,
            reason_string: p.reason_string,
            user_properties: user_to_proto(p.user_properties),
            server_reference: p.server_reference,
        }
    }
}

impl TryFrom<v1::Disconnect> for codec::Disconnect {
    type Error = ConvertError;

    fn try_from(d: v1::Disconnect) -> Result<Self, ConvertError> {
        const P: PacketType = PacketType::Disconnect;
        Ok(Self {
            reason_code: reason_code(d.reason_code, P).at(P, "reason_code")?,
            properties: DisconnectProperties {
                session_expiry_interval: d.session_expiry_interval,
                reason_string: d.reason_string,
                user_properties: user_from_proto(d.user_properties),
                server_reference: d.server_reference,
            },
        })
    }
}

impl From<codec::Auth> for v1::Auth {
    fn from(a: codec::Auth) -> Self {
        let p = a.properties;
        Self {
            reason_code: a.reason_code.0.into(),
            authentication_method: p.authentication_method,
            authentication_data: p.authentication_data,
            reason_string: p.reason_string,
            user_properties: user_to_proto(p.user_properties),
        }
    }
}

impl TryFrom<v1::Auth> for codec::Auth {
    type Error = ConvertError;

    fn try_from(a: v1::Auth) -> Result<Self, ConvertError> {
        const P: PacketType = PacketType::Auth;
        Ok(Self {
            reason_code: reason_code(a.reason_code, P).at(P, "reason_code")?,
            properties: AuthProperties {
                authentication_method: a.authentication_method,
                authentication_data: a.authentication_data,
                reason_string: a.reason_string,
                user_properties: user_from_proto(a.user_properties),
            },
        })
    }
}
