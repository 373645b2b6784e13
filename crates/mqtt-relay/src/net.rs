//! Byte streams of any transport, boxed so TCP and TLS connections share one code path.

use tokio::io::{AsyncRead, AsyncWrite};

/// Any byte stream a connection runs over (TCP, TLS over TCP).
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send + 'static {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send + 'static> Io for T {}

pub type BoxedIo = Box<dyn Io>;
