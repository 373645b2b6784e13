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

/// ... and up to this many packets: a decoded packet takes ~200 bytes, so a 64 KiB burst of
/// small PUBLISHes would otherwise make a frame of several thousand, whose vector is reallocated
/// as it grows (twice: here, and where the frame is decoded) and too large for malloc to reuse.
/// The relay's decoder sizes a frame's vector by the same bound.
pub const BATCH_PACKETS: usize = strait_relay::codec::MAX_FRAME_PACKETS;

/// Read buffer of an idle connection, and the smallest read.
const IDLE_READ_BUFFER: usize = 1024;

/// A connection's read buffer, sized by its traffic the way hyper's adaptive read strategy is:
/// a read that fills the room it was given doubles the next one (up to a batch), reads that
/// bring back much less halve it. An idle session keeps 1 KiB; a busy one reads a whole burst
/// per syscall instead of a packet or two (at 1 KiB payloads, fixed 1 KiB reads cost one
/// `read` and often one relay frame per packet).
#[derive(Debug)]
pub struct ReadBuffer {
    buf: BytesMut,
    /// Room to offer the next read.
    want: usize,
    /// Room the last read was offered.
    offered: usize,
}

impl Default for ReadBuffer {
    fn default() -> Self {
        Self {
            buf: BytesMut::with_capacity(IDLE_READ_BUFFER),
            want: IDLE_READ_BUFFER,
            offered: 0,
        }
    }
}

impl ReadBuffer {
    /// The bytes read and not yet decoded.
    pub fn bytes(&mut self) -> &mut BytesMut {
        &mut self.buf
    }

    /// Makes room for the next read and returns the buffer to read into.
    pub fn prepare(&mut self) -> &mut BytesMut {
        if self.want == IDLE_READ_BUFFER
            && self.buf.is_empty()
            && self.buf.capacity() > 4 * IDLE_READ_BUFFER
        {
            // Quiet again after a burst: give the burst's memory back.
            self.buf = BytesMut::with_capacity(IDLE_READ_BUFFER);
        }
        if self.buf.capacity() - self.buf.len() < self.want / 2 {
            self.buf.reserve(self.want);
        }
        self.offered = self.buf.capacity() - self.buf.len();
        &mut self.buf
    }

    /// Records that the read after [`prepare`](Self::prepare) brought `n` bytes.
    pub fn filled(&mut self, n: usize) {
        if n >= self.offered {
            self.want = (self.want * 2).min(BATCH_BYTES);
        } else if n < self.want / 4 {
            self.want = (self.want / 2).max(IDLE_READ_BUFFER);
        }
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

/// Room for the packets of a frame decoded from `buf` (the smallest PUBLISH takes 7 bytes, a
/// typical one more than 16).
pub fn batch_vec(buf: &BytesMut) -> Vec<v1::Packet> {
    Vec::with_capacity((buf.len() / 16).clamp(1, BATCH_PACKETS))
}

/// Decodes the complete packets at the front of `buf` into `out`, up to about [`BATCH_BYTES`]
/// or [`BATCH_PACKETS`],
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
    while batched < BATCH_BYTES && out.len() < BATCH_PACKETS {
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
    fn the_read_buffer_grows_while_reads_fill_it_and_shrinks_when_quiet() {
        let mut reads = ReadBuffer::default();
        let idle = reads.prepare().capacity();
        assert!(idle <= 2 * IDLE_READ_BUFFER, "{idle}");

        // A burst: every read fills what it was offered.
        for _ in 0..10 {
            let room = reads.prepare();
            let n = room.capacity() - room.len();
            room.extend_from_slice(&vec![0; n]);
            reads.filled(n);
            reads.bytes().clear();
        }
        let room = reads.prepare();
        assert!(
            room.capacity() - room.len() >= BATCH_BYTES / 2,
            "grew to a batch"
        );

        // Quiet: small reads shrink the buffer back to its idle size.
        for _ in 0..10 {
            let room = reads.prepare();
            room.extend_from_slice(&[0; 10]);
            reads.filled(10);
            reads.bytes().clear();
        }
        let room = reads.prepare();
        assert!(
            room.capacity() <= 2 * IDLE_READ_BUFFER,
            "{}",
            room.capacity()
        );
    }
}
