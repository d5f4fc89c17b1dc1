//! Fuzz target: see `ringcache::fuzzing::resp_parse` for the property checked.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ringcache::fuzzing::resp_parse(data));
