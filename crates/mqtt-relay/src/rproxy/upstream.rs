//! The link to s-proxy: a few HTTP/2 connections per endpoint, each carrying many sessions.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use strait_runtime::Context as _;

use crate::RelayError;
use strait_relay::v1::{ClientFrame, ServerFrame};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Channel, Endpoint, Uri};

use super::link_tls::Connector;

use strait_config::relay::SProxyLink;
use strait_relay::rules::{FRAME_QUEUE, link, max_frame_size};

pub struct SProxyPool {
    /// `connections_per_endpoint` channels for each endpoint, endpoint-major.
    channels: Vec<(Uri, Channel)>,
    per_endpoint: usize,
    next: AtomicUsize,
    /// Largest relay frame either way.
    max_message: usize,
}

/// An open relay stream: frames go out through `to_server`, come back from `from_server`.
pub struct RelayStream {
    pub endpoint: Uri,
    pub to_server: mpsc::Sender<ClientFrame>,
    pub from_server: strait_relay::Incoming<ServerFrame>,
}

impl SProxyPool {
    pub fn new(link: &SProxyLink, max_packet_size: u32) -> Result<Self, RelayError> {
        let per_endpoint = link.connections_per_endpoint.max(1);
        let tls = &link.tls;
        let max_message = max_frame_size(max_packet_size);
        let mut channels = Vec::new();
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
        for endpoint in &link.endpoints {
            let uri: Uri = endpoint
                .parse()
                .with_context(|| format!("sProxy.endpoints: {endpoint:?} is not a URL"))?;
            let connector = match (&link_tls, uri.scheme_str()) {
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
            let tonic_uri = connector
                .as_ref()
                .map_or_else(|| uri.clone(), Connector::plain_uri);
            let endpoint = Endpoint::from(tonic_uri)
                .tcp_nodelay(true)
                .connect_timeout(Duration::from_secs(5))
                .http2_keep_alive_interval(Duration::from_secs(20))
                .keep_alive_timeout(Duration::from_secs(10))
                .keep_alive_while_idle(true)
                .initial_connection_window_size(link::CONNECTION_WINDOW)
                .initial_stream_window_size(link::STREAM_WINDOW)
                .max_frame_size(link::MAX_FRAME);
            for _ in 0..per_endpoint {
                let channel = match &connector {
                    Some(connector) => endpoint.connect_with_connector_lazy(connector.clone()),
                    None => endpoint.connect_lazy(),
                };
                channels.push((uri.clone(), channel));
            }
        }
        if channels.is_empty() {
            return Err(strait_runtime::Failed::new("no s-proxy endpoint given").into());
        }
        Ok(Self {
            channels,
            per_endpoint,
            next: AtomicUsize::new(0),
            max_message,
        })
    }

    /// Opens a relay stream whose first frame is `first`, trying each endpoint once starting
    /// from the next in turn, so sessions spread out and a dead endpoint is skipped.
    pub async fn open(&self, first: ClientFrame) -> Result<RelayStream, tonic::Status> {
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let endpoints = self.channels.len() / self.per_endpoint;
        let mut last_error = tonic::Status::unavailable("no s-proxy endpoint");
        for attempt in 0..endpoints {
            let index = (start + attempt * self.per_endpoint) % self.channels.len();
            let (uri, channel) = &self.channels[index];
            let (to_server, outbound) = mpsc::channel(FRAME_QUEUE);
            to_server
                .try_send(first.clone())
                .expect("fresh channel has room");
            let frames = ReceiverStream::new(outbound);
            match strait_relay::open_session(channel, frames, self.max_message).await {
                Ok(from_server) => {
                    return Ok(RelayStream {
                        endpoint: uri.clone(),
                        to_server,
                        from_server,
                    });
                }
                Err(status) => {
                    tracing::warn!(endpoint = %uri, %status, "s-proxy refused or unreachable");
                    last_error = status;
                }
            }
        }
        Err(last_error)
    }
}
