//! The relay link's TLS on r-proxy's side: each new connection to s-proxy handshakes with the
//! client certificate and CA current at that moment (see [`strait_tls::Reloading`]), so renewed
//! certificates are picked up without touching the connections that carry open sessions.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use hyper_util::rt::TokioIo;
use rustls::ClientConfig;
use rustls::pki_types::ServerName;
use strait_tls::Reloading;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tonic::transport::Uri;

/// Connects to one s-proxy endpoint over TLS (a tonic connector: tonic is handed a plain
/// `http://` URI so it does not add TLS of its own).
#[derive(Clone)]
pub(super) struct Connector {
    host: String,
    port: u16,
    server_name: ServerName<'static>,
    tls: Arc<Reloading<ClientConfig>>,
}

impl Connector {
    /// `server_name` is checked against the certificate; the URI's host when `None`.
    pub(super) fn new(
        uri: &Uri,
        server_name: Option<&str>,
        tls: Arc<Reloading<ClientConfig>>,
    ) -> Result<Self, strait_tls::TlsError> {
        let host = uri.host().unwrap_or_default();
        // `[::1]` in a URI is `::1` to connect to and to check against the certificate.
        let host = host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        Ok(Self {
            server_name: strait_tls::server_name(server_name.unwrap_or(&host))?,
            port: uri.port_u16().unwrap_or(443),
            host,
            tls,
        })
    }

    /// The same TLS settings and checked name, connecting to `uri` instead (an address the
    /// endpoint's name resolved to).
    pub(super) fn at(&self, uri: &Uri) -> Result<Self, strait_tls::TlsError> {
        let host = uri.host().unwrap_or_default();
        Ok(Self {
            host: host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string(),
            port: uri.port_u16().unwrap_or(443),
            server_name: self.server_name.clone(),
            tls: self.tls.clone(),
        })
    }

    /// The URI tonic is given for this endpoint.
    pub(super) fn plain_uri(&self) -> Uri {
        let host = match self.host.contains(':') {
            true => format!("[{}]", self.host),
            false => self.host.clone(),
        };
        format!("http://{host}:{}", self.port)
            .parse()
            .expect("host and port from a parsed URI")
    }
}

impl tower_service::Service<Uri> for Connector {
    type Response = TokioIo<TlsStream<TcpStream>>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Uri) -> Self::Future {
        let connector = tokio_rustls::TlsConnector::from(self.tls.current());
        let (host, port, name) = (self.host.clone(), self.port, self.server_name.clone());
        Box::pin(async move {
            let tcp = TcpStream::connect((host.as_str(), port)).await?;
            tcp.set_nodelay(true)?;
            Ok(TokioIo::new(connector.connect(name, tcp).await?))
        })
    }
}
