//! Record headers (`zilla:*` call headers, `meta:*` metadata), fetch message ids and
//! `grpc-timeout` values through grpc-kafka's parsers: see
//! `strait_grpc_kafka::grpc::fuzzing::grpc_kafka_records` for the properties checked.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| strait_grpc_kafka::grpc::fuzzing::grpc_kafka_records(data));
