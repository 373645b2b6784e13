//! The relay when a process goes away: s-proxy killed, one of several s-proxies killed, r-proxy
//! shut down gracefully, and a client that goes silent. What the clients see, what the broker
//! publishes, and that service comes back.

mod support;

use std::time::{Duration, Instant};

use rumqttc::v5::mqttbytes::v5::Packet as V5Packet;
use rumqttc::v5::{AsyncClient, EventLoop};
use strait_e2e::{free_local_addr, require, unique_name, wait_until};
use strait_mqtt_codec::{Packet, Protocol, ReasonCode};
use support::{
    Bystander, RawClient, Relay, assert_disconnected_with, broker_watcher, connect_packet,
    connect_with_will, next_v5, sessions_active, start_r_proxy, start_s_proxy, wait_for_sessions,
};

/// Asserts that the broker published nothing under `wills` (where the watcher is subscribed).
///
/// Proving that something does not happen needs a bounded wait: the broker publishes a will as
/// soon as it sees a connection drop, so 2 s after the proxy exited is plenty. A message
/// published after that must then be the first thing the watcher gets.
async fn assert_no_will(watcher: &AsyncClient, events: &mut EventLoop, wills: &str) {
    let publish = |p| match p {
        V5Packet::Publish(publish) => Some(publish),
        _ => None,
    };
    let early = next_v5(events, Duration::from_secs(2), publish).await;
    assert!(early.is_none(), "no will is published: got {early:?}");
    watcher
        .publish(
            format!("{wills}/sentinel"),
            rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
            false,
            "sentinel",
        )
        .await
        .unwrap();
    let first = next_v5(events, Duration::from_secs(10), publish)
        .await
        .expect("the watcher still receives");
    assert_eq!(&first.payload[..], b"sentinel", "no will came before it");
}

#[tokio::test]
async fn s_proxy_killed_mid_session_then_restarted() {
    let broker = require!("MQTT_BROKER", "mosquitto");
    let mut relay = Relay::start(&broker).await;
    let (mut v5, _) = RawClient::session(
        relay.mqtt,
        Protocol::V5,
        connect_packet(&unique_name("kill5")),
    )
    .await;
    let (mut v3, _) = RawClient::session(
        relay.mqtt,
        Protocol::V311,
        connect_packet(&unique_name("kill3")),
    )
    .await;

    relay.s_proxy.kill().await;

    assert_disconnected_with(&v5.until_closed().await, ReasonCode::UNSPECIFIED_ERROR);
    assert_eq!(
        v3.until_closed().await,
        [],
        "3.1.1: closed without a packet"
    );

    // While s-proxy is down, new clients are refused as "server unavailable".
    match RawClient::try_session(
        relay.mqtt,
        Protocol::V5,
        connect_packet(&unique_name("down5")),
    )
    .await
    {
        Err(Some(Packet::ConnAck(ack))) => {
            assert_eq!(ack.reason_code, ReasonCode::SERVER_UNAVAILABLE)
        }
        other => panic!("expected CONNACK 0x88, got {:?}", other.map(|(_, ack)| ack)),
    }
    let mut v3 = RawClient::connect(relay.mqtt, Protocol::V311).await;
    v3.send(&Packet::Connect(connect_packet(&unique_name("down3"))))
        .await;
    assert_eq!(
        v3.raw_until_closed().await,
        [0x20, 0x02, 0x00, 0x03],
        "3.1.1 CONNACK return code 3 (server unavailable), then close"
    );
    wait_for_sessions(relay.r_proxy.admin, 0, "r-proxy").await;

    // s-proxy comes back on the same address; r-proxy reconnects lazily, so retry until then.
    relay.s_proxy = start_s_proxy(relay.grpc, &broker).await;
    let id = unique_name("back");
    let (mut client, _) = wait_until(
        Duration::from_secs(20),
        "a session through the restarted s-proxy",
        || async {
            RawClient::try_session(relay.mqtt, Protocol::V5, connect_packet(&id))
                .await
                .ok()
        },
    )
    .await;
    let topic = format!("relay/{id}/back");
    client.subscribe(1, &topic).await;
    client.publish_and_receive(2, &topic, "back again").await;
    let mut v3 = Bystander::join(relay.mqtt, Protocol::V311).await;
    v3.assert_alive().await;
}

#[tokio::test]
async fn sessions_spread_over_s_proxies_and_fail_over_when_one_dies() {
    let broker = require!("MQTT_BROKER", "mosquitto");
    let (grpc_a, grpc_b) = (free_local_addr(), free_local_addr());
    let mut a = start_s_proxy(grpc_a, &broker).await;
    let b = start_s_proxy(grpc_b, &broker).await;
    let mqtt = free_local_addr();
    let r_proxy = start_r_proxy(
        mqtt,
        &[format!("http://{grpc_a}"), format!("http://{grpc_b}")],
        &[],
    )
    .await;

    const CLIENTS: usize = 8;
    let mut clients = Vec::new();
    for i in 0..CLIENTS {
        let id = unique_name(&format!("spread{i}"));
        let (client, _) = RawClient::session(mqtt, Protocol::V5, connect_packet(&id)).await;
        clients.push((id, client));
    }
    let (on_a, on_b) = wait_until(
        Duration::from_secs(10),
        "both s-proxies to report every session",
        || async {
            let on_a = sessions_active(a.admin).await?;
            let on_b = sessions_active(b.admin).await?;
            (on_a + on_b == CLIENTS as i64).then_some((on_a, on_b))
        },
    )
    .await;
    assert!(
        on_a > 0 && on_b > 0,
        "sessions spread over both s-proxies: {on_a} on A, {on_b} on B"
    );

    a.kill().await;
    // Once r-proxy counts only B's sessions, the sessions A held have been ended and their
    // clients told: what each client has received by now is all it will get.
    wait_for_sessions(r_proxy.admin, on_b, "r-proxy").await;
    let mut dropped = Vec::new();
    for (id, client) in &mut clients {
        let (packets, closed) = client.drain_now();
        if closed {
            assert_disconnected_with(&packets, ReasonCode::UNSPECIFIED_ERROR);
            dropped.push(id.clone());
        } else {
            assert_eq!(packets, [], "{id} on B: nothing happened to it");
            client.send(&Packet::PingReq).await;
            assert_eq!(client.recv().await, Some(Packet::PingResp), "{id} on B");
        }
    }
    assert_eq!(
        dropped.len() as i64,
        on_a,
        "exactly the sessions on A were dropped"
    );

    // The dropped clients reconnect (same client ids) and all land on B at the first try.
    for id in &dropped {
        let (mut client, _) = RawClient::try_session(mqtt, Protocol::V5, connect_packet(id))
            .await
            .unwrap_or_else(|other| panic!("{id} reconnects via B, got {other:?}"));
        let topic = format!("relay/{id}/again");
        client.subscribe(1, &topic).await;
        client.publish_and_receive(2, &topic, "via B").await;
        clients.push((id.clone(), client));
    }
    wait_for_sessions(b.admin, CLIENTS as i64, "s-proxy B").await;
}

/// An s-proxy that starts after the others takes the new sessions until it carries as many:
/// r-proxy places each session on the s-proxy with the fewest, not merely the next in turn.
/// The endpoints are found by resolving their names (`--s-proxy-discover`).
#[tokio::test]
async fn a_late_s_proxy_takes_new_sessions_until_the_load_is_even() {
    let broker = require!("MQTT_BROKER", "mosquitto");
    let (grpc_a, grpc_b) = (free_local_addr(), free_local_addr());
    let a = start_s_proxy(grpc_a, &broker).await;
    let mqtt = free_local_addr();
    let endpoints = [
        format!("http://localhost:{}", grpc_a.port()),
        format!("http://localhost:{}", grpc_b.port()),
    ];
    let _r_proxy = start_r_proxy(mqtt, &endpoints, &["--s-proxy-discover"]).await;

    // B is not there yet: every session lands on A.
    let mut clients = Vec::new();
    for i in 0..4 {
        let id = unique_name(&format!("early{i}"));
        clients.push(
            RawClient::session(mqtt, Protocol::V5, connect_packet(&id))
                .await
                .0,
        );
    }
    wait_for_sessions(a.admin, 4, "s-proxy A").await;

    let b = start_s_proxy(grpc_b, &broker).await;
    for i in 0..4 {
        let id = unique_name(&format!("late{i}"));
        let opened = wait_until(Duration::from_secs(10), "a session through r-proxy", || {
            let id = id.clone();
            async move {
                RawClient::try_session(mqtt, Protocol::V5, connect_packet(&id))
                    .await
                    .ok()
                    .map(|(client, _)| client)
            }
        })
        .await;
        clients.push(opened);
    }
    wait_for_sessions(b.admin, 4, "s-proxy B, which had none").await;
    assert_eq!(sessions_active(a.admin).await, Some(4), "A got no more");
    for client in &mut clients {
        client.send(&Packet::PingReq).await;
        assert_eq!(client.recv().await, Some(Packet::PingResp));
    }
}

#[tokio::test]
async fn graceful_r_proxy_shutdown_disconnects_clients_without_publishing_their_wills() {
    let broker = require!("MQTT_BROKER", "mosquitto");
    let drain = Duration::from_secs(5);
    let mut relay = Relay::start_with(&broker, &["--drain-timeout", "5s"]).await;
    let wills = format!("relay/{}/wills", unique_name("graceful"));
    let (watcher, mut watch_events) = broker_watcher(&broker, &format!("{wills}/#")).await;

    let (mut v5, _) = RawClient::session(
        relay.mqtt,
        Protocol::V5,
        connect_with_will(&unique_name("term5"), &format!("{wills}/v5"), b"v5 gone"),
    )
    .await;
    let (mut v3, _) = RawClient::session(
        relay.mqtt,
        Protocol::V311,
        connect_with_will(&unique_name("term3"), &format!("{wills}/v3"), b"v3 gone"),
    )
    .await;

    let started = Instant::now();
    let status = relay.r_proxy.terminate(drain).await;
    assert!(
        status.success(),
        "r-proxy exits 0 on SIGTERM, got {status}\n{}",
        relay.r_proxy.log()
    );
    assert!(started.elapsed() < drain, "exits within the drain deadline");
    assert_disconnected_with(&v5.until_closed().await, ReasonCode::SERVER_SHUTTING_DOWN);
    assert_eq!(
        v3.until_closed().await,
        [],
        "3.1.1: closed without a packet"
    );

    assert_no_will(&watcher, &mut watch_events, &wills).await;
    wait_for_sessions(relay.s_proxy.admin, 0, "s-proxy").await;
}

#[tokio::test]
async fn graceful_s_proxy_shutdown_disconnects_clients_without_publishing_their_wills() {
    let broker = require!("MQTT_BROKER", "mosquitto");
    let mut relay = Relay::start(&broker).await;
    let wills = format!("relay/{}/wills", unique_name("s-term"));
    let (watcher, mut watch_events) = broker_watcher(&broker, &format!("{wills}/#")).await;
    let (mut v5, _) = RawClient::session(
        relay.mqtt,
        Protocol::V5,
        connect_with_will(&unique_name("sterm5"), &format!("{wills}/v5"), b"v5 gone"),
    )
    .await;
    let (mut v3, _) = RawClient::session(
        relay.mqtt,
        Protocol::V311,
        connect_with_will(&unique_name("sterm3"), &format!("{wills}/v3"), b"v3 gone"),
    )
    .await;

    let status = relay.s_proxy.terminate(Duration::from_secs(10)).await;
    assert!(
        status.success(),
        "s-proxy exits 0 on SIGTERM, got {status}\n{}",
        relay.s_proxy.log()
    );
    assert_disconnected_with(&v5.until_closed().await, ReasonCode::SERVER_SHUTTING_DOWN);
    assert_eq!(
        v3.until_closed().await,
        [],
        "3.1.1: closed without a packet"
    );

    assert_no_will(&watcher, &mut watch_events, &wills).await;
}

#[tokio::test]
async fn a_silent_client_is_disconnected_after_its_keep_alive_and_its_will_published() {
    let broker = require!("MQTT_BROKER", "mosquitto");
    let relay = Relay::start(&broker).await;
    let wills = format!("relay/{}/wills", unique_name("silent"));
    let (_watcher, mut watch_events) = broker_watcher(&broker, &format!("{wills}/#")).await;

    // Keep-alive 2 s, not 1: Mosquitto enforces keep-alive too, in whole seconds
    // (`now_s - last_msg_in > keepalive * 3 / 2`, integer maths). At 1 s that can expire the
    // broker side after just over 1 s, before r-proxy's 1.5 s, and the client would see the
    // broker's bare close instead of r-proxy's DISCONNECT; at 2 s the broker needs more than
    // 3 s, and r-proxy's 3 s always comes first.
    let mut silent = Vec::new();
    for (protocol, name) in [(Protocol::V5, "v5"), (Protocol::V311, "v3")] {
        let mut connect = connect_with_will(
            &unique_name("silent"),
            &format!("{wills}/{name}"),
            b"silent",
        );
        connect.keep_alive = 2;
        let (client, _) = RawClient::session(relay.mqtt, protocol, connect).await;
        silent.push((client, Instant::now()));
    }
    // Same keep-alive, but it pings: it must outlive the silent ones.
    let mut connect = connect_packet(&unique_name("pinging"));
    connect.keep_alive = 2;
    let (mut pinging, _) = RawClient::session(relay.mqtt, Protocol::V5, connect).await;

    let [(v5, v5_since), (v3, v3_since)] = &mut silent[..] else {
        unreachable!()
    };
    let pings = async {
        let started = Instant::now();
        while started.elapsed() < Duration::from_secs(4) {
            pinging.send(&Packet::PingReq).await;
            assert_eq!(pinging.recv().await, Some(Packet::PingResp));
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    };
    let silent_ends = async {
        let v5_parting = v5.until_closed().await;
        let v5_after = v5_since.elapsed();
        let v3_parting = v3.until_closed().await;
        (v5_parting, v5_after, v3_parting, v3_since.elapsed())
    };
    let ((v5_parting, v5_after, v3_parting, v3_after), ()) = tokio::join!(silent_ends, pings);

    assert_disconnected_with(&v5_parting, ReasonCode::KEEP_ALIVE_TIMEOUT);
    assert_eq!(v3_parting, [], "3.1.1: closed without a packet");
    for after in [v5_after, v3_after] {
        // One and a half times the keep-alive, counted from the CONNECT.
        assert!(
            after >= Duration::from_millis(2700) && after <= Duration::from_secs(4),
            "disconnected {after:?} after CONNACK, expected about 3 s"
        );
    }

    let mut wills_seen = Vec::new();
    while wills_seen.len() < 2 {
        let will = next_v5(&mut watch_events, Duration::from_secs(10), |p| match p {
            V5Packet::Publish(publish) => Some(publish),
            _ => None,
        })
        .await
        .expect("both wills are published");
        assert_eq!(&will.payload[..], b"silent");
        wills_seen.push(String::from_utf8(will.topic.to_vec()).unwrap());
    }
    wills_seen.sort();
    assert_eq!(wills_seen, [format!("{wills}/v3"), format!("{wills}/v5")]);
}
