//! conjure starts a program as a correct Unix daemon, a foreground service or a container's
//! PID 1, and tells its supervisor exactly when the program is ready, or exactly why it failed.
//!
//! # Anatomy
//!
//! - [`DaemonConfig`]: what the daemon looks like (pidfile, lock, directory, umask, output
//!   files, user, environment, mode, how readiness is reported), checked before any fork.
//! - [`daemonize`] / [`daemonize_checked`]: turn the calling process into a daemon; it gets a
//!   [`DaemonContext`] and tells its launcher when it is ready with
//!   [`DaemonContext::notify_parent`]. The original process waits and exits with the outcome.
//! - [`Launcher`]: start another program as a daemon and wait until it is ready; the engine of
//!   the `conjure` command, safe to use from a multi-threaded program.
//! - [`control`]: `stop` and `status` through a locked pidfile.
//! - [`process`]: the building blocks (`fork`, `setsid`, `waitpid`, …) the engine is made of.
//! - [`DaemonizeError`]: every failure, each with its sysexits code in one table.
//!
//! # Guarantees
//!
//! - Between `fork` and `exec` the child runs only async-signal-safe syscalls prepared before
//!   the fork: no allocation, no locks, no logging.
//! - All `unsafe` lives in one module (`src/sys/`); this crate denies it elsewhere.
//! - The library exits a process only where its contract says so: the original process inside
//!   [`daemonize`], once the daemon is ready or failed. It never installs a tracing subscriber.
//!
//! # Portability
//!
//! Linux first: `close_range`, pidfds and `/proc` are used where present, with fallbacks for
//! older kernels. Other Unix systems are not yet supported.
//!
//! # Example
//!
//! ```no_run
//! let mut config = conjure::DaemonConfig::new();
//! config.pidfile("/run/myapp.pid").stdout("/var/log/myapp.out");
//! let mut ctx = conjure::daemonize_checked(&config)?;
//! // ... open sockets, load state ...
//! ctx.notify_parent()?;
//! # Ok::<(), conjure::DaemonizeError>(())
//! ```
#![deny(unsafe_code)]
#![deny(missing_docs)]

mod config;
mod daemon;
mod duration;
mod error;
pub mod process;
pub mod readiness;
mod sys;

#[cfg(fuzzing)]
pub mod fuzz;

pub use config::DaemonConfig;
pub use daemon::control;
pub use daemon::launcher::{DEFAULT_KILL_AFTER, DEFAULT_READY_TIMEOUT, Launcher, Outcome};
pub use daemon::{DaemonContext, daemonize_checked};
pub use duration::parse_duration;
pub use error::{DaemonizeError, exit};
pub use sys::daemonize;
