//! Decoding bytes into packets.
//!
//! [`check`] looks at the fixed header only; [`decode`] and [`decode_first`]
//! split one complete frame off the front of the buffer (`split_to` +
//! `freeze`, no copy) and parse it. Binary fields and the PUBLISH payload are
//! `Bytes` slices of that frame, and so is the PUBLISH topic (a `ByteString`); other strings
//! are validated and copied into `String`s.
//!
//! One file on purpose (about 740 lines): the frame reader and one decoder per packet type,
//! sharing its `Reader`, read as one table beside spec §3; a split would scatter it.

use bytes::{Buf, Bytes, BytesMut};
use bytestring::ByteString;

use crate::packet::*;
use crate::properties::{self, PropertySet};
use crate::{ConnectError, DecodeError, Protocol, ReasonCode, topic};

/// The fixed header of a packet (spec §2.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FixedHeader {
    pub packet_type: PacketType,
    /// Low nibble of the first byte (validated for the packet type).
    pub flags: u8,
    /// Bytes taken by the fixed header itself: 2 to 5.
    pub header_len: usize,
    /// Bytes after the fixed header.
    pub remaining_len: usize,
}

impl FixedHeader {
    /// The whole packet's size, fixed header included; what Maximum Packet Size limits.
    pub const fn frame_len(&self) -> usize {
        self.header_len + self.remaining_len
    }

    /// Parses the fixed header at the start of `buf`; `Ok(None)` if `buf`
    /// does not hold all of it yet.
    ///
    /// Validates the packet type (0 is reserved) and the flags it requires:
    /// 0b0010 for PUBREL, SUBSCRIBE and UNSUBSCRIBE, 0 for the others, and
    /// for PUBLISH a QoS other than 3 and no DUP on QoS 0. The remaining
    /// length must be at most 4 bytes and minimally encoded.
    pub fn parse(buf: &[u8]) -> Result<Option<Self>, DecodeError> {
        let Some(&first) = buf.first() else {
            return Ok(None);
        };
        let packet_type =
            PacketType::from_u8(first >> 4).ok_or(DecodeError::InvalidPacketType(first >> 4))?;
        let flags = first & 0x0F;
        let flags_ok = match packet_type {
            PacketType::Publish => {
                let qos = (flags >> 1) & 0b11;
                if qos == 3 {
                    return Err(DecodeError::InvalidQoS(3));
                }
                qos != 0 || flags & 0b1000 == 0
            }
            PacketType::PubRel | PacketType::Subscribe | PacketType::Unsubscribe => flags == 0b0010,
            _ => flags == 0,
        };
        if !flags_ok {
            return Err(DecodeError::InvalidFlags {
                packet: packet_type.name(),
                flags,
            });
        }
        match read_varint(&buf[1..]) {
            Ok(Some((remaining_len, len))) => Ok(Some(Self {
                packet_type,
                flags,
                header_len: 1 + len,
                remaining_len: remaining_len as usize,
            })),
            Ok(None) => Ok(None),
            Err(()) => Err(DecodeError::MalformedRemainingLength),
        }
    }
}

/// Reads a variable byte integer (spec §1.5.5) from the start of `buf`:
/// `Ok(None)` if it is not complete yet, `Err` if it is longer than 4 bytes
/// or not minimally encoded, else the value and its length.
fn read_varint(buf: &[u8]) -> Result<Option<(u32, usize)>, ()> {
    let mut value = 0u32;
    for (i, &byte) in buf.iter().enumerate().take(4) {
        value |= u32::from(byte & 0x7F) << (7 * i);
        if byte & 0x80 == 0 {
            // A last byte of 0 after other bytes is a longer-than-needed encoding.
            return if i > 0 && byte == 0 {
                Err(())
            } else {
                Ok(Some((value, i + 1)))
            };
        }
    }
    if buf.len() >= 4 { Err(()) } else { Ok(None) }
}

/// Is a complete packet at the front of `buf`?
///
/// * `Ok(Some(header))`: yes, `header.frame_len()` bytes long;
/// * `Ok(None)`: more bytes are needed (for the header or the body);
/// * `Err(_)`: the fixed header is invalid, or announces a packet larger than
///   `max_packet_size` (whole packet, fixed header included), which is
///   reported as soon as the fixed header is in, before the body arrives.
///
/// Pass [`crate::MAX_PACKET_SIZE`] for no limit other than the protocol's.
pub fn check(buf: &[u8], max_packet_size: usize) -> Result<Option<FixedHeader>, DecodeError> {
    let Some(header) = FixedHeader::parse(buf)? else {
        return Ok(None);
    };
    let size = header.frame_len();
    if size > max_packet_size {
        return Err(DecodeError::PacketTooLarge {
            size,
            max: max_packet_size,
        });
    }
    Ok((buf.len() >= size).then_some(header))
}

/// Decodes one packet from the front of `buf`.
///
/// Returns `Ok(None)` and leaves `buf` untouched until a whole packet is
/// there; then removes exactly that packet's bytes from `buf` and returns it.
/// After an error the connection must be closed: `buf` is then untouched if
/// the fixed header was at fault, or without the offending packet otherwise.
///
/// CONNECT is decoded too (its own protocol level must equal `protocol`);
/// rejecting a second CONNECT, like every other session rule (topic alias
/// mapping, receive maximum, who may send which packet), is the caller's job.
pub fn decode(
    buf: &mut BytesMut,
    protocol: Protocol,
    max_packet_size: usize,
) -> Result<Option<Packet>, DecodeError> {
    let Some(header) = check(buf, max_packet_size)? else {
        return Ok(None);
    };
    let mut frame = buf.split_to(header.frame_len()).freeze();
    frame.advance(header.header_len);
    let mut r = Reader::new(frame, header.packet_type.name());
    let packet = decode_body(header, protocol, &mut r)?;
    r.finish()?;
    Ok(Some(packet))
}

/// Decodes the first packet of a connection, which must be CONNECT, and
/// tells which protocol the client speaks; use [`decode`] with that protocol
/// for the rest of the connection.
///
/// Returns `Ok(None)` (leaving `buf` untouched) until the whole CONNECT is
/// there. Any other packet type is rejected from its first byte. On error,
/// [`ConnectError::connack`] gives the CONNACK to send, if any, before closing.
///
/// MQTT 3.1 (protocol name "MQIsdp", level 3) is not supported: it fails with
/// [`DecodeError::InvalidProtocolLevel`]`(3)`, and the CONNACK to send is the
/// 3.1.1 "unacceptable protocol version" (return code 1), which 3.1 clients
/// understand.
///
/// ```
/// use bytes::BytesMut;
/// use strait_mqtt_codec::{decode, decode_first, Packet, Protocol};
///
/// let mut buf = BytesMut::from(&b"\x10\x0c\x00\x04MQTT\x04\x02\x00\x3c\x00\x00\xc0\x00"[..]);
/// let (protocol, connect) = decode_first(&mut buf, 1 << 20).unwrap().unwrap();
/// assert_eq!(protocol, Protocol::V311);
/// assert_eq!(connect.keep_alive, 60);
/// assert_eq!(decode(&mut buf, protocol, 1 << 20).unwrap(), Some(Packet::PingReq));
/// ```
pub fn decode_first(
    buf: &mut BytesMut,
    max_packet_size: usize,
) -> Result<Option<(Protocol, Connect)>, ConnectError> {
    let unknown = |error| ConnectError {
        protocol: None,
        error,
    };
    if let Some(&first) = buf.first() {
        let packet_type = first >> 4;
        if packet_type != PacketType::Connect as u8 {
            let packet =
                PacketType::from_u8(packet_type).map_or("reserved packet type", |t| t.name());
            return Err(unknown(DecodeError::FirstPacketNotConnect { packet }));
        }
    }
    let Some(header) = check(buf, max_packet_size).map_err(unknown)? else {
        return Ok(None);
    };
    let mut frame = buf.split_to(header.frame_len()).freeze();
    frame.advance(header.header_len);
    let mut r = Reader::new(frame, PacketType::Connect.name());
    let (protocol, connect) = decode_connect(&mut r)?;
    r.finish().map_err(|error| ConnectError {
        protocol: Some(protocol),
        error,
    })?;
    Ok(Some((protocol, connect)))
}

fn decode_body(
    header: FixedHeader,
    protocol: Protocol,
    r: &mut Reader,
) -> Result<Packet, DecodeError> {
    use PacketType as T;
    let v5 = protocol == Protocol::V5;
    Ok(match header.packet_type {
        T::Connect => {
            let (level, connect) = decode_connect(r)?;
            if level != protocol {
                return Err(DecodeError::InvalidProtocolLevel(level.level()));
            }
            Packet::Connect(connect)
        }
        T::ConnAck => Packet::ConnAck(decode_connack(r, protocol)?),
        T::Publish => Packet::Publish(decode_publish(header.flags, r, protocol)?),
        T::PubAck => {
            let (packet_id, reason_code, properties) = decode_pub_response(r, protocol, T::PubAck)?;
            Packet::PubAck(PubAck {
                packet_id,
                reason_code,
                properties,
            })
        }
        T::PubRec => {
            let (packet_id, reason_code, properties) = decode_pub_response(r, protocol, T::PubRec)?;
            Packet::PubRec(PubRec {
                packet_id,
                reason_code,
                properties,
            })
        }
        T::PubRel => {
            let (packet_id, reason_code, properties) = decode_pub_response(r, protocol, T::PubRel)?;
            Packet::PubRel(PubRel {
                packet_id,
                reason_code,
                properties,
            })
        }
        T::PubComp => {
            let (packet_id, reason_code, properties) =
                decode_pub_response(r, protocol, T::PubComp)?;
            Packet::PubComp(PubComp {
                packet_id,
                reason_code,
                properties,
            })
        }
        T::Subscribe => Packet::Subscribe(decode_subscribe(r, protocol)?),
        T::SubAck => {
            let packet_id = r.packet_id()?;
            let properties = read_properties(r, protocol)?;
            let reason_codes = read_reason_codes(r, protocol, T::SubAck)?;
            Packet::SubAck(SubAck {
                packet_id,
                reason_codes,
                properties,
            })
        }
        T::Unsubscribe => {
            let packet_id = r.packet_id()?;
            let properties = read_properties(r, protocol)?;
            r.non_empty()?;
            let mut filters = Vec::new();
            while !r.is_empty() {
                let filter = r.string()?;
                topic::validate_filter(&filter).map_err(DecodeError::InvalidTopicFilter)?;
                filters.push(filter);
            }
            Packet::Unsubscribe(Unsubscribe {
                packet_id,
                filters,
                properties,
            })
        }
        T::UnsubAck => {
            let packet_id = r.packet_id()?;
            let (properties, reason_codes) = if v5 {
                let properties = r.properties()?;
                (properties, read_reason_codes(r, protocol, T::UnsubAck)?)
            } else {
                Default::default()
            };
            Packet::UnsubAck(UnsubAck {
                packet_id,
                reason_codes,
                properties,
            })
        }
        T::PingReq => Packet::PingReq,
        T::PingResp => Packet::PingResp,
        T::Disconnect => {
            let (reason_code, properties) = if v5 {
                read_optional_reason(r, T::Disconnect)?
            } else {
                Default::default()
            };
            Packet::Disconnect(Disconnect {
                reason_code,
                properties,
            })
        }
        T::Auth => {
            if !v5 {
                return Err(DecodeError::UnsupportedPacket {
                    packet: T::Auth.name(),
                    protocol,
                });
            }
            let (reason_code, properties) = read_optional_reason(r, T::Auth)?;
            Packet::Auth(Auth {
                reason_code,
                properties,
            })
        }
    })
}

/// Reads CONNECT; errors carry the protocol once the level has been read.
fn decode_connect(r: &mut Reader) -> Result<(Protocol, Connect), ConnectError> {
    let unknown = |error| ConnectError {
        protocol: None,
        error,
    };
    let name_len = usize::from(r.u16().map_err(unknown)?);
    r.need(name_len).map_err(unknown)?;
    let name = match &r.buf[..name_len] {
        b"MQTT" => Some(true),
        b"MQIsdp" => Some(false),
        _ => None,
    };
    r.buf.advance(name_len);
    let level = r.u8().map_err(unknown)?;
    // MQTT 3.1 ("MQIsdp", level 3) is reported as an unsupported level.
    let protocol = match (name, Protocol::from_level(level)) {
        (Some(true), Some(protocol)) => protocol,
        (Some(_), _) => {
            return Err(unknown(DecodeError::InvalidProtocolLevel(level)));
        }
        _ => return Err(unknown(DecodeError::InvalidProtocolName)),
    };
    let connect = decode_connect_rest(r, protocol).map_err(|error| ConnectError {
        protocol: Some(protocol),
        error,
    })?;
    Ok((protocol, connect))
}

fn decode_connect_rest(r: &mut Reader, protocol: Protocol) -> Result<Connect, DecodeError> {
    let flags = r.u8()?;
    let will_flag = flags & 0b0000_0100 != 0;
    let will_qos = (flags >> 3) & 0b11;
    let will_retain = flags & 0b0010_0000 != 0;
    let has_password = flags & 0b0100_0000 != 0;
    let has_username = flags & 0b1000_0000 != 0;
    let invalid = flags & 0b1 != 0 // reserved
        || will_qos == 3
        || (!will_flag && (will_qos != 0 || will_retain))
        || (protocol == Protocol::V311 && has_password && !has_username);
    if invalid {
        return Err(DecodeError::InvalidConnectFlags(flags));
    }
    let keep_alive = r.u16()?;
    let properties = read_properties(r, protocol)?;
    let client_id = r.string()?;
    let will = if will_flag {
        let properties = match protocol {
            Protocol::V5 => properties::decode(r, "CONNECT will")?,
            Protocol::V311 => Default::default(),
        };
        let topic = r.string()?;
        topic::validate_name(&topic).map_err(DecodeError::InvalidTopicName)?;
        let payload = r.binary()?;
        Some(Will {
            topic,
            payload,
            qos: QoS::from_u8(will_qos).unwrap_or_default(),
            retain: will_retain,
            properties,
        })
    } else {
        None
    };
    let username = has_username.then(|| r.string()).transpose()?;
    let password = has_password.then(|| r.binary()).transpose()?;
    Ok(Connect {
        clean_start: flags & 0b10 != 0,
        keep_alive,
        client_id,
        will,
        username,
        password,
        properties,
    })
}

fn decode_connack(r: &mut Reader, protocol: Protocol) -> Result<ConnAck, DecodeError> {
    let flags = r.u8()?;
    if flags & 0xFE != 0 {
        return Err(DecodeError::InvalidConnAckFlags(flags));
    }
    let code = r.u8()?;
    let reason_code = match protocol {
        Protocol::V311 => ReasonCode::from_v311_connack(code),
        Protocol::V5 => Some(ReasonCode(code)).filter(|c| c.is_valid_for(PacketType::ConnAck)),
    }
    .ok_or(DecodeError::InvalidReasonCode {
        packet: r.packet,
        code,
    })?;
    Ok(ConnAck {
        session_present: flags & 1 != 0,
        reason_code,
        properties: read_properties(r, protocol)?,
    })
}

fn decode_publish(flags: u8, r: &mut Reader, protocol: Protocol) -> Result<Publish, DecodeError> {
    // The fixed header already rejected QoS 3 and DUP on QoS 0.
    let qos = QoS::from_u8((flags >> 1) & 0b11).unwrap_or_default();
    let topic = r.shared_string()?;
    // An empty topic is only valid in 5.0 with a Topic Alias, checked below.
    let alias_needed = topic.is_empty() && protocol == Protocol::V5;
    if !alias_needed {
        topic::validate_name(&topic).map_err(DecodeError::InvalidTopicName)?;
    }
    let packet_id = if qos == QoS::AtMostOnce {
        0
    } else {
        r.packet_id()?
    };
    let properties: properties::PublishProperties = read_properties(r, protocol)?;
    if alias_needed && properties.topic_alias.is_none() {
        return Err(DecodeError::EmptyTopicWithoutAlias);
    }
    Ok(Publish {
        dup: flags & 0b1000 != 0,
        qos,
        retain: flags & 0b1 != 0,
        topic,
        packet_id,
        payload: r.rest(),
        properties,
    })
}

fn decode_pub_response(
    r: &mut Reader,
    protocol: Protocol,
    packet: PacketType,
) -> Result<(u16, ReasonCode, properties::AckProperties), DecodeError> {
    let packet_id = r.packet_id()?;
    if protocol == Protocol::V311 {
        return Ok((packet_id, ReasonCode::SUCCESS, Default::default()));
    }
    let (code, properties) = read_optional_reason(r, packet)?;
    Ok((packet_id, code, properties))
}

/// MQTT 5 tail of PUBACK-like packets, DISCONNECT and AUTH: an absent reason
/// code means Success, an absent property length means no properties.
fn read_optional_reason<P: PropertySet>(
    r: &mut Reader,
    packet: PacketType,
) -> Result<(ReasonCode, P), DecodeError> {
    if r.is_empty() {
        return Ok((ReasonCode::SUCCESS, P::default()));
    }
    let code = r.reason_code(packet)?;
    let properties = if r.is_empty() {
        P::default()
    } else {
        r.properties()?
    };
    Ok((code, properties))
}

fn decode_subscribe(r: &mut Reader, protocol: Protocol) -> Result<Subscribe, DecodeError> {
    let packet_id = r.packet_id()?;
    let properties = read_properties(r, protocol)?;
    r.non_empty()?;
    let mut subscriptions = Vec::new();
    while !r.is_empty() {
        let filter = r.string()?;
        let options = decode_options(r.u8()?, protocol)?;
        topic::validate_filter(&filter).map_err(DecodeError::InvalidTopicFilter)?;
        if options.no_local && topic::parse_shared(&filter).is_some() {
            return Err(DecodeError::SharedSubscriptionNoLocal);
        }
        subscriptions.push(Subscription { filter, options });
    }
    Ok(Subscribe {
        packet_id,
        subscriptions,
        properties,
    })
}

fn decode_options(byte: u8, protocol: Protocol) -> Result<SubscriptionOptions, DecodeError> {
    let reserved = match protocol {
        Protocol::V311 => 0b1111_1100,
        Protocol::V5 => 0b1100_0000,
    };
    if byte & reserved != 0 {
        return Err(DecodeError::InvalidSubscriptionOptions(byte));
    }
    let qos = QoS::from_u8(byte & 0b11).ok_or(DecodeError::InvalidQoS(byte & 0b11))?;
    let retain_handling = match (byte >> 4) & 0b11 {
        0 => RetainHandling::SendAtSubscribe,
        1 => RetainHandling::SendAtSubscribeIfNew,
        2 => RetainHandling::DoNotSend,
        v => return Err(DecodeError::InvalidRetainHandling(v)),
    };
    Ok(SubscriptionOptions {
        qos,
        no_local: byte & 0b0100 != 0,
        retain_as_published: byte & 0b1000 != 0,
        retain_handling,
    })
}

fn read_properties<P: PropertySet>(r: &mut Reader, protocol: Protocol) -> Result<P, DecodeError> {
    match protocol {
        Protocol::V5 => r.properties(),
        Protocol::V311 => Ok(P::default()),
    }
}

/// The SUBACK / UNSUBACK payload: one code per entry, at least one.
fn read_reason_codes(
    r: &mut Reader,
    protocol: Protocol,
    packet: PacketType,
) -> Result<Vec<ReasonCode>, DecodeError> {
    r.non_empty()?;
    let mut codes = Vec::with_capacity(r.remaining());
    while !r.is_empty() {
        let code = match protocol {
            Protocol::V5 => r.reason_code(packet)?,
            // 3.1.1 SUBACK: granted QoS 0-2 or 0x80 (failure).
            Protocol::V311 => match r.u8()? {
                code @ (0..=2 | 0x80) => ReasonCode(code),
                code => {
                    return Err(DecodeError::InvalidReasonCode {
                        packet: r.packet,
                        code,
                    });
                }
            },
        };
        codes.push(code);
    }
    Ok(codes)
}

/// Checks a UTF-8 encoded string (spec §1.5.4): well-formed UTF-8 without U+0000.
fn utf8(bytes: &[u8]) -> Result<&str, DecodeError> {
    no_null(bytes)?;
    std::str::from_utf8(bytes).map_err(|_| DecodeError::InvalidUtf8)
}

/// In well-formed UTF-8, U+0000 can only be the byte 0 (the overlong form C0 80 is not
/// well-formed).
fn no_null(bytes: &[u8]) -> Result<(), DecodeError> {
    if bytes.contains(&0) {
        return Err(DecodeError::NullCharacter);
    }
    Ok(())
}

/// A cursor over the body of one packet. Reads are bounds-checked and fail
/// with [`DecodeError::Truncated`]; the packet name labels errors.
pub(crate) struct Reader {
    buf: Bytes,
    packet: &'static str,
}

impl Reader {
    fn new(buf: Bytes, packet: &'static str) -> Self {
        Self { buf, packet }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }

    fn remaining(&self) -> usize {
        self.buf.len()
    }

    fn need(&self, n: usize) -> Result<(), DecodeError> {
        if self.buf.len() < n {
            return Err(DecodeError::Truncated {
                packet: self.packet,
                needed: n,
                available: self.buf.len(),
            });
        }
        Ok(())
    }

    pub(crate) fn u8(&mut self) -> Result<u8, DecodeError> {
        self.need(1)?;
        Ok(self.buf.get_u8())
    }

    pub(crate) fn u16(&mut self) -> Result<u16, DecodeError> {
        self.need(2)?;
        Ok(self.buf.get_u16())
    }

    pub(crate) fn u32(&mut self) -> Result<u32, DecodeError> {
        self.need(4)?;
        Ok(self.buf.get_u32())
    }

    pub(crate) fn varint(&mut self) -> Result<u32, DecodeError> {
        match read_varint(&self.buf) {
            Ok(Some((value, len))) => {
                self.buf.advance(len);
                Ok(value)
            }
            Ok(None) => Err(DecodeError::Truncated {
                packet: self.packet,
                needed: self.buf.len() + 1,
                available: self.buf.len(),
            }),
            Err(()) => Err(DecodeError::MalformedVarInt),
        }
    }

    /// A UTF-8 encoded string (spec §1.5.4): well-formed UTF-8 without U+0000.
    /// Other control characters and non-characters, which the spec only says
    /// senders SHOULD NOT use, are accepted and passed through.
    pub(crate) fn string(&mut self) -> Result<String, DecodeError> {
        let len = usize::from(self.u16()?);
        self.need(len)?;
        let s = utf8(&self.buf[..len])?.to_owned();
        self.buf.advance(len);
        Ok(s)
    }

    /// A UTF-8 encoded string as a slice of the frame: for the topic of every PUBLISH, which
    /// would otherwise be allocated and copied at each hop.
    pub(crate) fn shared_string(&mut self) -> Result<ByteString, DecodeError> {
        let len = usize::from(self.u16()?);
        self.need(len)?;
        no_null(&self.buf[..len])?;
        ByteString::try_from(self.buf.split_to(len)).map_err(|_| DecodeError::InvalidUtf8)
    }

    /// Binary data: 2-byte length, then the bytes, as a slice of the frame.
    pub(crate) fn binary(&mut self) -> Result<Bytes, DecodeError> {
        let len = usize::from(self.u16()?);
        self.need(len)?;
        Ok(self.buf.split_to(len))
    }

    fn packet_id(&mut self) -> Result<u16, DecodeError> {
        match self.u16()? {
            0 => Err(DecodeError::ZeroPacketId {
                packet: self.packet,
            }),
            id => Ok(id),
        }
    }

    /// A v5 reason code, checked against those `packet` allows.
    fn reason_code(&mut self, packet: PacketType) -> Result<ReasonCode, DecodeError> {
        let code = ReasonCode(self.u8()?);
        if !code.is_valid_for(packet) {
            return Err(DecodeError::InvalidReasonCode {
                packet: self.packet,
                code: code.0,
            });
        }
        Ok(code)
    }

    /// A property block for this packet.
    pub(crate) fn properties<P: PropertySet>(&mut self) -> Result<P, DecodeError> {
        let packet = self.packet;
        properties::decode(self, packet)
    }

    /// The first `len` bytes as their own reader (a property block).
    pub(crate) fn sub(&mut self, len: usize) -> Result<Reader, DecodeError> {
        self.need(len)?;
        Ok(Reader::new(self.buf.split_to(len), self.packet))
    }

    fn non_empty(&self) -> Result<(), DecodeError> {
        if self.is_empty() {
            return Err(DecodeError::EmptyPayload {
                packet: self.packet,
            });
        }
        Ok(())
    }

    /// Everything left (the PUBLISH payload).
    fn rest(&mut self) -> Bytes {
        std::mem::take(&mut self.buf)
    }

    /// Fails if bytes are left over.
    fn finish(&self) -> Result<(), DecodeError> {
        if !self.is_empty() {
            return Err(DecodeError::TrailingBytes {
                packet: self.packet,
                count: self.remaining(),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn varints() {
        assert_eq!(read_varint(&[0x00]), Ok(Some((0, 1))));
        assert_eq!(read_varint(&[0x7F]), Ok(Some((127, 1))));
        assert_eq!(read_varint(&[0x80, 0x01]), Ok(Some((128, 2))));
        assert_eq!(read_varint(&[0xFF, 0x7F]), Ok(Some((16_383, 2))));
        assert_eq!(
            read_varint(&[0xFF, 0xFF, 0xFF, 0x7F]),
            Ok(Some((268_435_455, 4)))
        );
        assert_eq!(read_varint(&[]), Ok(None));
        assert_eq!(read_varint(&[0x80]), Ok(None));
        assert_eq!(read_varint(&[0xFF, 0xFF, 0xFF]), Ok(None));
        assert_eq!(read_varint(&[0xFF, 0xFF, 0xFF, 0xFF]), Err(()));
        assert_eq!(read_varint(&[0x80, 0x00]), Err(()));
        assert_eq!(read_varint(&[0x80, 0x80, 0x00]), Err(()));
    }
}
