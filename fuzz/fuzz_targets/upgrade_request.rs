#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| ringway::fuzzing::upgrade_request(data));
