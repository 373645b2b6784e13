//! MQTT clients of the scenario: rumqttc and mosquitto_sub through the bridges' Services.

use std::net::SocketAddr;
use std::time::Duration;

use super::*;

pub(super) fn mqtt311(
    addr: SocketAddr,
    id: &str,
    clean: bool,
) -> (rumqttc::AsyncClient, rumqttc::EventLoop) {
    let mut options = rumqttc::MqttOptions::new(id, addr.ip().to_string(), addr.port());
    options.set_clean_session(clean);
    options.set_keep_alive(Duration::from_secs(30));
    rumqttc::AsyncClient::new(options, 64)
}

/// Polls `events` until `pick` returns `Some` for what it got (an event or a connection error;
/// rumqttc reconnects on the next poll after an error, so a caller waiting across a pod restart
/// sees the new connection), or panics naming `what` after `deadline`.
macro_rules! poll_until {
    ($events:expr, $deadline:expr, $what:expr, $pick:expr) => {{
        let deadline: Duration = $deadline;
        let give_up = tokio::time::Instant::now() + deadline;
        #[allow(unused_mut)] // a pick that keeps no state needs no `mut`
        let mut pick = $pick;
        loop {
            let polled = tokio::time::timeout_at(give_up, $events.poll()).await;
            let Ok(polled) = polled else {
                panic!("timed out after {deadline:?} waiting for {}", $what)
            };
            let failed = polled.is_err();
            if let Some(value) = pick(polled) {
                break value;
            }
            if failed {
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        }
    }};
}

/// The next packet from the server that `pick` accepts (see `poll_until!`).
pub(super) async fn next_311<T>(
    events: &mut rumqttc::EventLoop,
    deadline: Duration,
    what: &str,
    mut pick: impl FnMut(rumqttc::Packet) -> Option<T>,
) -> T {
    poll_until!(events, deadline, what, |polled| match polled {
        Ok(rumqttc::Event::Incoming(packet)) => pick(packet),
        _ => None,
    })
}

pub(super) async fn next_5<T>(
    events: &mut rumqttc::v5::EventLoop,
    deadline: Duration,
    what: &str,
    mut pick: impl FnMut(rumqttc::v5::mqttbytes::v5::Packet) -> Option<T>,
) -> T {
    poll_until!(events, deadline, what, |polled| match polled {
        Ok(rumqttc::v5::Event::Incoming(packet)) => pick(packet),
        _ => None,
    })
}

/// Queued QoS 1 messages of a persistent session survive the deletion of every s-proxy pod: they
/// were acknowledged, so they are in Kafka, and a new pod serves the session.
pub(super) async fn persistent_session_survives_s_proxy_pods(
    ns: &str,
    fleet: SocketAddr,
    kafka: &str,
    messages: &str,
    operator: &Operator,
) {
    use rumqttc::{Packet, QoS};
    let topic = format!("fleet/{}", unique_name("queued"));
    let subscriber_id = unique_name("persistent");

    let (subscriber, mut events) = mqtt311(fleet, &subscriber_id, false);
    subscriber
        .subscribe(format!("{topic}/#"), QoS::AtLeastOnce)
        .await
        .unwrap();
    next_311(
        &mut events,
        Duration::from_secs(60),
        "SUBACK from the fleet bridge",
        |p| matches!(p, Packet::SubAck(_)).then_some(()),
    )
    .await;
    subscriber.disconnect().await.unwrap();
    drop(events);

    // A client connected while its s-proxy goes away sees its connection end.
    let (_bystander, mut bystander_events) = mqtt311(fleet, &unique_name("bystander"), true);
    next_311(
        &mut bystander_events,
        Duration::from_secs(60),
        "CONNACK",
        |p| matches!(p, Packet::ConnAck(_)).then_some(()),
    )
    .await;

    let (publisher, mut publish_events) = mqtt311(fleet, &unique_name("publisher"), true);
    const MESSAGES: usize = 5;
    for i in 0..MESSAGES {
        publisher
            .publish(
                format!("{topic}/{i}"),
                QoS::AtLeastOnce,
                false,
                format!("m{i}"),
            )
            .await
            .unwrap();
    }
    let mut acked = 0;
    next_311(
        &mut publish_events,
        Duration::from_secs(60),
        "5 PUBACKs",
        |p| {
            acked += usize::from(matches!(p, Packet::PubAck(_)));
            (acked == MESSAGES).then_some(())
        },
    )
    .await;
    let in_kafka = strait_e2e::kafka_record_keys(kafka, messages, &topic, MESSAGES).await;
    assert_eq!(
        in_kafka.len(),
        MESSAGES,
        "every acknowledged message is a record in Kafka"
    );

    kubectl_ok(
        &[
            "delete",
            "pod",
            "-n",
            ns,
            "-l",
            "app.kubernetes.io/instance=fleet,app.kubernetes.io/component=s-proxy",
            "--wait=false",
        ],
        None,
    );
    poll_until!(
        bystander_events,
        Duration::from_secs(60),
        "the bystander's connection to end",
        |polled: Result<_, _>| polled.is_err().then_some(())
    );
    wait_rolled_out(ns, "fleet-s-proxy", operator).await;

    let (_subscriber, mut events) = mqtt311(fleet, &subscriber_id, false);
    let present = next_311(
        &mut events,
        Duration::from_secs(90),
        "CONNACK of the resumed session",
        |p| match p {
            Packet::ConnAck(ack) if ack.code == rumqttc::ConnectReturnCode::Success => {
                Some(ack.session_present)
            }
            _ => None,
        },
    )
    .await;
    assert!(present, "the session was kept (session present)");
    let mut received = std::collections::BTreeSet::new();
    next_311(
        &mut events,
        Duration::from_secs(90),
        "the 5 queued messages",
        |p| {
            if let Packet::Publish(publish) = p {
                received.insert(String::from_utf8_lossy(&publish.payload).into_owned());
            }
            (received.len() == MESSAGES).then_some(())
        },
    )
    .await;
    let want: std::collections::BTreeSet<_> = (0..MESSAGES).map(|i| format!("m{i}")).collect();
    assert_eq!(received, want);
}

/// Changing the spec rolls r-proxy and s-proxy: an MQTT 5 client is disconnected with 0x8B
/// (server shutting down), reconnects to the new pods, and its will is never published.
pub(super) async fn rolling_update_drains_sessions(
    ns: &str,
    devices: SocketAddr,
    broker: &str,
    operator: &Operator,
) {
    use rumqttc::v5::mqttbytes::QoS;
    use rumqttc::v5::mqttbytes::v5::Packet;
    use rumqttc::v5::{AsyncClient, MqttOptions};

    let wills = format!("pods/{}/wills", unique_name("roll"));
    let (broker_host, broker_port) = host_port(broker);
    let (watcher, mut watch_events) = AsyncClient::new(
        MqttOptions::new(unique_name("watcher"), broker_host, broker_port),
        16,
    );
    watcher
        .subscribe(format!("{wills}/#"), QoS::AtLeastOnce)
        .await
        .unwrap();
    next_5(
        &mut watch_events,
        Duration::from_secs(30),
        "the watcher's SUBACK",
        |p| matches!(p, Packet::SubAck(_)).then_some(()),
    )
    .await;

    // The client is mosquitto_sub, whose debug output names each packet it receives.
    let mut client = MqttSubProcess::connect(devices, &format!("{wills}/client")).await;
    let before =
        kubectl_json(&["deployment", "devices-r-proxy", "-n", ns]).expect("r-proxy Deployment");
    kubectl_ok(
        &[
            "patch",
            "mqttbridge",
            "devices",
            "-n",
            ns,
            "--type=merge",
            "-p",
            r#"{"spec":{"limits":{"maxPacketSize":131072}}}"#,
        ],
        None,
    );
    let disconnect = client.line_containing("Received DISCONNECT", READY).await;
    assert!(
        disconnect.contains("Received DISCONNECT (139)"),
        "drained with DISCONNECT 0x8B (139), got {disconnect:?}"
    );
    wait_until(
        READY,
        "the spec change to reach the r-proxy Deployment",
        || async {
            let now = kubectl_json(&["deployment", "devices-r-proxy", "-n", ns])?;
            (now["metadata"]["generation"] != before["metadata"]["generation"]).then_some(())
        },
    )
    .await;
    wait_rolled_out(ns, "devices-r-proxy", operator).await;
    wait_rolled_out(ns, "devices-s-proxy", operator).await;
    // A client reconnecting is served by the new pods.
    MqttSubProcess::connect(devices, &format!("{wills}/again")).await;

    // The broker publishes a will as soon as a connection drops, so by now it would have come;
    // a message published now must be the first thing the watcher receives.
    watcher
        .publish(
            format!("{wills}/sentinel"),
            QoS::AtLeastOnce,
            false,
            "sentinel",
        )
        .await
        .unwrap();
    let first = next_5(
        &mut watch_events,
        Duration::from_secs(30),
        "the sentinel at the watcher",
        |p| match p {
            Packet::Publish(publish) => Some(publish),
            _ => None,
        },
    )
    .await;
    assert_eq!(
        &first.payload[..],
        b"sentinel",
        "no will was published before it: {first:?}"
    );
}

/// A QoS 1 message published through the bridge reaches a subscriber of the bridge and a
/// subscriber of the real broker behind it.
pub(super) async fn relay_round_trip(bridge: SocketAddr, broker: &str) {
    use rumqttc::{Packet, QoS};
    let topic = format!("pods/{}/temp", unique_name("relay"));
    let (broker_host, broker_port) = host_port(broker);
    let broker: SocketAddr = tokio::net::lookup_host((broker_host.as_str(), broker_port))
        .await
        .expect("resolve MQTT_BROKER")
        .next()
        .expect("an address of MQTT_BROKER");
    let mut subscribers = Vec::new();
    for (who, address) in [("the bridge", bridge), ("Mosquitto", broker)] {
        let (client, mut events) = mqtt311(address, &unique_name("sub"), true);
        client.subscribe(&topic, QoS::AtLeastOnce).await.unwrap();
        next_311(
            &mut events,
            Duration::from_secs(60),
            &format!("SUBACK from {who}"),
            |p| matches!(p, Packet::SubAck(_)).then_some(()),
        )
        .await;
        subscribers.push((who, client, events));
    }

    let (publisher, mut publish_events) = mqtt311(bridge, &unique_name("pub"), true);
    publisher
        .publish(
            &topic,
            QoS::AtLeastOnce,
            false,
            b"through real pods".to_vec(),
        )
        .await
        .unwrap();
    next_311(
        &mut publish_events,
        Duration::from_secs(30),
        "PUBACK through the bridge",
        |p| matches!(p, Packet::PubAck(_)).then_some(()),
    )
    .await;
    for (who, _client, events) in &mut subscribers {
        let message = next_311(
            events,
            Duration::from_secs(30),
            &format!("the message via {who}"),
            |p| match p {
                Packet::Publish(publish) => Some(publish),
                _ => None,
            },
        )
        .await;
        assert_eq!(message.topic, topic, "via {who}");
        assert_eq!(&message.payload[..], b"through real pods", "via {who}");
    }
}

/// `mosquitto_sub -V mqttv5 -d` connected through `address` with a will on `will_topic`: a real
/// MQTT 5 client whose debug lines say what it receives.
pub(super) struct MqttSubProcess {
    lines: tokio::io::Lines<tokio::io::BufReader<tokio::process::ChildStdout>>,
    seen: Vec<String>,
    _child: tokio::process::Child,
}

impl MqttSubProcess {
    /// Connects as an MQTT client does: no CONNACK within 10 s (a connection opened while a
    /// Service still pointed at a pod that is gone) or one refusing with 0x88 (server unavailable,
    /// which r-proxy answers while its link to a replaced s-proxy comes back) means a new
    /// attempt, for up to 90 s.
    pub(super) async fn connect(address: SocketAddr, will_topic: &str) -> Self {
        let give_up = tokio::time::Instant::now() + Duration::from_secs(90);
        let mut attempts = Vec::new();
        loop {
            let (sub, connack) = Self::try_connect(address, will_topic).await;
            match connack {
                Some(connack) if connack.contains("CONNACK (0)") => return sub,
                Some(connack) if !connack.contains("CONNACK (136)") => {
                    panic!("connected: {connack:?}")
                }
                connack => attempts.push(connack),
            }
            assert!(
                tokio::time::Instant::now() < give_up,
                "no CONNACK (0) within 90 s through {address}: {attempts:?}"
            );
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    async fn try_connect(address: SocketAddr, will_topic: &str) -> (Self, Option<String>) {
        use tokio::io::AsyncBufReadExt as _;
        // stdbuf: mosquitto_sub's stdout is block-buffered in a pipe otherwise.
        let mut child = tokio::process::Command::new("stdbuf")
            .args([
                "-oL",
                "mosquitto_sub",
                "-h",
                &address.ip().to_string(),
                "-p",
                &address.port().to_string(),
            ])
            .args([
                "-V",
                "mqttv5",
                "-d",
                "-k",
                "30",
                "-i",
                &unique_name("mosquitto-sub"),
            ])
            .args(["-t", &format!("{will_topic}/never")])
            .args([
                "--will-topic",
                will_topic,
                "--will-payload",
                "gone",
                "--will-qos",
                "1",
            ])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("run mosquitto_sub");
        let stdout = child.stdout.take().expect("piped stdout");
        let mut sub = Self {
            lines: tokio::io::BufReader::new(stdout).lines(),
            seen: Vec::new(),
            _child: child,
        };
        let connack = sub
            .try_line_containing("CONNACK", Duration::from_secs(10))
            .await;
        if connack.as_ref().is_some_and(|c| c.contains("CONNACK (0)")) {
            sub.line_containing("SUBACK", Duration::from_secs(30)).await;
        }
        (sub, connack)
    }

    /// The next output line containing `text`, or a panic with everything seen so far.
    async fn line_containing(&mut self, text: &str, deadline: Duration) -> String {
        match self.try_line_containing(text, deadline).await {
            Some(line) => line,
            None => panic!(
                "mosquitto_sub printed no line with {text:?} within {deadline:?}: {:?}",
                self.seen
            ),
        }
    }

    /// The next output line containing `text`, if one comes within `deadline`.
    pub(super) async fn try_line_containing(
        &mut self,
        text: &str,
        deadline: Duration,
    ) -> Option<String> {
        let found = tokio::time::timeout(deadline, async {
            while let Ok(Some(line)) = self.lines.next_line().await {
                let hit = line.contains(text);
                self.seen.push(line.clone());
                if hit {
                    return Some(line);
                }
            }
            None
        })
        .await;
        found.ok().flatten()
    }
}

/// r-proxy finds every ready s-proxy pod through the headless Service and puts each new session
/// on the one with the fewest of its sessions: with more clients than s-proxy pods, every pod
/// serves some (a ClusterIP Service would have pinned each r-proxy to one or two of them).
pub(super) async fn sessions_spread_over_every_s_proxy_pod(ns: &str, fleet: SocketAddr) {
    // The pods behind the headless Service, as r-proxy's DNS lookups see them.
    let ready = kubectl_ok(
        &[
            "get",
            "endpointslices",
            "-n",
            ns,
            "-l",
            "kubernetes.io/service-name=fleet-s-proxy-pods",
            "-o",
            "jsonpath={.items[*].endpoints[?(@.conditions.ready==true)].addresses[0]}",
        ],
        None,
    );
    let pods: Vec<SocketAddr> = ready
        .split_whitespace()
        .map(|ip| format!("{ip}:9090").parse().unwrap())
        .collect();
    assert_eq!(pods.len(), 3, "the example's three s-proxy pods: {ready:?}");
    // Clients connect in rounds: the previous step replaced every s-proxy pod, and an r-proxy
    // learns of a new one at its next lookup (every 5 s); from then on the new pod, having the
    // fewest sessions, takes that r-proxy's new sessions.
    const ROUND: usize = 6;
    let give_up = tokio::time::Instant::now() + Duration::from_secs(90);
    let mut pollers = Vec::new();
    let mut counts = Vec::new();
    'rounds: loop {
        for _ in 0..ROUND {
            let id = unique_name(&format!("spread{}", pollers.len()));
            let (client, mut events) = mqtt311(fleet, &id, true);
            pollers.push(tokio::spawn(async move {
                let _client = client;
                loop {
                    if events.poll().await.is_err() {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
            }));
        }
        let round_ends = tokio::time::Instant::now() + Duration::from_secs(6);
        while tokio::time::Instant::now() < round_ends {
            counts.clear();
            for pod in &pods {
                counts.push(s_proxy_sessions(*pod).await.unwrap_or(0));
            }
            let all = counts.iter().sum::<i64>() >= pollers.len() as i64;
            if all && counts.iter().all(|c| *c > 0) {
                break 'rounds;
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        assert!(
            tokio::time::Instant::now() < give_up,
            "every s-proxy pod to serve sessions within 90 s; sessions per pod: {counts:?}"
        );
    }
    eprintln!(
        "sessions per s-proxy pod: {counts:?} ({} clients)",
        pollers.len()
    );
    for poller in pollers {
        poller.abort();
    }
}

/// `strait_mqtt_sessions_active` of the s-proxy pod whose admin port is `admin`.
async fn s_proxy_sessions(admin: SocketAddr) -> Option<i64> {
    let (_, body) = strait_e2e::http_get(admin, "/metrics").await.ok()?;
    let line = body
        .lines()
        .find(|l| l.starts_with("strait_mqtt_sessions_active{"))?;
    line.rsplit(' ').next()?.parse().ok()
}
