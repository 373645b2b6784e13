//! The processes under test: r-proxy and s-proxy started as children, the broker found by its
//! port, and what `/proc` says about each (CPU time, resident memory, limits).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, Command};

/// `/proc/<pid>/stat` counts CPU time in clock ticks of `USER_HZ`, which Linux fixes at 100 on
/// every mainstream architecture (x86, arm64); `getconf CLK_TCK` shows it. So readings have a
/// 10 ms resolution, which is why cases run for seconds.
const TICKS_PER_SECOND: u64 = 100;

/// How long a proxy may take to answer 200 on `/readyz`.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// A process whose CPU time and memory a case reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    Broker,
    RProxy,
    SProxy,
    /// This process: the load generator.
    Bench,
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Self::Broker => "mosquitto",
            Self::RProxy => "r-proxy",
            Self::SProxy => "s-proxy",
            Self::Bench => "bench",
        }
    }
}

/// The processes a case watches, by role.
#[derive(Debug, Clone, Default)]
pub struct Watched(Vec<(Role, u32)>);

impl Watched {
    pub fn new(broker: Option<u32>) -> Self {
        let mut list = vec![(Role::Bench, std::process::id())];
        list.extend(broker.map(|pid| (Role::Broker, pid)));
        Self(list)
    }

    pub fn with_relay(&self, relay: &Relay) -> Self {
        let mut list = self.0.clone();
        list.push((Role::RProxy, relay.r_proxy.pid));
        list.push((Role::SProxy, relay.s_proxy.pid));
        Self(list)
    }

    /// The processes watched, by role.
    pub fn processes(&self) -> &[(Role, u32)] {
        &self.0
    }

    /// User + system CPU time of each process now (a process that vanished is left out).
    pub fn cpu(&self) -> BTreeMap<Role, Duration> {
        self.0
            .iter()
            .filter_map(|&(role, pid)| cpu_time(pid).ok().map(|t| (role, t)))
            .collect()
    }

    /// Resident memory of each process now, in KiB.
    pub fn rss_kib(&self) -> BTreeMap<Role, u64> {
        self.0
            .iter()
            .filter_map(|&(role, pid)| rss_kib(pid).ok().map(|kib| (role, kib)))
            .collect()
    }
}

/// CPU µs per message for each process between two [`Watched::cpu`] readings.
pub fn cpu_us_per_message(
    before: &BTreeMap<Role, Duration>,
    after: &BTreeMap<Role, Duration>,
    messages: u64,
) -> BTreeMap<Role, f64> {
    after
        .iter()
        .filter_map(|(role, end)| {
            let used = end.saturating_sub(*before.get(role)?);
            Some((*role, used.as_secs_f64() * 1e6 / messages.max(1) as f64))
        })
        .collect()
}

/// utime + stime of a process, from `/proc/<pid>/stat` (all its threads).
pub fn cpu_time(pid: u32) -> anyhow::Result<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // The command name (field 2) is in parentheses and may hold spaces: count from after it.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .context("malformed /proc/<pid>/stat")?
        .1
        .split_whitespace()
        .collect();
    // Fields 14 (utime) and 15 (stime) of proc(5); `fields[0]` is field 3.
    let ticks = |i: usize| -> anyhow::Result<u64> {
        Ok(fields.get(i).context("short /proc/<pid>/stat")?.parse()?)
    };
    let total = ticks(11)? + ticks(12)?;
    Ok(Duration::from_millis(total * 1000 / TICKS_PER_SECOND))
}

/// VmRSS of a process in KiB, from `/proc/<pid>/status`.
pub fn rss_kib(pid: u32) -> anyhow::Result<u64> {
    status_field(pid, "VmRSS:")?
        .trim_end_matches("kB")
        .trim()
        .parse()
        .context("parsing VmRSS")
}

/// Threads of a process, from `/proc/<pid>/status`.
pub fn threads(pid: u32) -> anyhow::Result<u64> {
    status_field(pid, "Threads:")?
        .trim()
        .parse()
        .context("parsing Threads")
}

/// The soft "Max open files" limit of a process, from `/proc/<pid>/limits`.
pub fn open_files_limit(pid: u32) -> Option<u64> {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

fn status_field(pid: u32, name: &str) -> anyhow::Result<String> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix(name))
        .map(str::to_owned)
        .with_context(|| format!("no {name} in /proc/{pid}/status"))
}

/// A TCP socket of this machine's network namespace, from `/proc/<pid>/net/tcp{,6}`.
struct TcpSocket {
    local_port: u16,
    remote_port: u16,
    /// `0A` listening, `01` established (`include/net/tcp_states.h`, in hex).
    state: String,
    inode: String,
}

const LISTEN: &str = "0A";
const ESTABLISHED: &str = "01";

/// The TCP sockets `/proc/<pid>/net/tcp` and `tcp6` list (`self` for this process's namespace).
fn tcp_sockets(pid: &str) -> Vec<TcpSocket> {
    let port = |address: &str| {
        address
            .rsplit_once(':')
            .and_then(|(_, port)| u16::from_str_radix(port, 16).ok())
    };
    ["tcp", "tcp6"]
        .iter()
        .filter_map(|table| std::fs::read_to_string(format!("/proc/{pid}/net/{table}")).ok())
        .flat_map(|text| {
            text.lines()
                .skip(1)
                .filter_map(|line| {
                    // sl local_address rem_address st tx:rx tr:when retrnsmt uid timeout inode
                    let cols: Vec<&str> = line.split_whitespace().collect();
                    Some(TcpSocket {
                        local_port: port(cols.get(1)?)?,
                        remote_port: port(cols.get(2)?)?,
                        state: cols.get(3)?.to_string(),
                        inode: cols.get(9)?.to_string(),
                    })
                })
                .collect::<Vec<_>>()
        })
        .collect()
}

/// The `socket:[inode]` links of a process's file descriptors.
fn socket_links(pid: u32) -> std::io::Result<Vec<std::ffi::OsString>> {
    Ok(std::fs::read_dir(format!("/proc/{pid}/fd"))?
        .flatten()
        .filter_map(|fd| std::fs::read_link(fd.path()).ok())
        .map(PathBuf::into_os_string)
        .collect())
}

/// The process listening on `port` on this machine, found the way `ss -ltnp` does: the
/// listening socket's inode from `/proc/net/tcp{,6}`, then the process holding a file
/// descriptor `socket:[inode]` under `/proc/*/fd`. `None` if not found (for instance a process
/// of another user whose descriptors cannot be read).
pub fn listener_pid(port: u16) -> Option<u32> {
    let inode = tcp_sockets("self")
        .into_iter()
        .find(|s| s.state == LISTEN && s.local_port == port)?
        .inode;
    let wanted = std::ffi::OsString::from(format!("socket:[{inode}]"));
    std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .find_map(|entry| {
            let pid = entry.file_name().to_str()?.parse().ok()?;
            socket_links(pid).ok()?.contains(&wanted).then_some(pid)
        })
}

/// Established TCP connections process `pid` holds to remote port `port` (what
/// `ss -tnp state established dport = :PORT` shows for it).
pub fn connections_to(pid: u32, port: u16) -> anyhow::Result<usize> {
    let held = socket_links(pid).with_context(|| format!("reading /proc/{pid}/fd"))?;
    let held: std::collections::HashSet<_> = held.into_iter().collect();
    Ok(tcp_sockets(&pid.to_string())
        .into_iter()
        .filter(|s| s.state == ESTABLISHED && s.remote_port == port)
        .filter(|s| held.contains(std::ffi::OsStr::new(&format!("socket:[{}]", s.inode))))
        .count())
}

/// The strait-proxy binary to start: `given`, or the one next to this executable (the same
/// cargo target directory and profile).
pub fn proxy_bin(given: Option<&Path>) -> anyhow::Result<PathBuf> {
    let bin = match given {
        Some(bin) => bin.to_path_buf(),
        None => std::env::current_exe()?.with_file_name("strait-proxy"),
    };
    anyhow::ensure!(
        bin.is_file(),
        "{} not found: build it (cargo build --release -p strait-proxy) or pass --proxy-bin",
        bin.display()
    );
    Ok(bin)
}

/// The strait-proxy processes a benchmark starts: which binary, and extra flags for each role.
#[derive(Debug, Clone, clap::Args)]
pub struct ProxyArgs {
    /// The strait-proxy binary to start as r-proxy and s-proxy [default: strait-proxy next to
    /// this executable, i.e. the same cargo target directory and profile].
    #[arg(long)]
    pub proxy_bin: Option<PathBuf>,

    /// Extra flag for r-proxy (repeat; e.g. --r-proxy-arg=--worker-threads=1).
    #[arg(long, allow_hyphen_values = true)]
    pub r_proxy_arg: Vec<String>,

    /// Extra flag for s-proxy (repeat).
    #[arg(long, allow_hyphen_values = true)]
    pub s_proxy_arg: Vec<String>,
}

impl ProxyArgs {
    /// The binary to start: see [`proxy_bin`].
    pub fn bin(&self) -> anyhow::Result<PathBuf> {
        proxy_bin(self.proxy_bin.as_deref())
    }

    /// How to start the relay from `bin` (see [`ProxyArgs::bin`]) with these flags.
    pub fn relay(&self, bin: PathBuf, upstream: Vec<String>, log_dir: PathBuf) -> RelaySpec {
        RelaySpec {
            bin,
            upstream,
            r_proxy_args: self.r_proxy_arg.clone(),
            s_proxy_args: self.s_proxy_arg.clone(),
            log_dir,
        }
    }
}

/// A loopback address whose port was free a moment ago, for a child process to bind.
pub fn free_local_addr() -> anyhow::Result<SocketAddr> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("binding a free port")?;
    Ok(listener.local_addr()?)
}

/// A `strait-proxy` role running as a child process. It is killed when dropped, so an error or
/// Ctrl-C anywhere in the benchmark leaves no proxy behind.
pub struct Daemon {
    child: Child,
    pub pid: u32,
    log: PathBuf,
}

impl Daemon {
    /// Runs `bin args… --metrics-addr <free port>`, stderr to `log`, and waits until `/readyz`
    /// answers 200 and `listen` accepts connections.
    pub async fn start(
        bin: &Path,
        args: &[String],
        listen: SocketAddr,
        log: PathBuf,
    ) -> anyhow::Result<Self> {
        let admin = free_local_addr()?;
        let stderr = std::fs::File::options()
            .create(true)
            .append(true)
            .open(&log)
            .with_context(|| format!("creating {}", log.display()))?;
        let child = Command::new(bin)
            .args(args)
            .arg("--metrics-addr")
            .arg(admin.to_string())
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let pid = child.id().context("child exited at once")?;
        let mut daemon = Self { child, pid, log };
        let what = format!("{} {}", bin.display(), args.join(" "));
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Ok(200) = http_status(admin, "/readyz").await
                && tokio::net::TcpStream::connect(listen).await.is_ok()
            {
                return Ok(daemon);
            }
            if let Some(status) = daemon.child.try_wait()? {
                bail!("`{what}` exited with {status}:\n{}", daemon.log_tail());
            }
            if Instant::now() > deadline {
                bail!(
                    "`{what}` not ready after {READY_TIMEOUT:?}:\n{}",
                    daemon.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The last lines the process wrote to stderr.
    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// Fails with the log if the process has exited (crashed) since it started.
    pub fn check_running(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!(
                "strait-proxy (pid {}) exited with {status}:\n{}",
                self.pid,
                self.log_tail()
            );
        }
        Ok(())
    }

    pub async fn stop(mut self) {
        let _ = self.child.kill().await;
    }
}

/// s-proxy in front of the upstream and r-proxy in front of s-proxy, on free loopback ports.
pub struct Relay {
    pub s_proxy: Daemon,
    pub r_proxy: Daemon,
    /// Where MQTT clients connect (r-proxy's listener).
    pub mqtt: SocketAddr,
}

/// How to start the relay: the binary, the broker, extra flags, where logs go.
#[derive(Debug, Clone)]
pub struct RelaySpec {
    pub bin: PathBuf,
    /// s-proxy's upstream flags, e.g. `--broker HOST:PORT` or `--config FILE`.
    pub upstream: Vec<String>,
    pub r_proxy_args: Vec<String>,
    pub s_proxy_args: Vec<String>,
    pub log_dir: PathBuf,
}

impl Relay {
    pub async fn start(spec: &RelaySpec) -> anyhow::Result<Self> {
        let grpc = free_local_addr()?;
        let mut args: Vec<String> = ["s-proxy", "--listen", &grpc.to_string()]
            .into_iter()
            .map(String::from)
            .collect();
        args.extend(spec.upstream.iter().cloned());
        args.extend(spec.s_proxy_args.iter().cloned());
        let s_proxy =
            Daemon::start(&spec.bin, &args, grpc, spec.log_dir.join("s-proxy.log")).await?;

        let mqtt = free_local_addr()?;
        let mut args: Vec<String> = ["r-proxy", "--listen", &mqtt.to_string()]
            .into_iter()
            .chain(["--s-proxy", &format!("http://{grpc}")])
            .map(String::from)
            .collect();
        args.extend(spec.r_proxy_args.iter().cloned());
        let r_proxy =
            Daemon::start(&spec.bin, &args, mqtt, spec.log_dir.join("r-proxy.log")).await?;
        Ok(Self {
            s_proxy,
            r_proxy,
            mqtt,
        })
    }

    /// Fails if either proxy died during a case (its figures would be meaningless).
    pub fn check_running(&mut self) -> anyhow::Result<()> {
        self.s_proxy.check_running()?;
        self.r_proxy.check_running()
    }

    pub async fn stop(self) {
        self.r_proxy.stop().await;
        self.s_proxy.stop().await;
    }
}

/// The status code of a plain HTTP/1.1 GET (enough for the admin endpoints).
async fn http_status(addr: SocketAddr, path: &str) -> anyhow::Result<u16> {
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).await?;
    let status = std::str::from_utf8(response.get(9..12).context("short HTTP response")?)?;
    Ok(status.parse()?)
}
