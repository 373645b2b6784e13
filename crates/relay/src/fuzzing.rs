//! The bodies of the relay's fuzz targets (`crates/relay/fuzz`), here so that plain `cargo test`
//! runs them too (the proptests below feed them arbitrary bytes on stable). Each takes
//! untrusted bytes as they arrive from the other proxy and panics only when a property that must
//! hold is broken.

use bytes::{Buf, Bytes, BytesMut};
use strait_mqtt_codec::{self as mqtt, Protocol};

use crate::Opening;
use crate::codec::{Frame, decode_frame};
use crate::stream::{FramingError, Message, MessageReader};
use crate::v1::{self, ClientFrame, ServerFrame};

/// The message limit the stream target reads with: small, so inputs reach it.
const MAX_MESSAGE: usize = 4096;

/// One gRPC message as a relay frame of each kind (r-proxy reads `ServerFrame`s, s-proxy
/// `ClientFrame`s), then each packet converted to the codec's, and a `ClientFrame` as a stream's
/// first frame.
///
/// Properties: a decoded frame encodes and decodes back to itself; a packet that converts comes
/// back the same through the protobuf packet, and the codec encodes it (or refuses) for either
/// protocol without a panic; an opening keeps every packet after CONNECT.
pub fn relay_frame(data: &[u8]) {
    let bytes = Bytes::copy_from_slice(data);
    if let Ok(frame) = decode_frame::<ClientFrame>(bytes.clone()) {
        frame_round_trips(&frame);
        packets_convert(&frame.packets);
        if let Ok(opening) = Opening::parse(frame.clone()) {
            assert_eq!(opening.pipelined.len() + 1, frame.packets.len());
        }
    }
    if let Ok(frame) = decode_frame::<ServerFrame>(bytes) {
        frame_round_trips(&frame);
        packets_convert(&frame.packets);
    }
}

fn frame_round_trips<T: Frame + PartialEq + std::fmt::Debug>(frame: &T) {
    let again = decode_frame::<T>(Bytes::from(frame.encode_to_vec())).expect("re-encoded frame");
    assert_eq!(&again, frame);
}

fn packets_convert(packets: &[v1::Packet]) {
    for packet in packets {
        let Ok(converted) = mqtt::Packet::try_from(packet.clone()) else {
            continue;
        };
        let back = mqtt::Packet::try_from(v1::Packet::from(converted.clone()))
            .expect("a converted packet converts again");
        assert_eq!(back, converted);
        // r-proxy encodes what s-proxy sends for the client. The encoder may refuse, but must
        // not panic. (It does not check every property value the decoder does, e.g. a Receive
        // Maximum of 0, so "encodes, hence decodes" does not hold: not asserted.)
        let _ = mqtt::encode(&converted, Protocol::V5, &mut BytesMut::new());
        let _ = mqtt::encode(&converted, Protocol::V311, &mut BytesMut::new());
    }
}

/// A relay stream's bytes cut into chunks: the first byte says how many cuts, the next two
/// bytes per cut where (modulo the length of the rest), the rest is the stream.
///
/// Properties: however the stream is cut, the reader yields the same messages and ends with the
/// same error (or none) as from one chunk, and is idle exactly when nothing is left over; every
/// message is decoded as both kinds of frame without a panic.
pub fn relay_stream(data: &[u8]) {
    let (cuts, wire) = split_cuts(data);
    let wire = Bytes::copy_from_slice(wire);
    let whole = read_stream(std::iter::once(wire.clone()));
    let chunked = read_stream(cuts.windows(2).map(|pair| wire.slice(pair[0]..pair[1])));
    assert_eq!(chunked, whole);
}

/// Chunk boundaries, from 0 to the stream's length, and the stream.
fn split_cuts(data: &[u8]) -> (Vec<usize>, &[u8]) {
    let Some((&count, rest)) = data.split_first() else {
        return (vec![0, 0], data);
    };
    let count = usize::from(count % 16).min(rest.len() / 2);
    let (positions, wire) = rest.split_at(count * 2);
    let mut cuts: Vec<usize> = positions
        .chunks_exact(2)
        .map(|p| usize::from(u16::from_be_bytes([p[0], p[1]])) % (wire.len() + 1))
        .collect();
    cuts.extend([0, wire.len()]);
    cuts.sort_unstable();
    (cuts, wire)
}

/// What a reader yields for the chunks: the messages, how it stopped, and whether it was idle.
#[derive(Debug, PartialEq)]
struct Read {
    messages: Vec<Bytes>,
    error: Option<FramingError>,
    idle: bool,
}

fn read_stream(chunks: impl Iterator<Item = Bytes>) -> Read {
    let mut reader = MessageReader::new(MAX_MESSAGE);
    let mut messages = Vec::new();
    for chunk in chunks {
        reader.push(chunk);
        loop {
            match reader.next_message() {
                Ok(Some(message)) => {
                    assert!(message.remaining() <= MAX_MESSAGE);
                    let bytes = decodes_the_same(message);
                    messages.push(bytes);
                }
                Ok(None) => break,
                Err(error) => {
                    return Read {
                        messages,
                        error: Some(error),
                        idle: false,
                    };
                }
            }
        }
    }
    Read {
        messages,
        error: None,
        idle: reader.is_idle(),
    }
}

/// A message is decoded where it lies (across two chunks, as `Incoming` does) to the same
/// frames as from one copy of its bytes. Returns that copy.
fn decodes_the_same(message: Message) -> Bytes {
    let (first, second) = (message.first_ref().clone(), message.last_ref().clone());
    let mut joined = BytesMut::from(&first[..]);
    joined.extend_from_slice(&second);
    let joined = joined.freeze();
    let in_place = decode_frame::<ClientFrame>(first.clone().chain(second.clone())).ok();
    assert_eq!(in_place, decode_frame::<ClientFrame>(joined.clone()).ok());
    let in_place = decode_frame::<ServerFrame>(first.chain(second)).ok();
    assert_eq!(in_place, decode_frame::<ServerFrame>(joined.clone()).ok());
    joined
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use prost::Message as _;

    fn frames() -> impl Strategy<Value = Vec<u8>> {
        (
            strait_mqtt_codec::arbitrary::protocol_and_packet(),
            any::<bool>(),
        )
            .prop_map(|((protocol, packet), first)| {
                let open = first.then(|| {
                    Box::new(v1::SessionOpen {
                        protocol: v1::ProtocolVersion::from(protocol).into(),
                        ..Default::default()
                    })
                });
                ClientFrame {
                    open,
                    packets: vec![packet.into()],
                    close: None,
                }
                .encode_to_vec()
            })
    }

    proptest! {
        #[test]
        fn relay_frame_holds_for_any_bytes(data in prop::collection::vec(any::<u8>(), 0..512)) {
            relay_frame(&data);
        }

        #[test]
        fn relay_frame_holds_for_frames_of_valid_packets(data in frames()) {
            relay_frame(&data);
        }

        #[test]
        fn relay_stream_holds_for_any_bytes(data in prop::collection::vec(any::<u8>(), 0..512)) {
            relay_stream(&data);
        }

        #[test]
        fn relay_stream_holds_for_streams_of_frames(
            frames in prop::collection::vec(frames(), 0..6),
            cuts in prop::collection::vec(any::<u8>(), 0..31),
        ) {
            let mut data = vec![cuts.len() as u8 / 2];
            data.extend(&cuts[..cuts.len() / 2 * 2]);
            for frame in frames {
                data.push(0);
                data.extend((frame.len() as u32).to_be_bytes());
                data.extend(frame);
            }
            relay_stream(&data);
        }
    }
}
