//! Record headers as plain pairs, both ways.

use rdkafka::message::{Header, Headers as _, Message, OwnedHeaders};

/// Every header of `record`, in order, as `(name, value)` (a null value as empty).
pub fn record_headers<M: Message>(record: &M) -> Vec<(String, Vec<u8>)> {
    record
        .headers()
        .map(|h| {
            h.iter()
                .map(|h| (h.key.to_string(), h.value.unwrap_or_default().to_vec()))
                .collect()
        })
        .unwrap_or_default()
}

/// Whether `record` has a header `name` with exactly `value`.
pub fn has_header<M: Message>(record: &M, name: &str, value: &[u8]) -> bool {
    record.headers().is_some_and(|headers| {
        headers
            .iter()
            .any(|h| h.key == name && h.value == Some(value))
    })
}

/// Record headers from `(name, value)` pairs.
pub fn owned_headers<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a [u8])>) -> OwnedHeaders {
    let pairs = pairs.into_iter();
    let mut headers = OwnedHeaders::new_with_capacity(pairs.size_hint().0);
    for (key, value) in pairs {
        headers = headers.insert(Header {
            key,
            value: Some(value),
        });
    }
    headers
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::message::OwnedMessage;
    use rdkafka::{Timestamp, message::Headers};

    #[test]
    fn pairs_round_trip_through_record_headers() {
        let headers = owned_headers([("zilla:qos", &b"1"[..]), ("user", b"v")]);
        assert_eq!(headers.count(), 2);
        let record = OwnedMessage::new(
            None,
            None,
            "t".into(),
            Timestamp::NotAvailable,
            0,
            0,
            Some(headers),
        );
        assert_eq!(
            record_headers(&record),
            [
                ("zilla:qos".to_string(), b"1".to_vec()),
                ("user".to_string(), b"v".to_vec())
            ]
        );
        assert!(has_header(&record, "user", b"v"));
        assert!(!has_header(&record, "user", b"w"));
    }
}
