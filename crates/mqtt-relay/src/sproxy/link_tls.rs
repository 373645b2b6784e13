//! The relay link's TLS on s-proxy's side: every connection goes through a handshake with the
//! certificate current at that moment (see [`strait_tls::Reloading`]), so the operator's renewals
//! reach new connections while open ones keep their sessions. With `tls.clientCa` set, a peer
//! without a certificate from that CA never gets as far as opening a relay stream.

use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use rustls::ServerConfig;
use strait_relay::metrics::RelayMetrics;
use strait_tls::Reloading;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;

/// A peer that has not finished its handshake by then is dropped.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes in progress at once; further connections wait in the kernel's backlog.
const MAX_HANDSHAKES: usize = 256;

/// Connections that completed a TLS handshake. Handshakes run in their own tasks, so a silent
/// peer holds up nobody; the stream ends when the listener fails for good or its consumer is gone.
pub(super) fn incoming(
    listener: TcpListener,
    tls: Arc<Reloading<ServerConfig>>,
    metrics: RelayMetrics,
) -> impl Stream<Item = std::io::Result<TlsStream<TcpStream>>> {
    let (done, handshaken) = mpsc::channel(MAX_HANDSHAKES);
    let handshakes = Arc::new(Semaphore::new(MAX_HANDSHAKES));
    tokio::spawn(async move {
        loop {
            let permit = tokio::select! {
                _ = done.closed() => return,
                permit = handshakes.clone().acquire_owned() => permit.expect("never closed"),
            };
            let (tcp, peer) = tokio::select! {
                _ = done.closed() => return,
                accepted = listener.accept() => match accepted {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        // EMFILE and friends: back off briefly instead of spinning.
                        tracing::warn!(%error, "relay link accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
            };
            let _ = tcp.set_nodelay(true);
            let acceptor = TlsAcceptor::from(tls.current());
            let done = done.clone();
            let metrics = metrics.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                    Ok(Ok(stream)) => {
                        let _ = done.send(Ok(stream)).await;
                    }
                    Ok(Err(error)) => {
                        tracing::warn!(%peer, %error, "relay link TLS handshake refused");
                        metrics.error("link_tls_handshake");
                    }
                    Err(_) => {
                        tracing::warn!(%peer, "relay link TLS handshake timed out");
                        metrics.error("link_tls_handshake");
                    }
                }
                drop(permit);
            });
        }
    });
    ReceiverStream::new(handshaken)
}
