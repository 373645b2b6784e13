//! A sessions-topic record value through `SessionRecord::decode` (and as a replica heartbeat):
//! see `strait_mqtt_kafka::core::fuzzing::session_record` for the properties checked. Seeded
//! with a session of every field (`seeds/session_record`).

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| strait_mqtt_kafka::core::fuzzing::session_record(data));
