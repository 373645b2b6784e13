//! Accept loops: one per listener, each handing handshaken connections to a session task.

use std::fmt;
use std::net::SocketAddr;
use std::sync::Arc;

use strait_relay::v1;
use strait_tls::Reloading;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::{HeaderValue, StatusCode};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use super::Context;
use super::conn::ClientConn;
use crate::RelayError;
use crate::net::BoxedIo;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Tcp,
    Tls,
    WebSocket,
    WebSocketTls,
}

impl Transport {
    pub fn is_tls(self) -> bool {
        matches!(self, Self::Tls | Self::WebSocketTls)
    }

    fn is_websocket(self) -> bool {
        matches!(self, Self::WebSocket | Self::WebSocketTls)
    }

    pub fn as_proto(self) -> strait_relay::v1::Transport {
        use strait_relay::v1::Transport as T;
        match self {
            Self::Tcp => T::Tcp,
            Self::Tls => T::Tls,
            Self::WebSocket => T::Websocket,
            Self::WebSocketTls => T::WebsocketTls,
        }
    }
}

impl fmt::Display for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Tcp => "tcp",
            Self::Tls => "tls",
            Self::WebSocket => "ws",
            Self::WebSocketTls => "wss",
        })
    }
}

pub struct Listener {
    pub transport: Transport,
    pub local_addr: SocketAddr,
    listener: TcpListener,
    /// Read again when the certificate files change, so a rotated certificate needs no restart.
    tls: Option<Arc<Reloading<rustls::ServerConfig>>>,
}

impl Listener {
    pub fn new(
        transport: Transport,
        listener: TcpListener,
        tls: Option<Arc<Reloading<rustls::ServerConfig>>>,
    ) -> std::io::Result<Self> {
        Ok(Self {
            transport,
            local_addr: listener.local_addr()?,
            listener,
            tls,
        })
    }

    /// Accepts until shutdown. A connection holds a permit of `limit` for its whole life, so at
    /// most `--max-connections` are served and the rest wait in the kernel's backlog.
    pub async fn accept_loop(
        self,
        ctx: Arc<Context>,
        limit: Arc<Semaphore>,
        sessions: TaskTracker,
    ) {
        let shutdown = ctx.shutdown.clone();
        loop {
            let permit = tokio::select! {
                _ = shutdown.cancelled() => return,
                permit = limit.clone().acquire_owned() => permit.expect("semaphore never closed"),
            };
            let (tcp, peer) = tokio::select! {
                _ = shutdown.cancelled() => return,
                accepted = self.listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        // EMFILE and friends: back off briefly instead of spinning.
                        tracing::warn!(%error, transport = %self.transport, "accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let accepted_at = tokio::time::Instant::now();
            configure_socket(&tcp, ctx.tcp_keep_alive);
            let ctx = ctx.clone();
            let tls = self
                .tls
                .as_ref()
                .map(|tls| TlsAcceptor::from(tls.current()));
            let transport = self.transport;
            let span = tracing::info_span!("session", %peer, %transport, client_id = tracing::field::Empty, subject = tracing::field::Empty);
            sessions.spawn(
                async move {
                    // One deadline for the handshakes and the CONNECT after them.
                    let connect_by = accepted_at + ctx.connect_timeout;
                    let handshake = tokio::time::timeout_at(
                        connect_by,
                        handshake(tcp, transport, tls, &ctx.ws_path, ctx.max_packet_size),
                    );
                    match handshake.await {
                        Ok(Ok((conn, identity))) => {
                            super::session::run(conn, peer, transport, identity, connect_by, &ctx)
                                .await
                        }
                        Ok(Err(error)) => {
                            tracing::debug!(%error, "handshake failed");
                            ctx.metrics.error("handshake");
                        }
                        Err(_) => {
                            tracing::debug!("handshake timed out");
                            ctx.metrics.error("handshake_timeout");
                        }
                    }
                    drop(permit);
                }
                .instrument(span),
            );
        }
    }
}

/// No Nagle delay (MQTT packets are small and latency matters), and TCP keepalive probes after
/// `keep_alive` of silence, so a client that vanished without closing is noticed.
fn configure_socket(tcp: &TcpStream, keep_alive: Option<std::time::Duration>) {
    let _ = tcp.set_nodelay(true);
    if let Some(idle) = keep_alive {
        let probes = socket2::TcpKeepalive::new()
            .with_time(idle)
            .with_interval(std::time::Duration::from_secs(10))
            .with_retries(3);
        if let Err(error) = socket2::SockRef::from(tcp).set_tcp_keepalive(&probes) {
            tracing::debug!(%error, "cannot turn on TCP keepalive");
        }
    }
}

/// Room beyond one maximum-size packet in a WebSocket message, for a few small packets sent with
/// it (a PUBLISH and the PINGREQ behind it).
const WS_MESSAGE_SLACK: usize = 64 * 1024;

#[allow(clippy::result_large_err)] // the closure returns tungstenite's callback error type
async fn handshake(
    tcp: TcpStream,
    transport: Transport,
    tls: Option<TlsAcceptor>,
    ws_path: &str,
    max_packet_size: u32,
) -> Result<(ClientConn, Option<v1::Identity>), RelayError> {
    let (io, identity): (BoxedIo, _) = match &tls {
        Some(acceptor) => {
            let stream = acceptor.accept(tcp).await?;
            // Present only when the listener verifies client certificates.
            let identity = stream
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|chain| chain.first())
                .and_then(client_identity);
            (Box::new(stream), identity)
        }
        None => (Box::new(tcp), None),
    };
    if !transport.is_websocket() {
        return Ok((ClientConn::Stream(io), identity));
    }
    let check_request =
        |request: &Request, response: Response| check_ws_request(ws_path, request, response);
    // Small buffers: most connections are idle IoT devices.
    // A WebSocket message or frame may not be much larger than the largest MQTT packet accepted:
    // tungstenite's 64 MiB default would let any client, before CONNECT, make r-proxy buffer that
    // much. (Packets may span messages, so clients that split large packets lose nothing.)
    let largest = max_packet_size as usize + WS_MESSAGE_SLACK;
    let config = WebSocketConfig::default()
        .read_buffer_size(4 * 1024)
        .write_buffer_size(0)
        .max_message_size(Some(largest))
        .max_frame_size(Some(largest));
    let ws = tokio_tungstenite::accept_hdr_async_with_config(io, check_request, Some(config))
        .await
        .map_err(Box::new)?;
    Ok((ClientConn::WebSocket(Box::new(ws)), identity))
}

/// Accepts the WebSocket upgrade on `ws_path` only, answering the MQTT subprotocol offered.
#[allow(clippy::result_large_err)] // the error type is tungstenite's callback contract
fn check_ws_request(
    ws_path: &str,
    request: &Request,
    mut response: Response,
) -> Result<Response, ErrorResponse> {
    if request.uri().path() != ws_path {
        let mut refusal = ErrorResponse::new(Some(format!("MQTT is served on {ws_path}\n")));
        *refusal.status_mut() = StatusCode::NOT_FOUND;
        return Err(refusal);
    }
    // Clients offer "mqtt" (older ones "mqttv3.1"); answer with the one offered.
    let offered = request
        .headers()
        .get_all("sec-websocket-protocol")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .find(|p| *p == "mqtt" || *p == "mqttv3.1")
        .map(str::to_owned);
    if let Some(protocol) = offered {
        response.headers_mut().insert(
            "sec-websocket-protocol",
            HeaderValue::from_str(&protocol).expect("token is a valid header value"),
        );
    }
    Ok(response)
}

/// The identity a verified client certificate establishes: its subject DN, with the common
/// name, issuer and serial number as attributes. `None` when the certificate cannot be parsed
/// (rustls has verified it already, so that does not happen with a sane CA).
pub fn client_identity(
    cert: &rustls::pki_types::CertificateDer<'_>,
) -> Option<strait_relay::v1::Identity> {
    let (_, cert) = x509_parser::parse_x509_certificate(cert.as_ref()).ok()?;
    let subject = cert.subject();
    let mut attributes = std::collections::HashMap::new();
    if let Some(cn) = subject
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
    {
        attributes.insert("cn".to_string(), cn.to_string());
    }
    attributes.insert("issuer".to_string(), cert.issuer().to_string());
    attributes.insert("serial".to_string(), cert.raw_serial_as_string());
    Some(strait_relay::v1::Identity {
        subject: subject.to_string(),
        method: "tls-client-cert".to_string(),
        attributes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn accepted_sockets_get_tcp_keepalive_when_configured() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        for keep_alive in [Some(std::time::Duration::from_secs(42)), None] {
            let _client = TcpStream::connect(address).await.unwrap();
            let (accepted, _) = listener.accept().await.unwrap();
            configure_socket(&accepted, keep_alive);
            let socket = socket2::SockRef::from(&accepted);
            assert_eq!(socket.keepalive().unwrap(), keep_alive.is_some());
            if let Some(idle) = keep_alive {
                assert_eq!(socket.tcp_keepalive_time().unwrap(), idle);
            }
            assert!(accepted.nodelay().unwrap());
        }
    }
}
