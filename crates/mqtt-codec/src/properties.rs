//! MQTT 5 properties (spec §2.2.2), one typed struct per packet.
//!
//! Each struct holds exactly the properties its packet allows. Decoding
//! rejects an unknown identifier ([`DecodeError::UnknownProperty`]), a defined
//! one the packet does not allow ([`DecodeError::PropertyNotAllowed`], both
//! Malformed Packet per §2.2.2.2), a second copy of a single-valued one
//! ([`DecodeError::DuplicateProperty`], Protocol Error) and out-of-range values
//! ([`DecodeError::InvalidPropertyValue`]). User properties keep their order
//! and may repeat. In 3.1.1 every struct stays at its `Default` (empty).
//!
//! One file on purpose (about 830 lines): the property table of §2.2.2.2 as code, one struct
//! per packet with its decoder and encoder side by side, checked against the spec as a whole.

use bytes::Bytes;

use crate::decode::Reader;
use crate::encode::{Sink, put_binary, put_string, put_varint};
use crate::{DecodeError, EncodeError, QoS, topic};

/// Property identifiers (spec §2.2.2.2, Table 2-4).
pub mod id {
    pub const PAYLOAD_FORMAT_INDICATOR: u8 = 0x01;
    pub const MESSAGE_EXPIRY_INTERVAL: u8 = 0x02;
    pub const CONTENT_TYPE: u8 = 0x03;
    pub const RESPONSE_TOPIC: u8 = 0x08;
    pub const CORRELATION_DATA: u8 = 0x09;
    pub const SUBSCRIPTION_IDENTIFIER: u8 = 0x0B;
    pub const SESSION_EXPIRY_INTERVAL: u8 = 0x11;
    pub const ASSIGNED_CLIENT_IDENTIFIER: u8 = 0x12;
    pub const SERVER_KEEP_ALIVE: u8 = 0x13;
    pub const AUTHENTICATION_METHOD: u8 = 0x15;
    pub const AUTHENTICATION_DATA: u8 = 0x16;
    pub const REQUEST_PROBLEM_INFORMATION: u8 = 0x17;
    pub const WILL_DELAY_INTERVAL: u8 = 0x18;
    pub const REQUEST_RESPONSE_INFORMATION: u8 = 0x19;
    pub const RESPONSE_INFORMATION: u8 = 0x1A;
    pub const SERVER_REFERENCE: u8 = 0x1C;
    pub const REASON_STRING: u8 = 0x1F;
    pub const RECEIVE_MAXIMUM: u8 = 0x21;
    pub const TOPIC_ALIAS_MAXIMUM: u8 = 0x22;
    pub const TOPIC_ALIAS: u8 = 0x23;
    pub const MAXIMUM_QOS: u8 = 0x24;
    pub const RETAIN_AVAILABLE: u8 = 0x25;
    pub const USER_PROPERTY: u8 = 0x26;
    pub const MAXIMUM_PACKET_SIZE: u8 = 0x27;
    pub const WILDCARD_SUBSCRIPTION_AVAILABLE: u8 = 0x28;
    pub const SUBSCRIPTION_IDENTIFIER_AVAILABLE: u8 = 0x29;
    pub const SHARED_SUBSCRIPTION_AVAILABLE: u8 = 0x2A;
}

use id::*;

/// Ordered, possibly repeated name/value pairs (property 0x26).
pub type UserProperties = Vec<(String, String)>;

/// Properties of PUBLISH (spec §3.3.2.3).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PublishProperties {
    /// 0x01: `Some(true)` = UTF-8 payload (1), `Some(false)` = unspecified bytes (0).
    /// The codec does not check the payload against it.
    pub payload_format_indicator: Option<bool>,
    /// 0x02, seconds.
    pub message_expiry_interval: Option<u32>,
    /// 0x23, non-zero.
    pub topic_alias: Option<u16>,
    /// 0x08, a topic name.
    pub response_topic: Option<String>,
    /// 0x09.
    pub correlation_data: Option<Bytes>,
    /// 0x26.
    pub user_properties: UserProperties,
    /// 0x0B, may repeat (server to client only), each 1..=268,435,455.
    pub subscription_identifiers: Vec<u32>,
    /// 0x03.
    pub content_type: Option<String>,
}

/// Properties of the will in CONNECT (spec §3.1.3.2).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct WillProperties {
    /// 0x18, seconds.
    pub will_delay_interval: Option<u32>,
    /// 0x01, see [`PublishProperties::payload_format_indicator`].
    pub payload_format_indicator: Option<bool>,
    /// 0x02, seconds.
    pub message_expiry_interval: Option<u32>,
    /// 0x03.
    pub content_type: Option<String>,
    /// 0x08, a topic name.
    pub response_topic: Option<String>,
    /// 0x09.
    pub correlation_data: Option<Bytes>,
    /// 0x26.
    pub user_properties: UserProperties,
}

/// Properties of CONNECT (spec §3.1.2.11).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ConnectProperties {
    /// 0x11, seconds.
    pub session_expiry_interval: Option<u32>,
    /// 0x21, non-zero.
    pub receive_maximum: Option<u16>,
    /// 0x27, non-zero.
    pub maximum_packet_size: Option<u32>,
    /// 0x22.
    pub topic_alias_maximum: Option<u16>,
    /// 0x19.
    pub request_response_information: Option<bool>,
    /// 0x17.
    pub request_problem_information: Option<bool>,
    /// 0x26.
    pub user_properties: UserProperties,
    /// 0x15.
    pub authentication_method: Option<String>,
    /// 0x16, only together with `authentication_method`.
    pub authentication_data: Option<Bytes>,
}

/// Properties of CONNACK (spec §3.2.2.3).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ConnAckProperties {
    /// 0x11, seconds.
    pub session_expiry_interval: Option<u32>,
    /// 0x21, non-zero.
    pub receive_maximum: Option<u16>,
    /// 0x24, 0 or 1 (absent means 2).
    pub maximum_qos: Option<QoS>,
    /// 0x25.
    pub retain_available: Option<bool>,
    /// 0x27, non-zero.
    pub maximum_packet_size: Option<u32>,
    /// 0x12.
    pub assigned_client_identifier: Option<String>,
    /// 0x22.
    pub topic_alias_maximum: Option<u16>,
    /// 0x1F.
    pub reason_string: Option<String>,
    /// 0x26.
    pub user_properties: UserProperties,
    /// 0x28.
    pub wildcard_subscription_available: Option<bool>,
    /// 0x29.
    pub subscription_identifier_available: Option<bool>,
    /// 0x2A.
    pub shared_subscription_available: Option<bool>,
    /// 0x13, seconds.
    pub server_keep_alive: Option<u16>,
    /// 0x1A.
    pub response_information: Option<String>,
    /// 0x1C.
    pub server_reference: Option<String>,
    /// 0x15.
    pub authentication_method: Option<String>,
    /// 0x16, only together with `authentication_method`.
    pub authentication_data: Option<Bytes>,
}

/// Properties of PUBACK, PUBREC, PUBREL, PUBCOMP, SUBACK and UNSUBACK,
/// which all allow the same two.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AckProperties {
    /// 0x1F.
    pub reason_string: Option<String>,
    /// 0x26.
    pub user_properties: UserProperties,
}

/// Properties of SUBSCRIBE (spec §3.8.2.1).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SubscribeProperties {
    /// 0x0B, 1..=268,435,455.
    pub subscription_identifier: Option<u32>,
    /// 0x26.
    pub user_properties: UserProperties,
}

/// Properties of UNSUBSCRIBE (spec §3.10.2.1).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct UnsubscribeProperties {
    /// 0x26.
    pub user_properties: UserProperties,
}

/// Properties of DISCONNECT (spec §3.14.2.2).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct DisconnectProperties {
    /// 0x11, seconds.
    pub session_expiry_interval: Option<u32>,
    /// 0x1F.
    pub reason_string: Option<String>,
    /// 0x26.
    pub user_properties: UserProperties,
    /// 0x1C.
    pub server_reference: Option<String>,
}

/// Properties of AUTH (spec §3.15.2.2).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AuthProperties {
    /// 0x15.
    pub authentication_method: Option<String>,
    /// 0x16, only together with `authentication_method`.
    pub authentication_data: Option<Bytes>,
    /// 0x1F.
    pub reason_string: Option<String>,
    /// 0x26.
    pub user_properties: UserProperties,
}

// ---------------------------------------------------------------------------
// Decoding and encoding machinery shared by the structs above.

const fn bit(id: u8) -> u64 {
    1 << id
}

const fn mask(ids: &[u8]) -> u64 {
    let mut m = 0;
    let mut i = 0;
    while i < ids.len() {
        m |= bit(ids[i]);
        i += 1;
    }
    m
}

const KNOWN: u64 = mask(&[
    PAYLOAD_FORMAT_INDICATOR,
    MESSAGE_EXPIRY_INTERVAL,
    CONTENT_TYPE,
    RESPONSE_TOPIC,
    CORRELATION_DATA,
    SUBSCRIPTION_IDENTIFIER,
    SESSION_EXPIRY_INTERVAL,
    ASSIGNED_CLIENT_IDENTIFIER,
    SERVER_KEEP_ALIVE,
    AUTHENTICATION_METHOD,
    AUTHENTICATION_DATA,
    REQUEST_PROBLEM_INFORMATION,
    WILL_DELAY_INTERVAL,
    REQUEST_RESPONSE_INFORMATION,
    RESPONSE_INFORMATION,
    SERVER_REFERENCE,
    REASON_STRING,
    RECEIVE_MAXIMUM,
    TOPIC_ALIAS_MAXIMUM,
    TOPIC_ALIAS,
    MAXIMUM_QOS,
    RETAIN_AVAILABLE,
    USER_PROPERTY,
    MAXIMUM_PACKET_SIZE,
    WILDCARD_SUBSCRIPTION_AVAILABLE,
    SUBSCRIPTION_IDENTIFIER_AVAILABLE,
    SHARED_SUBSCRIPTION_AVAILABLE,
]);

/// A packet's property struct: which identifiers it allows, how to read one
/// value into it, and how to write it.
pub(crate) trait PropertySet: Default {
    /// Identifiers allowed in this packet.
    const ALLOWED: u64;
    /// Identifiers that may appear more than once.
    const REPEATABLE: u64 = bit(USER_PROPERTY);

    /// Reads the value of property `id` (already checked against `ALLOWED`
    /// and for duplicates) and stores it.
    fn read(&mut self, id: u8, r: &mut Reader) -> Result<(), DecodeError>;

    /// Checks rules that involve several properties.
    fn check(&self) -> Result<(), DecodeError> {
        Ok(())
    }

    /// Writes every present property (identifier and value), in field order.
    fn write<S: Sink>(&self, s: &mut S) -> Result<(), EncodeError>;

    /// Whether no property is present (the block would be empty).
    fn is_empty(&self) -> bool {
        let mut len = 0usize;
        // Writing into a counter only fails on oversized values, which are not empty.
        self.write(&mut len).is_ok() && len == 0
    }
}

/// Reads a property block (length, then properties) for `packet`.
pub(crate) fn decode<P: PropertySet>(
    r: &mut Reader,
    packet: &'static str,
) -> Result<P, DecodeError> {
    let len = r.varint()? as usize;
    let mut props = P::default();
    if len == 0 {
        return Ok(props);
    }
    let mut block = r.sub(len)?;
    let mut seen = 0u64;
    while !block.is_empty() {
        let raw = block.varint()?;
        let id = match u8::try_from(raw) {
            Ok(id) if id < 64 && KNOWN & bit(id) != 0 => id,
            _ => return Err(DecodeError::UnknownProperty(raw)),
        };
        if P::ALLOWED & bit(id) == 0 {
            return Err(DecodeError::PropertyNotAllowed {
                property: id,
                packet,
            });
        }
        if seen & bit(id) != 0 && P::REPEATABLE & bit(id) == 0 {
            return Err(DecodeError::DuplicateProperty(id));
        }
        seen |= bit(id);
        props.read(id, &mut block)?;
    }
    props.check()?;
    Ok(props)
}

/// Writes a property block (length, then properties).
pub(crate) fn encode<P: PropertySet, S: Sink>(props: &P, s: &mut S) -> Result<(), EncodeError> {
    let mut len = 0usize;
    props.write(&mut len)?;
    put_varint(s, len)?;
    props.write(s)
}

fn read_bool(r: &mut Reader, id: u8) -> Result<bool, DecodeError> {
    match r.u8()? {
        0 => Ok(false),
        1 => Ok(true),
        v => Err(DecodeError::InvalidPropertyValue {
            property: id,
            value: v.into(),
        }),
    }
}

fn read_nonzero_u16(r: &mut Reader, id: u8) -> Result<u16, DecodeError> {
    match r.u16()? {
        0 => Err(DecodeError::InvalidPropertyValue {
            property: id,
            value: 0,
        }),
        v => Ok(v),
    }
}

fn read_nonzero_u32(r: &mut Reader, id: u8) -> Result<u32, DecodeError> {
    match r.u32()? {
        0 => Err(DecodeError::InvalidPropertyValue {
            property: id,
            value: 0,
        }),
        v => Ok(v),
    }
}

fn read_subscription_identifier(r: &mut Reader) -> Result<u32, DecodeError> {
    match r.varint()? {
        0 => Err(DecodeError::InvalidPropertyValue {
            property: SUBSCRIPTION_IDENTIFIER,
            value: 0,
        }),
        v => Ok(v),
    }
}

fn read_response_topic(r: &mut Reader) -> Result<String, DecodeError> {
    let topic = r.string()?;
    topic::validate_name(&topic).map_err(DecodeError::InvalidTopicName)?;
    Ok(topic)
}

fn read_user_property(r: &mut Reader) -> Result<(String, String), DecodeError> {
    Ok((r.string()?, r.string()?))
}

fn check_auth(method: &Option<String>, data: &Option<Bytes>) -> Result<(), DecodeError> {
    if data.is_some() && method.is_none() {
        return Err(DecodeError::AuthDataWithoutMethod);
    }
    Ok(())
}

fn put_u8_prop<S: Sink>(s: &mut S, id: u8, v: Option<u8>) {
    if let Some(v) = v {
        s.put_u8(id);
        s.put_u8(v);
    }
}

fn put_bool_prop<S: Sink>(s: &mut S, id: u8, v: Option<bool>) {
    put_u8_prop(s, id, v.map(u8::from));
}

fn put_u16_prop<S: Sink>(s: &mut S, id: u8, v: Option<u16>) {
    if let Some(v) = v {
        s.put_u8(id);
        s.put_u16(v);
    }
}

fn put_u32_prop<S: Sink>(s: &mut S, id: u8, v: Option<u32>) {
    if let Some(v) = v {
        s.put_u8(id);
        s.put_u32(v);
    }
}

fn put_string_prop<S: Sink>(s: &mut S, id: u8, v: &Option<String>) -> Result<(), EncodeError> {
    if let Some(v) = v {
        s.put_u8(id);
        put_string(s, v)?;
    }
    Ok(())
}

fn put_binary_prop<S: Sink>(s: &mut S, id: u8, v: &Option<Bytes>) -> Result<(), EncodeError> {
    if let Some(v) = v {
        s.put_u8(id);
        put_binary(s, v)?;
    }
    Ok(())
}

fn put_user_properties<S: Sink>(s: &mut S, v: &UserProperties) -> Result<(), EncodeError> {
    for (name, value) in v {
        s.put_u8(USER_PROPERTY);
        put_string(s, name)?;
        put_string(s, value)?;
    }
    Ok(())
}

fn put_subscription_identifier<S: Sink>(s: &mut S, v: u32) -> Result<(), EncodeError> {
    if v as usize > crate::MAX_REMAINING_LENGTH {
        return Err(EncodeError::VarIntTooLarge(v));
    }
    s.put_u8(SUBSCRIPTION_IDENTIFIER);
    put_varint(s, v as usize)
}

impl PropertySet for PublishProperties {
    const ALLOWED: u64 = mask(&[
        PAYLOAD_FORMAT_INDICATOR,
        MESSAGE_EXPIRY_INTERVAL,
        TOPIC_ALIAS,
        RESPONSE_TOPIC,
        CORRELATION_DATA,
        USER_PROPERTY,
        SUBSCRIPTION_IDENTIFIER,
        CONTENT_TYPE,
    ]);
    const REPEATABLE: u64 = mask(&[USER_PROPERTY, SUBSCRIPTION_IDENTIFIER]);

    fn read(&mut self, id: u8, r: &mut Reader) -> Result<(), DecodeError> {
        match id {
            PAYLOAD_FORMAT_INDICATOR => self.payload_format_indicator = Some(read_bool(r, id)?),
            MESSAGE_EXPIRY_INTERVAL => self.message_expiry_interval = Some(r.u32()?),
            TOPIC_ALIAS => self.topic_alias = Some(read_nonzero_u16(r, id)?),
            RESPONSE_TOPIC => self.response_topic = Some(read_response_topic(r)?),
            CORRELATION_DATA => self.correlation_data = Some(r.binary()?),
            USER_PROPERTY => self.user_properties.push(read_user_property(r)?),
            SUBSCRIPTION_IDENTIFIER => self
                .subscription_identifiers
                .push(read_subscription_identifier(r)?),
            CONTENT_TYPE => self.content_type = Some(r.string()?),
            _ => return Err(DecodeError::UnknownProperty(id.into())),
        }
        Ok(())
    }

    fn write<S: Sink>(&self, s: &mut S) -> Result<(), EncodeError> {
        put_bool_prop(s, PAYLOAD_FORMAT_INDICATOR, self.payload_format_indicator);
        put_u32_prop(s, MESSAGE_EXPIRY_INTERVAL, self.message_expiry_interval);
        put_u16_prop(s, TOPIC_ALIAS, self.topic_alias);
        put_string_prop(s, RESPONSE_TOPIC, &self.response_topic)?;
        put_binary_prop(s, CORRELATION_DATA, &self.correlation_data)?;
        put_user_properties(s, &self.user_properties)?;
        for &v in &self.subscription_identifiers {
            put_subscription_identifier(s, v)?;
        }
        put_string_prop(s, CONTENT_TYPE, &self.content_type)
    }
}

impl PropertySet for WillProperties {
    const ALLOWED: u64 = mask(&[
        WILL_DELAY_INTERVAL,
        PAYLOAD_FORMAT_INDICATOR,
        MESSAGE_EXPIRY_INTERVAL,
        CONTENT_TYPE,
        RESPONSE_TOPIC,
        CORRELATION_DATA,
        USER_PROPERTY,
    ]);

    fn read(&mut self, id: u8, r: &mut Reader) -> Result<(), DecodeError> {
        match id {
            WILL_DELAY_INTERVAL => self.will_delay_interval = Some(r.u32()?),
            PAYLOAD_FORMAT_INDICATOR => self.payload_format_indicator = Some(read_bool(r, id)?),
            MESSAGE_EXPIRY_INTERVAL => self.message_expiry_interval = Some(r.u32()?),
            CONTENT_TYPE => self.content_type = Some(r.string()?),
            RESPONSE_TOPIC => self.response_topic = Some(read_response_topic(r)?),
            CORRELATION_DATA => self.correlation_data = Some(r.binary()?),
            USER_PROPERTY => self.user_properties.push(read_user_property(r)?),
            _ => return Err(DecodeError::UnknownProperty(id.into())),
        }
        Ok(())
    }

    fn write<S: Sink>(&self, s: &mut S) -> Result<(), EncodeError> {
        put_u32_prop(s, WILL_DELAY_INTERVAL, self.will_delay_interval);
        put_bool_prop(s, PAYLOAD_FORMAT_INDICATOR, self.payload_format_indicator);
        put_u32_prop(s, MESSAGE_EXPIRY_INTERVAL, self.message_expiry_interval);
        put_string_prop(s, CONTENT_TYPE, &self.content_type)?;
        put_string_prop(s, RESPONSE_TOPIC, &self.response_topic)?;
        put_binary_prop(s, CORRELATION_DATA, &self.correlation_data)?;
        put_user_properties(s, &self.user_properties)
    }
}

impl PropertySet for ConnectProperties {
    const ALLOWED: u64 = mask(&[
        SESSION_EXPIRY_INTERVAL,
        RECEIVE_MAXIMUM,
        MAXIMUM_PACKET_SIZE,
        TOPIC_ALIAS_MAXIMUM,
        REQUEST_RESPONSE_INFORMATION,
        REQUEST_PROBLEM_INFORMATION,
        USER_PROPERTY,
        AUTHENTICATION_METHOD,
        AUTHENTICATION_DATA,
    ]);

    fn read(&mut self, id: u8, r: &mut Reader) -> Result<(), DecodeError> {
        match id {
            SESSION_EXPIRY_INTERVAL => self.session_expiry_interval = Some(r.u32()?),
            RECEIVE_MAXIMUM => self.receive_maximum = Some(read_nonzero_u16(r, id)?),
            MAXIMUM_PACKET_SIZE => self.maximum_packet_size = Some(read_nonzero_u32(r, id)?),
            TOPIC_ALIAS_MAXIMUM => self.topic_alias_maximum = Some(r.u16()?),
            REQUEST_RESPONSE_INFORMATION => {
                self.request_response_information = Some(read_bool(r, id)?)
            }
            REQUEST_PROBLEM_INFORMATION => {
                self.request_problem_information = Some(read_bool(r, id)?)
            }
            USER_PROPERTY => self.user_properties.push(read_user_property(r)?),
            AUTHENTICATION_METHOD => self.authentication_method = Some(r.string()?),
            AUTHENTICATION_DATA => self.authentication_data = Some(r.binary()?),
            _ => return Err(DecodeError::UnknownProperty(id.into())),
        }
        Ok(())
    }

    fn check(&self) -> Result<(), DecodeError> {
        check_auth(&self.authentication_method, &self.authentication_data)
    }

    fn write<S: Sink>(&self, s: &mut S) -> Result<(), EncodeError> {
        put_u32_prop(s, SESSION_EXPIRY_INTERVAL, self.session_expiry_interval);
        put_u16_prop(s, RECEIVE_MAXIMUM, self.receive_maximum);
        put_u32_prop(s, MAXIMUM_PACKET_SIZE, self.maximum_packet_size);
        put_u16_prop(s, TOPIC_ALIAS_MAXIMUM, self.topic_alias_maximum);
        put_bool_prop(
            s,
            REQUEST_RESPONSE_INFORMATION,
            self.request_response_information,
        );
        put_bool_prop(
            s,
            REQUEST_PROBLEM_INFORMATION,
            self.request_problem_information,
        );
        put_user_properties(s, &self.user_properties)?;
        put_string_prop(s, AUTHENTICATION_METHOD, &self.authentication_method)?;
        put_binary_prop(s, AUTHENTICATION_DATA, &self.authentication_data)
    }
}

impl PropertySet for ConnAckProperties {
    const ALLOWED: u64 = mask(&[
        SESSION_EXPIRY_INTERVAL,
        RECEIVE_MAXIMUM,
        MAXIMUM_QOS,
        RETAIN_AVAILABLE,
        MAXIMUM_PACKET_SIZE,
        ASSIGNED_CLIENT_IDENTIFIER,
        TOPIC_ALIAS_MAXIMUM,
        REASON_STRING,
        USER_PROPERTY,
        WILDCARD_SUBSCRIPTION_AVAILABLE,
        SUBSCRIPTION_IDENTIFIER_AVAILABLE,
        SHARED_SUBSCRIPTION_AVAILABLE,
        SERVER_KEEP_ALIVE,
        RESPONSE_INFORMATION,
        SERVER_REFERENCE,
        AUTHENTICATION_METHOD,
        AUTHENTICATION_DATA,
    ]);

    fn read(&mut self, id: u8, r: &mut Reader) -> Result<(), DecodeError> {
        match id {
            SESSION_EXPIRY_INTERVAL => self.session_expiry_interval = Some(r.u32()?),
            RECEIVE_MAXIMUM => self.receive_maximum = Some(read_nonzero_u16(r, id)?),
            MAXIMUM_QOS => {
                self.maximum_qos = Some(match r.u8()? {
                    0 => QoS::AtMostOnce,
                    1 => QoS::AtLeastOnce,
                    v => {
                        return Err(DecodeError::InvalidPropertyValue {
                            property: id,
                            value: v.into(),
                        });
                    }
                })
            }
            RETAIN_AVAILABLE => self.retain_available = Some(read_bool(r, id)?),
            MAXIMUM_PACKET_SIZE => self.maximum_packet_size = Some(read_nonzero_u32(r, id)?),
            ASSIGNED_CLIENT_IDENTIFIER => self.assigned_client_identifier = Some(r.string()?),
            TOPIC_ALIAS_MAXIMUM => self.topic_alias_maximum = Some(r.u16()?),
            REASON_STRING => self.reason_string = Some(r.string()?),
            USER_PROPERTY => self.user_properties.push(read_user_property(r)?),
            WILDCARD_SUBSCRIPTION_AVAILABLE => {
                self.wildcard_subscription_available = Some(read_bool(r, id)?)
            }
            SUBSCRIPTION_IDENTIFIER_AVAILABLE => {
                self.subscription_identifier_available = Some(read_bool(r, id)?)
            }
            SHARED_SUBSCRIPTION_AVAILABLE => {
                self.shared_subscription_available = Some(read_bool(r, id)?)
            }
            SERVER_KEEP_ALIVE => self.server_keep_alive = Some(r.u16()?),
            RESPONSE_INFORMATION => self.response_information = Some(r.string()?),
            SERVER_REFERENCE => self.server_reference = Some(r.string()?),
            AUTHENTICATION_METHOD => self.authentication_method = Some(r.string()?),
            AUTHENTICATION_DATA => self.authentication_data = Some(r.binary()?),
            _ => return Err(DecodeError::UnknownProperty(id.into())),
        }
        Ok(())
    }

    fn check(&self) -> Result<(), DecodeError> {
        check_auth(&self.authentication_method, &self.authentication_data)
    }

    fn write<S: Sink>(&self, s: &mut S) -> Result<(), EncodeError> {
        put_u32_prop(s, SESSION_EXPIRY_INTERVAL, self.session_expiry_interval);
        put_u16_prop(s, RECEIVE_MAXIMUM, self.receive_maximum);
        put_u8_prop(s, MAXIMUM_QOS, self.maximum_qos.map(|q| q as u8));
        put_bool_prop(s, RETAIN_AVAILABLE, self.retain_available);
        put_u32_prop(s, MAXIMUM_PACKET_SIZE, self.maximum_packet_size);
        put_string_prop(
            s,
            ASSIGNED_CLIENT_IDENTIFIER,
            &self.assigned_client_identifier,
        )?;
        put_u16_prop(s, TOPIC_ALIAS_MAXIMUM, self.topic_alias_maximum);
        put_string_prop(s, REASON_STRING, &self.reason_string)?;
        put_user_properties(s, &self.user_properties)?;
        put_bool_prop(
            s,
            WILDCARD_SUBSCRIPTION_AVAILABLE,
            self.wildcard_subscription_available,
        );
        put_bool_prop(
            s,
            SUBSCRIPTION_IDENTIFIER_AVAILABLE,
            self.subscription_identifier_available,
        );
        put_bool_prop(
            s,
            SHARED_SUBSCRIPTION_AVAILABLE,
            self.shared_subscription_available,
        );
        put_u16_prop(s, SERVER_KEEP_ALIVE, self.server_keep_alive);
        put_string_prop(s, RESPONSE_INFORMATION, &self.response_information)?;
        put_string_prop(s, SERVER_REFERENCE, &self.server_reference)?;
        put_string_prop(s, AUTHENTICATION_METHOD, &self.authentication_method)?;
        put_binary_prop(s, AUTHENTICATION_DATA, &self.authentication_data)
    }
}

impl PropertySet for AckProperties {
    const ALLOWED: u64 = mask(&[REASON_STRING, USER_PROPERTY]);

    fn read(&mut self, id: u8, r: &mut Reader) -> Result<(), DecodeError> {
        match id {
            REASON_STRING => self.reason_string = Some(r.string()?),
            USER_PROPERTY => self.user_properties.push(read_user_property(r)?),
            _ => return Err(DecodeError::UnknownProperty(id.into())),
        }
        Ok(())
    }

    fn write<S: Sink>(&self, s: &mut S) -> Result<(), EncodeError> {
        put_string_prop(s, REASON_STRING, &self.reason_string)?;
        put_user_properties(s, &self.user_properties)
    }

    fn is_empty(&self) -> bool {
        self.reason_string.is_none() && self.user_properties.is_empty()
    }
}

impl PropertySet for SubscribeProperties {
    const ALLOWED: u64 = mask(&[SUBSCRIPTION_IDENTIFIER, USER_PROPERTY]);

    fn read(&mut self, id: u8, r: &mut Reader) -> Result<(), DecodeError> {
        match id {
            SUBSCRIPTION_IDENTIFIER => {
                self.subscription_identifier = Some(read_subscription_identifier(r)?)
            }
            USER_PROPERTY => self.user_properties.push(read_user_property(r)?),
            _ => return Err(DecodeError::UnknownProperty(id.into())),
        }
        Ok(())
    }

    fn write<S: Sink>(&self, s: &mut S) -> Result<(), EncodeError> {
        if let Some(v) = self.subscription_identifier {
            put_subscription_identifier(s, v)?;
        }
        put_user_properties(s, &self.user_properties)
    }
}

impl PropertySet for UnsubscribeProperties {
    const ALLOWED: u64 = mask(&[USER_PROPERTY]);

    fn read(&mut self, id: u8, r: &mut Reader) -> Result<(), DecodeError> {
        match id {
            USER_PROPERTY => self.user_properties.push(read_user_property(r)?),
            _ => return Err(DecodeError::UnknownProperty(id.into())),
        }
        Ok(())
    }

    fn write<S: Sink>(&self, s: &mut S) -> Result<(), EncodeError> {
        put_user_properties(s, &self.user_properties)
    }
}

impl PropertySet for DisconnectProperties {
    const ALLOWED: u64 = mask(&[
        SESSION_EXPIRY_INTERVAL,
        REASON_STRING,
        USER_PROPERTY,
        SERVER_REFERENCE,
    ]);

    fn read(&mut self, id: u8, r: &mut Reader) -> Result<(), DecodeError> {
        match id {
            SESSION_EXPIRY_INTERVAL => self.session_expiry_interval = Some(r.u32()?),
            REASON_STRING => self.reason_string = Some(r.string()?),
            USER_PROPERTY => self.user_properties.push(read_user_property(r)?),
            SERVER_REFERENCE => self.server_reference = Some(r.string()?),
            _ => return Err(DecodeError::UnknownProperty(id.into())),
        }
        Ok(())
    }

    fn write<S: Sink>(&self, s: &mut S) -> Result<(), EncodeError> {
        put_u32_prop(s, SESSION_EXPIRY_INTERVAL, self.session_expiry_interval);
        put_string_prop(s, REASON_STRING, &self.reason_string)?;
        put_user_properties(s, &self.user_properties)?;
        put_string_prop(s, SERVER_REFERENCE, &self.server_reference)
    }
}

impl PropertySet for AuthProperties {
    const ALLOWED: u64 = mask(&[
        AUTHENTICATION_METHOD,
        AUTHENTICATION_DATA,
        REASON_STRING,
        USER_PROPERTY,
    ]);

    fn read(&mut self, id: u8, r: &mut Reader) -> Result<(), DecodeError> {
        match id {
            AUTHENTICATION_METHOD => self.authentication_method = Some(r.string()?),
            AUTHENTICATION_DATA => self.authentication_data = Some(r.binary()?),
            REASON_STRING => self.reason_string = Some(r.string()?),
            USER_PROPERTY => self.user_properties.push(read_user_property(r)?),
            _ => return Err(DecodeError::UnknownProperty(id.into())),
        }
        Ok(())
    }

    fn check(&self) -> Result<(), DecodeError> {
        check_auth(&self.authentication_method, &self.authentication_data)
    }

    fn write<S: Sink>(&self, s: &mut S) -> Result<(), EncodeError> {
        put_string_prop(s, AUTHENTICATION_METHOD, &self.authentication_method)?;
        put_binary_prop(s, AUTHENTICATION_DATA, &self.authentication_data)?;
        put_string_prop(s, REASON_STRING, &self.reason_string)?;
        put_user_properties(s, &self.user_properties)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_ids_are_exactly_the_spec_table() {
        let ids: Vec<u8> = (0..64).filter(|&i| KNOWN & bit(i) != 0).collect();
        assert_eq!(
            ids,
            [
                0x01, 0x02, 0x03, 0x08, 0x09, 0x0B, 0x11, 0x12, 0x13, 0x15, 0x16, 0x17, 0x18, 0x19,
                0x1A, 0x1C, 0x1F, 0x21, 0x22, 0x23, 0x24, 0x25, 0x26, 0x27, 0x28, 0x29, 0x2A
            ]
        );
    }

    #[test]
    fn every_known_id_is_allowed_somewhere() {
        let all = PublishProperties::ALLOWED
            | WillProperties::ALLOWED
            | ConnectProperties::ALLOWED
            | ConnAckProperties::ALLOWED
            | AckProperties::ALLOWED
            | SubscribeProperties::ALLOWED
            | UnsubscribeProperties::ALLOWED
            | DisconnectProperties::ALLOWED
            | AuthProperties::ALLOWED;
        assert_eq!(all, KNOWN);
    }
}
