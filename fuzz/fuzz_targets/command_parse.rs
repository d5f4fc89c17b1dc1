//! Fuzz target: see `ringcache::fuzzing::command_parse` for the property checked.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ringcache::fuzzing::command_parse(data));
