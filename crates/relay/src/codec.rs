//! The relay's gRPC codec: prost, with small initial buffers.
//!
//! tonic's default codec allocates an 8 KiB encode buffer and an 8 KiB decode buffer for every
//! stream as soon as it opens. A relay holds one stream per connected MQTT client, most of them
//! idle, so those 16 KiB per session would dominate the proxies' memory. The buffers start at
//! [`INITIAL_BUFFER`] and grow with the traffic instead; the encoder reserves room for each
//! message whole, so a busy session's 64 KiB frame is allocated once rather than grown by
//! doubling from 1 KiB (which copied each frame about once more), and the decoder sizes each
//! frame's packet vector before decoding into it (see [`Frame`]).

use std::marker::PhantomData;

use prost::bytes::Buf;
use tonic::Status;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};

use crate::v1;

/// Enough for a typical frame of a quiet session; busy sessions grow it on demand.
pub const INITIAL_BUFFER: usize = 1024;

/// Encoded messages are handed to HTTP/2 once this many bytes are buffered (tonic's default).
const YIELD_THRESHOLD: usize = 32 * 1024;

/// Used by the generated client and server through tonic-prost-build's `codec_path`.
#[derive(Debug, Clone, Copy)]
pub struct RelayCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for RelayCodec<T, U> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

impl<T, U> Codec for RelayCodec<T, U>
where
    T: prost::Message + Send + 'static,
    U: Frame + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = RelayEncoder<T>;
    type Decoder = RelayDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        RelayEncoder(PhantomData)
    }

    fn decoder(&mut self) -> Self::Decoder {
        RelayDecoder(PhantomData)
    }
}

/// prost's encoder, reserving each message's room up front.
#[derive(Debug, Clone, Copy)]
pub struct RelayEncoder<T>(PhantomData<T>);

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
        settings()
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
const MAX_ROOM: usize = 256;

/// prost's decoder, sizing each frame's packet vector from the frame's length first.
#[derive(Debug, Clone, Copy)]
pub struct RelayDecoder<U>(PhantomData<U>);

impl<U: Frame> Decoder for RelayDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        let mut frame = U::with_room((buf.remaining() / BYTES_PER_PACKET).min(MAX_ROOM));
        frame
            .merge(buf)
            .map_err(|error| Status::internal(format!("decoding a relay frame: {error}")))?;
        Ok(Some(frame))
    }

    fn buffer_settings(&self) -> BufferSettings {
        settings()
    }
}

fn settings() -> BufferSettings {
    BufferSettings::new(INITIAL_BUFFER, YIELD_THRESHOLD)
}
