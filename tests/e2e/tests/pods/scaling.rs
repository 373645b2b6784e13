//! MqttBridge scaling on real pods: s-proxy replicas follow the sessions its pods report, and
//! the sessions of the pods a scale-down removes move cleanly (0x8B, reconnect, no will).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use super::*;

/// rumqttc clients (they reconnect by themselves) and mosquitto_sub clients (their debug output
/// shows the DISCONNECT they are sent: rumqttc reports a DISCONNECT that arrives with the
/// connection's end as a plain close).
const CLIENTS: usize = 6;
const SUBS: usize = 4;

/// Merges `spec` (JSON) into the `fleet` bridge's spec.
fn patch_fleet(ns: &str, spec: &str) {
    let patch = format!(r#"{{"spec":{spec}}}"#);
    kubectl_ok(
        &[
            "patch",
            "mqttbridge",
            "fleet",
            "-n",
            ns,
            "--type=merge",
            "-p",
            &patch,
        ],
        None,
    );
}

fn autoscale(ns: &str, autoscale: &str) {
    patch_fleet(ns, &format!(r#"{{"sProxy":{{"autoscale":{autoscale}}}}}"#));
}

/// The s-proxy Deployment's replicas and the bridge's view of s-proxy's load, once `ok` says
/// they are what the test waits for.
async fn wait_scaled(ns: &str, what: &str, ok: impl Fn(i64, &serde_json::Value) -> bool) -> i64 {
    wait_until(READY, what, || {
        let ns = ns.to_string();
        let ok = &ok;
        async move {
            let deployment = kubectl_json(&["deployment", "fleet-s-proxy", "-n", &ns])?;
            let bridge = kubectl_json(&["mqttbridge", "fleet", "-n", &ns])?;
            let replicas = deployment["spec"]["replicas"].as_i64()?;
            let ready = deployment["status"]["readyReplicas"].as_i64().unwrap_or(0);
            let status = &bridge["status"];
            (ready == replicas && ok(replicas, status)).then_some(replicas)
        }
    })
    .await
}

pub(super) async fn s_proxy_follows_sessions_and_drains_on_scale_down(ns: &str, fleet: SocketAddr) {
    use rumqttc::v5::mqttbytes::QoS;
    use rumqttc::v5::mqttbytes::v5::{LastWill, Packet};
    use rumqttc::v5::{AsyncClient, ConnectionError, Event, MqttOptions, StateError};

    let base = format!("scale/{}", unique_name("s"));
    let wills = format!("{base}/wills");
    // Three pods, each to carry its share of the sessions.
    autoscale(
        ns,
        r#"{"minReplicas":3,"maxReplicas":3,"sessionsPerPod":2,"scaleDownStabilizationSeconds":5,"pollIntervalSeconds":2}"#,
    );
    wait_scaled(ns, "3 s-proxy pods under autoscale", |replicas, _| {
        replicas == 3
    })
    .await;

    // A watcher of wills through the bridge itself (Kafka mode: wills are records too).
    // A persistent session: its s-proxy may be one the scale-down removes, and its subscription
    // and what it missed must survive the reconnect.
    let mut watcher_options =
        MqttOptions::new(unique_name("watcher"), fleet.ip().to_string(), fleet.port());
    watcher_options
        .set_clean_start(false)
        .set_session_expiry_interval(Some(600))
        .set_connection_timeout(30);
    let (watcher, mut watch_events) = AsyncClient::new(watcher_options, 16);
    watcher
        .subscribe(format!("{wills}/#"), QoS::AtLeastOnce)
        .await
        .unwrap();
    super::mqtt::next_5(
        &mut watch_events,
        Duration::from_secs(60),
        "the will watcher's SUBACK",
        |p| matches!(p, Packet::SubAck(_)).then_some(()),
    )
    .await;

    // Clients with wills; each counts its CONNACKs and the 0x8B DISCONNECTs it is sent.
    let connacks = Arc::new(AtomicUsize::new(0));
    let drained = Arc::new(AtomicUsize::new(0));
    let mut clients = Vec::new();
    let mut pollers = Vec::new();
    for i in 0..CLIENTS {
        let mut options = MqttOptions::new(
            unique_name(&format!("scaled{i}")),
            fleet.ip().to_string(),
            fleet.port(),
        );
        options.set_last_will(LastWill::new(
            format!("{wills}/{i}"),
            "gone",
            QoS::AtLeastOnce,
            false,
            None,
        ));
        let (client, mut events) = AsyncClient::new(options, 16);
        clients.push(client);
        let (connacks, drained) = (connacks.clone(), drained.clone());
        pollers.push(tokio::spawn(async move {
            loop {
                match events.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        connacks.fetch_add(1, Ordering::SeqCst);
                    }
                    Ok(_) => {}
                    // rumqttc reports a server's DISCONNECT as an error, and reconnects on the
                    // next poll.
                    Err(error) => {
                        // The connection ended (rumqttc may report the 0x8B DISCONNECT as a
                        // plain close when both arrive together).
                        if matches!(
                            error,
                            ConnectionError::MqttState(
                                StateError::ServerDisconnect { .. } | StateError::ConnectionAborted
                            )
                        ) {
                            drained.fetch_add(1, Ordering::SeqCst);
                        }
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
            }
        }));
    }
    wait_until(READY, "every client's CONNACK", || async {
        (connacks.load(Ordering::SeqCst) >= CLIENTS).then_some(())
    })
    .await;
    let mut subs = Vec::new();
    for i in 0..SUBS {
        subs.push(super::mqtt::MqttSubProcess::connect(fleet, &format!("{wills}/sub{i}")).await);
    }
    // The operator reads the sessions from the pods' own metrics.
    wait_scaled(
        ns,
        "status.sProxy.sessions to count the clients",
        |_, status| {
            // The clients and the watcher (and any session an earlier step left draining).
            status["sProxy"]["sessions"].as_i64() >= Some((CLIENTS + SUBS) as i64 + 1)
        },
    )
    .await;

    // Now one pod carries them all: two of the three go, and their sessions move.
    autoscale(
        ns,
        r#"{"minReplicas":1,"maxReplicas":3,"sessionsPerPod":20,"scaleDownStabilizationSeconds":5,"pollIntervalSeconds":2}"#,
    );
    wait_scaled(ns, "s-proxy scaled down to 1 pod", |replicas, _| {
        replicas == 1
    })
    .await;
    // The removed pods drain as they terminate: their sessions are told 0x8B (Server shutting
    // down). mosquitto_sub exits on it; those on the pod that stays hear nothing.
    let heard = futures::future::join_all(
        subs.iter_mut()
            .map(|sub| sub.try_line_containing("Received DISCONNECT", Duration::from_secs(45))),
    )
    .await;
    let heard: Vec<String> = heard.into_iter().flatten().collect();
    assert!(
        !heard.is_empty()
            && heard
                .iter()
                .all(|line| line.contains("Received DISCONNECT (139)")),
        "the sessions on the removed pods were drained with DISCONNECT 0x8B (139): {heard:?}"
    );
    let moved = wait_until(
        READY,
        "the rumqttc clients on removed pods to reconnect",
        || async {
            let moved = drained.load(Ordering::SeqCst);
            (moved >= 1).then_some(moved)
        },
    )
    .await;
    // Every drained client is back.
    wait_until(READY, "the drained clients to reconnect", || async {
        (connacks.load(Ordering::SeqCst) >= CLIENTS + moved).then_some(())
    })
    .await;
    eprintln!(
        "scale-down: {} mosquitto_sub sessions told 0x8B, {moved} rumqttc sessions moved",
        heard.len()
    );

    // And up again: at 2 sessions per pod, 7 sessions want 4 pods, capped at the maximum of 2.
    autoscale(
        ns,
        r#"{"minReplicas":1,"maxReplicas":2,"sessionsPerPod":2,"scaleDownStabilizationSeconds":5,"pollIntervalSeconds":2}"#,
    );
    // The Scaling condition is rewritten at each poll; the one written as the scale-up was
    // decided still counts the single pod, so wait for the one after it.
    wait_scaled(
        ns,
        "s-proxy scaled up to 2 pods by its sessions, and the Scaling condition saying so",
        |replicas, status| {
            replicas == 2
                && status["sProxy"]["desiredReplicas"].as_i64() == Some(2)
                && status["conditions"].as_array().is_some_and(|conditions| {
                    conditions.iter().any(|c| {
                        c["type"] == "Scaling"
                            && c["reason"] == "LoadTracked"
                            && c["message"]
                                .as_str()
                                .is_some_and(|m| m.contains("sessions on 2 pods, 2 per pod → 2"))
                    })
                })
        },
    )
    .await;

    // No will was published for a drained session: of the wills the watcher has received by the
    // time a sentinel published now arrives, none is a mosquitto_sub client's (each was drained
    // with 0x8B and did not come back). A rumqttc client's reconnect that raced an earlier,
    // abandoned attempt of its own can take its session over, and MQTT publishes the will of a
    // session taken over; those are shown, not counted.
    watcher
        .publish(
            format!("{wills}/sentinel"),
            QoS::AtLeastOnce,
            false,
            "sentinel",
        )
        .await
        .unwrap();
    let mut before_sentinel = Vec::new();
    super::mqtt::next_5(
        &mut watch_events,
        Duration::from_secs(60),
        "the sentinel at the watcher",
        |p| match p {
            Packet::Publish(publish) if &publish.payload[..] == b"sentinel" => Some(()),
            Packet::Publish(publish) => {
                before_sentinel.push(String::from_utf8_lossy(&publish.topic).into_owned());
                None
            }
            _ => None,
        },
    )
    .await;
    eprintln!("wills before the sentinel: {before_sentinel:?}");
    assert!(
        !before_sentinel.iter().any(|topic| topic.contains("/sub")),
        "a drained session published its will: {before_sentinel:?}"
    );
    for poller in pollers {
        poller.abort();
    }
    drop((clients, subs));
}

/// Topics of `names` that exist in the Kafka at `bootstrap`.
fn existing_topics(bootstrap: &str, names: &[String]) -> Vec<String> {
    use rdkafka::consumer::{BaseConsumer, Consumer as _};
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("allow.auto.create.topics", "false")
        .create()
        .unwrap();
    names
        .iter()
        .filter(|name| {
            let metadata = consumer
                .fetch_metadata(Some(name.as_str()), Duration::from_secs(10))
                .unwrap();
            metadata.topics().iter().any(|t| {
                t.name() == name.as_str() && t.error().is_none() && !t.partitions().is_empty()
            })
        })
        .cloned()
        .collect()
}

/// `deletionPolicy: Delete` set on the running bridge: deleting it deletes the topics it created
/// (this run's messages, retained, sessions and route topics), recorded in
/// `status.createdTopics`.
pub(super) async fn deleting_the_bridge_deletes_the_topics_it_created(
    ns: &str,
    kafka: &str,
    fleet_topics: &str,
) {
    let ours: Vec<String> = ["messages", "retained", "sessions", "readings"]
        .iter()
        .map(|kind| format!("{fleet_topics}-{kind}"))
        .collect();
    let bridge = kubectl_json(&["mqttbridge", "fleet", "-n", ns]).unwrap();
    let mut created: Vec<String> = bridge["status"]["createdTopics"]
        .as_array()
        .map(|topics| {
            topics
                .iter()
                .filter_map(|t| t.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    created.sort();
    let mut expected = ours.clone();
    expected.sort();
    assert_eq!(
        created, expected,
        "status.createdTopics: {}",
        bridge["status"]
    );
    assert_eq!(
        existing_topics(kafka, &ours),
        ours,
        "the topics exist before"
    );
    patch_fleet(ns, r#"{"deletionPolicy":"Delete"}"#);
    wait_until(READY, "the finalizer on the bridge", || async {
        let bridge = kubectl_json(&["mqttbridge", "fleet", "-n", ns])?;
        let finalizers = bridge["metadata"]["finalizers"].as_array()?;
        finalizers
            .iter()
            .any(|f| f == "strait.dev/topics")
            .then_some(())
    })
    .await;
    kubectl_ok(
        &["delete", "mqttbridge", "fleet", "-n", ns, "--wait=false"],
        None,
    );
    wait_until(READY, "the bridge and its topics to be gone", || async {
        let gone = kubectl_json(&["mqttbridge", "fleet", "-n", ns]).is_none();
        (gone && existing_topics(kafka, &ours).is_empty()).then_some(())
    })
    .await;
}
