//! A messages-topic record (key, payload, timestamp, headers) through `core::headers::decode`
//! and on to a subscriber's PUBLISH: see `strait_mqtt_kafka::core::fuzzing::kafka_record` for
//! the input layout and the properties checked.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| strait_mqtt_kafka::core::fuzzing::kafka_record(data));
