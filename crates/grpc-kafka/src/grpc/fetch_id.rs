//! Fetch message ids (Zilla's format, zilla-wire.md §2): an extra length-delimited field
//! (number 32767 by default) appended to each delivered message, holding `0x01`, a zigzag varint
//! partition count, and per partition a zigzag varint id and a zigzag varint64 *next* offset.
//! Clients resume by sending it back base64url-encoded in `last-message-id`.
//!
//! Zilla's ids also list the partitions its stream has not read from yet, with offset -2 (its
//! HISTORICAL: from the beginning); ours list only partitions read from. A negative offset in
//! a received id is therefore read as "not listed": that partition is read from its beginning
//! (tests/peers/zilla interop resumes streams across the two).

use std::collections::BTreeMap;

use base64::Engine as _;
use bytes::{BufMut, Bytes, BytesMut};

/// The fetch progress: next offset per partition.
pub type Progress = BTreeMap<i32, i64>;

fn put_varint(buf: &mut BytesMut, mut v: u64) {
    while v >= 0x80 {
        buf.put_u8((v as u8) | 0x80);
        v >>= 7;
    }
    buf.put_u8(v as u8);
}

fn get_varint(bytes: &mut &[u8]) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let (&b, rest) = bytes.split_first()?;
        *bytes = rest;
        v |= u64::from(b & 0x7f) << shift;
        if b < 0x80 {
            return Some(v);
        }
    }
    None
}

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

/// The field's bytes for `progress`.
pub fn encode_id(progress: &Progress) -> Bytes {
    let mut buf = BytesMut::with_capacity(2 + progress.len() * 8);
    buf.put_u8(1);
    put_varint(&mut buf, zigzag(progress.len() as i64));
    for (&partition, &offset) in progress {
        put_varint(&mut buf, zigzag(i64::from(partition)));
        put_varint(&mut buf, zigzag(offset));
    }
    buf.freeze()
}

/// Parses the field's bytes; `None` when they are not a version-1 id. Partitions with a negative
/// offset (Zilla's -2, HISTORICAL) are left out: read from the beginning, as unlisted ones.
pub fn decode_id(mut bytes: &[u8]) -> Option<Progress> {
    let (&1, rest) = bytes.split_first()? else {
        return None;
    };
    bytes = rest;
    let count = unzigzag(get_varint(&mut bytes)?);
    if !(0..=100_000).contains(&count) {
        return None;
    }
    let mut progress = Progress::new();
    for _ in 0..count {
        let partition = i32::try_from(unzigzag(get_varint(&mut bytes)?)).ok()?;
        let offset = unzigzag(get_varint(&mut bytes)?);
        if offset >= 0 {
            progress.insert(partition, offset);
        }
    }
    bytes.is_empty().then_some(progress)
}

/// `message` with the id appended as field `field` (wire type 2).
pub fn append_id(message: &[u8], field: u32, id: &[u8]) -> Bytes {
    let mut buf = BytesMut::with_capacity(message.len() + id.len() + 8);
    buf.put_slice(message);
    put_varint(&mut buf, (u64::from(field) << 3) | 2);
    put_varint(&mut buf, id.len() as u64);
    buf.put_slice(id);
    buf.freeze()
}

/// The base64url text clients send back in `last-message-id` (padding optional).
pub fn to_text(id: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(id)
}

pub fn from_text(text: &str) -> Option<Progress> {
    let trimmed = text.trim().trim_end_matches('=');
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(trimmed)
        .ok()?;
    decode_id(&bytes)
}

/// The id field's bytes inside `message`, if present (what a client does to remember it).
pub fn find_id(message: &[u8], field: u32) -> Option<Vec<u8>> {
    let mut rest = message;
    while !rest.is_empty() {
        let tag = get_varint(&mut rest)?;
        let (number, wire) = (tag >> 3, tag & 7);
        match wire {
            0 => {
                get_varint(&mut rest)?;
            }
            1 => rest = rest.get(8..)?,
            5 => rest = rest.get(4..)?,
            2 => {
                let len = usize::try_from(get_varint(&mut rest)?).ok()?;
                let value = rest.get(..len)?;
                if number == u64::from(field) {
                    return Some(value.to_vec());
                }
                rest = &rest[len..];
            }
            _ => return None,
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zilla_example_decodes() {
        // zilla-wire.md §2: `AQIABA` = 01 02 00 04 = one partition, p0 at offset 2.
        assert_eq!(from_text("AQIABA"), Some(Progress::from([(0, 2)])));
        assert_eq!(to_text(&encode_id(&Progress::from([(0, 2)]))), "AQIABA");
    }

    #[test]
    fn a_zilla_id_with_unread_partitions_resumes_only_the_read_ones() {
        // Written by Zilla 2f894347's grpc-kafka fetch after one record of partition 0 of four
        // (tests/peers/zilla interop): p1 -2, p0 1, p2 -2, p3 -2.
        assert_eq!(from_text("AQgCAwACBAMGAw"), Some(Progress::from([(0, 1)])));
        // Later in the same stream: p1 2, p0 1, p2 2, p3 1.
        assert_eq!(
            from_text("AQgCBAACBAQGAg"),
            Some(Progress::from([(0, 1), (1, 2), (2, 2), (3, 1)]))
        );
    }

    #[test]
    fn ids_round_trip_and_ride_in_field_32767() {
        let progress = Progress::from([(0, 0), (1, 12345678901), (7, 3)]);
        let id = encode_id(&progress);
        assert_eq!(decode_id(&id), Some(progress.clone()));
        let message = append_id(b"\x0a\x02hi", 32767, &id);
        assert_eq!(
            &message[4..7],
            [0xFA, 0xFF, 0x0F],
            "tag of field 32767, wire type 2"
        );
        assert_eq!(find_id(&message, 32767).as_deref(), Some(id.as_ref()));
        assert_eq!(from_text(&to_text(&id)), Some(progress));
        assert_eq!(from_text("not base64!"), None);
        assert_eq!(decode_id(&[2, 0]), None);
    }
}
