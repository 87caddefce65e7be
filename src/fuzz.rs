//! Entry points for the fuzz targets in `fuzz/` (built only under `cargo fuzz`, which sets
//! `--cfg fuzzing`): every parser that reads input conjure does not control. Each takes bytes
//! and must return, whatever they are: no panic, no unbounded growth.
#![allow(missing_docs)]

use crate::daemon::report::Decoder;

/// The pidfile reader (`stop`, `status`, a start over an existing file).
pub fn pidfile(bytes: &[u8]) {
    let _ = crate::daemon::pidfile::parse(bytes);
}

/// The relay's reading of an sd_notify datagram (what a program, or anyone, sends to
/// conjure's socket), and the `/proc/net` lines the listener lookup falls back to.
pub fn notify(bytes: &[u8]) {
    crate::readiness::relay::fuzz(bytes);
    crate::readiness::listeners::fuzz(&String::from_utf8_lossy(bytes));
}

/// The report pipe's decoder, fed in two pieces split where the input says.
pub fn report(bytes: &[u8]) {
    let split = bytes.first().map_or(0, |b| *b as usize).min(bytes.len());
    let mut d = Decoder::default();
    for part in [&bytes[..split], &bytes[split..]] {
        d.feed(part);
        while let Ok(Some(_)) = d.next() {}
    }
}

/// The library's string parsers: durations, readiness sources and sinks, signal names.
pub fn parsers(text: &str) {
    let _ = crate::parse_duration(text);
    let _ = text.parse::<crate::readiness::Source>();
    let _ = text.parse::<crate::readiness::SinkChoice>();
    let _ = crate::process::parse_signal(text);
}
