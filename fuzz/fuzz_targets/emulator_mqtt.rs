//! The emulator's MQTT 3.1.1 and 5 decoding of what clients send
//! (`decode_connect`, `decode`; crate-private, through its fuzzing entry
//! point, which also re-encodes each PUBLISH and checks it decodes the
//! same).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    iotcore_emulator::fuzz_decode(data);
});
