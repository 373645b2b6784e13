//! The Mosquitto of the test services: QoS 1 publish/subscribe with real MQTT 3.1.1 and 5 clients.

use std::time::Duration;

use strait_e2e::{require, unique_name};

fn host_port(broker: &str) -> (String, u16) {
    let (host, port) = broker.rsplit_once(':').expect("MQTT_BROKER is host:port");
    (host.to_string(), port.parse().expect("numeric port"))
}

#[tokio::test]
async fn qos1_publish_subscribe_mqtt311() {
    use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

    let broker = require!("MQTT_BROKER", "mosquitto");
    let (host, port) = host_port(&broker);
    let topic = format!("e2e/{}/temp", unique_name("v3"));

    let (subscriber, mut sub_loop) =
        AsyncClient::new(MqttOptions::new(unique_name("sub"), &host, port), 16);
    subscriber
        .subscribe(&topic, QoS::AtLeastOnce)
        .await
        .unwrap();
    // Publish only once the broker has acknowledged the subscription.
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let Event::Incoming(Packet::SubAck(ack)) = sub_loop.poll().await.expect("sub loop") {
                assert_eq!(
                    ack.return_codes,
                    [rumqttc::SubscribeReasonCode::Success(QoS::AtLeastOnce)]
                );
                break;
            }
        }
    })
    .await
    .expect("SUBACK within 10 s");

    let (publisher, mut pub_loop) =
        AsyncClient::new(MqttOptions::new(unique_name("pub"), &host, port), 16);
    publisher
        .publish(&topic, QoS::AtLeastOnce, false, b"21.5".to_vec())
        .await
        .unwrap();
    let puback = tokio::spawn(async move {
        loop {
            if let Event::Incoming(Packet::PubAck(_)) = pub_loop.poll().await.expect("pub loop") {
                return;
            }
        }
    });

    let received = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let Event::Incoming(Packet::Publish(p)) = sub_loop.poll().await.expect("sub loop") {
                return p;
            }
        }
    })
    .await
    .expect("message delivered within 10 s");
    assert_eq!(received.topic, topic);
    assert_eq!(&received.payload[..], b"21.5");
    assert_eq!(received.qos, QoS::AtLeastOnce);
    tokio::time::timeout(Duration::from_secs(10), puback)
        .await
        .expect("PUBACK within 10 s")
        .unwrap();
}

#[tokio::test]
async fn qos1_publish_subscribe_mqtt5_keeps_user_properties() {
    use rumqttc::v5::mqttbytes::QoS;
    use rumqttc::v5::mqttbytes::v5::{Packet, PublishProperties};
    use rumqttc::v5::{AsyncClient, Event, MqttOptions};

    let broker = require!("MQTT_BROKER", "mosquitto");
    let (host, port) = host_port(&broker);
    let topic = format!("e2e/{}/temp", unique_name("v5"));

    let (subscriber, mut sub_loop) =
        AsyncClient::new(MqttOptions::new(unique_name("sub5"), &host, port), 16);
    subscriber
        .subscribe(&topic, QoS::AtLeastOnce)
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let Event::Incoming(Packet::SubAck(_)) = sub_loop.poll().await.expect("sub loop") {
                break;
            }
        }
    })
    .await
    .expect("SUBACK within 10 s");

    let (publisher, mut pub_loop) =
        AsyncClient::new(MqttOptions::new(unique_name("pub5"), &host, port), 16);
    let properties = PublishProperties {
        user_properties: vec![("site".into(), "berlin".into())],
        content_type: Some("text/plain".into()),
        ..Default::default()
    };
    publisher
        .publish_with_properties(
            &topic,
            QoS::AtLeastOnce,
            false,
            b"21.5".to_vec(),
            properties,
        )
        .await
        .unwrap();
    tokio::spawn(async move { while pub_loop.poll().await.is_ok() {} });

    let received = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let Event::Incoming(Packet::Publish(p)) = sub_loop.poll().await.expect("sub loop") {
                return p;
            }
        }
    })
    .await
    .expect("message delivered within 10 s");
    assert_eq!(&received.topic[..], topic.as_bytes());
    assert_eq!(&received.payload[..], b"21.5");
    let props = received.properties.expect("v5 properties delivered");
    assert_eq!(props.user_properties, [("site".into(), "berlin".into())]);
    assert_eq!(props.content_type.as_deref(), Some("text/plain"));
}
