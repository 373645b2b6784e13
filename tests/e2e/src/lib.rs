//! Harness for Strait's end-to-end tests.
//!
//! The services (Kafka, Mosquitto, a Kubernetes control plane) are started by
//! `tests/e2e/services up`, and their addresses reach the tests as environment variables
//! (`eval "$(tests/e2e/services env)"`, which `tests/e2e/run` does). A test asks for each peer
//! with [`service`]: under `CI=true` a missing service fails the test; on a developer machine the
//! test is skipped with a loud message, so `cargo test` alone still runs the unit tests.

pub mod cluster;
pub mod jwt;
pub mod pki;

use std::future::Future;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// The value of `var`, published by `tests/e2e/services env` for `service`.
///
/// Returns `None` (after printing why) when the service is not running outside CI; panics in CI.
pub fn service(var: &str, service: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(value) if !value.is_empty() => Some(value),
        _ if in_ci() => panic!(
            "{var} is not set: the {service} service is required in CI \
             (run `tests/e2e/services up {service}` and `eval \"$(tests/e2e/services env)\"`)"
        ),
        _ => {
            // Straight to stderr: the test harness captures eprintln! of passing tests.
            use std::io::Write;
            let _ = writeln!(
                std::io::stderr(),
                "\n!!! SKIPPING {}: {var} is not set, so {service} is not running. \
                 Start it with `tests/e2e/services up {service}` and \
                 `eval \"$(tests/e2e/services env)\"`, or run everything with `tests/e2e/run`.\n",
                std::thread::current().name().unwrap_or("test"),
            );
            None
        }
    }
}

/// `let x = require!("VAR", "service");` returns from the test early when the service is absent
/// outside CI (see [`service`]).
#[macro_export]
macro_rules! require {
    ($var:expr, $service:expr) => {
        match $crate::service($var, $service) {
            Some(value) => value,
            None => return,
        }
    };
}

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// A name no other test run has used: `prefix-<pid>-<nanos>`, valid for Kafka topics, MQTT
/// topics and Kubernetes objects.
pub fn unique_name(prefix: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .subsec_nanos();
    format!("{prefix}-{}-{nanos}", std::process::id())
}

/// Polls `check` every 200 ms until it returns `Some`, or panics naming `what` after `deadline`.
pub async fn wait_until<T, F, Fut>(deadline: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            start.elapsed() < deadline,
            "timed out after {deadline:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A plain HTTP/1.1 GET (enough for admin endpoints): the status code and the body.
pub async fn http_get(addr: std::net::SocketAddr, path: &str) -> std::io::Result<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await?;
    let bad = || std::io::Error::new(std::io::ErrorKind::InvalidData, "malformed HTTP response");
    let status = response
        .get(9..12)
        .and_then(|s| s.parse().ok())
        .ok_or_else(bad)?;
    let body = response
        .split_once("\r\n\r\n")
        .ok_or_else(bad)?
        .1
        .to_string();
    Ok((status, body))
}

/// A loopback address with a port that was free a moment ago, for a child process to bind.
///
/// The port comes from just below the kernel's ephemeral range: a port the kernel handed out
/// (`bind :0`) can be handed out again to any outgoing connection (a Kafka client, say) before
/// the child binds it, which made tests fail with "Address already in use". Below the range
/// only explicit binds compete, and each test process walks its own stretch of it.
pub fn free_local_addr() -> std::net::SocketAddr {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    const SPAN: u32 = 12_000;
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse::<u32>().ok())
        .filter(|low| *low > SPAN + 1024)
        .unwrap_or(32_768);
    let start = std::process::id().wrapping_mul(7_919) % SPAN;
    for _ in 0..SPAN {
        let offset = (start + NEXT.fetch_add(1, Ordering::Relaxed)) % SPAN;
        let port = u16::try_from(ephemeral_low - SPAN + offset).expect("port in range");
        if let Ok(listener) = std::net::TcpListener::bind(("127.0.0.1", port)) {
            return listener
                .local_addr()
                .expect("local address of a bound listener");
        }
    }
    panic!("no free port below the ephemeral range {ephemeral_low}")
}

/// A Strait process started by a test: its admin endpoint tells when it is ready, its stderr
/// goes to a log file that failing assertions can show, and it is killed when dropped.
pub struct Daemon {
    child: tokio::process::Child,
    pub admin: std::net::SocketAddr,
    log: std::path::PathBuf,
}

impl Daemon {
    /// Runs `program args… --metrics-addr <free port>` and waits until `/readyz` answers 200.
    pub async fn start(program: &str, args: &[&str]) -> Self {
        Self::start_with_env(program, args, &[]).await
    }

    /// As [`Daemon::start`], with extra environment variables.
    pub async fn start_with_env(program: &str, args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut daemon = Self::spawn_with_env(program, args, env);
        let what = format!("{program} {} to be ready", args.join(" "));
        daemon
            .wait_for(Duration::from_secs(30), &what, |status, _| {
                status == Some(200)
            })
            .await;
        daemon
    }

    /// Runs `program args… --metrics-addr <free port>` without waiting for anything: for a
    /// process a test expects to stay not ready ([`Daemon::readyz`], [`Daemon::wait_for_log`]).
    pub fn spawn(program: &str, args: &[&str]) -> Self {
        Self::spawn_with_env(program, args, &[])
    }

    fn spawn_with_env(program: &str, args: &[&str], env: &[(&str, &str)]) -> Self {
        let admin = free_local_addr();
        let log = std::env::temp_dir().join(format!("{}.log", unique_name("strait-daemon")));
        let file = std::fs::File::create(&log).expect("create daemon log");
        let child = tokio::process::Command::new(program)
            .args(args)
            .arg("--metrics-addr")
            .arg(admin.to_string())
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .envs(env.iter().copied())
            .stdout(std::process::Stdio::null())
            .stderr(file)
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {program}: {e}"));
        Self { child, admin, log }
    }

    /// The status `/readyz` answers, `None` until this process serves its admin endpoint (the
    /// port was free when picked; another process may have taken it since, so the endpoint
    /// only counts once our child logged that it serves it).
    pub async fn readyz(&self) -> Option<u16> {
        if !self.log().contains(&format!("admin={}", self.admin)) {
            return None;
        }
        http_get(self.admin, "/readyz")
            .await
            .ok()
            .map(|(status, _)| status)
    }

    /// Waits until the log contains `text`, panicking (with the log) if the process exits or
    /// `deadline` passes first.
    pub async fn wait_for_log(&mut self, text: &str, deadline: Duration) {
        let what = format!("{text:?} in the log");
        self.wait_for(deadline, &what, |_, log| log.contains(text))
            .await;
    }

    /// Polls `/readyz` and the log every 50 ms until `done(status, log)`; panics with the log
    /// if the process exits or `deadline` passes.
    async fn wait_for(
        &mut self,
        deadline: Duration,
        what: &str,
        mut done: impl FnMut(Option<u16>, &str) -> bool,
    ) {
        let until = Instant::now() + deadline;
        loop {
            if done(self.readyz().await, &self.log()) {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("{what}: exited with {status}\n{}", self.log());
            }
            assert!(
                Instant::now() < until,
                "timed out after {deadline:?} waiting for {what}\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Whether the process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// What the process wrote to stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The most resident memory the process has used so far, in KiB (`VmHWM` of /proc): a
    /// buffer allocated and freed again still shows.
    pub fn peak_rss_kib(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()?)).ok()?;
        let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
        line.split_whitespace().nth(1)?.parse().ok()
    }

    /// The process's threads now (`Threads` of /proc).
    pub fn threads(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()?)).ok()?;
        let line = status.lines().find(|l| l.starts_with("Threads:"))?;
        line.split_whitespace().nth(1)?.parse().ok()
    }

    /// SIGKILL: the process gets no chance to clean up.
    pub async fn kill(&mut self) {
        let _ = self.child.kill().await;
    }

    /// SIGTERM, then waits up to `deadline` for the exit status.
    pub async fn terminate(&mut self, deadline: Duration) -> std::process::ExitStatus {
        let pid = self.child.id().expect("still running").to_string();
        let signalled = std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status();
        assert!(signalled.is_ok_and(|s| s.success()), "kill -TERM {pid}");
        tokio::time::timeout(deadline, self.child.wait())
            .await
            .unwrap_or_else(|_| panic!("no exit within {deadline:?} of SIGTERM\n{}", self.log()))
            .expect("wait for exit")
    }
}

/// A Kafka client of consumer group `group` that never joins it: what a test uses to read or
/// set the offsets the group has committed, as one of its members would.
pub fn group_offsets_client(bootstrap: &str, group: &str) -> rdkafka::consumer::BaseConsumer {
    rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()
        .expect("a Kafka consumer")
}

/// The keys of the records on `topic` that start with `key_prefix`, read from the beginning
/// until `want` of them are found (or 60 s pass, returning what was found): what a Kafka
/// consumer of the user's would see.
pub async fn kafka_record_keys(
    bootstrap: &str,
    topic: &str,
    key_prefix: &str,
    want: usize,
) -> Vec<String> {
    use rdkafka::Message as _;
    use rdkafka::consumer::{Consumer as _, StreamConsumer};
    let consumer: StreamConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", bootstrap)
        .set("group.id", unique_name("e2e-reader"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .create()
        .expect("a Kafka consumer");
    consumer.subscribe(&[topic]).expect("subscribe");
    let mut keys = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while keys.len() < want && Instant::now() < deadline {
        let Ok(Ok(message)) = tokio::time::timeout(Duration::from_secs(1), consumer.recv()).await
        else {
            continue;
        };
        let key = String::from_utf8_lossy(message.key().unwrap_or_default()).into_owned();
        if key.starts_with(key_prefix) {
            keys.push(key);
        }
    }
    keys
}
