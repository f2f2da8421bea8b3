//! Fuzz the datagram decoder (and reassembly of whatever decodes as data).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    p2ner_net::fuzz_decode(data);
});
