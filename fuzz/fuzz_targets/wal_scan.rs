//! Fuzz target: see `ringcache::fuzzing::wal_scan` for the property checked.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| ringcache::fuzzing::wal_scan(data));
