//! The record layout of gRPC over Kafka (Zilla's, shared/reference/zilla-wire.md §2–3):
//!
//! - request records: value = one request message without gRPC framing; headers
//!   `zilla:service`, `zilla:method`, `zilla:reply-to`, `zilla:correlation-id`, then the request
//!   metadata `forwardMetadata` lets through as `meta:NAME` (binary ones `meta:NAME-bin`, base64
//!   as on the wire);
//!   a null value ends the request stream. A null value that also carries `zilla:status` cancels
//!   the call (Strait's addition: sent when the client's deadline passes or it goes away).
//! - reply records: key and `zilla:correlation-id` = the call's; `meta:*` = response metadata;
//!   one record per response message, then a null record with `zilla:status` (and
//!   `zilla:message`) ending the call.

use bytes::Bytes;
use md5::{Digest, Md5};
use rdkafka::message::{Headers, Message};
use strait_config::grpc::CorrelationHeaders;
use tonic::metadata::MetadataMap;

pub const META_PREFIX: &str = "meta:";

/// Request metadata that belongs to HTTP/2 or gRPC itself, not to the application.
pub fn is_reserved_metadata(name: &str) -> bool {
    name.starts_with(':')
        || name.starts_with("grpc-")
        || matches!(
            name,
            "te" | "content-type" | "user-agent" | "host" | "connection" | "accept-encoding"
        )
}

/// The metadata entries `forward` lets through as `(meta:NAME, value)` header pairs, values as on
/// the wire (binary entries keep their base64 text and `-bin` suffix, which is Zilla's layout).
pub fn metadata_to_headers(
    metadata: &MetadataMap,
    forward: impl Fn(&str) -> bool,
) -> Vec<(String, Vec<u8>)> {
    let headers = metadata.clone().into_headers();
    headers
        .iter()
        .filter(|(name, _)| !is_reserved_metadata(name.as_str()) && forward(name.as_str()))
        .map(|(name, value)| {
            (
                format!("{META_PREFIX}{}", name.as_str()),
                value.as_bytes().to_vec(),
            )
        })
        .collect()
}

/// The `meta:*` headers of a record as gRPC metadata; entries that are not valid metadata are
/// skipped (with their names logged) rather than failing the call, and so are those beyond the
/// 24,576 names an HTTP header map holds.
pub fn headers_to_metadata<'a>(
    headers: impl Iterator<Item = (&'a str, Option<&'a [u8]>)>,
) -> MetadataMap {
    let mut map = http::HeaderMap::new();
    for (name, value) in headers {
        let (Some(name), Some(value)) = (name.strip_prefix(META_PREFIX), value) else {
            continue;
        };
        match (
            http::HeaderName::from_bytes(name.as_bytes()),
            http::HeaderValue::from_bytes(value),
        ) {
            // Checked on the parsed name, which is lowercased: `meta:TE` is `te`.
            (Ok(name), Ok(_)) if is_reserved_metadata(name.as_str()) => {}
            (Ok(name), Ok(value)) => {
                // A record can carry more headers than a HeaderMap holds; `append` would panic.
                if map.try_append(name, value).is_err() {
                    tracing::debug!("skipping the metadata beyond what a header map holds");
                    break;
                }
            }
            _ => tracing::debug!(header = name, "skipping metadata that is not valid HTTP/2"),
        }
    }
    MetadataMap::from_headers(map)
}

/// `<idempotency key or random uuid>-<md5 hex of the correlation headers>` (Zilla's shape), so a
/// retried call with the same idempotency key gets the same id. The authenticated `caller` goes
/// into the hash too: another caller with the same key gets its own call and answer, never the
/// first caller's (anonymous callers share one scope, which keeps Zilla's ids).
pub fn correlation_id(
    idempotency_key: Option<&str>,
    caller: Option<&str>,
    names: &CorrelationHeaders,
    service: &str,
    method: &str,
    reply_to: Option<&str>,
) -> String {
    let mut md5 = Md5::new();
    if let Some(caller) = caller {
        md5.update(b"strait:caller");
        md5.update(caller.as_bytes());
    }
    md5.update(names.service.as_bytes());
    md5.update(service.as_bytes());
    md5.update(names.method.as_bytes());
    md5.update(method.as_bytes());
    if let Some(reply_to) = reply_to {
        md5.update(names.reply_to.as_bytes());
        md5.update(reply_to.as_bytes());
    }
    let digest = md5.finalize();
    let mut hex = String::with_capacity(32);
    for byte in digest {
        use std::fmt::Write;
        let _ = write!(hex, "{byte:02x}");
    }
    match idempotency_key {
        Some(key) => format!("{key}-{hex}"),
        None => {
            let r: u128 = rand::random();
            format!(
                "{:08x}-{:04x}-{:04x}-{:04x}-{:012x}-{hex}",
                (r >> 96) as u32,
                (r >> 80) as u16,
                (r >> 64) as u16 & 0x0fff | 0x4000,
                (r >> 48) as u16 & 0x3fff | 0x8000,
                r as u64 & 0xffff_ffff_ffff
            )
        }
    }
}

/// What a record's headers say about a call, read once per record.
#[derive(Debug, Default, Clone)]
pub struct CallHeaders {
    pub service: Option<String>,
    pub method: Option<String>,
    pub reply_to: Option<String>,
    pub correlation_id: Option<String>,
    pub status: Option<i32>,
    pub message: Option<String>,
    pub timeout_ms: Option<u64>,
    /// Every header, in order (for `meta:*` and dead-lettering).
    pub all: Vec<(String, Option<Vec<u8>>)>,
}

/// Strait's own header: the client's remaining deadline in milliseconds when the request was
/// produced, so kafka-grpc does not work on for a client that gave up.
pub const TIMEOUT_HEADER: &str = "strait:timeout-ms";

impl CallHeaders {
    pub fn read(message: &impl Message, names: &CorrelationHeaders) -> Self {
        match message.headers() {
            Some(headers) => Self::from_headers(headers.iter().map(|h| (h.key, h.value)), names),
            None => Self::default(),
        }
    }

    /// Reads headers given as `(name, value)`, in order (a null value is `None`).
    pub fn from_headers<'a>(
        headers: impl IntoIterator<Item = (&'a str, Option<&'a [u8]>)>,
        names: &CorrelationHeaders,
    ) -> Self {
        let mut out = Self::default();
        for (key, value) in headers {
            let text = || {
                value
                    .and_then(|v| std::str::from_utf8(v).ok())
                    .map(str::to_owned)
            };
            if key == names.service {
                out.service = text();
            } else if key == names.method {
                out.method = text();
            } else if key == names.reply_to {
                out.reply_to = text();
            } else if key == names.correlation_id {
                out.correlation_id = text();
            } else if key == names.status {
                out.status = text().and_then(|s| s.trim().parse().ok());
            } else if key == names.message {
                out.message = text();
            } else if key == TIMEOUT_HEADER {
                out.timeout_ms = text().and_then(|s| s.parse().ok());
            }
            out.all.push((key.to_owned(), value.map(<[u8]>::to_vec)));
        }
        out
    }

    pub fn metadata(&self) -> MetadataMap {
        headers_to_metadata(self.all.iter().map(|(k, v)| (k.as_str(), v.as_deref())))
    }
}

/// One reply record as kafka-grpc writes it (kept for re-sending to a retried call).
#[derive(Debug, Clone)]
pub struct ReplyRecord {
    pub value: Option<Bytes>,
    pub headers: Vec<(String, Vec<u8>)>,
}

impl ReplyRecord {
    pub fn size(&self) -> usize {
        self.value.as_ref().map_or(0, Bytes::len)
            + self
                .headers
                .iter()
                .map(|(k, v)| k.len() + v.len())
                .sum::<usize>()
    }
}

/// gRPC's `grpc-timeout` header (`<digits><unit>`, unit one of H M S m u n) as a duration.
pub fn parse_grpc_timeout(value: &str) -> Option<std::time::Duration> {
    use std::time::Duration;
    if value.len() < 2 || value.len() > 9 {
        return None;
    }
    // Checked: the last char may be several bytes long (found while writing the
    // grpc_kafka_records fuzz target; a HeaderValue's text is ASCII, but this takes any `&str`).
    let (digits, unit) = value.split_at_checked(value.len() - 1)?;
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn metadata_round_trips_through_meta_headers() {
        let mut md = MetadataMap::new();
        md.insert("x-tenant", "acme".parse().unwrap());
        md.append("x-tenant", "other".parse().unwrap());
        md.insert_bin(
            "x-trace-bin",
            tonic::metadata::MetadataValue::from_bytes(&[0, 1, 2, 255]),
        );
        md.insert("grpc-timeout", "5S".parse().unwrap());
        md.insert("te", "trailers".parse().unwrap());
        md.insert("authorization", "Bearer secret".parse().unwrap());
        md.insert("cookie", "session=secret".parse().unwrap());
        let forward = strait_config::grpc::ForwardMetadata::default();
        let headers = metadata_to_headers(&md, |name| forward.forwards(name));
        let names: Vec<&str> = headers.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            ["meta:x-tenant", "meta:x-tenant", "meta:x-trace-bin"]
        );
        let back = headers_to_metadata(
            headers
                .iter()
                .map(|(k, v)| (k.as_str(), Some(v.as_slice()))),
        );
        let tenants: Vec<_> = back
            .get_all("x-tenant")
            .iter()
            .map(|v| v.to_str().unwrap().to_owned())
            .collect();
        assert_eq!(tenants, ["acme", "other"]);
        assert_eq!(
            back.get_bin("x-trace-bin")
                .unwrap()
                .to_bytes()
                .unwrap()
                .as_ref(),
            [0, 1, 2, 255]
        );
        assert!(back.get("grpc-timeout").is_none());
    }

    #[test]
    fn idempotency_key_gives_a_stable_correlation_id() {
        let names = CorrelationHeaders::default();
        let a = correlation_id(Some("k1"), None, &names, "a.S", "M", Some("rep"));
        let b = correlation_id(Some("k1"), None, &names, "a.S", "M", Some("rep"));
        assert_eq!(a, b);
        assert!(a.starts_with("k1-") && a.len() == 3 + 32, "{a}");
        assert_ne!(
            a,
            correlation_id(Some("k1"), None, &names, "a.S", "N", Some("rep"))
        );
        let alice = correlation_id(Some("k1"), Some("alice"), &names, "a.S", "M", Some("rep"));
        let bob = correlation_id(Some("k1"), Some("bob"), &names, "a.S", "M", Some("rep"));
        assert_ne!(alice, bob, "one key, two callers: two calls");
        assert_ne!(alice, a);
        assert_eq!(
            alice,
            correlation_id(Some("k1"), Some("alice"), &names, "a.S", "M", Some("rep"))
        );
        let r1 = correlation_id(None, None, &names, "a.S", "M", Some("rep"));
        let r2 = correlation_id(None, None, &names, "a.S", "M", Some("rep"));
        assert_ne!(r1, r2);
        assert!(r1.ends_with(&a[3..]), "{r1}");
    }

    /// Found by the grpc_kafka_records fuzz target: `meta:TE` passed the reserved-name check,
    /// then became `te` as a header name (names are lowercased), so a record's producer could
    /// set `te`, `grpc-timeout` or `content-type` on the call to the service.
    #[test]
    fn reserved_names_in_any_case_are_not_metadata() {
        let headers = [
            ("meta:TE", Some(&b"trailers"[..])),
            ("meta:Grpc-Timeout", Some(b"1S")),
            ("meta:Content-Type", Some(b"text/plain")),
            ("meta:X-Tenant", Some(b"acme")),
        ];
        let metadata = headers_to_metadata(headers.into_iter());
        let names: Vec<String> = metadata
            .into_headers()
            .keys()
            .map(|name| name.to_string())
            .collect();
        assert_eq!(names, ["x-tenant"]);
    }

    /// A record may carry more headers than a HeaderMap can hold (24,576 names): the rest are
    /// skipped, not a panic.
    #[test]
    fn more_meta_headers_than_a_header_map_holds_are_skipped() {
        let names: Vec<String> = (0..30_000).map(|i| format!("{META_PREFIX}x{i}")).collect();
        let metadata =
            headers_to_metadata(names.iter().map(|name| (name.as_str(), Some(&b"v"[..]))));
        assert!(
            metadata.len() > 20_000 && metadata.len() < 30_000,
            "{}",
            metadata.len()
        );
    }

    #[test]
    fn grpc_timeout_units() {
        assert_eq!(parse_grpc_timeout("100m"), Some(Duration::from_millis(100)));
        assert_eq!(parse_grpc_timeout("2S"), Some(Duration::from_secs(2)));
        assert_eq!(parse_grpc_timeout("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_grpc_timeout("5"), None);
        assert_eq!(parse_grpc_timeout("123456789S"), None);
        assert_eq!(parse_grpc_timeout("1x"), None);
    }
}
