//! Turning the bytes read from one side of a relay into frames for the other, shared by r-proxy
//! (client → s-proxy) and s-proxy (broker → r-proxy).
//!
//! Each frame is one gRPC message and costs a wake-up of the HTTP/2 connection task on both
//! proxies, so as many packets as have already arrived go into one frame; an idle session keeps
//! a small buffer.

use bytes::BytesMut;
use strait_mqtt_codec::{self as mqtt, Packet, Protocol};
use strait_relay::v1;

/// Packets are batched into one relay frame up to about this many bytes, in both directions.
pub const BATCH_BYTES: usize = 64 * 1024;

/// Read buffer of an idle connection.
const IDLE_READ_BUFFER: usize = 1024;
/// Read buffer of a connection with a backlog.
const BUSY_READ_BUFFER: usize = 16 * 1024;

/// A fresh read buffer for a connection.
pub fn read_buffer() -> BytesMut {
    BytesMut::with_capacity(IDLE_READ_BUFFER)
}

/// Makes room for the next read: a little while the connection is quiet, more while the
/// buffer holds a backlog (a partial large packet, or a burst).
pub fn reserve_for_read(buf: &mut BytesMut) {
    if buf.capacity() - buf.len() < IDLE_READ_BUFFER / 2 {
        buf.reserve(if buf.len() > IDLE_READ_BUFFER {
            BUSY_READ_BUFFER
        } else {
            IDLE_READ_BUFFER
        });
    }
}

/// Why a batch stopped short.
#[derive(Debug)]
pub enum BatchError<E> {
    /// The bytes are not a valid packet.
    Decode(mqtt::DecodeError),
    /// `accept` refused a packet.
    Rejected(E),
}

/// Decodes the complete packets at the front of `buf` into `out`, up to about [`BATCH_BYTES`],
/// passing each to `accept` first, which may change it and says whether to keep it
/// (`Ok(false)`: left out of `out`). Incomplete trailing bytes stay in `buf`.
pub fn decode_batch<E>(
    buf: &mut BytesMut,
    protocol: Protocol,
    max_packet_size: usize,
    out: &mut Vec<v1::Packet>,
    mut accept: impl FnMut(&mut Packet) -> Result<bool, E>,
) -> Result<(), BatchError<E>> {
    let mut batched = 0;
    while batched < BATCH_BYTES {
        let before = buf.len();
        let mut packet = match mqtt::decode(buf, protocol, max_packet_size) {
            Ok(Some(packet)) => packet,
            Ok(None) => break,
            Err(error) => return Err(BatchError::Decode(error)),
        };
        let keep = accept(&mut packet).map_err(BatchError::Rejected)?;
        batched += before - buf.len();
        if keep {
            out.push(packet.into());
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use strait_mqtt_codec::{Publish, QoS};

    fn publish(payload: usize) -> Packet {
        Packet::Publish(Publish {
            topic: "t".into(),
            qos: QoS::AtMostOnce,
            payload: vec![7; payload].into(),
            ..Default::default()
        })
    }

    fn encoded(packets: &[Packet]) -> BytesMut {
        let mut buf = BytesMut::new();
        for packet in packets {
            mqtt::encode(packet, Protocol::V5, &mut buf).unwrap();
        }
        buf
    }

    #[test]
    fn decodes_whole_packets_and_keeps_a_partial_one() {
        let mut buf = encoded(&[publish(10), Packet::PingReq, publish(10)]);
        buf.truncate(buf.len() - 3);
        let mut out = Vec::new();
        decode_batch(&mut buf, Protocol::V5, 1 << 20, &mut out, |_| {
            Ok::<_, ()>(true)
        })
        .unwrap();
        assert_eq!(out.len(), 2);
        assert!(!buf.is_empty(), "the partial PUBLISH stays buffered");
    }

    #[test]
    fn stops_near_the_batch_size() {
        let mut buf = encoded(&vec![publish(1000); 200]);
        let mut out = Vec::new();
        decode_batch(&mut buf, Protocol::V5, 1 << 20, &mut out, |_| {
            Ok::<_, ()>(true)
        })
        .unwrap();
        assert!(out.len() > 50 && out.len() < 200, "{} packets", out.len());
    }

    #[test]
    fn a_rejected_packet_ends_the_batch_with_the_callers_error() {
        let mut buf = encoded(&[publish(1), Packet::PingReq]);
        let mut out = Vec::new();
        let result = decode_batch(&mut buf, Protocol::V5, 1 << 20, &mut out, |p| match p {
            Packet::PingReq => Err("no ping"),
            _ => Ok(true),
        });
        assert!(matches!(result, Err(BatchError::Rejected("no ping"))));
    }

    #[test]
    fn packets_accept_leaves_out_are_consumed_but_not_batched() {
        let mut buf = encoded(&[publish(1), Packet::PingReq, publish(2)]);
        let mut out = Vec::new();
        decode_batch(&mut buf, Protocol::V5, 1 << 20, &mut out, |p| {
            Ok::<_, ()>(!matches!(p, Packet::PingReq))
        })
        .unwrap();
        assert_eq!(out.len(), 2);
        assert!(buf.is_empty());
    }

    #[test]
    fn oversized_packets_are_decode_errors() {
        let mut buf = encoded(&[publish(100)]);
        let mut out = Vec::new();
        let result = decode_batch(&mut buf, Protocol::V5, 50, &mut out, |_| Ok::<_, ()>(true));
        assert!(matches!(result, Err(BatchError::Decode(_))));
    }

    #[test]
    fn the_read_buffer_grows_a_little_when_quiet_and_a_lot_with_a_backlog() {
        let mut quiet = read_buffer();
        quiet.extend_from_slice(&[0; IDLE_READ_BUFFER - 10]);
        reserve_for_read(&mut quiet);
        let spare = quiet.capacity() - quiet.len();
        assert!(
            (IDLE_READ_BUFFER..BUSY_READ_BUFFER).contains(&spare),
            "{spare}"
        );

        let mut backlog = BytesMut::with_capacity(2 * IDLE_READ_BUFFER);
        backlog.extend_from_slice(&[0; 2 * IDLE_READ_BUFFER - 10]);
        reserve_for_read(&mut backlog);
        assert!(backlog.capacity() - backlog.len() >= BUSY_READ_BUFFER);
    }
}
