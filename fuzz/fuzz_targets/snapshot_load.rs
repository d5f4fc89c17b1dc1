//! Fuzz target: see `ringcache::fuzzing::snapshot_load` for the property checked.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ringcache::fuzzing::snapshot_load(data));
