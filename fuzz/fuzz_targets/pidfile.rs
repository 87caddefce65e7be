//! `conjure::fuzz::pidfile`: see `src/fuzz.rs`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| conjure::fuzz::pidfile(data));
