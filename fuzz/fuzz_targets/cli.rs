//! The whole command line through clap, with every value parser of `src/cli.rs` (durations,
//! umask, `NAME=VAL`, signals, rewrites, sources, sinks): arguments are the input split at NUL.
#![no_main]

#[path = "../../src/cli.rs"]
#[allow(dead_code)]
mod cli;

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;

use clap::Parser;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let args = std::iter::once(OsString::from("conjure"))
        .chain(data.split(|b| *b == 0).map(|a| OsStr::from_bytes(a).to_os_string()));
    let _ = cli::Cli::try_parse_from(args);
});
