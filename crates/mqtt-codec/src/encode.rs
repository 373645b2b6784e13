//! Encoding packets into bytes.
//!
//! Each packet body is described once, by [`write_body`], against a [`Sink`].
//! A first pass into a byte counter (`usize`) validates the packet and
//! computes the remaining length; only then is anything written, so a failed
//! encode leaves the output untouched and the buffer is reserved once.

use bytes::{BufMut, BytesMut};

use crate::packet::{Packet, PacketType, Publish, QoS};
use crate::properties::{self, PropertySet};
use crate::{EncodeError, MAX_PACKET_SIZE, MAX_REMAINING_LENGTH, Protocol, ReasonCode};

/// Where encoded bytes go: a `BytesMut`, or a `usize` that only counts them.
pub(crate) trait Sink {
    fn put_u8(&mut self, v: u8);
    fn put_u16(&mut self, v: u16);
    fn put_u32(&mut self, v: u32);
    fn put_slice(&mut self, v: &[u8]);
}

impl Sink for usize {
    fn put_u8(&mut self, _: u8) {
        *self += 1;
    }
    fn put_u16(&mut self, _: u16) {
        *self += 2;
    }
    fn put_u32(&mut self, _: u32) {
        *self += 4;
    }
    fn put_slice(&mut self, v: &[u8]) {
        *self += v.len();
    }
}

impl Sink for BytesMut {
    fn put_u8(&mut self, v: u8) {
        BufMut::put_u8(self, v);
    }
    fn put_u16(&mut self, v: u16) {
        BufMut::put_u16(self, v);
    }
    fn put_u32(&mut self, v: u32) {
        BufMut::put_u32(self, v);
    }
    fn put_slice(&mut self, v: &[u8]) {
        self.extend_from_slice(v);
    }
}

/// Writes a variable byte integer (spec §1.5.5), at most 268,435,455.
pub(crate) fn put_varint<S: Sink>(s: &mut S, mut v: usize) -> Result<(), EncodeError> {
    if v > MAX_REMAINING_LENGTH {
        return Err(EncodeError::RemainingLengthTooLarge(v));
    }
    loop {
        let byte = (v % 128) as u8;
        v /= 128;
        if v == 0 {
            s.put_u8(byte);
            return Ok(());
        }
        s.put_u8(byte | 0x80);
    }
}

const fn varint_len(v: usize) -> usize {
    match v {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    }
}

/// Writes a UTF-8 string: 2-byte length, then the bytes.
pub(crate) fn put_string<S: Sink>(s: &mut S, v: &str) -> Result<(), EncodeError> {
    let len = u16::try_from(v.len()).map_err(|_| EncodeError::StringTooLong(v.len()))?;
    s.put_u16(len);
    s.put_slice(v.as_bytes());
    Ok(())
}

/// Writes binary data: 2-byte length, then the bytes.
pub(crate) fn put_binary<S: Sink>(s: &mut S, v: &[u8]) -> Result<(), EncodeError> {
    let len = u16::try_from(v.len()).map_err(|_| EncodeError::BinaryTooLong(v.len()))?;
    s.put_u16(len);
    s.put_slice(v);
    Ok(())
}

/// Appends the encoding of `packet` for `protocol` to `out`.
///
/// For 3.1.1, fields that only exist in 5.0 are dropped (properties, UNSUBACK
/// and DISCONNECT reason codes, subscription options other than QoS), CONNACK
/// and SUBACK codes are mapped (see [`ReasonCode`]), and packets 3.1.1 cannot
/// express are errors (AUTH, a failure code in PUBACK/PUBREC/PUBREL/PUBCOMP,
/// a password without user name). On error `out` is unchanged.
pub fn encode(packet: &Packet, protocol: Protocol, out: &mut BytesMut) -> Result<(), EncodeError> {
    encode_with_max(packet, protocol, MAX_PACKET_SIZE, out)
}

/// Like [`encode`], but fails with [`EncodeError::PacketTooLarge`] (writing
/// nothing) when the whole packet would exceed `max_packet_size` bytes, e.g.
/// the Maximum Packet Size the peer announced. A server must then drop the
/// message rather than send it (spec §3.1.2.11.4).
pub fn encode_with_max(
    packet: &Packet,
    protocol: Protocol,
    max_packet_size: usize,
    out: &mut BytesMut,
) -> Result<(), EncodeError> {
    let remaining = remaining_len(packet, protocol)?;
    let size = 1 + varint_len(remaining) + remaining;
    if size > max_packet_size {
        return Err(EncodeError::PacketTooLarge {
            size,
            max: max_packet_size,
        });
    }
    out.reserve(size);
    Sink::put_u8(out, first_byte(packet));
    put_varint(out, remaining)?;
    write_body(packet, protocol, out)
}

/// The number of bytes [`encode`] would write (fixed header included), i.e.
/// the "packet size" MQTT 5's Maximum Packet Size is compared against.
pub fn encoded_len(packet: &Packet, protocol: Protocol) -> Result<usize, EncodeError> {
    let remaining = remaining_len(packet, protocol)?;
    Ok(1 + varint_len(remaining) + remaining)
}

fn remaining_len(packet: &Packet, protocol: Protocol) -> Result<usize, EncodeError> {
    let mut len = 0usize;
    write_body(packet, protocol, &mut len)?;
    if len > MAX_REMAINING_LENGTH {
        return Err(EncodeError::RemainingLengthTooLarge(len));
    }
    Ok(len)
}

fn first_byte(packet: &Packet) -> u8 {
    let packet_type = packet.packet_type();
    let flags = match packet {
        Packet::Publish(p) => (p.dup as u8) << 3 | (p.qos as u8) << 1 | p.retain as u8,
        Packet::PubRel(_) | Packet::Subscribe(_) | Packet::Unsubscribe(_) => 0b0010,
        _ => 0,
    };
    (packet_type as u8) << 4 | flags
}

fn put_packet_id<S: Sink>(s: &mut S, id: u16, packet: PacketType) -> Result<(), EncodeError> {
    if id == 0 {
        return Err(EncodeError::ZeroPacketId {
            packet: packet.name(),
        });
    }
    s.put_u16(id);
    Ok(())
}

fn put_properties<P: PropertySet, S: Sink>(
    s: &mut S,
    protocol: Protocol,
    props: &P,
) -> Result<(), EncodeError> {
    match protocol {
        Protocol::V5 => properties::encode(props, s),
        Protocol::V311 => Ok(()),
    }
}

/// PUBACK, PUBREC, PUBREL, PUBCOMP share this layout. MQTT 5 lets the reason
/// code and property length be omitted when they are Success and empty.
fn put_pub_response<S: Sink>(
    s: &mut S,
    protocol: Protocol,
    packet: PacketType,
    packet_id: u16,
    code: ReasonCode,
    props: &properties::AckProperties,
) -> Result<(), EncodeError> {
    put_packet_id(s, packet_id, packet)?;
    match protocol {
        Protocol::V311 if code.is_error() => Err(EncodeError::ReasonCodeNotInV311 {
            packet: packet.name(),
            code,
        }),
        Protocol::V311 => Ok(()),
        Protocol::V5 => put_optional_reason(s, code, props, false),
    }
}

/// The tail shared by PUBACK-like packets, DISCONNECT and AUTH in MQTT 5:
/// nothing when Success without properties, otherwise the reason code, then
/// the properties (their length may be dropped when empty, except in AUTH).
fn put_optional_reason<P: PropertySet, S: Sink>(
    s: &mut S,
    code: ReasonCode,
    props: &P,
    always_properties: bool,
) -> Result<(), EncodeError> {
    let empty = props.is_empty();
    if code == ReasonCode::SUCCESS && empty {
        return Ok(());
    }
    s.put_u8(code.0);
    if !empty || always_properties {
        properties::encode(props, s)?;
    }
    Ok(())
}

fn put_publish<S: Sink>(s: &mut S, protocol: Protocol, p: &Publish) -> Result<(), EncodeError> {
    if p.topic.is_empty() && (protocol == Protocol::V311 || p.properties.topic_alias.is_none()) {
        return Err(EncodeError::EmptyTopicWithoutAlias);
    }
    put_string(s, &p.topic)?;
    if p.qos == QoS::AtMostOnce {
        if p.packet_id != 0 {
            return Err(EncodeError::PacketIdOnQoS0(p.packet_id));
        }
        if p.dup {
            return Err(EncodeError::DupOnQoS0);
        }
    } else {
        put_packet_id(s, p.packet_id, PacketType::Publish)?;
    }
    put_properties(s, protocol, &p.properties)?;
    s.put_slice(&p.payload);
    Ok(())
}

fn non_empty<T>(items: &[T], packet: PacketType) -> Result<(), EncodeError> {
    if items.is_empty() {
        return Err(EncodeError::EmptyPayload {
            packet: packet.name(),
        });
    }
    Ok(())
}

/// Writes the variable header and payload of `packet` (everything after the
/// remaining length).
fn write_body<S: Sink>(packet: &Packet, protocol: Protocol, s: &mut S) -> Result<(), EncodeError> {
    let v5 = protocol == Protocol::V5;
    let packet_type = packet.packet_type();
    match packet {
        Packet::Connect(c) => {
            if !v5 && c.password.is_some() && c.username.is_none() {
                return Err(EncodeError::PasswordWithoutUsername);
            }
            put_string(s, "MQTT")?;
            s.put_u8(protocol.level());
            let mut flags = (c.username.is_some() as u8) << 7
                | (c.password.is_some() as u8) << 6
                | (c.clean_start as u8) << 1;
            if let Some(w) = &c.will {
                flags |= (w.retain as u8) << 5 | (w.qos as u8) << 3 | 0b100;
            }
            s.put_u8(flags);
            s.put_u16(c.keep_alive);
            put_properties(s, protocol, &c.properties)?;
            put_string(s, &c.client_id)?;
            if let Some(w) = &c.will {
                put_properties(s, protocol, &w.properties)?;
                put_string(s, &w.topic)?;
                put_binary(s, &w.payload)?;
            }
            if let Some(username) = &c.username {
                put_string(s, username)?;
            }
            if let Some(password) = &c.password {
                put_binary(s, password)?;
            }
        }
        Packet::ConnAck(c) => {
            s.put_u8(c.session_present as u8);
            s.put_u8(if v5 {
                c.reason_code.0
            } else {
                c.reason_code.to_v311_connack()
            });
            put_properties(s, protocol, &c.properties)?;
        }
        Packet::Publish(p) => put_publish(s, protocol, p)?,
        Packet::PubAck(p) => put_pub_response(
            s,
            protocol,
            packet_type,
            p.packet_id,
            p.reason_code,
            &p.properties,
        )?,
        Packet::PubRec(p) => put_pub_response(
            s,
            protocol,
            packet_type,
            p.packet_id,
            p.reason_code,
            &p.properties,
        )?,
        Packet::PubRel(p) => put_pub_response(
            s,
            protocol,
            packet_type,
            p.packet_id,
            p.reason_code,
            &p.properties,
        )?,
        Packet::PubComp(p) => put_pub_response(
            s,
            protocol,
            packet_type,
            p.packet_id,
            p.reason_code,
            &p.properties,
        )?,
        Packet::Subscribe(sub) => {
            put_packet_id(s, sub.packet_id, packet_type)?;
            non_empty(&sub.subscriptions, packet_type)?;
            put_properties(s, protocol, &sub.properties)?;
            for entry in &sub.subscriptions {
                put_string(s, &entry.filter)?;
                s.put_u8(if v5 {
                    entry.options.to_byte()
                } else {
                    entry.options.qos as u8
                });
            }
        }
        Packet::SubAck(ack) => {
            put_packet_id(s, ack.packet_id, packet_type)?;
            non_empty(&ack.reason_codes, packet_type)?;
            put_properties(s, protocol, &ack.properties)?;
            for code in &ack.reason_codes {
                s.put_u8(if v5 { code.0 } else { code.to_v311_suback() });
            }
        }
        Packet::Unsubscribe(unsub) => {
            put_packet_id(s, unsub.packet_id, packet_type)?;
            non_empty(&unsub.filters, packet_type)?;
            put_properties(s, protocol, &unsub.properties)?;
            for filter in &unsub.filters {
                put_string(s, filter)?;
            }
        }
        Packet::UnsubAck(ack) => {
            put_packet_id(s, ack.packet_id, packet_type)?;
            if v5 {
                non_empty(&ack.reason_codes, packet_type)?;
                properties::encode(&ack.properties, s)?;
                for code in &ack.reason_codes {
                    s.put_u8(code.0);
                }
            }
        }
        Packet::PingReq | Packet::PingResp => {}
        Packet::Disconnect(d) => {
            if v5 {
                put_optional_reason(s, d.reason_code, &d.properties, false)?;
            }
        }
        Packet::Auth(a) => {
            if !v5 {
                return Err(EncodeError::UnsupportedPacket {
                    packet: packet_type.name(),
                    protocol,
                });
            }
            put_optional_reason(s, a.reason_code, &a.properties, true)?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varint_lengths_match_encoding() {
        for v in [
            0,
            1,
            127,
            128,
            16_383,
            16_384,
            2_097_151,
            2_097_152,
            MAX_REMAINING_LENGTH,
        ] {
            let mut out = BytesMut::new();
            put_varint(&mut out, v).unwrap();
            assert_eq!(out.len(), varint_len(v), "{v}");
        }
        assert_eq!(
            put_varint(&mut 0usize, MAX_REMAINING_LENGTH + 1),
            Err(EncodeError::RemainingLengthTooLarge(
                MAX_REMAINING_LENGTH + 1
            ))
        );
    }
}
