//! PUBLISH and its acknowledgements (PUBACK, PUBREC, PUBREL, PUBCOMP): protobuf ↔ codec.

use super::*;

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
