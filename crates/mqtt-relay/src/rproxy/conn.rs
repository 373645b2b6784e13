//! A client connection whatever its transport: TCP, TLS, or WebSocket over either.
//!
//! The session code only needs "append what arrives to a buffer" and "write these bytes", so
//! each transport is split into a reader and a writer half offering just that.

use std::io;

use bytes::{Bytes, BytesMut};
use futures::stream::{SplitSink, SplitStream};
use futures::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;

use crate::net::BoxedIo;

/// An accepted, handshaken client connection.
pub enum ClientConn {
    Stream(BoxedIo),
    WebSocket(Box<WebSocketStream<BoxedIo>>),
}

impl ClientConn {
    pub fn split(self) -> (ClientReader, ClientWriter) {
        match self {
            Self::Stream(io) => {
                let (r, w) = tokio::io::split(io);
                (ClientReader::Stream(r), ClientWriter::Stream(w))
            }
            Self::WebSocket(ws) => {
                let (sink, stream) = ws.split();
                (
                    ClientReader::WebSocket(stream),
                    ClientWriter::WebSocket(sink),
                )
            }
        }
    }
}

pub enum ClientReader {
    Stream(tokio::io::ReadHalf<BoxedIo>),
    WebSocket(SplitStream<Box<WebSocketStream<BoxedIo>>>),
}

impl ClientReader {
    /// Appends the next bytes from the client to `buf`; `Ok(0)` when the client closed.
    /// Cancel-safe: nothing is lost when the future is dropped before completing.
    pub async fn read_into(&mut self, buf: &mut BytesMut) -> io::Result<usize> {
        match self {
            Self::Stream(reader) => reader.read_buf(buf).await,
            Self::WebSocket(stream) => loop {
                let message = match stream.next().await {
                    None => return Ok(0),
                    Some(message) => message.map_err(io::Error::other)?,
                };
                match message {
                    // MQTT over WebSocket is binary; frames may hold several or partial packets.
                    Message::Binary(data) if !data.is_empty() => {
                        buf.extend_from_slice(&data);
                        return Ok(data.len());
                    }
                    Message::Close(_) => return Ok(0),
                    Message::Text(_) => {
                        return Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            "text WebSocket frame: MQTT over WebSocket must use binary frames",
                        ));
                    }
                    // Pings are answered by tungstenite itself.
                    _ => continue,
                }
            },
        }
    }
}

pub enum ClientWriter {
    Stream(tokio::io::WriteHalf<BoxedIo>),
    WebSocket(SplitSink<Box<WebSocketStream<BoxedIo>>, Message>),
}

impl ClientWriter {
    /// Writes `data` (one or more whole packets) and flushes.
    pub async fn write(&mut self, data: Bytes) -> io::Result<()> {
        match self {
            Self::Stream(writer) => {
                writer.write_all(&data).await?;
                writer.flush().await
            }
            Self::WebSocket(sink) => sink
                .send(Message::Binary(data))
                .await
                .map_err(io::Error::other),
        }
    }

    /// Closes the connection (WebSocket: with a close frame).
    pub async fn close(&mut self) {
        let _ = match self {
            Self::Stream(writer) => writer.shutdown().await,
            Self::WebSocket(sink) => sink.close().await.map_err(io::Error::other),
        };
    }
}
