//! CONNECT and CONNACK: protobuf ↔ codec.

use super::*;

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
