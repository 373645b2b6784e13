//! `proptest` strategies for valid packets, behind the `arbitrary` feature so
//! that other crates' tests (the relay's protobuf conversion, the proxies) can
//! generate the same packets the codec's own round-trip tests use.
//!
//! "Valid" means what [`crate::decode`] accepts and [`crate::encode`] writes
//! back identically: 3.1.1 packets keep every 5.0-only field at its default,
//! 5.0 packets carry arbitrary properties and the reason codes their packet
//! allows.

use bytes::Bytes;
use proptest::collection::vec;
use proptest::option;
use proptest::prelude::*;
use proptest::sample::select;

use crate::properties::*;
use crate::*;

/// A valid MQTT string: any chars but U+0000, ASCII more often.
fn string() -> impl Strategy<Value = String> {
    prop_oneof!["[a-z0-9]{0,6}", "[^\u{0}]{0,6}"]
}

fn topic_name() -> impl Strategy<Value = String> {
    prop_oneof!["[a-z/]{1,8}", "[^\u{0}+#]{1,8}"]
}

/// A valid topic filter: levels, `+`, an optional trailing `#`, optionally shared.
fn topic_filter() -> impl Strategy<Value = (String, bool)> {
    let level = prop_oneof![3 => "[^\u{0}+#/]{0,4}", 1 => Just("+".to_string())];
    (
        vec(level, 1..4),
        any::<bool>(),
        option::of("[^\u{0}+#/]{1,4}"),
    )
        .prop_map(|(levels, hash, share)| {
            let mut filter = levels.join("/");
            if hash {
                filter = if filter.is_empty() {
                    "#".into()
                } else {
                    filter + "/#"
                };
            }
            if filter.is_empty() {
                filter = "e".into();
            }
            match share {
                Some(group) => (format!("$share/{group}/{filter}"), true),
                None => (filter, false),
            }
        })
}

fn binary() -> impl Strategy<Value = Bytes> {
    vec(any::<u8>(), 0..12).prop_map(Bytes::from)
}

fn user_properties() -> impl Strategy<Value = UserProperties> {
    vec((string(), string()), 0..3)
}

fn qos() -> impl Strategy<Value = QoS> {
    select(vec![QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce])
}

fn packet_id() -> impl Strategy<Value = u16> {
    1..=u16::MAX
}

/// Reason codes `packet` allows in 5.0.
fn v5_codes(packet: PacketType) -> impl Strategy<Value = ReasonCode> {
    let codes: Vec<_> = (0..=255u8)
        .map(ReasonCode)
        .filter(|c| c.is_valid_for(packet))
        .collect();
    select(codes)
}

/// Only v5 generates properties; 3.1.1 packets carry the default (empty) ones.
fn props<T, S>(protocol: Protocol, strategy: S) -> BoxedStrategy<T>
where
    T: Default + Clone + std::fmt::Debug + 'static,
    S: Strategy<Value = T> + 'static,
{
    match protocol {
        Protocol::V5 => strategy.boxed(),
        Protocol::V311 => Just(T::default()).boxed(),
    }
}

/// Authentication method, and data only together with a method.
fn auth_pair() -> impl Strategy<Value = (Option<String>, Option<Bytes>)> {
    option::of((string(), option::of(binary())))
        .prop_map(|pair| pair.map_or((None, None), |(m, d)| (Some(m), d)))
}

fn publish_properties() -> impl Strategy<Value = PublishProperties> {
    (
        option::of(any::<bool>()),
        option::of(any::<u32>()),
        option::of(1..=u16::MAX),
        option::of(topic_name()),
        option::of(binary()),
        user_properties(),
        vec(1..=268_435_455u32, 0..3),
        option::of(string()),
    )
        .prop_map(
            |(pfi, expiry, alias, response, correlation, user, ids, ct)| PublishProperties {
                payload_format_indicator: pfi,
                message_expiry_interval: expiry,
                topic_alias: alias,
                response_topic: response,
                correlation_data: correlation,
                user_properties: user,
                subscription_identifiers: ids,
                content_type: ct,
            },
        )
}

fn will_properties() -> impl Strategy<Value = WillProperties> {
    (
        option::of(any::<u32>()),
        option::of(any::<bool>()),
        option::of(any::<u32>()),
        option::of(string()),
        option::of(topic_name()),
        option::of(binary()),
        user_properties(),
    )
        .prop_map(
            |(delay, pfi, expiry, ct, response, correlation, user)| WillProperties {
                will_delay_interval: delay,
                payload_format_indicator: pfi,
                message_expiry_interval: expiry,
                content_type: ct,
                response_topic: response,
                correlation_data: correlation,
                user_properties: user,
            },
        )
}

fn connect_properties() -> impl Strategy<Value = ConnectProperties> {
    (
        option::of(any::<u32>()),
        option::of(1..=u16::MAX),
        option::of(1..=u32::MAX),
        option::of(any::<u16>()),
        option::of(any::<bool>()),
        option::of(any::<bool>()),
        user_properties(),
        auth_pair(),
    )
        .prop_map(
            |(session, receive, max_size, alias_max, rri, rpi, user, (method, data))| {
                ConnectProperties {
                    session_expiry_interval: session,
                    receive_maximum: receive,
                    maximum_packet_size: max_size,
                    topic_alias_maximum: alias_max,
                    request_response_information: rri,
                    request_problem_information: rpi,
                    user_properties: user,
                    authentication_method: method,
                    authentication_data: data,
                }
            },
        )
}

fn connack_properties() -> impl Strategy<Value = ConnAckProperties> {
    let first = (
        option::of(any::<u32>()),
        option::of(1..=u16::MAX),
        option::of(select(vec![QoS::AtMostOnce, QoS::AtLeastOnce])),
        option::of(any::<bool>()),
        option::of(1..=u32::MAX),
        option::of(string()),
        option::of(any::<u16>()),
        option::of(string()),
    );
    let second = (
        user_properties(),
        option::of(any::<bool>()),
        option::of(any::<bool>()),
        option::of(any::<bool>()),
        option::of(any::<u16>()),
        option::of(string()),
        option::of(string()),
        auth_pair(),
    );
    (first, second).prop_map(
        |(
            (session, receive, max_qos, retain, max_size, assigned, alias_max, reason),
            (user, wildcard, sub_ids, shared, keep_alive, response, reference, (method, data)),
        )| ConnAckProperties {
            session_expiry_interval: session,
            receive_maximum: receive,
            maximum_qos: max_qos,
            retain_available: retain,
            maximum_packet_size: max_size,
            assigned_client_identifier: assigned,
            topic_alias_maximum: alias_max,
            reason_string: reason,
            user_properties: user,
            wildcard_subscription_available: wildcard,
            subscription_identifier_available: sub_ids,
            shared_subscription_available: shared,
            server_keep_alive: keep_alive,
            response_information: response,
            server_reference: reference,
            authentication_method: method,
            authentication_data: data,
        },
    )
}

fn ack_properties() -> impl Strategy<Value = AckProperties> {
    (option::of(string()), user_properties()).prop_map(|(reason, user)| AckProperties {
        reason_string: reason,
        user_properties: user,
    })
}

fn connect(protocol: Protocol) -> impl Strategy<Value = Connect> {
    let will = (
        topic_name(),
        binary(),
        qos(),
        any::<bool>(),
        props(protocol, will_properties()),
    )
        .prop_map(|(topic, payload, qos, retain, properties)| Will {
            topic,
            payload,
            qos,
            retain,
            properties,
        });
    (
        any::<bool>(),
        any::<u16>(),
        string(),
        option::of(will),
        option::of(string()),
        option::of(binary()),
        props(protocol, connect_properties()),
    )
        .prop_map(
            move |(
                clean_start,
                keep_alive,
                client_id,
                will,
                mut username,
                password,
                properties,
            )| {
                if protocol == Protocol::V311 && password.is_some() && username.is_none() {
                    username = Some(String::new());
                }
                Connect {
                    clean_start,
                    keep_alive,
                    client_id,
                    will,
                    username,
                    password,
                    properties,
                }
            },
        )
}

fn publish(protocol: Protocol) -> impl Strategy<Value = Publish> {
    let topic = match protocol {
        Protocol::V5 => prop_oneof![4 => topic_name(), 1 => Just(String::new())].boxed(),
        Protocol::V311 => topic_name().boxed(),
    };
    (
        any::<bool>(),
        qos(),
        any::<bool>(),
        topic,
        packet_id(),
        vec(any::<u8>(), 0..64).prop_map(Bytes::from),
        props(protocol, publish_properties()),
    )
        .prop_map(|(dup, qos, retain, topic, id, payload, mut properties)| {
            if topic.is_empty() && properties.topic_alias.is_none() {
                properties.topic_alias = Some(1);
            }
            let at_most_once = qos == QoS::AtMostOnce;
            Publish {
                dup: dup && !at_most_once,
                qos,
                retain,
                topic: topic.into(),
                packet_id: if at_most_once { 0 } else { id },
                payload,
                properties,
            }
        })
}

fn subscription(protocol: Protocol) -> impl Strategy<Value = Subscription> {
    let options = match protocol {
        Protocol::V5 => (
            qos(),
            any::<bool>(),
            any::<bool>(),
            select(vec![
                RetainHandling::SendAtSubscribe,
                RetainHandling::SendAtSubscribeIfNew,
                RetainHandling::DoNotSend,
            ]),
        )
            .prop_map(|(qos, no_local, rap, rh)| SubscriptionOptions {
                qos,
                no_local,
                retain_as_published: rap,
                retain_handling: rh,
            })
            .boxed(),
        Protocol::V311 => qos().prop_map(SubscriptionOptions::qos).boxed(),
    };
    (topic_filter(), options).prop_map(|((filter, shared), mut options)| {
        options.no_local &= !shared;
        Subscription { filter, options }
    })
}

/// Any valid packet for `protocol`.
pub fn packet(protocol: Protocol) -> BoxedStrategy<Packet> {
    let v5 = protocol == Protocol::V5;
    let pub_code = |packet| match protocol {
        Protocol::V5 => v5_codes(packet).boxed(),
        Protocol::V311 => Just(ReasonCode::SUCCESS).boxed(),
    };
    let pub_response = move |packet| {
        (
            packet_id(),
            pub_code(packet),
            props(protocol, ack_properties()),
        )
    };
    let connack_code = match protocol {
        Protocol::V5 => v5_codes(PacketType::ConnAck).boxed(),
        Protocol::V311 => select(
            (0..=5)
                .filter_map(ReasonCode::from_v311_connack)
                .collect::<Vec<_>>(),
        )
        .boxed(),
    };
    let suback_code = match protocol {
        Protocol::V5 => v5_codes(PacketType::SubAck).boxed(),
        Protocol::V311 => select(vec![
            ReasonCode::GRANTED_QOS_0,
            ReasonCode::GRANTED_QOS_1,
            ReasonCode::GRANTED_QOS_2,
            ReasonCode::UNSPECIFIED_ERROR,
        ])
        .boxed(),
    };
    let unsuback = if v5 {
        (
            packet_id(),
            vec(v5_codes(PacketType::UnsubAck), 1..4),
            ack_properties(),
        )
            .prop_map(|(packet_id, reason_codes, properties)| UnsubAck {
                packet_id,
                reason_codes,
                properties,
            })
            .boxed()
    } else {
        packet_id()
            .prop_map(|packet_id| UnsubAck {
                packet_id,
                ..Default::default()
            })
            .boxed()
    };
    let disconnect = if v5 {
        (
            v5_codes(PacketType::Disconnect),
            (
                option::of(any::<u32>()),
                option::of(string()),
                user_properties(),
                option::of(string()),
            ),
        )
            .prop_map(
                |(reason_code, (session, reason, user, reference))| Disconnect {
                    reason_code,
                    properties: DisconnectProperties {
                        session_expiry_interval: session,
                        reason_string: reason,
                        user_properties: user,
                        server_reference: reference,
                    },
                },
            )
            .boxed()
    } else {
        Just(Disconnect::default()).boxed()
    };

    let mut choices: Vec<BoxedStrategy<Packet>> = vec![
        connect(protocol).prop_map(Packet::Connect).boxed(),
        (
            any::<bool>(),
            connack_code,
            props(protocol, connack_properties()),
        )
            .prop_map(|(session_present, reason_code, properties)| {
                Packet::ConnAck(ConnAck {
                    session_present,
                    reason_code,
                    properties,
                })
            })
            .boxed(),
        publish(protocol).prop_map(Packet::Publish).boxed(),
        pub_response(PacketType::PubAck)
            .prop_map(|(packet_id, reason_code, properties)| {
                Packet::PubAck(PubAck {
                    packet_id,
                    reason_code,
                    properties,
                })
            })
            .boxed(),
        pub_response(PacketType::PubRec)
            .prop_map(|(packet_id, reason_code, properties)| {
                Packet::PubRec(PubRec {
                    packet_id,
                    reason_code,
                    properties,
                })
            })
            .boxed(),
        pub_response(PacketType::PubRel)
            .prop_map(|(packet_id, reason_code, properties)| {
                Packet::PubRel(PubRel {
                    packet_id,
                    reason_code,
                    properties,
                })
            })
            .boxed(),
        pub_response(PacketType::PubComp)
            .prop_map(|(packet_id, reason_code, properties)| {
                Packet::PubComp(PubComp {
                    packet_id,
                    reason_code,
                    properties,
                })
            })
            .boxed(),
        (
            packet_id(),
            vec(subscription(protocol), 1..4),
            props(
                protocol,
                (option::of(1..=268_435_455u32), user_properties()).prop_map(|(id, user)| {
                    SubscribeProperties {
                        subscription_identifier: id,
                        user_properties: user,
                    }
                }),
            ),
        )
            .prop_map(|(packet_id, subscriptions, properties)| {
                Packet::Subscribe(Subscribe {
                    packet_id,
                    subscriptions,
                    properties,
                })
            })
            .boxed(),
        (
            packet_id(),
            vec(suback_code, 1..4),
            props(protocol, ack_properties()),
        )
            .prop_map(|(packet_id, reason_codes, properties)| {
                Packet::SubAck(SubAck {
                    packet_id,
                    reason_codes,
                    properties,
                })
            })
            .boxed(),
        (
            packet_id(),
            vec(topic_filter().prop_map(|(f, _)| f), 1..4),
            props(
                protocol,
                user_properties()
                    .prop_map(|user_properties| UnsubscribeProperties { user_properties }),
            ),
        )
            .prop_map(|(packet_id, filters, properties)| {
                Packet::Unsubscribe(Unsubscribe {
                    packet_id,
                    filters,
                    properties,
                })
            })
            .boxed(),
        unsuback.prop_map(Packet::UnsubAck).boxed(),
        Just(Packet::PingReq).boxed(),
        Just(Packet::PingResp).boxed(),
        disconnect.prop_map(Packet::Disconnect).boxed(),
    ];
    if v5 {
        choices.push(
            (
                v5_codes(PacketType::Auth),
                auth_pair(),
                option::of(string()),
                user_properties(),
            )
                .prop_map(|(reason_code, (method, data), reason, user)| {
                    Packet::Auth(Auth {
                        reason_code,
                        properties: AuthProperties {
                            authentication_method: method,
                            authentication_data: data,
                            reason_string: reason,
                            user_properties: user,
                        },
                    })
                })
                .boxed(),
        );
    }
    proptest::strategy::Union::new(choices).boxed()
}

/// Either protocol version.
pub fn protocol() -> impl Strategy<Value = Protocol> {
    select(vec![Protocol::V311, Protocol::V5])
}

/// A protocol version and a valid packet for it.
pub fn protocol_and_packet() -> impl Strategy<Value = (Protocol, Packet)> {
    protocol().prop_flat_map(|p| (Just(p), packet(p)))
}
