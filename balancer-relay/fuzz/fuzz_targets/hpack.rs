//! Header blocks through the HPACK decoder, then re-encoded and decoded
//! again (see `balancer_relay_fuzz::hpack`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| balancer_relay_fuzz::hpack::run(data));
