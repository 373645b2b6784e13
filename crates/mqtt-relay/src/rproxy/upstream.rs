//! The link to s-proxy: a few HTTP/2 connections per endpoint, each carrying many sessions.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use strait_runtime::Context as _;

use crate::RelayError;
use strait_relay::v1::{ClientFrame, ServerFrame};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity, Uri};

use strait_config::relay::SProxyLink;
use strait_config::tls::ClientTls;
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
        for endpoint in &link.endpoints {
            let uri: Uri = endpoint
                .parse()
                .with_context(|| format!("sProxy.endpoints: {endpoint:?} is not a URL"))?;
            let mut endpoint = Endpoint::from(uri.clone())
                .tcp_nodelay(true)
                .connect_timeout(Duration::from_secs(5))
                .http2_keep_alive_interval(Duration::from_secs(20))
                .keep_alive_timeout(Duration::from_secs(10))
                .keep_alive_while_idle(true)
                .initial_connection_window_size(link::CONNECTION_WINDOW)
                .initial_stream_window_size(link::STREAM_WINDOW)
                .max_frame_size(link::MAX_FRAME);
            if uri.scheme_str() == Some("https") {
                endpoint = endpoint
                    .tls_config(client_tls(tls)?)
                    .with_context(|| format!("TLS settings for {uri}"))?;
            } else if tls.ca.is_some() || tls.cert.is_some() {
                return Err(strait_runtime::Failed::new(format!(
                    "{uri}: sProxy.tls is set but the endpoint is not https://"
                ))
                .into());
            }
            for _ in 0..per_endpoint {
                channels.push((uri.clone(), endpoint.connect_lazy()));
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

fn client_tls(files: &ClientTls) -> Result<ClientTlsConfig, RelayError> {
    let mut config = ClientTlsConfig::new();
    if let Some(ca) = &files.ca {
        let pem =
            std::fs::read(ca).with_context(|| format!("reading sProxy.tls.ca {}", ca.display()))?;
        config = config.ca_certificate(Certificate::from_pem(pem));
    }
    if let (Some(cert), Some(key)) = (&files.cert, &files.key) {
        let cert = std::fs::read(cert).with_context(|| format!("reading {}", cert.display()))?;
        let key = std::fs::read(key).with_context(|| format!("reading {}", key.display()))?;
        config = config.identity(Identity::from_pem(cert, key));
    }
    Ok(config)
}
