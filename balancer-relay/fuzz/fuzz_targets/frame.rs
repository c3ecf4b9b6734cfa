//! A peer's bytes through the frame codec, as the relay engine reads them
//! (see `balancer_relay_fuzz::frame`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| balancer_relay_fuzz::frame::run(data));
