//! The relay's gRPC codec: prost, with small initial buffers.
//!
//! tonic's default codec allocates an 8 KiB encode buffer and an 8 KiB decode buffer for every
//! stream as soon as it opens. A relay holds one stream per connected MQTT client, most of them
//! idle, so those 16 KiB per session would dominate the proxies' memory. The buffers start at
//! [`INITIAL_BUFFER`] and grow with the traffic instead.

use std::marker::PhantomData;

use tonic::codec::{BufferSettings, Codec};
use tonic_prost::{ProstCodec, ProstDecoder, ProstEncoder};

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
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = ProstDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstCodec::<T, U>::raw_encoder(settings())
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstCodec::<T, U>::raw_decoder(settings())
    }
}

fn settings() -> BufferSettings {
    BufferSettings::new(INITIAL_BUFFER, YIELD_THRESHOLD)
}
