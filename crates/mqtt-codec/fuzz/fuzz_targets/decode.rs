//! Arbitrary bytes into `decode` (both protocols) and `decode_first`.
//!
//! Checks, besides "no panic": `Ok(None)` consumes nothing, a decoded packet
//! consumed exactly its frame, and every decoded packet encodes and decodes
//! back to itself.

#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use strait_mqtt_codec::{MAX_PACKET_SIZE, Packet, Protocol, check, decode, decode_first, encode};

fn round_trip(packet: &Packet, protocol: Protocol) {
    let mut out = BytesMut::new();
    encode(packet, protocol, &mut out).expect("a decoded packet encodes");
    let again = decode(&mut out, protocol, MAX_PACKET_SIZE).expect("its encoding decodes");
    assert_eq!(again.as_ref(), Some(packet));
    assert!(out.is_empty());
}

fuzz_target!(|data: &[u8]| {
    for protocol in [Protocol::V311, Protocol::V5] {
        let mut buf = BytesMut::from(data);
        loop {
            let before = buf.len();
            let header = check(&buf, MAX_PACKET_SIZE);
            match decode(&mut buf, protocol, MAX_PACKET_SIZE) {
                Ok(Some(packet)) => {
                    let frame = header.unwrap().unwrap().frame_len();
                    assert_eq!(before - buf.len(), frame);
                    round_trip(&packet, protocol);
                }
                Ok(None) => {
                    assert_eq!(buf.len(), before);
                    break;
                }
                Err(_) => break,
            }
        }
    }

    let mut buf = BytesMut::from(data);
    if let Ok(Some((protocol, connect))) = decode_first(&mut buf, MAX_PACKET_SIZE) {
        let packet = Packet::Connect(connect);
        let mut out = BytesMut::new();
        encode(&packet, protocol, &mut out).expect("a decoded CONNECT encodes");
        let again = decode_first(&mut out, MAX_PACKET_SIZE).expect("its encoding decodes");
        assert_eq!(
            again.map(|(p, c)| (p, Packet::Connect(c))),
            Some((protocol, packet))
        );
    }
});
