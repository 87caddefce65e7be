//! Readiness: how conjure learns that the program is ready (sources) and how the supervisor
//! hears it (sinks).
//!
//! A sink is chosen at run time, so one binary serves a `Type=forking` unit, an init script
//! and s6 alike.

/// How the supervisor hears that the daemon is ready.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Sink {
    /// The launching process blocks and exits 0 once ready, or prints why it failed and exits
    /// with the sysexits code. The pidfile is complete before it exits.
    #[default]
    Pipe,
}
