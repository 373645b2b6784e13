//! `strait-proxy dev` as a process, reached only through what it prints: real MQTT clients
//! (mosquitto_sub/mosquitto_pub) at QoS 0 and 1, a plain Kafka consumer on the printed
//! embedded bootstrap, and a gRPC client calling the demo service through Kafka.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use strait_e2e::{free_local_addr, http_get, unique_name, wait_until};
use strait_proxy::dev::demo::EchoRequest;
use strait_proxy::dev::demo::echo_client::EchoClient;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

const BIN: &str = env!("CARGO_BIN_EXE_strait-proxy");
const READY: Duration = Duration::from_secs(60);

/// `strait-proxy dev` with its stdout (the banner) and stderr (logs) in files.
struct Dev {
    child: Child,
    admin: SocketAddr,
    mqtt: SocketAddr,
    grpc: SocketAddr,
    stdout: PathBuf,
    stderr: PathBuf,
}

impl Dev {
    /// Starts it and waits until `/readyz` says ready and the banner is printed.
    async fn start() -> Self {
        let (admin, mqtt, grpc) = (free_local_addr(), free_local_addr(), free_local_addr());
        let name = unique_name("strait-dev");
        let stdout = std::env::temp_dir().join(format!("{name}.out"));
        let stderr = std::env::temp_dir().join(format!("{name}.log"));
        let child = Command::new(BIN)
            .args([
                "dev",
                "--mqtt",
                &mqtt.to_string(),
                "--grpc",
                &grpc.to_string(),
            ])
            .args(["--metrics-addr", &admin.to_string()])
            .env("RUST_LOG", "info")
            .stdout(std::fs::File::create(&stdout).unwrap())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn strait-proxy dev");
        let mut dev = Self {
            child,
            admin,
            mqtt,
            grpc,
            stdout,
            stderr,
        };
        let ours = format!("admin={admin}");
        let start = tokio::time::Instant::now();
        loop {
            if dev.log().contains(&ours)
                && let Ok((200, _)) = http_get(admin, "/readyz").await
            {
                break;
            }
            if let Ok(Some(status)) = dev.child.try_wait() {
                panic!("dev exited with {status}\n{}", dev.log());
            }
            assert!(start.elapsed() < READY, "dev not ready\n{}", dev.log());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // Ready is set right after the banner is written.
        wait_until(Duration::from_secs(5), "the banner", || async {
            dev.banner()
                .contains("Ctrl-C stops everything")
                .then_some(())
        })
        .await;
        dev
    }

    fn banner(&self) -> String {
        std::fs::read_to_string(&self.stdout).unwrap_or_default()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.stderr).unwrap_or_default()
    }

    /// The bootstrap address the banner gives for Kafka.
    fn bootstrap(&self) -> String {
        let banner = self.banner();
        let line = banner
            .lines()
            .find(|l| l.starts_with("Kafka "))
            .unwrap_or_else(|| panic!("no Kafka line in the banner:\n{banner}"));
        line.split_whitespace().nth(1).unwrap().to_string()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_and_grpc_through_the_embedded_kafka_and_a_kafka_client_reads_it() {
    let mut dev = Dev::start().await;
    let banner = dev.banner();
    let (host, port) = (dev.mqtt.ip().to_string(), dev.mqtt.port().to_string());
    for expected in [
        format!("mosquitto_sub -h {host} -p {port} -t 'demo/#' -v"),
        format!("mosquitto_pub -h {host} -p {port} -t demo/hello -m hi"),
        "in-memory, for trying out; nothing survives a restart".to_string(),
        format!("http://{}/metrics", dev.admin),
        format!("{} strait.demo.v1.Echo/Say", dev.grpc),
        format!("kcat -b {}", dev.bootstrap()),
    ] {
        assert!(banner.contains(&expected), "{expected:?} not in:\n{banner}");
    }

    // MQTT: the printed mosquitto_sub, at QoS 1, sees QoS 0 and QoS 1 publishes.
    let common = ["-h", &host, "-p", &port, "-d"];
    let mut sub = Command::new("stdbuf")
        .args(["-oL", "mosquitto_sub"])
        .args(common)
        .args(["-t", "demo/#", "-v", "-q", "1", "-C", "2", "-W", "60"])
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("mosquitto_sub (Debian package mosquitto-clients)");
    let mut lines = BufReader::new(sub.stdout.take().unwrap()).lines();
    let mut sub_out = Vec::new();
    tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            let subscribed = line.contains("received SUBACK");
            sub_out.push(line);
            if subscribed {
                return;
            }
        }
        panic!("mosquitto_sub ended before its SUBACK: {sub_out:?}");
    })
    .await
    .unwrap_or_else(|_| panic!("no SUBACK: {sub_out:?}\n{}", dev.log()));

    for (qos, topic, payload) in [("0", "demo/zero", "hi-q0"), ("1", "demo/one", "hi-q1")] {
        let publish = tokio::time::timeout(
            Duration::from_secs(20),
            Command::new("mosquitto_pub")
                .args(common)
                .args(["-q", qos, "-t", topic, "-m", payload])
                .output(),
        )
        .await
        .expect("mosquitto_pub finishes")
        .expect("mosquitto_pub runs");
        let out = String::from_utf8_lossy(&publish.stdout);
        assert!(publish.status.success(), "mosquitto_pub -q {qos}: {out}");
        if qos == "1" {
            assert!(out.contains("received PUBACK"), "no PUBACK: {out}");
        }
    }
    tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(line) = lines.next_line().await.unwrap() {
            sub_out.push(line);
        }
    })
    .await
    .unwrap_or_else(|_| panic!("mosquitto_sub did not get both: {sub_out:?}\n{}", dev.log()));
    for expected in ["demo/zero hi-q0", "demo/one hi-q1"] {
        assert!(
            sub_out.iter().any(|l| l == expected),
            "{expected:?} not delivered: {sub_out:?}"
        );
    }

    // Kafka: a plain consumer on the printed bootstrap finds the QoS 1 message on mqtt-messages.
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", dev.bootstrap())
        .set("group.id", unique_name("dev-test"))
        .set("enable.auto.commit", "false")
        .create()
        .unwrap();
    let mut partitions = TopicPartitionList::new();
    for p in 0..3 {
        partitions
            .add_partition_offset("mqtt-messages", p, Offset::Beginning)
            .unwrap();
    }
    consumer.assign(&partitions).unwrap();
    let record = tokio::task::spawn_blocking(move || {
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while std::time::Instant::now() < deadline {
            if let Some(Ok(record)) = consumer.poll(Duration::from_millis(200))
                && record.key() == Some(b"demo/one".as_slice())
            {
                return Some(record.payload().map(<[u8]>::to_vec));
            }
        }
        None
    })
    .await
    .unwrap();
    assert_eq!(
        record,
        Some(Some(b"hi-q1".to_vec())),
        "the demo/one record on mqtt-messages"
    );

    // gRPC: the demo service answers through Kafka, unary and server streaming.
    let mut client = EchoClient::connect(format!("http://{}", dev.grpc))
        .await
        .expect("connect to grpc-kafka");
    let reply = client
        .say(EchoRequest {
            text: "hi".into(),
            count: 0,
        })
        .await
        .unwrap_or_else(|status| panic!("Say: {status:?}\n{}", dev.log()))
        .into_inner();
    assert_eq!(reply.text, "hi");
    let mut stream = client
        .repeat(EchoRequest {
            text: "again".into(),
            count: 3,
        })
        .await
        .expect("Repeat")
        .into_inner();
    let mut replies = Vec::new();
    while let Some(reply) = stream.message().await.expect("Repeat stream") {
        replies.push((reply.text, reply.index));
    }
    assert_eq!(
        replies,
        [1, 2, 3].map(|i| ("again".to_string(), i)),
        "three numbered answers"
    );

    // Ctrl-C stops everything cleanly.
    let pid = dev.child.id().unwrap().to_string();
    let signalled = std::process::Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .unwrap();
    assert!(signalled.success());
    let status = tokio::time::timeout(Duration::from_secs(30), dev.child.wait())
        .await
        .unwrap_or_else(|_| panic!("no exit within 30 s of SIGINT\n{}", dev.log()))
        .unwrap();
    assert!(status.success(), "exit status {status}\n{}", dev.log());
}

#[test]
fn help_labels_the_embedded_kafka() {
    let output = std::process::Command::new(BIN)
        .args(["dev", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&output.stdout);
    assert!(output.status.success());
    for expected in [
        "in-memory, for trying out; nothing survives a restart",
        "--kafka",
        "--mqtt",
        "--grpc",
    ] {
        assert!(help.contains(expected), "{expected:?} not in:\n{help}");
    }
}
