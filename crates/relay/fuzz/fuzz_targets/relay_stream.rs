//! A relay stream's bytes, cut into chunks anywhere, through the gRPC message framer and the
//! frame decoder: see `strait_relay::fuzzing::relay_stream` for the properties checked.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| strait_relay::fuzzing::relay_stream(data));
