//! Property tests: arbitrary valid packets round-trip in both protocols, a
//! packet fed byte by byte is only returned once complete, and arbitrary or
//! mutated bytes never panic the decoder nor make it consume a partial frame.

use bytes::BytesMut;
use proptest::collection::vec;
use proptest::prelude::*;
use strait_mqtt_codec::arbitrary::{protocol, protocol_and_packet};
use strait_mqtt_codec::*;

fn encode_to_vec(packet: &Packet, protocol: Protocol) -> Vec<u8> {
    let mut out = BytesMut::new();
    encode(packet, protocol, &mut out).expect("valid packets encode");
    out.to_vec()
}

/// Decodes everything in `bytes`, checking the "no partial frame" contract
/// at every step, and re-encodes what decodes (which must decode the same).
fn decode_all(bytes: &[u8], protocol: Protocol, max: usize) {
    let mut buf = BytesMut::from(bytes);
    loop {
        let before = buf.clone();
        let header = check(&buf, max);
        match decode(&mut buf, protocol, max) {
            Ok(None) => {
                assert_eq!(buf, before, "Ok(None) must not consume");
                assert_eq!(header, Ok(None));
                return;
            }
            Ok(Some(packet)) => {
                let frame = header.unwrap().unwrap().frame_len();
                assert_eq!(
                    buf.len(),
                    before.len() - frame,
                    "consumed exactly one frame"
                );
                let again = encode_to_vec(&packet, protocol);
                let mut again = BytesMut::from(&again[..]);
                assert_eq!(
                    decode(&mut again, protocol, MAX_PACKET_SIZE),
                    Ok(Some(packet))
                );
            }
            Err(_) => return,
        }
    }
}

// ---------------------------------------------------------------- properties

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    #[test]
    fn valid_packets_round_trip((protocol, packet) in protocol_and_packet()) {
        let bytes = encode_to_vec(&packet, protocol);
        prop_assert_eq!(encoded_len(&packet, protocol), Ok(bytes.len()));
        let mut buf = BytesMut::from(&bytes[..]);
        prop_assert_eq!(decode(&mut buf, protocol, bytes.len()), Ok(Some(packet.clone())));
        prop_assert!(buf.is_empty());

        if let Packet::Connect(connect) = packet {
            let mut buf = BytesMut::from(&bytes[..]);
            prop_assert_eq!(decode_first(&mut buf, bytes.len()), Ok(Some((protocol, connect))));
        }
    }

    #[test]
    fn byte_by_byte_yields_nothing_until_the_last_byte(
        (protocol, packet) in protocol_and_packet()
    ) {
        let bytes = encode_to_vec(&packet, protocol);
        let mut buf = BytesMut::new();
        for (i, &byte) in bytes.iter().enumerate() {
            buf.extend_from_slice(&[byte]);
            let decoded = decode(&mut buf, protocol, MAX_PACKET_SIZE);
            if i + 1 < bytes.len() {
                prop_assert_eq!(decoded, Ok(None));
                prop_assert_eq!(buf.len(), i + 1);
            } else {
                prop_assert_eq!(decoded, Ok(Some(packet.clone())));
                prop_assert!(buf.is_empty());
            }
        }
    }

    #[test]
    fn back_to_back_packets_decode_one_at_a_time((protocol, packet) in protocol_and_packet()) {
        let once = encode_to_vec(&packet, protocol);
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&once);
        buf.extend_from_slice(&once);
        buf.extend_from_slice(&once[..once.len() / 2]);
        for _ in 0..2 {
            prop_assert_eq!(decode(&mut buf, protocol, MAX_PACKET_SIZE), Ok(Some(packet.clone())));
        }
        prop_assert_eq!(decode(&mut buf, protocol, MAX_PACKET_SIZE), Ok(None));
        prop_assert_eq!(buf.len(), once.len() / 2);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2048))]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in vec(any::<u8>(), 0..128), protocol in protocol()) {
        decode_all(&bytes, protocol, MAX_PACKET_SIZE);
        decode_all(&bytes, protocol, 16);
        let mut buf = BytesMut::from(&bytes[..]);
        let before = buf.clone();
        if let Ok(None) = decode_first(&mut buf, MAX_PACKET_SIZE) {
            prop_assert_eq!(buf, before);
        }
    }

    /// Valid encodings with a few bytes changed or cut reach deep into the
    /// decoder, where arbitrary bytes rarely get.
    #[test]
    fn mutated_valid_packets_never_panic(
        (protocol, packet) in protocol_and_packet(),
        mutations in vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
        cut in any::<prop::sample::Index>(),
        truncate in any::<bool>(),
    ) {
        let mut bytes = encode_to_vec(&packet, protocol);
        for (index, value) in mutations {
            let i = index.index(bytes.len());
            bytes[i] = value;
        }
        if truncate {
            bytes.truncate(cut.index(bytes.len() + 1));
        }
        decode_all(&bytes, protocol, MAX_PACKET_SIZE);
        let mut buf = BytesMut::from(&bytes[..]);
        let _ = decode_first(&mut buf, MAX_PACKET_SIZE);
    }
}
