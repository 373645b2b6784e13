//! One gRPC message from the other proxy as a `ClientFrame` and a `ServerFrame`, their packets
//! converted to the codec's, and a `ClientFrame` as a stream's opening: see
//! `strait_relay::fuzzing::relay_frame` for the properties checked.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| strait_relay::fuzzing::relay_frame(data));
