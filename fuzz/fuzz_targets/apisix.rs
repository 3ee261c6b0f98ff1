#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| portcullis::fuzz::apisix(data));
