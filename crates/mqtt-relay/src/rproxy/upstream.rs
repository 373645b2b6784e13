//! The link to s-proxy: a few HTTP/2 connections per s-proxy, each carrying many sessions.
//!
//! Each configured endpoint is one s-proxy, or, with `sProxy.discover`, a DNS name standing for
//! all of them (a headless Service): it is resolved again every `resolveInterval`, so s-proxy pods
//! that come are used at once and pods that go are left. A new session goes to the s-proxy with
//! the fewest sessions from this r-proxy (ties in turn), skipping any that refuses.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use strait_runtime::Context as _;

use crate::RelayError;
use strait_relay::v1::{ClientFrame, ServerFrame};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::transport::{Channel, Endpoint, Uri};

use super::link_tls::Connector;

use strait_config::relay::SProxyLink;
use strait_relay::rules::{FRAME_QUEUE, link, max_frame_size};

pub struct SProxyPool {
    configured: Vec<Configured>,
    per_endpoint: usize,
    discover: bool,
    resolve_interval: Duration,
    /// The s-proxies sessions go to now (replaced whole when discovery finds a change).
    targets: RwLock<Arc<Vec<Arc<Target>>>>,
    next: AtomicUsize,
    /// Largest relay frame either way.
    max_message: usize,
    /// The clock of the targets' `unreachable_until`.
    clock: std::time::Instant,
}

/// One entry of `sProxy.endpoints`.
struct Configured {
    uri: Uri,
    /// TLS for an `https://` endpoint: the connector for the endpoint itself, whose settings
    /// discovered addresses share.
    tls: Option<Connector>,
}

/// One s-proxy: its channels and how many sessions this r-proxy has open on it.
struct Target {
    uri: Uri,
    /// The configured endpoint it stands for (its index in `configured`).
    source: usize,
    addr: Option<SocketAddr>,
    channels: Vec<Channel>,
    sessions: Arc<AtomicUsize>,
    /// Until when (ms on the pool's clock) the s-proxy is tried last: an attempt at it failed
    /// slowly (a pod that went away stays in DNS answers for a while, and each attempt at it
    /// can cost a whole connect timeout).
    unreachable_until: AtomicU64,
}

/// An open relay stream: frames go out through `to_server`, come back from `from_server`.
pub struct RelayStream {
    pub endpoint: Uri,
    pub to_server: mpsc::Sender<ClientFrame>,
    pub from_server: strait_relay::Incoming<ServerFrame>,
    /// Counts the session against its s-proxy while it lives.
    pub load: SessionLoad,
}

/// One session's share of an s-proxy's load, released when the session ends.
pub struct SessionLoad(Arc<AtomicUsize>);

impl Drop for SessionLoad {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

fn endpoint(uri: Uri) -> Endpoint {
    Endpoint::from(uri)
        .tcp_nodelay(true)
        // In a cluster a connect takes milliseconds; one to a pod that is gone should not hold a
        // client's CONNECT for long before the next s-proxy is tried.
        .connect_timeout(Duration::from_secs(2))
        .http2_keep_alive_interval(Duration::from_secs(20))
        .keep_alive_timeout(Duration::from_secs(10))
        .keep_alive_while_idle(true)
        .initial_connection_window_size(link::CONNECTION_WINDOW)
        .initial_stream_window_size(link::STREAM_WINDOW)
        .max_frame_size(link::MAX_FRAME)
}

impl Configured {
    /// The s-proxy at `addr` (a discovered address), or the endpoint itself.
    fn target(
        &self,
        source: usize,
        addr: Option<SocketAddr>,
        per_endpoint: usize,
    ) -> Result<Target, RelayError> {
        let uri: Uri = match addr {
            Some(addr) => format!("{}://{addr}", self.uri.scheme_str().unwrap_or("http"))
                .parse()
                .expect("scheme and socket address"),
            None => self.uri.clone(),
        };
        let connector = match &self.tls {
            // A discovered address is checked against the endpoint's own name.
            Some(tls) => Some(
                tls.at(&uri)
                    .with_context(|| format!("sProxy.endpoints: {uri}"))?,
            ),
            None => None,
        };
        let tonic_uri = connector
            .as_ref()
            .map_or_else(|| uri.clone(), Connector::plain_uri);
        let endpoint = endpoint(tonic_uri);
        let channels = (0..per_endpoint)
            .map(|_| match &connector {
                Some(connector) => endpoint.connect_with_connector_lazy(connector.clone()),
                None => endpoint.connect_lazy(),
            })
            .collect();
        Ok(Target {
            uri,
            source,
            addr,
            channels,
            sessions: Arc::default(),
            unreachable_until: AtomicU64::new(0),
        })
    }

    /// Every address the endpoint's host resolves to, sorted.
    async fn resolve(&self) -> std::io::Result<Vec<SocketAddr>> {
        let host = self.uri.host().unwrap_or_default();
        let host = host.trim_start_matches('[').trim_end_matches(']');
        let port = self.uri.port_u16().unwrap_or(match self.uri.scheme_str() {
            Some("https") => 443,
            _ => 80,
        });
        let mut addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, port)).await?.collect();
        addrs.sort();
        addrs.dedup();
        Ok(addrs)
    }
}

impl SProxyPool {
    pub async fn new(link: &SProxyLink, max_packet_size: u32) -> Result<Self, RelayError> {
        let per_endpoint = link.connections_per_endpoint.max(1);
        let tls = &link.tls;
        // One reloading TLS config for every endpoint: the files are read once per change.
        let link_tls = match link.endpoints.iter().any(|e| e.starts_with("https://")) {
            true => {
                let ca = tls
                    .ca
                    .clone()
                    .context("sProxy.tls.ca is required for https:// endpoints")?;
                Some(
                    strait_tls::reload::client_config(tls, ca, &[b"h2"])
                        .context("loading sProxy.tls")?,
                )
            }
            false => None,
        };
        let mut configured = Vec::new();
        for endpoint in &link.endpoints {
            let uri: Uri = endpoint
                .parse()
                .with_context(|| format!("sProxy.endpoints: {endpoint:?} is not a URL"))?;
            let tls = match (&link_tls, uri.scheme_str()) {
                (Some(link_tls), Some("https")) => Some(
                    Connector::new(&uri, link.server_name.as_deref(), link_tls.clone())
                        .with_context(|| format!("sProxy.endpoints: {uri}"))?,
                ),
                _ if tls.ca.is_some() || tls.cert.is_some() => {
                    return Err(strait_runtime::Failed::new(format!(
                        "{uri}: sProxy.tls is set but the endpoint is not https://"
                    ))
                    .into());
                }
                _ => None,
            };
            configured.push(Configured { uri, tls });
        }
        if configured.is_empty() {
            return Err(strait_runtime::Failed::new("no s-proxy endpoint given").into());
        }
        let pool = Self {
            configured,
            per_endpoint,
            discover: link.discover,
            resolve_interval: link.resolve_interval,
            targets: RwLock::default(),
            next: AtomicUsize::new(0),
            max_message: max_frame_size(max_packet_size),
            clock: std::time::Instant::now(),
        };
        pool.refresh().await?;
        Ok(pool)
    }

    /// Rebuilds the targets: each configured endpoint as it is, or, with discovery, each address
    /// its host resolves to now. A target whose address stays keeps its channels and load; a
    /// name that does not resolve keeps the addresses it had.
    async fn refresh(&self) -> Result<(), RelayError> {
        let current = self.targets.read().expect("never poisoned").clone();
        let mut next = Vec::new();
        for (source, configured) in self.configured.iter().enumerate() {
            let from_here = || current.iter().filter(move |t| t.source == source);
            if !self.discover {
                match from_here().next() {
                    Some(kept) => next.push(kept.clone()),
                    None => next.push(Arc::new(configured.target(
                        source,
                        None,
                        self.per_endpoint,
                    )?)),
                }
                continue;
            }
            let addrs = match configured.resolve().await {
                Ok(addrs) if !addrs.is_empty() => addrs,
                result => {
                    let error = result.err().map(|e| e.to_string()).unwrap_or_default();
                    tracing::warn!(endpoint = %configured.uri, %error, "s-proxy endpoint resolves to no address; keeping the last ones");
                    next.extend(from_here().cloned());
                    continue;
                }
            };
            for addr in addrs {
                match from_here().find(|t| t.addr == Some(addr)) {
                    Some(kept) => next.push(kept.clone()),
                    None => next.push(Arc::new(configured.target(
                        source,
                        Some(addr),
                        self.per_endpoint,
                    )?)),
                }
            }
        }
        let added: Vec<String> = (next.iter())
            .filter(|t| !current.iter().any(|c| Arc::ptr_eq(c, t)))
            .map(|t| t.uri.to_string())
            .collect();
        let removed: Vec<String> = (current.iter())
            .filter(|c| !next.iter().any(|t| Arc::ptr_eq(c, t)))
            .map(|t| t.uri.to_string())
            .collect();
        if !added.is_empty() || !removed.is_empty() {
            tracing::info!(
                ?added,
                ?removed,
                total = next.len(),
                "s-proxy endpoints changed"
            );
        }
        *self.targets.write().expect("never poisoned") = Arc::new(next);
        Ok(())
    }

    /// With `sProxy.discover`, resolves the endpoints again every `resolveInterval` until
    /// `shutdown`.
    pub fn spawn_discovery(self: &Arc<Self>, shutdown: CancellationToken) {
        if !self.discover {
            return;
        }
        let pool = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(pool.resolve_interval);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = shutdown.cancelled() => return,
                }
                if let Err(error) = pool.refresh().await {
                    tracing::warn!(error = %strait_runtime::error_chain(&error), "s-proxy discovery failed");
                }
            }
        });
    }

    /// Opens a relay stream whose first frame is `first` on the s-proxy with the fewest of this
    /// r-proxy's sessions, trying the others in that order when it refuses.
    pub async fn open(&self, first: ClientFrame) -> Result<RelayStream, tonic::Status> {
        let targets = self.targets.read().expect("never poisoned").clone();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let now = self.clock.elapsed().as_millis() as u64;
        let loads: Vec<(bool, usize)> = (targets.iter())
            .map(|t| {
                let unreachable = t.unreachable_until.load(Ordering::Relaxed) > now;
                (unreachable, t.sessions.load(Ordering::Relaxed))
            })
            .collect();
        let mut last_error = tonic::Status::unavailable("no s-proxy endpoint");
        for index in placement(&loads, start) {
            let target = &targets[index];
            let channel = &target.channels[start % target.channels.len()];
            let (to_server, outbound) = mpsc::channel(FRAME_QUEUE);
            to_server
                .try_send(first.clone())
                .expect("fresh channel has room");
            let frames = ReceiverStream::new(outbound);
            let attempted_at = std::time::Instant::now();
            match strait_relay::open_session(channel, frames, self.max_message).await {
                Ok(from_server) => {
                    target.sessions.fetch_add(1, Ordering::Relaxed);
                    return Ok(RelayStream {
                        endpoint: target.uri.clone(),
                        to_server,
                        from_server,
                        load: SessionLoad(target.sessions.clone()),
                    });
                }
                Err(status) => {
                    // A quick refusal costs nothing to try again (an s-proxy starting up is
                    // soon there); a slow one (a connect timeout, a host that is gone) would
                    // hold every new session for as long.
                    if attempted_at.elapsed() >= SLOW_FAILURE {
                        tracing::warn!(endpoint = %target.uri, %status, "s-proxy unreachable; trying it last for {UNREACHABLE_COOLDOWN:?}");
                        let until = now + UNREACHABLE_COOLDOWN.as_millis() as u64;
                        target.unreachable_until.store(until, Ordering::Relaxed);
                    } else {
                        tracing::warn!(endpoint = %target.uri, %status, "s-proxy refused or unreachable");
                    }
                    last_error = status;
                }
            }
        }
        Err(last_error)
    }
}

/// How long an s-proxy that took [`SLOW_FAILURE`] or more to fail a session is tried last.
const UNREACHABLE_COOLDOWN: Duration = Duration::from_secs(10);
const SLOW_FAILURE: Duration = Duration::from_millis(500);

/// The order in which to try the s-proxies, given (recently unreachable, sessions) of each:
/// reachable ones first, then fewest sessions, ties in turn from `start`, so equal s-proxies
/// share new sessions evenly.
fn placement(loads: &[(bool, usize)], start: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..loads.len()).collect();
    if !order.is_empty() {
        order.rotate_left(start % loads.len());
    }
    // Stable: ties keep the rotated order.
    order.sort_by_key(|&i| loads[i]);
    order
}

#[cfg(test)]
mod tests {
    use super::placement;

    fn reachable(loads: &[usize]) -> Vec<(bool, usize)> {
        loads.iter().map(|&l| (false, l)).collect()
    }

    #[test]
    fn the_least_loaded_s_proxy_comes_first_and_ties_take_turns() {
        assert_eq!(placement(&reachable(&[3, 1, 2]), 0), [1, 2, 0]);
        assert_eq!(placement(&reachable(&[0, 0, 0]), 0), [0, 1, 2]);
        assert_eq!(placement(&reachable(&[0, 0, 0]), 1), [1, 2, 0]);
        assert_eq!(placement(&reachable(&[0, 0, 0]), 5), [2, 0, 1]);
        assert!(placement(&[], 7).is_empty());
    }

    #[test]
    fn a_new_s_proxy_takes_the_new_sessions_until_it_catches_up() {
        // Two busy s-proxies and one just added: new sessions go to the new one.
        let mut loads = vec![(false, 10), (false, 10), (false, 0)];
        for start in 0..10 {
            let first = placement(&loads, start)[0];
            loads[first].1 += 1;
        }
        assert_eq!(loads, reachable(&[10, 10, 10]));
        for start in 0..30 {
            let first = placement(&loads, start)[0];
            loads[first].1 += 1;
        }
        assert_eq!(
            loads,
            reachable(&[20, 20, 20]),
            "then all three share evenly"
        );
    }

    #[test]
    fn an_unreachable_s_proxy_is_tried_last_however_idle() {
        // A drained pod has no sessions left, and would otherwise be everyone's first choice.
        let loads = [(false, 7), (true, 0), (false, 5)];
        assert_eq!(placement(&loads, 0), [2, 0, 1]);
        assert_eq!(
            placement(&[(true, 0), (true, 1)], 0),
            [0, 1],
            "all unreachable: still tried"
        );
    }
}
