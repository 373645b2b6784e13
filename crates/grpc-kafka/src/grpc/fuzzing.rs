//! The body of the fuzz target in `crates/grpc-kafka/fuzz`, here so that plain `cargo test` runs
//! it too (the proptests below feed it arbitrary bytes on stable). It reads what a Kafka producer
//! or a gRPC client controls, and panics only when a property that must hold is broken.

use std::time::Instant;

use strait_config::grpc::CorrelationHeaders;

use super::fetch_id;
use super::wire::{self, CallHeaders, META_PREFIX, TIMEOUT_HEADER};

/// The field fetch message ids ride in by default.
const ID_FIELD: u32 = 32767;

/// Reads the input as a record's headers: a name byte (a known name, `meta:` and a
/// length-prefixed suffix, or a length-prefixed name), a value byte (null or not) and a
/// length-prefixed value; one byte gives a length.
fn record_headers<'a>(
    data: &'a [u8],
    names: &'a CorrelationHeaders,
) -> Vec<(&'a str, Option<&'a [u8]>)> {
    let known = [
        names.service.as_str(),
        names.method.as_str(),
        names.reply_to.as_str(),
        names.correlation_id.as_str(),
        names.status.as_str(),
        names.message.as_str(),
        TIMEOUT_HEADER,
    ];
    let mut rest = data;
    let mut take = |len: usize| {
        let len = len.min(rest.len());
        let (taken, after) = rest.split_at(len);
        rest = after;
        taken
    };
    let mut headers = Vec::new();
    loop {
        let [selector] = take(1) else {
            return headers;
        };
        let selector = usize::from(*selector);
        let name = match known.get(selector) {
            Some(name) => Some(*name),
            None => {
                let len = take(1).first().copied().unwrap_or_default();
                std::str::from_utf8(take(usize::from(len))).ok()
            }
        };
        let [value_len] = take(1) else {
            return headers;
        };
        let value = (*value_len != 0xff).then(|| take(usize::from(*value_len)));
        if let Some(name) = name {
            headers.push((name, value));
        }
    }
}

/// Every parser of gRPC-over-Kafka input, on the same bytes: a record's call headers and their
/// `meta:*` metadata (with names given `meta:` when the selector byte is odd above the known
/// ones), a fetch message id as bytes, as a client's base64 `last-message-id` and inside a
/// message, and a `grpc-timeout` value.
///
/// Properties: no panic; every header is kept in order; metadata never holds a name reserved to
/// HTTP/2 or gRPC, and forwarding it as headers again gives the same metadata; a decoded fetch
/// id encodes (also as text) and decodes to itself; a timeout can be added to the clock.
pub fn grpc_kafka_records(data: &[u8]) {
    let names = CorrelationHeaders::default();
    let headers = record_headers(data, &names);
    let prefixed: Vec<(String, Option<&[u8]>)> = headers
        .iter()
        .enumerate()
        .map(|(i, &(name, value))| match i % 2 {
            0 => (name.to_string(), value),
            _ => (format!("{META_PREFIX}{name}"), value),
        })
        .collect();
    let call = CallHeaders::from_headers(prefixed.iter().map(|(n, v)| (n.as_str(), *v)), &names);
    assert_eq!(call.all.len(), prefixed.len());
    let metadata = call.metadata();
    let headers_map = metadata.clone().into_headers();
    for name in headers_map.keys() {
        assert!(!wire::is_reserved_metadata(name.as_str()), "{name}");
    }
    let forwarded = wire::metadata_to_headers(&metadata, |_| true);
    let again = wire::headers_to_metadata(
        forwarded
            .iter()
            .map(|(n, v)| (n.as_str(), Some(v.as_slice()))),
    );
    assert_eq!(again.into_headers(), headers_map);

    if let Some(progress) = fetch_id::decode_id(data) {
        let id = fetch_id::encode_id(&progress);
        assert_eq!(fetch_id::decode_id(&id).as_ref(), Some(&progress));
        assert_eq!(
            fetch_id::from_text(&fetch_id::to_text(&id)).as_ref(),
            Some(&progress)
        );
        let message = fetch_id::append_id(&[], ID_FIELD, &id);
        assert_eq!(
            fetch_id::find_id(&message, ID_FIELD).as_deref(),
            Some(&id[..])
        );
    }
    let _ = fetch_id::find_id(data, ID_FIELD);
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = fetch_id::from_text(text);
        if let Some(timeout) = wire::parse_grpc_timeout(text) {
            assert!(Instant::now().checked_add(timeout).is_some(), "{timeout:?}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_grpc_timeout_ending_in_a_multibyte_char_is_not_a_timeout() {
        assert_eq!(wire::parse_grpc_timeout("1é"), None);
        grpc_kafka_records("1é".as_bytes());
    }

    proptest! {
        #[test]
        fn grpc_kafka_records_holds_for_any_bytes(data in prop::collection::vec(any::<u8>(), 0..256)) {
            grpc_kafka_records(&data);
        }

        #[test]
        fn grpc_kafka_records_holds_for_any_text(text in "\\PC{0,12}") {
            grpc_kafka_records(text.as_bytes());
        }

        #[test]
        fn fetch_ids_of_any_progress_round_trip(
            progress in prop::collection::btree_map(any::<i32>(), any::<i64>(), 0..8),
        ) {
            grpc_kafka_records(&fetch_id::encode_id(&progress));
        }
    }
}
