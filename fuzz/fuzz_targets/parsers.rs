//! `conjure::fuzz::parsers`: durations, sources, sinks and signal names, as text.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        conjure::fuzz::parsers(text);
    }
});
