//! Black-box tests of the real `conjure` binary and of the library API, run as one test binary.
//!
//! The programs under test run as real daemons; the tests look at them the way an operator
//! would: exit codes, the one line on stderr, files, and `/proc`. Helper programs live in
//! `helpers/` (`testprog`: the daemon and a wrapper that sets up a hostile launcher;
//! `libdaemon`: a daemon written against the library API). Tests that need root say
//! `SKIPPED` loudly when not run as root; CI runs as root. `systemd/` boots a real systemd in
//! a container and runs the unit files of `systemd/` under it.

#[macro_use]
mod support;

mod cli;
mod containers;
mod control;
mod errors;
mod hostile;
mod initscript;
mod library;
mod lifecycle;
mod logging;
mod readiness;
mod relay;
mod s6;
mod systemd;
mod terminal;
mod tidy;
mod watchdog;
