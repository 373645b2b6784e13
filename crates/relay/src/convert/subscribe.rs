//! SUBSCRIBE, SUBACK, UNSUBSCRIBE and UNSUBACK: protobuf ↔ codec.

use super::*;

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
