//! Encoding and decoding one relay frame (one gRPC message).
//!
//! The encoder reserves room for each frame whole, so a busy session's 64 KiB frame is allocated
//! once rather than grown by doubling from a small buffer (which copied each frame about once
//! more); the decoder sizes each frame's packet vector before decoding into it (see [`Frame`]).

use std::marker::PhantomData;

use bytes::Buf;
use tonic::Status;
use tonic::codec::{BufferSettings, EncodeBuf, Encoder};

use crate::v1;

/// Encoded frames start at this much room; busy sessions grow it on demand (tonic's default of
/// 8 KiB per stream would dominate an idle session's memory).
pub const INITIAL_BUFFER: usize = 1024;

/// Encoded messages are handed to HTTP/2 once this many bytes are buffered (tonic's default).
const YIELD_THRESHOLD: usize = 32 * 1024;

/// prost's encoder for tonic's `EncodeBody`, reserving each message's room up front.
#[derive(Debug, Clone, Copy)]
pub struct RelayEncoder<T>(PhantomData<T>);

impl<T> Default for RelayEncoder<T> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

impl<T: prost::Message> Encoder for RelayEncoder<T> {
    type Item = T;
    type Error = Status;

    fn encode(&mut self, item: T, buf: &mut EncodeBuf<'_>) -> Result<(), Status> {
        buf.reserve(item.encoded_len());
        // Not `Message::encode`: it would walk the whole frame for its length a second time,
        // only to check room that the buffer (a growing `BytesMut`) always has.
        item.encode_raw(buf);
        Ok(())
    }

    fn buffer_settings(&self) -> BufferSettings {
        BufferSettings::new(INITIAL_BUFFER, YIELD_THRESHOLD)
    }
}

/// A relay frame, whose packets can be given room before decoding: prost pushes them one at a
/// time, and with a `Packet` taking 216 bytes, growing the vector by doubling copied a 256-packet
/// frame's worth of packets about once more.
pub trait Frame: prost::Message + Default {
    fn with_room(packets: usize) -> Self;
}

impl Frame for v1::ClientFrame {
    fn with_room(packets: usize) -> Self {
        Self {
            packets: Vec::with_capacity(packets),
            ..Self::default()
        }
    }
}

impl Frame for v1::ServerFrame {
    fn with_room(packets: usize) -> Self {
        Self {
            packets: Vec::with_capacity(packets),
            ..Self::default()
        }
    }
}

/// Room is a hint, not a limit: a small QoS 0 PUBLISH takes about 32 bytes in a frame, so a frame
/// of N bytes is given room for N / 32 packets (frames of smaller packets, such as
/// acknowledgements, grow the vector as before)...
const BYTES_PER_PACKET: usize = 32;
/// ... but never more than r-proxy and s-proxy put in one frame, whatever the length claims.
/// Their batching (strait-proxy's `batch::BATCH_PACKETS`) stops at this many packets.
pub const MAX_FRAME_PACKETS: usize = 256;

/// Decodes one frame from the whole of `buf`. From a `Bytes`, payloads are slices of it, not
/// copies.
pub fn decode_frame<U: Frame>(buf: impl Buf) -> Result<U, Status> {
    let mut frame = U::with_room((buf.remaining() / BYTES_PER_PACKET).min(MAX_FRAME_PACKETS));
    frame
        .merge(buf)
        .map_err(|error| Status::internal(format!("decoding a relay frame: {error}")))?;
    Ok(frame)
}
